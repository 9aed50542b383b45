"""Zero-pair streams, batch contract, augmentation alignment and bad-input errors."""

import tempfile

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

import mm_tf.data
from mm_tf.data import datasets
from mm_tf.data import pipeline
from mm_tf.data import synthetic_forest as sf

IMAGE_SIZE = 32


class SpecTest(parameterized.TestCase):

  @parameterized.parameters(*datasets.dataset_names())
  def test_specs(self, name):
    spec = mm_tf.data.get_dataset_spec(name)
    self.assertEqual(spec.modality_names[0], "rgb")
    self.assertTrue(all(s[0] == "rgb" for s in spec.streams))
    self.assertIn("segmentation", spec.modality_names)
    self.assertLen(spec.segmentation.class_names, 5 if "forest" in name else 13)

  def test_unknown_name_lists_known(self):
    with self.assertRaisesRegex(ValueError, "synthetic_forest.*freiburg_forest.*sun_rgbd.*scenenet_rgbd"):
      mm_tf.data.get_dataset_spec("nyu")


class SplitRuleTest(parameterized.TestCase):

  @parameterized.parameters(2, 3, 7, 230)
  def test_disjoint_balanced_deterministic(self, count):
    ids = [f"b{i}-{i * 7}" for i in range(count)]
    assignment = pipeline.assign_streams(ids * 2, 2)  # Repeated ids: one scene, one stream.
    self.assertEqual(set(assignment), set(ids))
    sizes = np.bincount(list(assignment.values()), minlength=2)
    self.assertLessEqual(abs(int(sizes[0]) - int(sizes[1])), 1)
    self.assertEqual(assignment, pipeline.assign_streams(list(reversed(ids)), 2))

  def test_too_few_scenes(self):
    with self.assertRaisesRegex(ValueError, "1 distinct scene"):
      pipeline.assign_streams(["a", "a"], 2)


class PipelineTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data_dir = tempfile.mkdtemp()
    sf.ensure_synthetic_forest(cls.data_dir, num_train=10, num_test=3, image_size=IMAGE_SIZE, seed=0)

  def test_no_scene_in_two_streams(self):
    streams = pipeline.stream_scene_ids("synthetic_forest", self.data_dir)
    first, second = streams.values()
    self.assertEmpty(set(first) & set(second))
    self.assertLen(set(first) | set(second), 10)
    # The batches really come from those scenes: ids are not in the batch, so check via a
    # stream-filtered raw split.
    for k, ids in enumerate(streams.values()):
      assignment = {i: n for n, v in enumerate(streams.values()) for i in v}
      _, ds = pipeline._raw_split("synthetic_forest", self.data_dir, "train", False, (assignment, k))
      self.assertCountEqual([x["scene_id"].decode() for x in ds.as_numpy_iterator()], ids)

  def test_batch_contract(self):
    ds = mm_tf.data.train_dataset("synthetic_forest", self.data_dir, IMAGE_SIZE, batch_size=4, seed=1)
    batch = next(iter(ds))
    self.assertEqual(sorted(batch), ["rgb+depth+nir", "rgb+segmentation"])
    self.assertEqual(sorted(batch["rgb+segmentation"]), ["rgb", "segmentation"])
    rgb = batch["rgb+depth+nir"]["rgb"]
    self.assertEqual(rgb.shape, (4, IMAGE_SIZE, IMAGE_SIZE, 3))
    self.assertEqual(rgb.dtype, tf.float32)
    self.assertBetween(float(tf.reduce_min(rgb)), -1.0, 1.0)
    self.assertEqual(batch["rgb+depth+nir"]["depth"].shape, (4, IMAGE_SIZE, IMAGE_SIZE, 1))
    self.assertEqual(batch["rgb+depth+nir"]["nir"].shape, (4, IMAGE_SIZE, IMAGE_SIZE, 1))
    labels = batch["rgb+segmentation"]["segmentation"]
    self.assertEqual(labels.dtype, tf.int32)
    self.assertEqual(labels.shape, (4, IMAGE_SIZE, IMAGE_SIZE))
    self.assertTrue(np.all(np.isin(labels.numpy(), [0, 1, 2, 3, 4, 255])))
    # Infinite: more batches than the 5 examples per stream.
    self.assertLen(list(ds.take(4)), 4)
    self.assertEqual(ds.element_spec["rgb+segmentation"]["rgb"].shape, (4, IMAGE_SIZE, IMAGE_SIZE, 3))

  def test_seeded(self):
    def first(seed):
      ds = mm_tf.data.train_dataset("synthetic_forest", self.data_dir, IMAGE_SIZE, 2, seed=seed)
      return next(iter(ds))["rgb+depth+nir"]["depth"].numpy()
    np.testing.assert_array_equal(first(3), first(3))
    self.assertFalse(np.array_equal(first(3), first(4)))

  def test_oracle_streams(self):
    ds = mm_tf.data.train_dataset("synthetic_forest", self.data_dir, IMAGE_SIZE, 2, seed=0, oracle=True)
    batch = next(iter(ds))
    self.assertEqual(sorted(batch), ["depth+segmentation", "nir+segmentation"])
    self.assertEqual(sorted(batch["depth+segmentation"]), ["depth", "segmentation"])

  def test_test_dataset_has_all_modalities_in_order(self):
    ds = mm_tf.data.test_dataset("synthetic_forest", self.data_dir, IMAGE_SIZE, batch_size=2, with_ids=True)
    batches = list(ds)
    self.assertEqual([b["rgb"].shape[0] for b in batches], [2, 1])
    self.assertEqual(sorted(batches[0]), ["depth", "id", "nir", "rgb", "segmentation"])
    ids = [i.decode() for b in batches for i in b["id"].numpy()]
    self.assertCountEqual(ids, [sf.scene_id("test", i) for i in range(3)])
    # Whole scenes at the generated size: labels are exactly the generated ones.
    labels = np.concatenate([b["segmentation"].numpy() for b in batches])
    depth = np.concatenate([b["depth"].numpy() for b in batches])
    for n, file_id in enumerate(ids):
      scene = sf.render_scene(sf.scene_rng(0, "test", int(file_id[4:])), IMAGE_SIZE)
      np.testing.assert_array_equal(labels[n], scene["labels"])
      np.testing.assert_array_equal(depth[n, ..., 0] == 0, scene["labels"] == sf.SKY)

  def test_train_streams_are_not_autotuned(self):
    # The autotuner can hold train steps at 256 ms on 2 cores (pipeline.without_autotuning).
    ds = mm_tf.data.train_dataset("synthetic_forest", self.data_dir, IMAGE_SIZE, 2, seed=5)
    self.assertFalse(ds.options().autotune.enabled)
    self.assertEqual(len(list(ds.take(2))), 2)

  def test_decoded_cache_keeps_batches_of_small_images(self):
    # 32x32 scenes are no larger than the working size of S = 32 (40): not resampled.
    def batches(decoded_cache, skip):
      ds = mm_tf.data.train_dataset("synthetic_forest", self.data_dir, IMAGE_SIZE, 2, seed=5,
                                    decoded_cache=decoded_cache, skip_examples=skip)
      return list(ds.take(6).as_numpy_iterator())
    for skip in (0, 7):
      for cached, plain in zip(batches(True, skip), batches(False, skip)):
        for stream in plain:
          for name in plain[stream]:
            np.testing.assert_array_equal(cached[stream][name], plain[stream][name])

  def test_decoded_cache_shrinks_large_images_alike(self):
    # At S = 16 the 32x32 scenes are larger than the working size (20): shrunk once, then
    # augmented; the batches match the direct resize up to resampling twice.
    def batches(decoded_cache):
      ds = mm_tf.data.train_dataset("synthetic_forest", self.data_dir, 16, 4, seed=2,
                                    decoded_cache=decoded_cache)
      return list(ds.take(3).as_numpy_iterator())
    for cached, plain in zip(batches(True), batches(False)):
      for stream in plain:
        self.assertEqual(cached[stream]["rgb"].shape, (4, 16, 16, 3))
        self.assertLess(np.abs(cached[stream]["rgb"] - plain[stream]["rgb"]).mean(), 0.05)
      labels = cached["rgb+segmentation"]["segmentation"]
      self.assertGreater((labels == plain["rgb+segmentation"]["segmentation"]).mean(), 0.8)
      depth, plain_depth = cached["rgb+depth+nir"]["depth"], plain["rgb+depth+nir"]["depth"]
      self.assertGreater(((depth > 0) == (plain_depth > 0)).mean(), 0.9)

  def test_image_smaller_than_crop(self):
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "synt0.*smaller than image_size 64"):
      next(iter(mm_tf.data.train_dataset("synthetic_forest", self.data_dir, 64, 2, seed=0)))
    ds = mm_tf.data.test_dataset("synthetic_forest", self.data_dir, 64, 2, skip_bad_examples=True)
    self.assertEmpty(list(ds))


class AugmentationTest(tf.test.TestCase, parameterized.TestCase):

  def _pattern_example(self, height=40, width=56):
    """All modalities encode the same 4-label block pattern; depth has an invalid block."""
    rows, cols = np.mgrid[0:height, 0:width]
    labels = ((rows // 10) * 2 + (cols // 14) % 2) % 4
    invalid = (rows // 10 == 3) & (cols // 14 == 0)
    return labels, invalid, {
        "rgb": tf.constant(np.stack([labels * 60] * 3, -1).astype(np.uint8)),
        "depth": tf.constant(np.where(invalid, 0.0, labels + 1.0)[..., None].astype(np.float32)),
        "nir": tf.constant((labels * 60)[..., None].astype(np.uint8)),
        "segmentation": tf.constant(labels.astype(np.uint8)),
    }

  @staticmethod
  def _interior(labels):
    """Pixels whose 3x3 neighbourhood has one label, away from the image border."""
    same = np.ones_like(labels, bool)
    for dy in (-1, 0, 1):
      for dx in (-1, 0, 1):
        same &= np.roll(labels, (dy, dx), axis=(0, 1)) == labels
    same[[0, -1], :] = same[:, [0, -1]] = False
    return same

  @parameterized.parameters(0, 1, 2, 3, 4, 5)
  def test_modalities_stay_aligned(self, seed):
    _, _, example = self._pattern_example()
    out = pipeline.geometric_transform(example, 24, seed=tf.constant([seed, 7]), augment=True,
                                       max_scale=1.6)
    labels = out["segmentation"].numpy()
    rgb_label = out["rgb"].numpy()[..., 0] / 60
    nir_label = out["nir"].numpy()[..., 0] / 60
    depth = out["depth"].numpy()[..., 0]
    # Away from block borders (where bilinear blends neighbours) every modality decodes to
    # the segmentation label.
    same = self._interior(labels)
    self.assertGreater(same.sum(), 100)
    np.testing.assert_allclose(rgb_label[same], labels[same], atol=0.02)
    np.testing.assert_allclose(nir_label[same], labels[same], atol=0.02)
    valid = same & (depth > 0)
    np.testing.assert_allclose(depth[valid], labels[valid] + 1.0, atol=1e-4)

  @parameterized.parameters(0, 1, 2)
  def test_invalid_depth_stays_invalid(self, seed):
    _, _, example = self._pattern_example()
    out = pipeline.geometric_transform(example, 24, seed=tf.constant([seed, 3]), augment=True)
    depth = out["depth"].numpy()
    # No blending of invalid zeros into valid values: every pixel is 0 or a mix of valid
    # depths (1..4), never in between.
    self.assertTrue(np.all((depth == 0) | (depth >= 1.0 - 1e-5)))
    # Downscaling the whole image keeps the invalid block invalid somewhere.
    whole = pipeline.geometric_transform(example, 24, augment=False)["depth"].numpy()
    self.assertGreater((whole == 0).sum(), 10)

  def test_shrink_each_axis_and_dtype(self):
    labels, invalid, example = self._pattern_example(height=40, width=56)
    out = pipeline.shrink(example, 48)
    self.assertEqual(out["rgb"].shape, (40, 48, 3))  # Only the longer axis shrinks.
    self.assertEqual(out["segmentation"].shape, (40, 48))
    for name in example:
      self.assertEqual(out[name].dtype, example[name].dtype)
    self.assertTrue(np.all(np.isin(out["segmentation"].numpy(), np.unique(labels))))
    depth = out["depth"].numpy()
    self.assertTrue(np.all((depth == 0) | (depth >= 1.0 - 1e-5)))  # Still mask-aware.
    self.assertGreater((depth == 0).sum(), 10)
    # No larger than the size on either axis: returned as it is, not resampled.
    same = pipeline.shrink(example, 64)
    for name in example:
      np.testing.assert_array_equal(same[name], example[name])

  @parameterized.parameters(0, 1, 2)
  def test_shrink_then_transform_stays_aligned(self, seed):
    _, _, example = self._pattern_example()
    size = pipeline.working_size(24, 1.25)
    self.assertEqual(size, 30)
    out = pipeline.geometric_transform(pipeline.shrink(example, size), 24,
                                       seed=tf.constant([seed, 7]), augment=True, max_scale=1.25)
    labels = out["segmentation"].numpy()
    same = self._interior(labels)
    self.assertGreater(same.sum(), 100)
    np.testing.assert_allclose(out["rgb"].numpy()[..., 0][same] / 60, labels[same], atol=0.03)

  def test_flip_happens_for_some_seeds(self):
    _, _, example = self._pattern_example()
    plain = pipeline.geometric_transform(example, 40, augment=False)["segmentation"].numpy()
    flipped = set()
    for seed in range(8):  # max_scale 1: no zoom, no crop offset; only the flip is random.
      out = pipeline.geometric_transform(example, 40, seed=tf.constant([seed, 0]), augment=True,
                                         max_scale=1.0)["segmentation"].numpy()
      self.assertTrue(np.array_equal(out, plain) or np.array_equal(out, plain[:, ::-1]))
      flipped.add(np.array_equal(out, plain[:, ::-1]))
    self.assertEqual(flipped, {True, False})


if __name__ == "__main__":
  tf.test.main()
