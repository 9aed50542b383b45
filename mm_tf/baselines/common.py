"""Pieces shared by the baselines: generators, the baseline base class, batch helpers.

Every baseline is a `keras.Model` with a custom `train_step` ("customizing fit" style:
`keras.metrics.Mean` trackers listed by the `metrics` property) that consumes the same
zero-pair batches as `MixAndMatchNetworks`:
`{"rgb+segmentation": {"rgb", "segmentation"}, "rgb+depth+nir": {...}}`, and exposes
`translate(source, target, x)` in model space (see `mm_tf.modalities`), so the same
evaluation code scores every method.

Normalisation is instance normalisation (`GroupNormalization(groups=-1)`: one group per
channel, Keras 3's own layer), as in pix2pix/CycleGAN/StarGAN/UNIT. Sizes follow the
M&MNets convention: `width` scales channel counts (1.0 = the original papers' 64 base
filters) and inputs are multiples of 32.
"""

import itertools
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from mm_tf import losses as mm_losses
from mm_tf import modalities as mm_modalities
from mm_tf import networks

# Weights of the supervised / reconstruction (modality) losses against an adversarial
# weight of 1. pix2pix uses 100 * L1 vs 1 * GAN; our per-image losses (mean L2 of [-1, 1]
# RGB, BerHu of [0, 1] depth, pixel cross-entropy) have different scales, so each gets the
# weight M&MNets gives it relative to RGB (stages.STAGE2_MODALITY_WEIGHTS) divided by 10.
RECONSTRUCTION_WEIGHTS = {"rgb": 10.0, "segmentation": 10.0, "depth": 1.0, "nir": 1.0}
DEFAULT_LEARNING_RATE = 2e-4
ADAM_BETA_1 = 0.5


def reconstruction_weight(modality_name: str) -> float:
  """Weight of a modality's own loss in the baselines (1.0 for unknown modalities)."""
  return RECONSTRUCTION_WEIGHTS.get(modality_name, 1.0)


def instance_norm(name: str) -> keras.layers.Layer:
  return keras.layers.GroupNormalization(groups=-1, epsilon=1e-5, name=name)


def conv_norm_act(x, filters, kernel_size, strides=1, norm=True, activation="relu",
                  transpose=False, name="conv"):
  """Conv (or transposed conv) + instance norm + activation, functional style."""
  conv = keras.layers.Conv2DTranspose if transpose else keras.layers.Conv2D
  x = conv(filters, kernel_size, strides=strides, padding="same", use_bias=not norm,
           name=f"{name}_conv")(x)
  if norm:
    x = instance_norm(f"{name}_in")(x)
  if activation == "relu":
    x = keras.layers.ReLU(name=f"{name}_relu")(x)
  elif activation == "leaky_relu":
    x = keras.layers.LeakyReLU(negative_slope=0.2, name=f"{name}_lrelu")(x)
  return x


def residual_block(x, filters, name):
  """Two 3x3 conv + IN, identity shortcut (CycleGAN/StarGAN/UNIT residual block)."""
  y = conv_norm_act(x, filters, 3, name=f"{name}_a")
  y = conv_norm_act(y, filters, 3, activation=None, name=f"{name}_b")
  return keras.layers.Add(name=f"{name}_add")([x, y])


def output_head(x, modality: mm_modalities.Modality, kernel_size=3, name="head"):
  """Last conv to the modality's channels: tanh for RGB, linear otherwise (logits for labels)."""
  x = keras.layers.Conv2D(modality.channels, kernel_size, padding="same", dtype="float32",
                          name=f"{name}_{modality.name}")(x)
  if modality.output_activation == "tanh":
    x = keras.layers.Activation("tanh", dtype="float32", name=f"{name}_tanh")(x)
  return x


def unet_generator(source: mm_modalities.Modality, target: mm_modalities.Modality,
                   width=1.0, name=None) -> keras.Model:
  """pix2pix U-Net: 5 stride-2 4x4 conv downs and mirrored transposed-conv ups with skips.

  Five downsamplings keep the M&MNets "multiple of 32" input contract (pix2pix uses
  eight at 256x256). The innermost level has no normalisation (as in pix2pix, where
  instance norm of a 1x1 map would zero it).
  """
  filters = [networks.scaled(f, width) for f in (64, 128, 256, 512, 512)]
  inputs = keras.Input((None, None, source.encoder_channels), name=f"{source.name}_input")
  x = inputs
  skips = []
  for i, f in enumerate(filters):
    innermost = i == len(filters) - 1
    x = conv_norm_act(x, f, 4, strides=2, norm=i > 0 and not innermost,
                      activation="leaky_relu", name=f"down{i + 1}")
    skips.append(x)
  for i, f in reversed(list(enumerate(filters[:-1]))):
    x = conv_norm_act(x, f, 4, strides=2, transpose=True, name=f"up{i + 2}")
    x = keras.layers.Concatenate(name=f"skip{i + 1}")([x, skips[i]])
  x = conv_norm_act(x, filters[0], 4, strides=2, transpose=True, name="up1")
  outputs = output_head(x, target)
  return keras.Model(inputs, outputs, name=name or f"unet_{source.name}_to_{target.name}")


def resnet_generator(source: mm_modalities.Modality, target: mm_modalities.Modality,
                     width=1.0, residual_blocks=6, name=None) -> keras.Model:
  """CycleGAN ResNet generator: c7s1-64, d128, d256, R256 x n, u128, u64, c7s1-C."""
  base = networks.scaled(64, width)
  inputs = keras.Input((None, None, source.encoder_channels), name=f"{source.name}_input")
  x = conv_norm_act(inputs, base, 7, name="c7")
  x = conv_norm_act(x, 2 * base, 3, strides=2, name="d1")
  x = conv_norm_act(x, 4 * base, 3, strides=2, name="d2")
  for i in range(residual_blocks):
    x = residual_block(x, 4 * base, name=f"res{i + 1}")
  x = conv_norm_act(x, 2 * base, 3, strides=2, transpose=True, name="u1")
  x = conv_norm_act(x, base, 3, strides=2, transpose=True, name="u2")
  outputs = output_head(x, target, kernel_size=7)
  return keras.Model(inputs, outputs, name=name or f"resnet_{source.name}_to_{target.name}")


def as_modalities(modalities) -> Dict[str, mm_modalities.Modality]:
  """`{name: Modality}` from Modality objects, config dicts or built-in names."""
  result = {}
  for modality in modalities:
    modality = (mm_modalities.Modality.from_config(modality) if isinstance(modality, dict)
                else mm_modalities.get(modality))
    result[modality.name] = modality
  return result


def find_stream(batch: Mapping[str, Mapping[str, tf.Tensor]], modalities: Sequence[str]):
  """The batch entry that holds all of `modalities` (streams are named "a+b+c")."""
  for key, value in batch.items():
    if all(m in key.split("+") for m in modalities):
      return value
  raise ValueError(f"No stream of the batch holds {list(modalities)}; the batch has streams "
                   f"{sorted(batch)}.")


def unpaired_samples(batch: Mapping[str, Mapping[str, tf.Tensor]], modality: str):
  """Every example of `modality` in the batch, whichever stream it comes from."""
  values = [stream[modality] for stream in batch.values() if modality in stream]
  if not values:
    raise ValueError(f"No stream of the batch holds modality {modality!r}; the batch has "
                     f"streams {sorted(batch)}.")
  return values[0] if len(values) == 1 else tf.concat(values, axis=0)


def mean(per_example):
  """Global-batch mean of per-example losses (replica-aware, like the M&MNets model)."""
  return tf.nn.compute_average_loss(tf.reshape(per_example, [-1]))


class BaselineTranslator(keras.Model):
  """Base class: modality bookkeeping, loss trackers, two Adam optimizers.

  Subclasses create networks, set `self.term_names` (the unweighted loss terms they
  report) before calling `_make_trackers()`, implement `train_step` and
  `translate(source, target, x)`, and list what they translate directly in
  `direct_translations` (everything else goes through `translate`'s own route, e.g. a
  cascade through RGB). Baselines deliberately have no `translate_multimodal`:
  `mm_tf.evaluation.evaluate_model` takes objects with one for M&MNets models; baselines
  are scored through `translate_fn` (see `mm_tf.experiments`).

  Args:
    modalities: `Modality` objects or built-in names.
    width: Channel multiplier (1.0 = the original baseline's size).
    image_size: If given, builds the networks for this square size right away.
  """

  def __init__(self, modalities, width=1.0, image_size=None, **kwargs):
    super().__init__(**kwargs)
    self.modalities = as_modalities(modalities)
    self.width = float(width)
    self.image_size = image_size
    self.generator_optimizer = None
    self.discriminator_optimizer = None
    self.term_names = []
    self._trackers = {}

  @property
  def modality_names(self) -> Tuple[str, ...]:
    return tuple(self.modalities)

  def _make_trackers(self):
    self._trackers = {name: keras.metrics.Mean(name=name)
                      for name in ["loss"] + list(self.term_names)}

  @property
  def metrics(self):
    return list(self._trackers.values())

  def _report(self, values: Mapping[str, tf.Tensor]):
    for name, value in values.items():
      self._trackers[name].update_state(value)
    return {m.name: m.result() for m in self.metrics}

  def compile(self, learning_rate=DEFAULT_LEARNING_RATE, **kwargs):
    """Adam (beta1 0.5) for generators and discriminators; no XLA by default.

    When the networks are built, the optimizers' slots are created here, as in
    `MixAndMatchNetworks.compile`: a checkpoint taken before the first step (or restored
    into a fresh model) then finds every optimizer variable, so a baseline's training
    resumes with its Adam state.
    """
    kwargs.setdefault("jit_compile", False)
    self.generator_optimizer = keras.optimizers.Adam(learning_rate, beta_1=ADAM_BETA_1,
                                                     name="generator_adam")
    self.discriminator_optimizer = keras.optimizers.Adam(learning_rate, beta_1=ADAM_BETA_1,
                                                         name="discriminator_adam")
    super().compile(optimizer=self.generator_optimizer, **kwargs)
    if self.built:
      self.generator_optimizer.build(self.generator_variables())
      self.discriminator_optimizer.build(self.discriminator_variables())

  def generator_variables(self) -> List[tf.Variable]:
    """What `generator_optimizer` updates (every generator network's trainable variables)."""
    raise NotImplementedError

  def discriminator_variables(self) -> List[tf.Variable]:
    """What `discriminator_optimizer` updates (every discriminator's trainable variables)."""
    raise NotImplementedError

  def generator_input(self, modality: str, x):
    """What a generator consumes: one-hot/probabilities for labels, floats otherwise."""
    return self.modalities[modality].encoder_input(x)

  def as_next_input(self, modality: str, output):
    """A generated output made fit for the next generator (softmax of label logits)."""
    return self.modalities[modality].activate(output)

  def direct_translations(self) -> Tuple[Tuple[str, str], ...]:
    raise NotImplementedError

  def translate(self, source: str, target: str, x, training=False):
    raise NotImplementedError

  def check_translation(self, source: str, target: str):
    """Raises a ValueError naming the known modalities if either name is unknown."""
    mm_modalities.check_name(source, self.modality_names, "source modality")
    mm_modalities.check_name(target, self.modality_names, "target modality")

  def paired_term(self, data, source: str, target: str):
    """Generator `source_to_target` on the stream that pairs them, with its target's loss.

    Returns:
      (the generator's input, its output, the unweighted mean loss against the stream's
      `target`).
    """
    stream = find_stream(data, (source, target))
    source_input = self.generator_input(source, stream[source])
    output = self.generators[f"{source}_to_{target}"](source_input, training=True)
    loss = mean(mm_losses.reconstruction(self.modalities[target], output, stream[target]))
    return source_input, output, loss

  def apply_gradients(self, optimizer, tape, loss, variables):
    gradients = tape.gradient(loss, variables)
    optimizer.apply([tf.zeros_like(v) if g is None else g for g, v in zip(gradients, variables)],
                    variables)

  def call(self, inputs, training=False):
    """`{f"{s}_to_{t}": output}` for every direct translation whose source is in `inputs`."""
    return {f"{s}_to_{t}": self.translate(s, t, inputs[s], training=training)
            for s, t in self.direct_translations() if s in inputs}


def ordered_pairs(names: Sequence[str]):
  return list(itertools.permutations(names, 2))


def lsgan_generator_loss(discriminator, fake):
  return mean(mm_losses.lsgan_generator(discriminator(fake, training=True)))


def lsgan_discriminator_loss(discriminator, real, fake):
  real_loss, fake_loss = mm_losses.lsgan_discriminator(discriminator(real, training=True),
                                                       discriminator(fake, training=True))
  return mean(real_loss) + mean(fake_loss)
