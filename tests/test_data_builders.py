"""The tfds builders on tiny fixtures written in each dataset's real on-disk layout."""

import os
import tempfile

from absl.testing import parameterized
import numpy as np
from PIL import Image
import tensorflow as tf

from mm_tf.data import common
from mm_tf.data import freiburg_forest
from mm_tf.data import pipeline
from mm_tf.data import scenenet_rgbd
from mm_tf.data import sun_rgbd

SKY, TRAIL, GRASS, VEG, OBST = range(5)
COLOURS = {SKY: (0, 120, 255), TRAIL: (170, 170, 170), GRASS: (0, 255, 0), VEG: (102, 102, 51),
           OBST: (0, 0, 0)}


def _save(path, array, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, **kwargs)


def write_freiburg_fixture(root, depth_bits=(16, 8), missing=None, corrupt=None):
  """Two train and one test examples (8x12 RGB); GT has a Tree and an unknown colour."""
  ids = {"train": ["b1-100", "b2-200"], "test": ["b3-300"]}
  for split, split_ids in ids.items():
    for n, file_id in enumerate(split_ids):
      base = os.path.join(root, split)
      rgb = np.full((8, 12, 3), 40 * (n + 1), np.uint8)
      _save(f"{base}/rgb/{file_id}_Clipped.jpg", rgb, quality=100)
      gt = np.zeros((8, 12, 3), np.uint8)
      gt[:2] = COLOURS[SKY]
      gt[2:4] = COLOURS[TRAIL]
      gt[4:6] = (0, 60, 0)        # Tree -> vegetation.
      gt[6:, :6] = COLOURS[GRASS]
      gt[6:, 6:] = (255, 0, 255)  # Unknown colour -> void.
      _save(f"{base}/GT_color/{file_id}_Clipped.png", gt)
      bits = depth_bits[n % len(depth_bits)]
      if bits == 16:   # Millimetres; half resolution, resized to the RGB size.
        depth = np.full((4, 6), 2500, np.uint16)
        depth[0] = 0
      else:            # 8-bit relative depth.
        depth = np.full((4, 6), 51, np.uint8)
        depth[0] = 0
      _save(f"{base}/depth_gray/{file_id}_Clipped_redict_depth_gray.png", depth)
      _save(f"{base}/nir_gray/{file_id}.tif", np.full((8, 12), 100 + n, np.uint8))
  if missing:
    os.remove(os.path.join(root, missing))
  if corrupt:
    with open(os.path.join(root, corrupt), "wb") as f:
      f.write(b"not an image")
  return ids


class FreiburgTest(tf.test.TestCase):

  def _load(self, root, split="train", **kwargs):
    builder = freiburg_forest.FreiburgForest(data_dir=os.path.join(root, "tfds"), **kwargs)
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=os.path.join(root, "freiburg_forest"), try_download_gcs=False,
        compute_stats=tfds.download.ComputeStatsMode.SKIP))
    return {e["id"].decode(): e for e in builder.as_dataset(split=split).as_numpy_iterator()}

  def test_fixture(self):
    root = tempfile.mkdtemp()
    write_freiburg_fixture(os.path.join(root, "freiburg_forest", "freiburg_forest_annotated"))
    examples = self._load(root)
    self.assertEqual(sorted(examples), ["b1-100", "b2-200"])
    for file_id, example in examples.items():
      labels = example["segmentation"][..., 0]
      self.assertEqual(labels.shape, (8, 12))
      np.testing.assert_array_equal(labels[0], SKY)
      np.testing.assert_array_equal(labels[2], TRAIL)
      np.testing.assert_array_equal(labels[4], VEG)
      np.testing.assert_array_equal(labels[7, :6], GRASS)
      np.testing.assert_array_equal(labels[7, 6:], 255)
      depth_m = example["depth_mm"][..., 0] / 1000.0
      self.assertEqual(depth_m.shape, (8, 12))  # Resized to the RGB size.
      np.testing.assert_array_equal(depth_m[:2], 0.0)  # Invalid stays invalid.
      expected = 2.5 if file_id == "b1-100" else 51 * 40.0 / 255  # 16-bit mm / 8-bit scaled.
      np.testing.assert_allclose(depth_m[2:], expected, atol=1e-3)
      self.assertEqual(example["nir"].shape, (8, 12, 1))
    self.assertEqual(list(self._load(root, "test")), ["b3-300"])

  def test_missing_modality_file_names_it(self):
    root = tempfile.mkdtemp()
    write_freiburg_fixture(os.path.join(root, "freiburg_forest"), missing="train/nir_gray/b2-200.tif")
    with self.assertRaisesRegex(common.BadExampleError, r"b2-200.*nir.*nir_gray/b2-200\.tif"):
      self._load(root)

  def test_skip_bad_examples_skips_and_counts(self):
    root = tempfile.mkdtemp()
    write_freiburg_fixture(os.path.join(root, "freiburg_forest"), missing="train/nir_gray/b2-200.tif")
    with self.assertLogs(level="WARNING") as logs:
      examples = self._load(root, skip_bad_examples=True)
    self.assertEqual(list(examples), ["b1-100"])
    self.assertTrue(any("skipped 1 bad example" in line for line in logs.output))

  def test_corrupt_image_names_file(self):
    root = tempfile.mkdtemp()
    write_freiburg_fixture(os.path.join(root, "freiburg_forest"),
                           corrupt="train/depth_gray/b1-100_Clipped_redict_depth_gray.png")
    with self.assertRaisesRegex(common.BadExampleError, r"Cannot read .*b1-100_Clipped_redict_depth_gray\.png"):
      self._load(root)

  def test_empty_or_wrong_directory(self):
    root = tempfile.mkdtemp()
    os.makedirs(os.path.join(root, "freiburg_forest", "train", "rgb"))
    os.makedirs(os.path.join(root, "freiburg_forest", "test"))
    with self.assertRaisesRegex(common.BadExampleError, r"train/rgb is empty"):
      self._load(root)
    with self.assertRaisesRegex(common.BadExampleError, r"does not exist"):
      pipeline.prepare("freiburg_forest", os.path.join(root, "nothing_here"))


def write_sun_fixture(root):
  for split, digits in (("train", ("000001", "000002")), ("test", ("000001",))):
    for n, d in enumerate(digits):
      _save(f"{root}/SUNRGBD-{split}_images/img-{d}.jpg", np.full((6, 8, 3), 90, np.uint8))
      metres = np.full((6, 8), 1.5 + n)
      metres[0, 0] = 0
      metres[0, 1] = 9.0  # Clipped to 8 m.
      mm = np.round(metres * 1000).astype(np.uint32)
      raw = ((mm << 3) | (mm >> 13)) & 0xFFFF  # Inverse of the official decode.
      _save(f"{root}/sunrgbd_{split}_depth/{int(d)}.png", raw.astype(np.uint16))
      if split == "train" and n == 1:  # One example with 37-class labels only.
        labels = np.zeros((6, 8), np.uint8)
        labels[3:] = 1  # wall (37) -> 12 (13) -> 11.
        _save(f"{root}/{split}37labels/img-{d}.png", labels)
      else:
        labels = np.zeros((6, 8), np.uint8)
        labels[3:] = 5  # floor -> 4.
        _save(f"{root}/{split}13labels/img13labels-{d}.png", labels)


class SunRgbdTest(tf.test.TestCase):

  def test_fixture(self):
    root = tempfile.mkdtemp()
    write_sun_fixture(os.path.join(root, "sun_rgbd"))
    builder = pipeline.prepare("sun_rgbd", root)
    examples = {e["id"].decode(): e for e in builder.as_dataset(split="train").as_numpy_iterator()}
    self.assertEqual(sorted(examples), ["img-000001", "img-000002"])
    first, second = examples["img-000001"], examples["img-000002"]
    np.testing.assert_array_equal(first["segmentation"][:3, :, 0], 255)  # Unknown -> void.
    np.testing.assert_array_equal(first["segmentation"][3:, :, 0], 4)
    np.testing.assert_array_equal(second["segmentation"][3:, :, 0], 11)
    depth = first["depth_mm"][..., 0]
    self.assertEqual(depth[0, 0], 0)
    self.assertEqual(depth[0, 1], 8000)
    self.assertEqual(depth[1, 0], 1500)
    self.assertEqual(second["depth_mm"][1, 0, 0], 2500)

  def test_decode_depth_matches_formula(self):
    raw = np.array([[0x1F40 << 3, 12345]], np.uint16)
    expected = np.minimum((((raw.astype(np.uint32) >> 3) | (raw.astype(np.uint32) << 13)) & 0xFFFF) / 1000.0, 8.0)
    np.testing.assert_allclose(sun_rgbd.decode_depth(raw), expected, rtol=1e-6)


def _proto_varint(value):
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _proto_field(number, value):
  if isinstance(value, int):
    return _proto_varint(number << 3) + _proto_varint(value)
  return _proto_varint((number << 3) | 2) + _proto_varint(len(value)) + value


def write_scenenet_fixture(root):
  """One trajectory per split; instance 1 background, 2 bed, 3 chair, 4 unknown WordNet id."""
  def trajectory(render_path):
    instances = [(1, b"", 1), (2, b"02920259", 2), (3, b"03001627", 4), (4, b"99999999", 4)]
    body = b"".join(_proto_field(2, _proto_field(1, i) + _proto_field(2, w) + _proto_field(4, t))
                    for i, w, t in instances)
    return body + _proto_field(4, render_path.encode())
  for split, proto in (("train", "scenenet_rgbd_train_0.pb"), ("val", "scenenet_rgbd_val.pb")):
    paths = ["0/1", "0/2"] if split == "train" else ["0/9"]
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, proto), "wb") as f:
      f.write(b"".join(_proto_field(1, trajectory(p)) for p in paths + ["0/404"]))  # 0/404 not on disk.
    for render_path in paths:
      for frame in (0, 25):
        base = os.path.join(root, split, render_path)
        _save(f"{base}/photo/{frame}.jpg", np.full((6, 8, 3), 120, np.uint8))
        _save(f"{base}/depth/{frame}.png", np.full((6, 8), 3200, np.uint16))
        instance = np.array([[1, 2, 3, 4, 7, 2, 2, 2]] * 6, np.uint16)  # 7: not in the trajectory.
        _save(f"{base}/instance/{frame}.png", instance)


class ScenenetTest(tf.test.TestCase):

  def test_fixture(self):
    root = tempfile.mkdtemp()
    write_scenenet_fixture(os.path.join(root, "scenenet_rgbd"))
    builder = pipeline.prepare("scenenet_rgbd", root)
    train = list(builder.as_dataset(split="train").as_numpy_iterator())
    self.assertEqual(sorted(e["id"].decode() for e in train), ["0/1/0", "0/1/25", "0/2/0", "0/2/25"])
    self.assertEqual(sorted({e["scene_id"].decode() for e in train}), ["0/1", "0/2"])
    labels = train[0]["segmentation"][0, :, 0]
    # background, bed (1 -> 0), chair (4 -> 3), unknown WordNet id, id outside the trajectory.
    np.testing.assert_array_equal(labels, [255, 0, 3, 255, 255, 0, 0, 0])
    np.testing.assert_array_equal(train[0]["depth_mm"], 3200)
    test = list(builder.as_dataset(split="test").as_numpy_iterator())  # From val/.
    self.assertLen(test, 2)

  def test_table_is_shipped_and_sane(self):
    table = scenenet_rgbd.load_wnid_table()
    self.assertGreater(len(table), 200)
    self.assertEqual(table["03001627"], 4)  # chair
    self.assertTrue(all(1 <= v <= 13 for v in table.values()))


if __name__ == "__main__":
  tf.test.main()
