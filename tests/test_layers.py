"""Tests of the pooling/unpooling layers and the conv block."""

import os
import tempfile

from absl.testing import parameterized
import keras
import numpy as np
import tensorflow as tf

from mm_tf import layers


def numpy_unpool(values, switches):
  """Reference: scatter each value to its per-image flat switch index."""
  b, h, w, c = values.shape
  out = np.zeros((b, 2 * h * 2 * w * c), values.dtype)
  for i in range(b):
    out[i, switches[i].reshape(-1)] = values[i].reshape(-1)
  return out.reshape(b, 2 * h, 2 * w, c)


def numpy_unpool_grad(upstream, switches):
  """Reference gradient w.r.t. the values: the upstream gradient read at the switches."""
  b = upstream.shape[0]
  flat = upstream.reshape(b, -1)
  return np.stack([flat[i, switches[i].reshape(-1)] for i in range(b)]).reshape(switches.shape)


class MaxUnpooling2DTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.product(batch=[1, 3], channels=[1, 3, 8], implementation=["fused", "scatter"])
  def test_matches_numpy_reference_and_gradient(self, batch, channels, implementation):
    rng = np.random.default_rng(batch * 10 + channels)
    x = tf.constant(rng.normal(size=(batch, 8, 12, channels)).astype(np.float32))
    pooled, switches = layers.MaxPoolWithArgmax()(x)
    self.assertEqual(switches.dtype, tf.int64)
    upstream = tf.constant(rng.normal(size=(batch, 8, 12, channels)).astype(np.float32))
    with tf.GradientTape() as tape:
      tape.watch(pooled)
      unpooled = layers.MaxUnpooling2D(implementation)(pooled, switches)
      objective = tf.reduce_sum(unpooled * upstream)
    expected = numpy_unpool(pooled.numpy(), switches.numpy())
    self.assertAllEqual(unpooled.numpy(), expected)
    self.assertAllEqual(tape.gradient(objective, pooled).numpy(),
                        numpy_unpool_grad(upstream.numpy(), switches.numpy()))

  def test_unpooled_maxima_are_where_they_were(self):
    x = tf.abs(tf.random.normal([2, 16, 16, 4])) + 0.1  # Positive: zeros never win a window.
    pooled, switches = layers.MaxPoolWithArgmax()(x)
    unpooled = layers.MaxUnpooling2D()(pooled, switches)
    # Every non-zero of the unpooled map is the input value at that position.
    mask = unpooled != 0
    self.assertAllEqual(tf.boolean_mask(unpooled, mask), tf.boolean_mask(x, mask))
    self.assertAllClose(tf.nn.max_pool2d(unpooled, 2, 2, "VALID"), pooled)

  def test_switches_do_not_depend_on_batch_position(self):
    x = tf.random.normal([4, 8, 8, 2])
    _, batch_switches = layers.MaxPoolWithArgmax()(x)
    _, single_switches = layers.MaxPoolWithArgmax()(x[2:3])
    self.assertAllEqual(batch_switches[2:3], single_switches)

  def test_fused_and_scatter_agree_in_bfloat16(self):
    x = tf.cast(tf.random.normal([2, 8, 8, 3]), tf.bfloat16)
    pooled, switches = layers.MaxPoolWithArgmax()(x)
    self.assertAllEqual(layers.unpool(pooled, switches, "fused"),
                        layers.unpool(pooled, switches, "scatter"))

  def test_savedmodel_with_dynamic_batch_round_trips(self):
    pool, unpool = layers.MaxPoolWithArgmax(), layers.MaxUnpooling2D()
    module = tf.Module()

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def pool_unpool(x):
      pooled, switches = pool(x)
      return {"unpooled": unpool(pooled, switches), "switches": switches}

    module.pool_unpool = pool_unpool
    path = os.path.join(tempfile.mkdtemp(), "unpool")
    tf.saved_model.save(module, path, signatures={"serving_default": pool_unpool})
    loaded = tf.saved_model.load(path)
    for batch in (1, 5):
      x = tf.random.normal([batch, 16, 8, 3])
      expected = pool_unpool(x)
      result = loaded.signatures["serving_default"](x)
      self.assertAllEqual(result["unpooled"], expected["unpooled"])
      self.assertAllEqual(result["switches"], expected["switches"])

  def test_unknown_implementation_is_refused(self):
    with self.assertRaisesRegex(ValueError, "implementation"):
      layers.MaxUnpooling2D("magic")

  @parameterized.parameters(
      (layers.MaxUnpooling2D, {"implementation": "scatter"}),
      (layers.ConvBlock, {"filters": 4, "kernel_size": 5, "strides": 2, "transpose": True,
                          "batch_norm": False, "activation": "leaky_relu"}),
      (layers.MaxPoolWithArgmax, {}),
  )
  def test_get_config_round_trip(self, layer_class, kwargs):
    layer = layer_class(**kwargs)
    clone = layer_class.from_config(layer.get_config())
    self.assertEqual(layer.get_config(), clone.get_config())

  def test_conv_block_output_shape(self):
    block = layers.ConvBlock(6, strides=2, transpose=True)
    y = block(tf.zeros([2, 4, 4, 3]))
    self.assertEqual(tuple(y.shape), (2, 8, 8, 6))
    self.assertEqual(tuple(block.compute_output_shape((2, 4, 4, 3))), (2, 8, 8, 6))

  def test_conv_block_uses_the_fused_batch_norm(self):
    self.assertIsInstance(layers.ConvBlock(4).norm, layers.FusedBatchNormalization)


class FusedBatchNormalizationTest(tf.test.TestCase, parameterized.TestCase):

  def _pair(self, shape, **kwargs):
    """A Keras BatchNormalization and a fused one with the same (non-trivial) weights."""
    reference = keras.layers.BatchNormalization(**kwargs)
    fused = layers.FusedBatchNormalization(**kwargs)
    for norm in (reference, fused):
      norm.build(shape)
      channels = shape[-1]
      norm.set_weights([np.linspace(0.5, 1.5, channels), np.linspace(-1, 1, channels),
                        np.linspace(-0.2, 0.3, channels), np.linspace(0.5, 2.0, channels)])
    return reference, fused

  @parameterized.parameters(True, False)
  def test_matches_keras_outputs_gradients_and_moving_statistics(self, training):
    x = tf.random.stateless_normal([6, 8, 8, 5], seed=[1, 2]) * 3.0 + 1.0
    results = []
    for norm in self._pair(x.shape, synchronized=True, momentum=0.9):
      with tf.GradientTape() as tape:
        tape.watch(x)
        y = norm(x, training=training)
        loss = tf.reduce_sum(y * tf.sin(y))
      gradients = tape.gradient(loss, [x, norm.gamma, norm.beta])
      results.append([y] + gradients + [norm.moving_mean, norm.moving_variance])
    for reference, fused in zip(*results):
      self.assertAllClose(reference, fused, rtol=1e-4, atol=1e-4)

  def test_momentum_zero_stores_the_biased_batch_moments(self):
    # recalibrate_batch_norm reads the moving statistics at momentum 0 as batch moments.
    x = tf.random.stateless_normal([2, 3, 3, 4], seed=[3, 4])
    _, fused = self._pair(x.shape, momentum=0.0)
    fused(x, training=True)
    mean, variance = tf.nn.moments(x, axes=[0, 1, 2])
    self.assertAllClose(fused.moving_mean, mean, atol=1e-6)
    self.assertAllClose(fused.moving_variance, variance, atol=1e-6)

  def test_frozen_layer_in_training_mode_uses_moving_statistics(self):
    x = tf.random.stateless_normal([2, 4, 4, 3], seed=[5, 6])
    reference, fused = self._pair(x.shape)
    for norm in (reference, fused):
      norm.trainable = False
    before = fused.moving_mean.numpy()
    self.assertAllClose(reference(x, training=True), fused(x, training=True), atol=1e-5)
    self.assertAllEqual(before, fused.moving_mean.numpy())

  def test_mixed_precision_keeps_the_compute_dtype(self):
    x = tf.random.stateless_normal([2, 4, 4, 3], seed=[7, 8])
    reference, fused = self._pair(x.shape, dtype="mixed_bfloat16")
    y = fused(tf.cast(x, tf.bfloat16), training=True)
    self.assertEqual(y.dtype, tf.bfloat16)
    self.assertEqual(fused.moving_mean.dtype, tf.float32)
    self.assertAllClose(reference(tf.cast(x, tf.bfloat16), training=True), y, atol=0.05)

  def test_falls_back_to_keras_where_the_kernel_does_not_apply(self):
    x = tf.random.stateless_normal([2, 5, 3], seed=[9, 10])  # 3-D: not the fused kernel.
    reference, fused = self._pair(x.shape)
    self.assertAllClose(reference(x, training=True), fused(x, training=True), atol=1e-5)

  def test_get_config_and_saved_model_round_trip(self):
    norm = layers.FusedBatchNormalization(momentum=0.8, epsilon=1e-4, synchronized=True)
    clone = layers.FusedBatchNormalization.from_config(norm.get_config())
    self.assertEqual(norm.get_config(), clone.get_config())
    inputs = keras.Input([4, 4, 3])
    model = keras.Model(inputs, layers.ConvBlock(5, name="block")(inputs))
    model(tf.ones([2, 4, 4, 3]), training=True)  # Moves the moving statistics.
    x = tf.random.stateless_normal([2, 4, 4, 3], seed=[11, 12])
    expected = model(x, training=False)
    path = os.path.join(tempfile.mkdtemp(), "saved")
    model.export(path)
    loaded = tf.saved_model.load(path)  # Kept referenced: its variables live in it.
    self.assertAllClose(loaded.serve(x), expected, atol=1e-5)


if __name__ == "__main__":
  tf.test.main()
