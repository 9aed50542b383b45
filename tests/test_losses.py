"""Losses against values computed by hand."""

import numpy as np
import tensorflow as tf

from mm_tf import losses
from mm_tf import modalities


class BerHuTest(tf.test.TestCase):

  def test_hand_computed_values_with_per_image_threshold(self):
    prediction = tf.constant([[1.0, 2.0, 3.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    target = tf.constant([[1.5, 1.0, 8.0, 2.0], [0.5, 1.5, 0.5, 0.0]])
    # Image 0: |e| = .5, 1, 5, 2 -> c = 1; .5 and 1 stay L1; 5 -> (25+1)/2 = 13;
    #          2 -> (4+1)/2 = 2.5; mean = (0.5 + 1 + 13 + 2.5) / 4 = 4.25.
    # Image 1: the last pixel is invalid (target 0); |e| = 0, 1, 0 -> c = 0.2; 1 -> (1 +
    #          0.04)/0.4 = 2.6; mean over 3 valid pixels = 2.6 / 3.
    self.assertAllClose(losses.berhu(prediction, target), [4.25, 2.6 / 3])

  def test_nan_and_zero_targets_are_masked_and_give_finite_gradients(self):
    prediction = tf.Variable([[1.0, 2.0, 3.0]])
    target = tf.constant([[np.nan, 0.0, 2.0]])
    with tf.GradientTape() as tape:
      loss = losses.berhu(prediction, target)
    # One valid pixel, |e| = 1 -> c = 0.2 -> (1 + 0.04) / 0.4 = 2.6, d/dp = e / c = 5.
    self.assertAllClose(loss, [2.6])
    gradient = tape.gradient(loss, prediction)
    self.assertAllClose(gradient, [[0.0, 0.0, 5.0]])

  def test_perfect_prediction_is_zero(self):
    x = tf.constant([[[0.3], [0.4]]])
    self.assertAllClose(losses.berhu(x, x), [0.0])

  def test_image_without_valid_pixels_gives_zero(self):
    self.assertAllClose(losses.berhu(tf.ones([1, 2, 2, 1]), tf.zeros([1, 2, 2, 1])), [0.0])


class CrossEntropyTest(tf.test.TestCase):

  def test_void_pixels_are_ignored(self):
    logits = tf.constant([[[[2.0, 0.0], [0.0, 0.0], [5.0, -5.0]]]])  # [1, 1, 3, 2]
    labels = tf.constant([[[0, 1, 255]]])
    ce0 = -np.log(np.exp(2) / (np.exp(2) + 1))
    ce1 = np.log(2.0)
    self.assertAllClose(losses.cross_entropy(logits, labels), [(ce0 + ce1) / 2], rtol=1e-6)

  def test_all_void_image_gives_zero(self):
    self.assertAllClose(losses.cross_entropy(tf.zeros([1, 2, 2, 3]),
                                             tf.fill([1, 2, 2], 255)), [0.0])

  def test_class_weights_scale_each_pixel_by_its_label(self):
    logits = tf.constant([[[[2.0, 0.0], [0.0, 0.0], [5.0, -5.0]]]])
    labels = tf.constant([[[0, 1, 255]]])
    ce0 = -np.log(np.exp(2) / (np.exp(2) + 1))
    ce1 = np.log(2.0)
    self.assertAllClose(losses.cross_entropy(logits, labels, class_weights=(0.5, 4.0)),
                        [(0.5 * ce0 + 4.0 * ce1) / 2], rtol=1e-6)
    weighted = modalities.segmentation(("a", "b"), ((0, 0, 0), (9, 9, 9))).replace(
        class_weights=(0.5, 4.0))
    self.assertAllClose(losses.reconstruction(weighted, logits, labels),
                        [(0.5 * ce0 + 4.0 * ce1) / 2], rtol=1e-6)


class ClassWeightTest(tf.test.TestCase):

  def test_median_frequency_weights(self):
    seg = modalities.get("segmentation")
    weighted = seg.with_median_frequency_weights([100, 200, 400, 400, 0])
    # Frequencies .1 .2 .4 .4 (median of the present classes .3); the absent class gets
    # the largest present weight.
    self.assertAllClose(weighted.class_weights, [3.0, 1.5, 0.75, 0.75, 3.0])
    self.assertEqual(modalities.Modality.from_config(weighted.to_config()), weighted)
    self.assertEqual(seg.class_weights, ())

  def test_sqrt_median_frequency_weights(self):
    seg = modalities.get("segmentation")
    weighted = seg.with_median_frequency_weights([100, 200, 400, 400, 0], power=0.5)
    self.assertAllClose(weighted.class_weights, np.sqrt([3.0, 1.5, 0.75, 0.75, 3.0]))
    with self.assertRaisesRegex(ValueError, "power must be > 0"):
      seg.with_median_frequency_weights([100, 200, 400, 400, 0], power=0.0)

  def test_bad_weights_are_refused(self):
    seg = modalities.get("segmentation")
    with self.assertRaisesRegex(ValueError, "class_weights must be 5 positive"):
      seg.replace(class_weights=(1.0, 2.0))
    with self.assertRaisesRegex(ValueError, "class_weights must be"):
      modalities.get("depth").replace(class_weights=(1.0,))
    with self.assertRaisesRegex(ValueError, "class pixel counts"):
      seg.with_median_frequency_weights([0, 0, 0, 0, 0])


class LatentAndGanTest(tf.test.TestCase):

  def test_latent_consistency_is_the_l2_norm(self):
    a = tf.constant([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    b = tf.constant([[[[1.0, 0.0]], [[0.0, 0.0]]]])
    self.assertAllClose(losses.latent_consistency(a, b), [np.sqrt(4 + 9 + 16)])

  def test_latent_consistency_gradient_is_finite_at_zero(self):
    a = tf.Variable(tf.ones([1, 2, 2, 1]))
    with tf.GradientTape() as tape:
      loss = losses.latent_consistency(a, tf.ones([1, 2, 2, 1]))
    self.assertAllEqual(tf.math.is_finite(tape.gradient(loss, a)), tf.ones([1, 2, 2, 1], bool))

  def test_lsgan(self):
    real = tf.constant([[[[1.0]], [[0.0]]]])
    fake = tf.constant([[[[0.5]], [[1.0]]]])
    self.assertAllClose(losses.lsgan_generator(fake), [(0.25 + 0.0) / 2])
    real_term, fake_term = losses.lsgan_discriminator(real, fake)
    self.assertAllClose(real_term, [0.5])
    self.assertAllClose(fake_term, [(0.25 + 1.0) / 2])


class ModalityLossTest(tf.test.TestCase):

  def test_reconstruction_reads_the_modality_description(self):
    depth = modalities.depth(max_depth=10.0)
    pred = tf.constant([[[[0.5]], [[0.2]]]])
    target = tf.constant([[[[0.5]], [[0.0]]]])  # Second pixel invalid.
    self.assertAllClose(losses.reconstruction(depth, pred, target), [0.0])
    rgb = modalities.rgb()
    self.assertAllClose(losses.reconstruction(rgb, tf.zeros([1, 1, 1, 3]), tf.ones([1, 1, 1, 3])),
                        [1.0])

  def test_pseudo_pair_uses_argmax_labels_for_segmentation(self):
    seg = modalities.segmentation(("a", "b"), ((0, 0, 0), (1, 1, 1)))
    pseudo_logits = tf.constant([[[[0.0, 3.0]]]])
    output = tf.constant([[[[0.0, 0.0]]]])
    self.assertAllClose(losses.pseudo_pair(seg, output, pseudo_logits), [np.log(2.0)])


if __name__ == "__main__":
  tf.test.main()
