"""Synthetic forest: determinism, Freiburg layout, read-back through the freiburg_forest builder."""

import os
import tempfile

import numpy as np
from PIL import Image
import tensorflow as tf

from mm_tf.data import freiburg_forest
from mm_tf.data import pipeline
from mm_tf.data import synthetic_forest as sf


class RenderTest(tf.test.TestCase):

  def test_same_seed_same_scene_other_seed_other_scene(self):
    a = sf.render_scene(sf.scene_rng(3, "train", 5), 32)
    b = sf.render_scene(sf.scene_rng(3, "train", 5), 32)
    c = sf.render_scene(sf.scene_rng(4, "train", 5), 32)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
    self.assertFalse(np.array_equal(a["rgb"], c["rgb"]))

  def test_values_and_geometry(self):
    for index in range(20):
      scene = sf.render_scene(sf.scene_rng(0, "train", index), 48)
      self.assertEqual(scene["rgb"].shape, (48, 48, 3))
      self.assertEqual(scene["rgb"].dtype, np.uint8)
      self.assertLessEqual(scene["labels"].max(), sf.OBSTACLE)
      sky = scene["labels"] == sf.SKY
      # Sky has no depth; everything else has a valid depth within range.
      self.assertTrue(np.all(scene["depth"][sky] == 0))
      self.assertTrue(np.all(scene["depth"][~sky] > 0))
      self.assertLessEqual(scene["depth"].max(), sf.MAX_DEPTH_M)

  def test_rgb_is_not_a_function_of_the_class(self):
    # Mean grass colour varies between scenes far more than within one class map would
    # allow if colours were fixed per class (NOTES.md section 6).
    means = []
    for index in range(12):
      scene = sf.render_scene(sf.scene_rng(0, "train", index), 48)
      grass = scene["labels"] == sf.GRASS
      if grass.sum() > 50:
        means.append(scene["rgb"][grass].mean(0))
    self.assertGreater(np.std(np.asarray(means), axis=0).max(), 10.0)

  def test_scene_does_not_depend_on_dataset_size(self):
    with tempfile.TemporaryDirectory() as tmp:
      sf.generate(os.path.join(tmp, "a"), 2, 1, 32, seed=1)
      sf.generate(os.path.join(tmp, "b"), 3, 1, 32, seed=1)
      name = "train/GT_color/synt00001_Clipped.png"
      np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(tmp, "a", name))),
                                    np.asarray(Image.open(os.path.join(tmp, "b", name))))


class FilesTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.dataset_dir = sf.ensure_synthetic_forest(cls.tmp, num_train=6, num_test=3, image_size=32, seed=2)

  def test_freiburg_layout(self):
    for split, count in (("train", 6), ("test", 3)):
      base = os.path.join(self.dataset_dir, split)
      file_id = sf.scene_id(split, count - 1)
      self.assertNotIn("_", file_id)
      for path in (f"rgb/{file_id}_Clipped.jpg", f"depth_gray/{file_id}_Clipped_redict_depth_gray.png",
                   f"nir_gray/{file_id}.tif", f"GT_color/{file_id}_Clipped.png"):
        self.assertTrue(os.path.exists(os.path.join(base, path)), path)
      self.assertLen(os.listdir(os.path.join(base, "rgb")), count)
    depth = np.asarray(Image.open(os.path.join(self.dataset_dir, "train/depth_gray/synt00000_Clipped_redict_depth_gray.png")))
    self.assertIn(depth.dtype, (np.uint16, np.int32))  # 16-bit millimetres.

  def test_ensure_is_idempotent_and_leaves_no_temp_dirs(self):
    path = os.path.join(self.dataset_dir, "train/rgb/synt00000_Clipped.jpg")
    mtime = os.path.getmtime(path)
    sf.ensure_synthetic_forest(self.tmp, num_train=6, num_test=3, image_size=32, seed=2)
    self.assertEqual(os.path.getmtime(path), mtime)
    self.assertEqual(sorted(n for n in os.listdir(self.tmp) if n.startswith(".synthetic")), [])

  def test_read_back_through_freiburg_builder(self):
    builder = pipeline.prepare("synthetic_forest", self.tmp)
    examples = {e["id"].decode(): e for e in builder.as_dataset(split="train").as_numpy_iterator()}
    self.assertLen(examples, 6)
    for index in range(6):
      scene = sf.render_scene(sf.scene_rng(2, "train", index), 32)
      example = examples[sf.scene_id("train", index)]
      np.testing.assert_array_equal(example["segmentation"][..., 0], scene["labels"])
      np.testing.assert_array_equal(example["nir"][..., 0], scene["nir"])
      np.testing.assert_allclose(example["depth_mm"][..., 0] / 1000.0, scene["depth"], atol=6e-4)
      jpeg_error = np.abs(example["rgb"].astype(int) - scene["rgb"].astype(int))
      self.assertLess(jpeg_error.mean(), 4.0)
      self.assertLess(np.percentile(jpeg_error, 99), 40)

  def test_labels_through_gt_colours_roundtrip(self):
    labels = np.arange(5, dtype=np.uint8).repeat(4).reshape(4, 5).T
    np.testing.assert_array_equal(freiburg_forest.colours_to_labels(sf.PALETTE[labels]), labels)


if __name__ == "__main__":
  tf.test.main()
