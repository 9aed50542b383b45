"""Keras 3 layers of M&MNets: argmax pooling, switch unpooling and the conv block.

Pooling switches ("argmax indices") are what M&MNets pass from a source encoder to a
target decoder. Here a switch is the flat index `(y * W + x) * C + c` of the maximum
inside ONE image of the pooled input (`include_batch_in_index=False`), so an image's
switches never depend on its position in the batch: safe for batching and serving.

Neither pooling layer may be XLA-compiled: `MaxPoolWithArgmax` has no XLA kernel. The
model compiles its train step with `jit_compile=False` for that reason.
"""

import keras
import tensorflow as tf

POOL_SIZE = 2
UNPOOL_IMPLEMENTATIONS = ("fused", "scatter")


class MaxPoolWithArgmax(keras.layers.Layer):
  """2x2 / stride 2 max pooling that also returns int64 switches.

  Wraps `tf.nn.max_pool_with_argmax` with `include_batch_in_index=False`, so the
  switches of an image are independent of its batch position.

  Example:
    >>> pooled, switches = MaxPoolWithArgmax()(tf.random.normal([2, 8, 8, 3]))
    >>> pooled.shape, switches.dtype
    (TensorShape([2, 4, 4, 3]), tf.int64)
  """

  def call(self, inputs):
    pooled, switches = tf.nn.max_pool_with_argmax(
        inputs, ksize=POOL_SIZE, strides=POOL_SIZE, padding="VALID",
        output_dtype=tf.int64, include_batch_in_index=False)
    # Integer outputs carry no gradient; saying so avoids a warning per step.
    return pooled, tf.stop_gradient(switches)

  def compute_output_shape(self, input_shape):
    b, h, w, c = input_shape
    shape = (b, None if h is None else h // POOL_SIZE, None if w is None else w // POOL_SIZE, c)
    return shape, shape


def _unpool_scatter(values, switches):
  """Reference unpooling: `tf.scatter_nd` of values at their switches (exact)."""
  shape = tf.shape(values, out_type=tf.int64)
  batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
  per_image = (height * POOL_SIZE) * (width * POOL_SIZE) * channels
  offsets = tf.reshape(tf.range(batch, dtype=tf.int64) * per_image, [-1, 1, 1, 1])
  flat_index = tf.reshape(switches + offsets, [-1, 1])
  flat = tf.scatter_nd(flat_index, tf.reshape(values, [-1]), [batch * per_image])
  return tf.reshape(flat, [batch, height * POOL_SIZE, width * POOL_SIZE, channels])


@tf.custom_gradient
def _unpool_fused(values, switches):
  """Unpooling with TF's MaxPoolGradWithArgmax kernel (one fused scatter per image).

  The kernel routes `grad` (here: the values) to the argmax positions of an input of
  the output's shape, which is exactly unpooling. Its gradient w.r.t. the values is a
  gather of the upstream gradient at the switches.
  """
  shape = tf.shape(values)
  output_shape = tf.stack([shape[0], shape[1] * POOL_SIZE, shape[2] * POOL_SIZE, shape[3]])
  output = tf.raw_ops.MaxPoolGradWithArgmax(
      input=tf.zeros(output_shape, values.dtype), grad=values, argmax=switches,
      ksize=[1, POOL_SIZE, POOL_SIZE, 1], strides=[1, POOL_SIZE, POOL_SIZE, 1],
      padding="VALID", include_batch_in_index=False)

  def grad(upstream):
    batch = tf.shape(values)[0]
    gathered = tf.gather(tf.reshape(upstream, [batch, -1]), tf.reshape(switches, [batch, -1]),
                         batch_dims=1)
    return tf.reshape(gathered, tf.shape(values)), None

  return output, grad


def unpool(values, switches, implementation="fused"):
  """Places `values` [B,H,W,C] at `switches` in a zero [B,2H,2W,C] tensor.

  Args:
    values: Pooled values (any float dtype).
    switches: int64 switches from `MaxPoolWithArgmax` (same shape as `values`).
    implementation: "fused" (default, MaxPoolGradWithArgmax kernel, ~3x faster on CPU)
      or "scatter" (plain `tf.scatter_nd`, kept as the reference).

  Returns:
    The unpooled tensor, same dtype as `values`.
  """
  switches = tf.cast(switches, tf.int64)
  if implementation == "fused":
    return _unpool_fused(values, switches)
  if implementation == "scatter":
    return _unpool_scatter(values, switches)
  raise ValueError(f"implementation must be one of {UNPOOL_IMPLEMENTATIONS}, got {implementation!r}.")


class MaxUnpooling2D(keras.layers.Layer):
  """Inverse of `MaxPoolWithArgmax`: scatters values back to their switch positions.

  Exact (no interpolation), works with a dynamic batch size and passes gradients to the
  values (switches are integers and get none).

  Args:
    implementation: "fused" (default) or "scatter" (reference path used in tests).

  Example:
    >>> x = tf.random.normal([2, 8, 8, 3])
    >>> pooled, switches = MaxPoolWithArgmax()(x)
    >>> MaxUnpooling2D()(pooled, switches).shape
    TensorShape([2, 8, 8, 3])
  """

  def __init__(self, implementation="fused", **kwargs):
    super().__init__(**kwargs)
    if implementation not in UNPOOL_IMPLEMENTATIONS:
      raise ValueError(f"implementation must be one of {UNPOOL_IMPLEMENTATIONS}, "
                       f"got {implementation!r}.")
    self.implementation = implementation

  def call(self, values, switches):
    return unpool(values, switches, self.implementation)

  def compute_output_shape(self, values_shape, switches_shape=None):
    b, h, w, c = values_shape
    return (b, None if h is None else h * POOL_SIZE, None if w is None else w * POOL_SIZE, c)

  def get_config(self):
    config = super().get_config()
    config["implementation"] = self.implementation
    return config


@keras.saving.register_keras_serializable(package="mm_tf")
class FusedBatchNormalization(keras.layers.BatchNormalization):
  """Keras' `BatchNormalization`, computed with TensorFlow's fused kernel where it can be.

  Keras 3 normalises with separate ops (moments, then scale and shift), and their
  gradients add more: about a fifth of a main-job train step on a 2-core CPU. TF's
  `FusedBatchNormV3` (oneDNN on CPU, cuDNN on GPU) computes the same function in one op
  forward and one backward, 1.4-3.2x faster in training mode on the main job's shapes
  (`benchmarks/train_step_benchmark.py`), and in inference mode grappler can fold it into
  the preceding convolution. The layer keeps Keras' weights, config and semantics: the
  same four variables, the moving statistics updated with `momentum` from the biased
  batch variance (the fused kernel returns the unbiased one, which is converted back),
  inputs computed in float32 and cast back to the compute dtype.

  Falls back to Keras' own computation where the fused kernel does not apply: a mask,
  inputs that are not 4-D channels-last, `renorm`, an epsilon below the kernel's 1.001e-5,
  or training under a tf.distribute strategy with several replicas (`synchronized=True`
  needs the global batch's moments, which the fused kernel cannot reduce across
  replicas).

  Args:
    **kwargs: Those of `keras.layers.BatchNormalization`.

  Example:
    >>> norm = FusedBatchNormalization(name="bn")
    >>> norm(tf.random.normal([2, 8, 8, 4]), training=True).shape
    TensorShape([2, 8, 8, 4])
  """

  def _fused_applies(self, inputs, mask, training):
    # The kernel rejects epsilon below 1.001e-5.
    if mask is not None or self.renorm or len(inputs.shape) != 4 or self.epsilon < 1.001e-5:
      return False
    if self.axis not in (3, -1):
      return False
    if training and self.trainable and tf.distribute.has_strategy():
      return tf.distribute.get_strategy().num_replicas_in_sync == 1
    return True

  def call(self, inputs, training=None, mask=None):
    if not self._fused_applies(inputs, mask, training):
      return super().call(inputs, training=training, mask=mask)
    x = tf.cast(inputs, tf.float32)  # As Keras: float16/bfloat16 statistics overflow.
    channels = x.shape[-1]
    gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
    beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
    if training and self.trainable:
      outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
          x, gamma, beta, epsilon=self.epsilon, is_training=True)
      # The kernel's batch variance has Bessel's correction; Keras' moving statistics
      # (and recalibrate_batch_norm, which reads them at momentum 0) use the biased one.
      count = tf.cast(tf.size(x, out_type=tf.int64) // channels, tf.float32)
      variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
      self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
      self.moving_variance.assign(self.moving_variance * self.momentum
                                  + variance * (1.0 - self.momentum))
    else:
      outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
          x, gamma, beta, mean=tf.cast(self.moving_mean, tf.float32),
          variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon,
          is_training=False)
    return tf.cast(outputs, self.compute_dtype)


class ConvBlock(keras.layers.Layer):
  """Convolution (or transposed convolution) + optional batch norm + activation.

  The paper's unit: every conv of encoders, decoders and the discriminator is followed
  by batch normalisation and ReLU (LeakyReLU in the discriminator).

  Args:
    filters: Output channels.
    kernel_size: Square kernel size.
    strides: Stride (2 with `transpose=True` doubles the resolution).
    transpose: Use `Conv2DTranspose` instead of `Conv2D`.
    batch_norm: Add `BatchNormalization` after the conv.
    activation: "relu", "leaky_relu" or None.

  Example:
    >>> ConvBlock(16)(tf.zeros([1, 8, 8, 3])).shape
    TensorShape([1, 8, 8, 16])
  """

  def __init__(self, filters, kernel_size=3, strides=1, transpose=False, batch_norm=True,
               activation="relu", **kwargs):
    super().__init__(**kwargs)
    self.filters = int(filters)
    self.kernel_size = int(kernel_size)
    self.strides = int(strides)
    self.transpose = bool(transpose)
    self.batch_norm = bool(batch_norm)
    self.activation = activation
    conv_class = keras.layers.Conv2DTranspose if self.transpose else keras.layers.Conv2D
    # No conv bias before batch norm: BN's beta plays that role.
    self.conv = conv_class(self.filters, self.kernel_size, strides=self.strides, padding="same",
                           use_bias=not self.batch_norm, name="conv")
    # synchronized: under a tf.distribute strategy the batch statistics are those of the
    # global batch, so training on N replicas matches one device.
    self.norm = (FusedBatchNormalization(synchronized=True, name="bn")
                 if self.batch_norm else None)
    if activation == "relu":
      self.act = keras.layers.ReLU(name="relu")
    elif activation == "leaky_relu":
      self.act = keras.layers.LeakyReLU(negative_slope=0.2, name="leaky_relu")
    elif activation is None:
      self.act = None
    else:
      raise ValueError(f"activation must be 'relu', 'leaky_relu' or None, got {activation!r}.")

  def build(self, input_shape):
    self.conv.build(input_shape)
    output_shape = self.conv.compute_output_shape(input_shape)
    if self.norm is not None:
      self.norm.build(output_shape)

  def call(self, inputs, training=None):
    x = self.conv(inputs)
    if self.norm is not None:
      x = self.norm(x, training=training)
    if self.act is not None:
      x = self.act(x)
    return x

  def compute_output_shape(self, input_shape):
    return self.conv.compute_output_shape(input_shape)

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
                  transpose=self.transpose, batch_norm=self.batch_norm,
                  activation=self.activation)
    return config


# ---------------------------------------------------------------- compact switches
# On the wire (serving) a switch needs only its position inside its 2x2 window: 2 bits
# instead of an int64 flat index. Four positions are packed into one uint8 along the
# channel axis (channel 4k + j in bits 2j..2j+1 of byte k), so every byte value 0..255 is
# a valid encoding and a decoder cannot be handed an out-of-window index.
POSITIONS_PER_BYTE = 4


def compact_switches(switches):
  """Packs int64 switches into uint8 window positions, four per byte.

  A switch is the per-image flat index `(y * W + x) * C + c` into the pre-pool map
  [H, W, C] (`MaxPoolWithArgmax`, H = 2h, W = 2w). For pooled cell (i, j, c) the
  maximum lies at y = 2i + dy, x = 2j + dx, and its window position is `2 * dy + dx`.

  Args:
    switches: int64 [B, h, w, C] switches of one pooling layer.

  Returns:
    uint8 [B, h, w, ceil(C / 4)]; channels are zero-padded to a multiple of four.

  Example:
    >>> _, switches = MaxPoolWithArgmax()(tf.random.normal([1, 4, 4, 8]))
    >>> compact_switches(switches).shape
    TensorShape([1, 2, 2, 2])
  """
  switches = tf.cast(switches, tf.int64)
  shape = tf.shape(switches, out_type=tf.int64)
  width, channels = shape[2], shape[3]
  pixel = switches // channels  # y * W + x with W = 2 * width.
  y, x = pixel // (POOL_SIZE * width), pixel % (POOL_SIZE * width)
  rows = tf.reshape(tf.range(shape[1]), [1, -1, 1, 1]) * POOL_SIZE
  cols = tf.reshape(tf.range(width), [1, 1, -1, 1]) * POOL_SIZE
  positions = (y - rows) * POOL_SIZE + (x - cols)  # 0..3
  padding = (-channels) % POSITIONS_PER_BYTE
  positions = tf.pad(positions, [[0, 0], [0, 0], [0, 0], [0, padding]])
  groups = tf.reshape(positions, tf.concat([shape[:3], [-1, POSITIONS_PER_BYTE]], axis=0))
  shifts = tf.constant([0, 2, 4, 6], tf.int64)
  packed = tf.reduce_sum(tf.bitwise.left_shift(groups, shifts), axis=-1)
  return tf.cast(packed, tf.uint8)


def expand_switches(packed, channels):
  """Rebuilds the int64 switches that `compact_switches` packed (exact inverse).

  Args:
    packed: uint8 [B, h, w, ceil(channels / 4)] window positions.
    channels: Channels C of the pooled map (static int, or a scalar tensor).

  Returns:
    int64 [B, h, w, channels] flat per-image indices `(y * 2w + x) * C + c`, ready for
    `unpool` / `MaxUnpooling2D`.
  """
  packed = tf.cast(packed, tf.int64)
  shape = tf.shape(packed, out_type=tf.int64)
  channels = tf.cast(channels, tf.int64)
  shifts = tf.constant([0, 2, 4, 6], tf.int64)
  positions = tf.bitwise.bitwise_and(
      tf.bitwise.right_shift(packed[..., tf.newaxis], shifts), 3)
  positions = tf.reshape(positions, tf.concat([shape[:3], [-1]], axis=0))[..., :channels]
  width = shape[2]
  rows = tf.reshape(tf.range(shape[1]), [1, -1, 1, 1]) * POOL_SIZE
  cols = tf.reshape(tf.range(width), [1, 1, -1, 1]) * POOL_SIZE
  y = rows + positions // POOL_SIZE
  x = cols + positions % POOL_SIZE
  c = tf.reshape(tf.range(channels), [1, 1, 1, -1])
  return (y * (POOL_SIZE * width) + x) * channels + c
