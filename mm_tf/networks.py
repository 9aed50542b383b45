"""Encoders, decoders and the discriminator of M&MNets (paper Appendix A, Tables 9-12).

* `SegNetEncoder` (Table 9): VGG16's 13 conv3x3+BN+ReLU and 5 argmax max-pools;
  256x256 -> 8x8x512 at width 1. Returns the latent and the side information.
* `SegNetDecoder` (Table 10): mirrors the encoder with 5 unpooling stages driven by the
  SOURCE encoder's switches (or U-Net skips, or plain upsampling: `side_information`).
* `UpsamplingDecoder` (Table 11): the RGB decoder, 5 stride-2 transposed convs, no side
  information (the paper saw grid artifacts in RGB when switches were used).
* `PatchDiscriminator` (Table 12 + a 1-channel patch output): the LSGAN critic for RGB.

`width` scales every channel count (1.0 = paper). `num_pools` (paper: 5) is the number of
argmax-pooling levels: fewer levels drop the deepest encoder stages and the matching first
decoder stages, so the latent keeps more spatial resolution (the paper's 256x256 input gives
an 8x8 latent; 64x64 with five pools gives 2x2, with three pools the paper's 8x8). Inputs
must be a multiple of 2**num_pools in height and width.

`side_information_levels` lets the decoders use the side information of the finest levels
only and upsample at the deeper ones (the paper: every level; see `SegNetDecoder`).

Which decoder a modality gets is read from its description
(`Modality.decoder_uses_switches`), never from its name.
"""

import keras
import tensorflow as tf

from mm_tf import layers as mm_layers
from mm_tf import modalities as mm_modalities

SIDE_INFORMATION = ("switches", "skip", "none")
NUM_POOLS = 5  # The paper's (VGG16's) pooling levels; the default of every network.

# Table 9: conv channels per pooling stage (shallow -> deep).
ENCODER_FILTERS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# Table 10: conv channels after each unpooling (deep -> shallow); the output conv follows.
DECODER_FILTERS = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64,))
# Table 11: transposed conv channels of the RGB decoder (the output conv follows).
UPSAMPLING_FILTERS = (512, 256, 128, 64)
# Table 12: stride-2 5x5 convs of the discriminator.
DISCRIMINATOR_FILTERS = (64, 128, 256, 512)


def scaled(filters, width):
  """Channel count at a width multiplier (at least 1)."""
  return max(1, int(round(filters * width)))


def check_side_information(side_information):
  if side_information not in SIDE_INFORMATION:
    raise ValueError(f"side_information must be one of {SIDE_INFORMATION}, "
                     f"got {side_information!r}.")
  return side_information


def check_side_information_levels(side_information_levels, num_pools):
  """`side_information_levels` as a level count: None or -1 mean every level."""
  if side_information_levels is None or int(side_information_levels) == -1:
    return num_pools
  levels = int(side_information_levels)
  if not 0 <= levels <= num_pools:
    raise ValueError(f"side_information_levels must be -1 (every level) or between 0 and "
                     f"num_pools={num_pools}, got {side_information_levels}.")
  return levels


def check_num_pools(num_pools):
  num_pools = int(num_pools)
  if not 1 <= num_pools <= NUM_POOLS:
    raise ValueError(f"num_pools must be between 1 and {NUM_POOLS} (the paper's VGG16 "
                     f"encoder has {NUM_POOLS} pooling levels), got {num_pools}.")
  return num_pools


def size_multiple(num_pools=NUM_POOLS):
  """Height and width must be multiples of this (one 2x pooling per level)."""
  return 2**check_num_pools(num_pools)


def check_image_size(shape, where, num_pools=NUM_POOLS):
  """Raises a clear error when a static spatial size is not a multiple of 2**num_pools."""
  multiple = size_multiple(num_pools)
  for size in shape[1:3]:
    if size is not None and size % multiple:
      raise ValueError(f"{where}: image height and width must be multiples of {multiple} "
                       f"({num_pools} 2x poolings), got {tuple(shape[1:3])}. Resize or crop "
                       f"the input, e.g. to {max(multiple, size // multiple * multiple)}.")


def _modality(modality):
  if isinstance(modality, dict):
    return mm_modalities.Modality.from_config(modality)
  return mm_modalities.get(modality)


class SegNetEncoder(keras.Model):
  """The per-modality encoder f_m (paper Table 9).

  Args:
    modality: A `Modality` (or its config dict / built-in name).
    width: Channel multiplier (1.0 = paper, 29.5M parameters with the SegNet decoder).
    side_information: "switches" returns the 5 pooling switches, "skip" the 5 pre-pool
      feature maps (U-Net), "none" nothing.
    batch_norm: BN after every conv (the paper's VGG-initialised RGB encoder has none).
    num_pools: Pooling levels (paper: 5); fewer drop the deepest VGG16 stages.
    latent_calibration: Create the per-channel `latent_scale` and `latent_shift` (identity
      until `set_latent_calibration`) that map the latent, in inference mode only, to the
      anchor encoder's per-channel mean and std (`MixAndMatchNetworks.calibrate_latents`).
      Not in the paper; off for the anchor.

  Call returns `(latent, side)`: latent [B, H/2**num_pools, W/2**num_pools, C] (C = 512*width
  with 4-5 pools) and a tuple of `num_pools` side tensors ordered shallow -> deep (empty for
  "none").

  Example:
    >>> encoder = SegNetEncoder("depth", width=0.125)
    >>> latent, switches = encoder(tf.zeros([2, 64, 64, 1]))
    >>> latent.shape, len(switches)
    (TensorShape([2, 2, 2, 64]), 5)
  """

  def __init__(self, modality, width=1.0, side_information="switches", batch_norm=True,
               num_pools=NUM_POOLS, latent_calibration=False, **kwargs):
    self.modality = _modality(modality)
    kwargs.setdefault("name", f"{self.modality.name}_encoder")
    super().__init__(**kwargs)
    self.width = float(width)
    self.side_information = check_side_information(side_information)
    self.batch_norm = bool(batch_norm)
    self.num_pools = check_num_pools(num_pools)
    self.latent_calibration = bool(latent_calibration)
    self.latent_scale = self.latent_shift = None
    self.stages = []
    for stage_index, stage_filters in enumerate(ENCODER_FILTERS[:self.num_pools], start=1):
      self.stages.append([
          mm_layers.ConvBlock(scaled(f, width), batch_norm=batch_norm,
                              name=f"conv{stage_index}_{i}")
          for i, f in enumerate(stage_filters, start=1)])
    self.pools = [mm_layers.MaxPoolWithArgmax(name=f"pool{i}")
                  for i in range(1, self.num_pools + 1)]

  @property
  def latent_channels(self):
    return scaled(ENCODER_FILTERS[self.num_pools - 1][-1], self.width)

  def build(self, input_shape):
    check_image_size(input_shape, self.name, self.num_pools)
    if input_shape[-1] is not None and input_shape[-1] != self.modality.encoder_channels:
      raise ValueError(f"{self.name}: expected {self.modality.encoder_channels} input channels "
                       f"for modality {self.modality.name!r}, got {input_shape[-1]}.")
    shape = tuple(input_shape)
    for blocks, pool in zip(self.stages, self.pools):
      for block in blocks:
        block.build(shape)
        shape = block.compute_output_shape(shape)
      shape = pool.compute_output_shape(shape)[0]
    if self.latent_calibration:
      # Variables (not trained), so checkpoints, saved models and exports carry them.
      self.latent_scale = self.add_weight(shape=(self.latent_channels,), initializer="ones",
                                          trainable=False, name="latent_scale")
      self.latent_shift = self.add_weight(shape=(self.latent_channels,), initializer="zeros",
                                          trainable=False, name="latent_shift")
    self.built = True

  def set_latent_calibration(self, scale, shift):
    """Sets the inference-mode latent map `latent * scale + shift` (per channel)."""
    if not self.latent_calibration:
      raise ValueError(f"{self.name} was built without latent_calibration.")
    self.latent_scale.assign(tf.cast(scale, self.latent_scale.dtype))
    self.latent_shift.assign(tf.cast(shift, self.latent_shift.dtype))

  def call(self, inputs, training=None):
    check_image_size(inputs.shape, self.name, self.num_pools)
    if inputs.shape[-1] is not None and inputs.shape[-1] != self.modality.encoder_channels:
      raise ValueError(f"{self.name}: expected {self.modality.encoder_channels} input channels "
                       f"for modality {self.modality.name!r}, got {inputs.shape[-1]}.")
    x = inputs
    side = []
    for blocks, pool in zip(self.stages, self.pools):
      for block in blocks:
        x = block(x, training=training)
      if self.side_information == "skip":
        side.append(x)
      x, switches = pool(x)
      if self.side_information == "switches":
        side.append(switches)
    if self.latent_calibration and not training:
      # Inference mode only, like batch norm's moving statistics: training (and its
      # latent-consistency loss) sees the encoder's own latent.
      x = (x * tf.cast(self.latent_scale, x.dtype)) + tf.cast(self.latent_shift, x.dtype)
    return x, tuple(side)

  def get_config(self):
    config = super().get_config()
    config.update(modality=self.modality.to_config(), width=self.width,
                  side_information=self.side_information, batch_norm=self.batch_norm,
                  num_pools=self.num_pools, latent_calibration=self.latent_calibration)
    return config

  @classmethod
  def from_config(cls, config):
    return cls(**config)


class SegNetDecoder(keras.Model):
  """The switch-using decoder g_m (paper Table 10).

  Args:
    modality: Target `Modality`; its `channels` and `output_activation` set the head.
    width: Channel multiplier.
    side_information: "switches": unpool with the source encoder's switches; "skip":
      2x upsample and concatenate the source encoder's pre-pool features (U-Net); "none":
      2x nearest upsampling only.
    unpool_implementation: "fused" (default) or "scatter".
    num_pools: Unpooling levels; must match the source encoder's (paper: 5). Fewer drop
      the first (deepest) stages of Table 10.
    side_information_levels: How many of the finest levels use the side information;
      the deeper ones 2x-upsample as with "none". None or -1: every level (the paper).
      Not in the paper: at 64x64 zero-pair translations lose on the deeper levels'
      switches, which the decoder learned from other encoders (docs/training.md).

  Call: `decoder(latent, side, training)`; `side` is the encoder's side tuple (all
  `num_pools` levels; the unused deeper ones are ignored). Returns
  [B, h * 2**num_pools, w * 2**num_pools, channels] float32: logits for softmax
  modalities, else activated.
  """

  def __init__(self, modality, width=1.0, side_information="switches",
               unpool_implementation="fused", num_pools=NUM_POOLS,
               side_information_levels=None, **kwargs):
    self.modality = _modality(modality)
    kwargs.setdefault("name", f"{self.modality.name}_decoder")
    super().__init__(**kwargs)
    self.width = float(width)
    self.side_information = check_side_information(side_information)
    self.unpool_implementation = unpool_implementation
    self.num_pools = check_num_pools(num_pools)
    self.side_information_levels = check_side_information_levels(side_information_levels,
                                                                 self.num_pools)
    levels = range(self.num_pools, 0, -1)
    self.unpools = [mm_layers.MaxUnpooling2D(unpool_implementation, name=f"unpool{i}")
                    for i in levels]
    self.upsamples = [keras.layers.UpSampling2D(2, name=f"upsample{i}") for i in levels]
    self.stages = []
    for stage_index, stage_filters in zip(levels, DECODER_FILTERS[NUM_POOLS - self.num_pools:]):
      self.stages.append([
          mm_layers.ConvBlock(scaled(f, width), name=f"deconv{stage_index}_{i}")
          for i, f in enumerate(stage_filters, start=1)])
    # Outputs stay float32 under mixed precision: losses and softmax need the range.
    self.head = keras.layers.Conv2D(self.modality.channels, 3, padding="same", name="head",
                                    dtype="float32")

  def build(self, latent_shape, side_shape=None):
    shape = tuple(latent_shape)
    for index, blocks in enumerate(self.stages):
      shape = (shape[0], None if shape[1] is None else shape[1] * 2,
               None if shape[2] is None else shape[2] * 2, shape[3])
      if self._uses_side("skip", self.num_pools - 1 - index):
        skip_channels = scaled(ENCODER_FILTERS[self.num_pools - 1 - index][-1], self.width)
        shape = shape[:3] + (shape[3] + skip_channels,)
      for block in blocks:
        block.build(shape)
        shape = block.compute_output_shape(shape)
    self.head.build(shape)
    self.built = True

  def call(self, latent, side=(), training=None):
    side = tuple(side)
    if self.side_information != "none" and len(side) != self.num_pools:
      raise ValueError(f"{self.name}: side_information={self.side_information!r} needs the "
                       f"{self.num_pools} side tensors of the source encoder, got {len(side)}.")
    x = latent
    for index, blocks in enumerate(self.stages):
      level = self.num_pools - 1 - index  # Deepest side tensor first.
      if self._uses_side("switches", level):
        x = self.unpools[index](x, side[level])
      else:
        x = self.upsamples[index](x)
        if self._uses_side("skip", level):
          x = tf.concat([x, tf.cast(side[level], x.dtype)], axis=-1)
      for block in blocks:
        x = block(x, training=training)
    x = self.head(x)
    if self.modality.output_activation == "tanh":
      x = tf.tanh(x)
    return x

  def _uses_side(self, kind, level):
    """Whether pooling level `level` (0 = finest) is decoded with side information `kind`."""
    return self.side_information == kind and level < self.side_information_levels

  def get_config(self):
    config = super().get_config()
    config.update(modality=self.modality.to_config(), width=self.width,
                  side_information=self.side_information,
                  unpool_implementation=self.unpool_implementation, num_pools=self.num_pools,
                  side_information_levels=self.side_information_levels)
    return config

  @classmethod
  def from_config(cls, config):
    return cls(**config)


class UpsamplingDecoder(keras.Model):
  """Decoder without side information (paper Table 11, the RGB decoder).

  Four stride-2 transposed conv3x3+BN+ReLU blocks and a stride-2 transposed conv head:
  8x8x512 -> 256x256xC at width 1 (`num_pools - 1` blocks, the last ones of Table 11, for
  fewer pooling levels). Accepts and ignores `side` so every decoder has the same call
  signature.
  """

  def __init__(self, modality, width=1.0, num_pools=NUM_POOLS, **kwargs):
    self.modality = _modality(modality)
    kwargs.setdefault("name", f"{self.modality.name}_decoder")
    super().__init__(**kwargs)
    self.width = float(width)
    self.num_pools = check_num_pools(num_pools)
    filters = UPSAMPLING_FILTERS[NUM_POOLS - self.num_pools:]
    first = NUM_POOLS - self.num_pools + 1  # Layer names follow Table 11's numbering.
    self.blocks = [mm_layers.ConvBlock(scaled(f, width), strides=2, transpose=True,
                                       name=f"deconv{i}")
                   for i, f in enumerate(filters, start=first)]
    self.head = keras.layers.Conv2DTranspose(self.modality.channels, 3, strides=2,
                                             padding="same", name="head", dtype="float32")

  def build(self, latent_shape, side_shape=None):
    shape = tuple(latent_shape)
    for block in self.blocks:
      block.build(shape)
      shape = block.compute_output_shape(shape)
    self.head.build(shape)
    self.built = True

  def call(self, latent, side=(), training=None):
    del side  # This decoder uses no side information, by design.
    x = latent
    for block in self.blocks:
      x = block(x, training=training)
    x = self.head(x)
    if self.modality.output_activation == "tanh":
      x = tf.tanh(x)
    return x

  def get_config(self):
    config = super().get_config()
    config.update(modality=self.modality.to_config(), width=self.width,
                  num_pools=self.num_pools)
    return config

  @classmethod
  def from_config(cls, config):
    return cls(**config)


def build_decoder(modality, width=1.0, side_information="switches",
                  unpool_implementation="fused", num_pools=NUM_POOLS,
                  side_information_levels=None, **kwargs):
  """The decoder a modality's description asks for.

  `Modality.decoder_uses_switches` chooses the SegNet decoder (driven by the source's
  side information at its finest `side_information_levels` levels) or the
  side-information-free upsampling decoder.
  """
  modality = _modality(modality)
  if modality.decoder_uses_switches:
    return SegNetDecoder(modality, width, side_information, unpool_implementation,
                         num_pools=num_pools, side_information_levels=side_information_levels,
                         **kwargs)
  return UpsamplingDecoder(modality, width, num_pools=num_pools, **kwargs)


class PatchDiscriminator(keras.Model):
  """LSGAN discriminator (paper Table 12) with a 1-channel patch output.

  Four 5x5 stride-2 conv+BN+LeakyReLU blocks, then a 3x3 conv to one score per patch
  (float32, no activation: least-squares GAN).

  Example:
    >>> PatchDiscriminator(width=0.125)(tf.zeros([2, 64, 64, 3])).shape
    TensorShape([2, 4, 4, 1])
  """

  def __init__(self, width=1.0, **kwargs):
    kwargs.setdefault("name", "discriminator")
    super().__init__(**kwargs)
    self.width = float(width)
    self.blocks = [mm_layers.ConvBlock(scaled(f, width), kernel_size=5, strides=2,
                                       activation="leaky_relu", name=f"conv{i}")
                   for i, f in enumerate(DISCRIMINATOR_FILTERS, start=1)]
    self.head = keras.layers.Conv2D(1, 3, padding="same", name="patch_scores", dtype="float32")

  def build(self, input_shape):
    shape = tuple(input_shape)
    for block in self.blocks:
      block.build(shape)
      shape = block.compute_output_shape(shape)
    self.head.build(shape)
    self.built = True

  def call(self, images, training=None):
    x = images
    for block in self.blocks:
      x = block(x, training=training)
    return self.head(x)

  def get_config(self):
    config = super().get_config()
    config.update(width=self.width)
    return config
