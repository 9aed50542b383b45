"""tfds builder for SUN RGB-D with the paper's 13 classes (manual download).

Supported on-disk layout (the common flat redistribution of SUN RGB-D; <split> is
"train" or "test"):

  <manual_dir>/SUNRGBD-<split>_images/img-XXXXXX.jpg
  <manual_dir>/sunrgbd_<split>_depth/N.png                  (N = int(XXXXXX), raw SUN RGB-D depth)
  <manual_dir>/<split>13labels/img13labels-XXXXXX.png       (0 unknown, 1..13)
     or <manual_dir>/<split>37labels/img-XXXXXX.png         (0 void, 1..37; mapped to 13)

Conversions:
  * depth: the official toolbox decode `(raw >> 3) | (raw << 13)` in 16 bit, / 1000 m,
    clipped at 8 m; 0 stays invalid.
  * labels: 13-class label k (1..13) -> k - 1 (class names in mm_tf.data.datasets);
    unknown (0) -> void 255. 37-class labels go through the NOTES.md mapping first.
  * label maps and depth are resized (nearest) to the RGB size if they differ.

Features: "id", "scene_id" (= id), "rgb" uint8 [H,W,3], "depth_mm" uint16 [H,W,1],
"segmentation" uint8 [H,W,1].
"""

import os
import re

import numpy as np
import tensorflow_datasets as tfds

from mm_tf.data import common

SPLITS = ("train", "test")
MAX_DEPTH_M = 8.0
# 37-class label j (1..37) -> 13-class label (1..13), NOTES.md section 4.
MAP_37_TO_13 = (12, 5, 6, 1, 4, 9, 10, 12, 13, 6, 8, 6, 13, 10, 6, 13, 6, 7, 7, 5, 7, 3, 2, 6, 11,
                7, 7, 7, 7, 7, 7, 6, 7, 7, 7, 7, 7)
_ID = re.compile(r"img-(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)

_MANUAL = """\
Download SUN RGB-D in its flat 13-class redistribution (images SUNRGBD-{train,test}_images,
depth sunrgbd_{train,test}_depth, labels {train,test}13labels or {train,test}37labels) and
extract everything into <data_dir>/sun_rgbd/ so that e.g.
<data_dir>/sun_rgbd/SUNRGBD-train_images/img-000001.jpg,
<data_dir>/sun_rgbd/sunrgbd_train_depth/1.png and
<data_dir>/sun_rgbd/train13labels/img13labels-000001.png exist. Nothing is downloaded.
"""


def decode_depth(raw: np.ndarray, path: str = "") -> np.ndarray:
  """Official SUN RGB-D depth decode: uint16 PNG -> float32 metres, clipped at 8 m."""
  raw = common.first_channel(raw)
  if not np.issubdtype(raw.dtype, np.integer) or raw.dtype == np.uint8:
    raise common.BadExampleError(f"{path}: depth has dtype {raw.dtype}; expected a 16-bit PNG "
                                 "(SUN RGB-D raw depth).")
  raw = raw.astype(np.uint32) & 0xFFFF
  decoded = ((raw >> 3) | (raw << 13)) & 0xFFFF
  return np.minimum(decoded.astype(np.float32) / 1000.0, MAX_DEPTH_M)


def labels_13(raw13: np.ndarray) -> np.ndarray:
  """13-class file labels (0 unknown, 1..13) -> 0..12, void 255."""
  raw13 = common.first_channel(raw13).astype(np.int64)
  return np.where((raw13 >= 1) & (raw13 <= 13), raw13 - 1, 255).astype(np.uint8)


def labels_37(raw37: np.ndarray) -> np.ndarray:
  """37-class file labels (0 void, 1..37) -> 13-class 0..12, void 255."""
  lut = np.full(256, 255, np.uint8)
  lut[1:38] = np.asarray(MAP_37_TO_13) - 1
  return lut[np.clip(common.first_channel(raw37).astype(np.int64), 0, 255)]


def list_examples(root: str, split: str):
  """(id, paths) of every RGB image of `split`, sorted."""
  image_dir = common.require_dir(os.path.join(root, f"SUNRGBD-{split}_images"),
                                 "RGB images img-XXXXXX.jpg")
  depth_dir = os.path.join(root, f"sunrgbd_{split}_depth")
  for name in sorted(os.listdir(image_dir)):
    match = _ID.match(name)
    if not match:
      continue
    digits = match.group(1)
    label13 = os.path.join(root, f"{split}13labels", f"img13labels-{digits}.png")
    label37 = os.path.join(root, f"{split}37labels", f"img-{digits}.png")
    yield f"img-{digits}", {
        "rgb": os.path.join(image_dir, name),
        "depth": os.path.join(depth_dir, f"{int(digits)}.png"),
        "labels13": label13 if os.path.exists(label13) or not os.path.exists(label37) else None,
        "labels37": label37 if os.path.exists(label37) else None,
    }


def read_example(file_id: str, paths: dict) -> dict:
  rgb = common.read_image(paths["rgb"], "an RGB JPEG")
  if rgb.ndim == 2:
    rgb = np.repeat(rgb[..., None], 3, axis=-1)
  rgb = rgb[..., :3].astype(np.uint8)
  height, width = rgb.shape[:2]
  depth_m = decode_depth(common.read_image(paths["depth"], "a 16-bit SUN RGB-D depth PNG"),
                         paths["depth"])
  if paths["labels13"] is not None:
    labels = labels_13(common.read_image(paths["labels13"], "a 13-class label PNG (values 0..13)"))
  else:
    labels = labels_37(common.read_image(paths["labels37"], "a 37-class label PNG (values 0..37)"))
  return {
      "id": file_id, "scene_id": file_id, "rgb": rgb,
      common.DEPTH_FEATURE: common.metres_to_stored_depth(common.resize_nearest(depth_m, height, width)),
      "segmentation": common.resize_nearest(labels, height, width)[..., None],
  }


class SunRgbd(common.ManualBuilder):
  """SUN RGB-D: RGB, depth and 13-class segmentation (manual download)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release (mm_tf)."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL


  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="SUN RGB-D indoor scenes, 13 classes; see mm_tf docs/data.md.",
        features=common.scene_features(with_nir=False),
        homepage="https://rgbd.cs.princeton.edu/",
    )

  def _split_generators(self, dl_manager):
    root = str(dl_manager.manual_dir)
    return {split: self._generate_examples(root, split) for split in SPLITS}

  def _generate_examples(self, root, split):
    policy = common.BadExamplePolicy(self._skip_bad_examples, "sun_rgbd")
    produced = 0
    for file_id, paths in list_examples(root, split):
      try:
        example = read_example(file_id, paths)
      except common.BadExampleError as e:
        policy.handle(e)
        continue
      produced += 1
      yield file_id, example
    policy.report(f"{root} ({split})")
    if not produced:
      raise common.BadExampleError(f"{root}: no usable {split} examples "
                                   f"(expected SUNRGBD-{split}_images/img-XXXXXX.jpg).")
