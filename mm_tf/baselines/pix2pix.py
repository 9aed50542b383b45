"""2xpix2pix (paper 6.2.3): one pix2pix per SEEN translation, unseen ones cascade via RGB.

For every zero-pair stream `(anchor, m, ...)` it trains U-Net generators anchor->m and
m->anchor on that stream's pairs with the target modality's own loss (RGB L2, BerHu,
cross-entropy) and, for adversarial targets (RGB), a conditional LSGAN: a patch
discriminator per translation sees `concat(source, output)` (pix2pix's cGAN). A
translation never seen in training, e.g. depth->segmentation, is the cascade
`G_{R->S}(G_{D->R}(x))`: it must decode to RGB and re-encode, which is the weakness the
paper points out.

Example:
  >>> model = TwoPix2Pix(["rgb", "depth", "segmentation"],
  ...                    [("rgb", "segmentation"), ("rgb", "depth")], width=1 / 16)
  >>> model.compile()
  >>> model.fit(zero_pair_batches, steps_per_epoch=100)
  >>> model.translate("depth", "segmentation", depth).shape  # logits
"""

import keras
import tensorflow as tf

from mm_tf import modalities as mm_modalities
from mm_tf import networks
from mm_tf.baselines import common


class TwoPix2Pix(common.BaselineTranslator):
  """Paired pix2pix translators through the anchor; unseen pairs cascade through it.

  Args:
    modalities: `Modality` objects or names.
    streams: Zero-pair training streams, anchor first, e.g.
      `[("rgb", "segmentation"), ("rgb", "depth", "nir")]`.
    anchor: The shared modality (RGB).
    width: Channel multiplier of generators and discriminators.
    gan_weight: Weight of the cGAN term for adversarial targets (pix2pix: 1).
    image_size: Builds the networks for this size right away if given.
  """

  def __init__(self, modalities, streams, anchor=mm_modalities.ANCHOR, width=1.0,
               gan_weight=1.0, image_size=None, **kwargs):
    kwargs.setdefault("name", "two_pix2pix")
    super().__init__(modalities, width, image_size, **kwargs)
    self.streams = tuple(tuple(s) for s in streams)
    self.anchor = anchor
    self.gan_weight = float(gan_weight)
    pairs = []
    for stream in self.streams:
      for other in stream[1:]:
        pairs += [(anchor, other), (other, anchor)]
    self.pairs = tuple(dict.fromkeys(pairs))
    self.generators = {
        f"{s}_to_{t}": common.unet_generator(self.modalities[s], self.modalities[t], width)
        for s, t in self.pairs}
    self.discriminators = {
        f"{s}_to_{t}": networks.PatchDiscriminator(width, name=f"discriminator_{s}_to_{t}")
        for s, t in self.pairs if self.modalities[t].adversarial and self.gan_weight > 0}
    self.term_names = [f"{s}_to_{t}" for s, t in self.pairs]
    self.term_names += [f"{key}_gan" for key in self.discriminators]
    self.term_names += [f"{key}_discriminator" for key in self.discriminators]
    self._make_trackers()
    if image_size is not None:
      self.build_networks(image_size)

  def build_networks(self, image_size):
    for s, t in self.pairs:
      source = tf.zeros([1, image_size, image_size, self.modalities[s].encoder_channels])
      output = self.generators[f"{s}_to_{t}"](source)
      key = f"{s}_to_{t}"
      if key in self.discriminators:
        self.discriminators[key](tf.concat([source, self.as_next_input(t, output)], -1))
    self.image_size = image_size
    self.built = True

  def direct_translations(self):
    return self.pairs

  def _condition(self, source_input, target_image):
    return tf.concat([source_input, target_image], axis=-1)

  def generator_variables(self):
    return [v for g in self.generators.values() for v in g.trainable_variables]

  def discriminator_variables(self):
    # One optimizer for all discriminators (one optimizer call per step).
    return [v for d in self.discriminators.values() for v in d.trainable_variables]

  def train_step(self, data):
    values = {}
    generator_variables = self.generator_variables()
    fakes = {}
    with tf.GradientTape() as tape:
      total = 0.0
      for s, t in self.pairs:
        key = f"{s}_to_{t}"
        source_input, output, values[key] = self.paired_term(data, s, t)
        total += common.reconstruction_weight(t) * values[key]
        if key in self.discriminators:
          stream = common.find_stream(data, (s, t))
          fake_pair = self._condition(source_input, output)
          real_pair = self._condition(source_input, self.generator_input(t, stream[t]))
          fakes[key] = (real_pair, fake_pair)
          values[f"{key}_gan"] = common.lsgan_generator_loss(self.discriminators[key], fake_pair)
          total += self.gan_weight * values[f"{key}_gan"]
    self.apply_gradients(self.generator_optimizer, tape, total, generator_variables)
    if fakes:
      # `fakes` has an entry for every discriminator.
      d_variables = self.discriminator_variables()
      with tf.GradientTape() as tape:
        d_total = 0.0
        for key, (real_pair, fake_pair) in fakes.items():
          values[f"{key}_discriminator"] = common.lsgan_discriminator_loss(
              self.discriminators[key], real_pair, tf.stop_gradient(fake_pair))
          d_total += values[f"{key}_discriminator"]
      self.apply_gradients(self.discriminator_optimizer, tape, d_total, d_variables)
    values["loss"] = total
    return self._report(values)

  def translate(self, source, target, x, training=False):
    """Direct generator if (source, target) was seen, else the cascade through the anchor."""
    self.check_translation(source, target)
    key = f"{source}_to_{target}"
    if key in self.generators:
      return self.generators[key](self.generator_input(source, x), training=training)
    if (source, self.anchor) in self.pairs and (self.anchor, target) in self.pairs:
      anchor_image = self.translate(source, self.anchor, x, training=training)
      return self.translate(self.anchor, target, self.as_next_input(self.anchor, anchor_image),
                            training=training)
    raise ValueError(f"{self.name} cannot translate {source}->{target}: neither seen nor "
                     f"reachable through {self.anchor!r}.")
