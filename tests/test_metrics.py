"""Metric functions against values computed by hand on tiny arrays."""

import math

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from mm_tf import evaluation
from mm_tf import metrics


class SegmentationMetricsTest(tf.test.TestCase):

  def test_confusion_matrix_by_hand(self):
    # Ground truth / prediction of 8 pixels, 3 classes, one void (255) pixel.
    labels = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    predictions = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
    confusion = metrics.confusion_matrix(labels, predictions, 3, void_label=255)
    # Rows = truth, columns = prediction; the void pixel is not counted.
    self.assertAllEqual(confusion, [[1, 1, 0], [1, 2, 0], [1, 0, 1]])

  def test_scores_by_hand(self):
    confusion = np.array([[1, 1, 0], [1, 2, 0], [1, 0, 1]])
    scores = metrics.segmentation_scores(confusion, ["a", "b", "c"])
    # IoU_c = TP / (row + column - TP):
    #   a: 1 / (2 + 3 - 1) = 1/4; b: 2 / (3 + 3 - 2) = 1/2; c: 1 / (2 + 1 - 1) = 1/2.
    self.assertAlmostEqual(scores["per_class_iou"]["a"], 0.25)
    self.assertAlmostEqual(scores["per_class_iou"]["b"], 0.5)
    self.assertAlmostEqual(scores["per_class_iou"]["c"], 0.5)
    self.assertAlmostEqual(scores["miou"], (0.25 + 0.5 + 0.5) / 3)
    self.assertAlmostEqual(scores["global_accuracy"], 4 / 7)
    self.assertEqual(scores["pixels"], 7)

  def test_absent_class_is_excluded_from_miou(self):
    scores = metrics.segmentation_scores(np.array([[2, 0, 0], [0, 2, 0], [0, 0, 0]]))
    self.assertIsNone(scores["per_class_iou"]["2"])
    self.assertAlmostEqual(scores["miou"], 1.0)

  def test_accumulates_over_batches(self):
    metric = metrics.SegmentationMetric(2, void_label=255)
    metric.update([[0, 1]], [[0, 0]])
    metric.update([[1, 255]], [[1, 1]])
    self.assertAllEqual(metric.confusion, [[1, 0], [1, 1]])
    self.assertAlmostEqual(metric.result()["global_accuracy"], 2 / 3)


class DepthMetricsTest(parameterized.TestCase, tf.test.TestCase):

  def test_by_hand(self):
    gt = np.array([1.0, 2.0, 4.0, 0.0])        # The 0 is an invalid pixel.
    pred = np.array([1.2, 3.0, 4.0, 9.0])
    result = metrics.depth_metrics(gt, pred)
    # Ratios max(p/g, g/p): 1.2, 1.5, 1.0 -> delta1: 2/3, delta2 (<1.5625): 3/3.
    self.assertAlmostEqual(result["delta1"], 2 / 3)
    self.assertAlmostEqual(result["delta2"], 1.0)
    self.assertAlmostEqual(result["delta3"], 1.0)
    self.assertAlmostEqual(result["rmse"], math.sqrt((0.04 + 1.0 + 0.0) / 3))
    self.assertAlmostEqual(result["rmse_log"],
                           math.sqrt((math.log(1.2) ** 2 + math.log(1.5) ** 2) / 3))
    self.assertEqual(result["pixels"], 3)

  def test_mask_and_batches(self):
    metric = metrics.DepthMetric()
    metric.update([[2.0, 2.0]], [[2.0, 100.0]], valid=[[True, False]])
    metric.update([[1.0]], [[2.0]])
    result = metric.result()
    self.assertEqual(result["pixels"], 2)
    self.assertAlmostEqual(result["delta1"], 0.5)
    self.assertAlmostEqual(result["rmse"], math.sqrt(1.0 / 2))

  @parameterized.parameters(0.0, -1.0)
  def test_non_positive_predictions_are_clipped(self, value):
    result = metrics.depth_metrics(np.array([1.0]), np.array([value]), min_value=0.5)
    self.assertAlmostEqual(result["rmse"], 0.5)
    self.assertAlmostEqual(result["delta1"], 0.0)


class TranslationListTest(tf.test.TestCase):

  def test_names(self):
    t = evaluation.Translation(("depth",), "segmentation", "cascade", via="rgb")
    self.assertEqual(t.name, "depth->rgb->segmentation")
    self.assertEqual(t.short_name, "D->R->S")
    multi = evaluation.Translation(("rgb", "depth", "nir"), "segmentation", "multimodal")
    self.assertEqual(multi.short_name, "(R,D,N)->S")

  def test_translate_fn_with_hand_outputs(self):
    from mm_tf import modalities  # pylint: disable=g-import-not-at-top
    seg = modalities.segmentation(("a", "b"), ((0, 0, 0), (255, 255, 255)))
    depth = modalities.depth(10.0)
    labels = tf.constant([[[0, 1], [1, 255]]], tf.int32)
    depth_truth = tf.constant([[[[0.1], [0.2]], [[0.0], [0.4]]]])
    dataset = tf.data.Dataset.from_tensors({"segmentation": labels, "depth": depth_truth})

    def translate_fn(translation, inputs):
      if translation.target == "segmentation":
        return tf.one_hot(tf.constant([[[0, 0], [1, 1]]]), 2)   # logits-like
      return inputs["depth"] * 2.0

    results = evaluation.evaluate_model(
        translate_fn, dataset, modalities={"segmentation": seg, "depth": depth},
        translations=[evaluation.Translation(("depth",), "segmentation", "zero_pair"),
                      evaluation.Translation(("segmentation",), "depth", "zero_pair")])
    seg_metrics = evaluation.find(results, "D->S")["metrics"]
    # Pixels: (0->0), (1->0), (1->1); void ignored. IoU a = 1/2, b = 1/2; global 2/3.
    self.assertAlmostEqual(seg_metrics["miou"], 0.5)
    self.assertAlmostEqual(seg_metrics["global_accuracy"], 2 / 3)
    depth_metrics = evaluation.find(results, "S->D")["metrics"]
    self.assertEqual(depth_metrics["pixels"], 3)  # The 0 depth pixel is invalid.
    self.assertAlmostEqual(depth_metrics["delta3"], 0.0)  # Ratio 2 everywhere.
    self.assertAlmostEqual(depth_metrics["rmse_log"], math.log(2.0), places=5)


if __name__ == "__main__":
  tf.test.main()
