"""StarGAN (Choi et al. 2018) adapted to modalities, paired and unpaired (paper 6.2.3).

One encoder-decoder is shared by every modality except its modality-specific first layer
(input channels differ) and last layer (output channels and activation differ); the
TARGET modality is a condition: a one-hot map concatenated to the input. The
discriminator likewise has a modality-specific first layer, a shared trunk, a patch
adversarial head and a modality-classification head.

  * `paired=False` (StarGAN(unpaired)): StarGAN's own losses on unpaired samples of every
    modality: adversarial (LSGAN here, like the other baselines, instead of WGAN-GP),
    target-modality classification of the fake and cycle reconstruction with the source
    modality's loss.
  * `paired=True` (StarGAN(paired)): the seen pairs of the streams (RGB<->m) are trained
    with the target modality's loss, plus adversarial and classification terms; no cycle
    term (the paper found removing it slightly better).

Unseen translations (depth->segmentation) are asked for directly with the target
condition: the shared network has to generalise to a condition/input combination it
never saw paired, which is what the paper shows it fails to do.
"""

import itertools

import keras
import tensorflow as tf

from mm_tf import losses as mm_losses
from mm_tf import modalities as mm_modalities
from mm_tf import networks
from mm_tf.baselines import common

CLASSIFICATION_WEIGHT = 1.0  # StarGAN's lambda_cls.
CYCLE_WEIGHT = 10.0  # StarGAN's lambda_rec.


class StarGAN(common.BaselineTranslator):
  """One target-conditioned translator for all modalities.

  Args:
    modalities: `Modality` objects or names.
    streams: Zero-pair training streams, anchor first.
    paired: Paired variant (supervised seen pairs, no cycle) or unpaired (StarGAN losses).
    anchor: The anchor modality.
    width: Channel multiplier (1.0: StarGAN's 64 base filters).
    residual_blocks: Residual blocks in the shared bottleneck (StarGAN: 6).
    image_size: Builds the networks right away if given.
  """

  def __init__(self, modalities, streams, paired=False, anchor=mm_modalities.ANCHOR, width=1.0,
               residual_blocks=6, image_size=None, **kwargs):
    kwargs.setdefault("name", "stargan_paired" if paired else "stargan_unpaired")
    super().__init__(modalities, width, image_size, **kwargs)
    self.streams = tuple(tuple(s) for s in streams)
    self.paired = bool(paired)
    self.anchor = anchor
    used = tuple(dict.fromkeys(m for s in self.streams for m in s))
    self.domains = used
    self.domain_index = {m: i for i, m in enumerate(self.domains)}
    if self.paired:
      pairs = []
      for stream in self.streams:
        for other in stream[1:]:
          pairs += [(anchor, other), (other, anchor)]
      self.training_translations = tuple(dict.fromkeys(pairs))
    else:
      self.training_translations = tuple(itertools.permutations(self.domains, 2))
    base = networks.scaled(64, width)
    num_domains = len(self.domains)
    self.first_layers = {
        m: self._first_layer(self.modalities[m].encoder_channels + num_domains, base, m)
        for m in self.domains}
    self.trunk = self._trunk(base, residual_blocks)
    self.last_layers = {m: self._last_layer(self.modalities[m], base) for m in self.domains}
    self.discriminator_first = {
        m: self._discriminator_first(self.modalities[m].encoder_channels, base, m)
        for m in self.domains}
    self.discriminator_trunk = self._discriminator_trunk(base, num_domains)
    self.term_names = [f"{s}_to_{t}_gan" for s, t in self.training_translations]
    self.term_names += ["classification_fake", "classification_real", "discriminator"]
    if self.paired:
      self.term_names += [f"{s}_to_{t}" for s, t in self.training_translations]
    else:
      self.term_names += [f"cycle_{s}_{t}_{s}" for s, t in self.training_translations]
    self._make_trackers()
    if image_size is not None:
      self.build_networks(image_size)

  # ---------------------------------------------------------------- networks
  def _first_layer(self, channels, base, name):
    inputs = keras.Input((None, None, channels))
    return keras.Model(inputs, common.conv_norm_act(inputs, base, 7, name="c7"),
                       name=f"generator_first_{name}")

  def _trunk(self, base, residual_blocks):
    inputs = keras.Input((None, None, base))
    x = common.conv_norm_act(inputs, 2 * base, 4, strides=2, name="d1")
    x = common.conv_norm_act(x, 4 * base, 4, strides=2, name="d2")
    for i in range(residual_blocks):
      x = common.residual_block(x, 4 * base, name=f"res{i + 1}")
    x = common.conv_norm_act(x, 2 * base, 4, strides=2, transpose=True, name="u1")
    x = common.conv_norm_act(x, base, 4, strides=2, transpose=True, name="u2")
    return keras.Model(inputs, x, name="generator_trunk")

  def _last_layer(self, modality, base):
    inputs = keras.Input((None, None, base))
    return keras.Model(inputs, common.output_head(inputs, modality, kernel_size=7),
                       name=f"generator_last_{modality.name}")

  def _discriminator_first(self, channels, base, name):
    inputs = keras.Input((None, None, channels))
    x = keras.layers.Conv2D(base, 4, strides=2, padding="same", name="conv")(inputs)
    return keras.Model(inputs, keras.layers.LeakyReLU(0.01)(x), name=f"discriminator_first_{name}")

  def _discriminator_trunk(self, base, num_domains):
    inputs = keras.Input((None, None, base))
    x = inputs
    for i, multiple in enumerate((2, 4, 8), start=1):
      x = keras.layers.Conv2D(base * multiple, 4, strides=2, padding="same", name=f"conv{i}")(x)
      x = keras.layers.LeakyReLU(0.01)(x)
    adversarial = keras.layers.Conv2D(1, 3, padding="same", dtype="float32", name="patch_scores")(x)
    logits = keras.layers.Conv2D(num_domains, 3, padding="same", name="domain_conv")(x)
    logits = keras.layers.GlobalAveragePooling2D(dtype="float32", name="domain_logits")(logits)
    return keras.Model(inputs, [adversarial, logits], name="discriminator_trunk")

  def build_networks(self, image_size):
    for m in self.domains:
      x = tf.zeros([1, image_size, image_size, self.modalities[m].encoder_channels])
      self.generate(m, m, x)
      self.discriminate(m, x)
    self.image_size = image_size
    self.built = True

  def generate(self, source, target, source_input, training=False):
    """The shared generator with `source`'s first and `target`'s last layer."""
    shape = tf.shape(source_input)
    condition = tf.one_hot(self.domain_index[target], len(self.domains), dtype=source_input.dtype)
    condition = tf.broadcast_to(condition, tf.stack([shape[0], shape[1], shape[2],
                                                     len(self.domains)]))
    x = self.first_layers[source](tf.concat([source_input, condition], -1), training=training)
    return self.last_layers[target](self.trunk(x, training=training), training=training)

  def discriminate(self, modality, image, training=False):
    """(patch scores, modality logits) of an image of `modality`."""
    return self.discriminator_trunk(self.discriminator_first[modality](image, training=training),
                                    training=training)

  def direct_translations(self):
    return tuple(itertools.permutations(self.domains, 2))

  # ---------------------------------------------------------------- training
  def _classification(self, logits, modality):
    labels = tf.fill([tf.shape(logits)[0]], self.domain_index[modality])
    return common.mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                                       logits=logits))

  def _sources(self, data, source, target):
    """(source value, target value or None) for a training translation."""
    if self.paired:
      stream = common.find_stream(data, (source, target))
      return stream[source], stream[target]
    return common.unpaired_samples(data, source), None

  def generator_variables(self):
    modules = list(self.first_layers.values()) + [self.trunk] + list(self.last_layers.values())
    return [v for m in modules for v in m.trainable_variables]

  def discriminator_variables(self):
    modules = list(self.discriminator_first.values()) + [self.discriminator_trunk]
    return [v for m in modules for v in m.trainable_variables]

  def train_step(self, data):
    values = {}
    g_variables = self.generator_variables()
    fakes = []
    with tf.GradientTape() as tape:
      total = 0.0
      classification = []
      for s, t in self.training_translations:
        source_value, target_value = self._sources(data, s, t)
        source_input = self.generator_input(s, source_value)
        output = self.generate(s, t, source_input, training=True)
        fake = self.as_next_input(t, output)
        fakes.append((t, fake))
        scores, logits = self.discriminate(t, fake, training=True)
        values[f"{s}_to_{t}_gan"] = common.mean(mm_losses.lsgan_generator(scores))
        classification.append(self._classification(logits, t))
        total += values[f"{s}_to_{t}_gan"]
        if self.paired:
          values[f"{s}_to_{t}"] = common.mean(
              mm_losses.reconstruction(self.modalities[t], output, target_value))
          total += common.reconstruction_weight(t) * values[f"{s}_to_{t}"]
        else:
          back = self.generate(t, s, fake, training=True)
          values[f"cycle_{s}_{t}_{s}"] = common.mean(
              mm_losses.reconstruction(self.modalities[s], back, source_value))
          total += CYCLE_WEIGHT * values[f"cycle_{s}_{t}_{s}"]
      values["classification_fake"] = tf.add_n(classification) / len(classification)
      total += CLASSIFICATION_WEIGHT * values["classification_fake"]
    self.apply_gradients(self.generator_optimizer, tape, total, g_variables)

    d_variables = self.discriminator_variables()
    with tf.GradientTape() as tape:
      d_total = 0.0
      classification = []
      for m in self.domains:
        real = self.generator_input(m, common.unpaired_samples(data, m))
        scores, logits = self.discriminate(m, real, training=True)
        d_total += common.mean(tf.reduce_mean(tf.square(scores - 1.0), axis=[1, 2, 3]))
        classification.append(self._classification(logits, m))
      for t, fake in fakes:
        scores, _ = self.discriminate(t, tf.stop_gradient(fake), training=True)
        d_total += common.mean(tf.reduce_mean(tf.square(scores), axis=[1, 2, 3]))
      values["classification_real"] = tf.add_n(classification) / len(classification)
      values["discriminator"] = d_total
      d_total += CLASSIFICATION_WEIGHT * values["classification_real"]
    self.apply_gradients(self.discriminator_optimizer, tape, d_total, d_variables)
    values["loss"] = total
    return self._report(values)

  def translate(self, source, target, x, training=False):
    mm_modalities.check_name(source, self.domains, "source modality")
    mm_modalities.check_name(target, self.domains, "target modality")
    return self.generate(source, target, self.generator_input(source, x), training=training)
