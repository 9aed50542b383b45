"""tfds builder for Freiburg Forest (DeepScene) and the synthetic forest written in its layout.

On-disk layout (the manual dir; `freiburg_forest_annotated/` of the official archive, or
what `mm_tf.data.synthetic_forest` writes):

  <manual_dir>/{train,test}/rgb/<id>_Clipped.jpg
  <manual_dir>/{train,test}/depth_gray/<id>_Clipped_redict_depth_gray.png
  <manual_dir>/{train,test}/nir_gray/<id>.tif
  <manual_dir>/{train,test}/GT_color/<id>_Clipped.png   (or <id>_mask.png)

Files are paired by id, the text before the first "_". Conversions:
  * GT colours -> labels sky 0, trail 1, grass 2, vegetation 3 (Tree merged into it),
    obstacle 4; any other colour -> void 255.
  * depth_gray: a 16-bit PNG holds millimetres (what the synthetic generator writes); an
    8-bit PNG holds a relative depth that is ASSUMED to grow linearly with distance and is
    mapped 1..255 -> (0, 40] m (value * 40 / 255); 0 is invalid either way. The real
    dataset's depth_gray is such a relative, non-metric 8-bit map, so metric depth errors
    on real Freiburg data are in these nominal metres only.
  * nir_gray: 8-bit kept, 16-bit scaled to 0..255, float 0..1 scaled to 0..255.
  * depth, NIR and GT are resized to the RGB size when they differ (depth and labels
    nearest-neighbour so invalid depth stays invalid and labels stay labels; NIR bilinear).

Features of an example: "id", "scene_id" (= id: every Freiburg frame is its own scene),
"rgb" uint8 [H,W,3], "depth_mm" uint16 [H,W,1] (0 = invalid), "nir" uint8 [H,W,1],
"segmentation" uint8 [H,W,1].
"""

import os

import numpy as np
import tensorflow_datasets as tfds

from mm_tf import modalities
from mm_tf.data import common

TREE_COLOUR = (0, 60, 0)
# 8-bit depth_gray value 255 corresponds to this many metres (see module doc).
DEPTH_8BIT_RANGE_M = 40.0
SPLITS = ("train", "test")
RGB_EXTENSIONS = (".jpg", ".jpeg", ".png")

_MANUAL = """\
Download the Freiburg Forest dataset (DeepScene, http://deepscene.cs.uni-freiburg.de/,
"freiburg_forest_annotated.tar.gz") and extract it so that

  <data_dir>/freiburg_forest/train/{rgb,depth_gray,nir_gray,GT_color}/...
  <data_dir>/freiburg_forest/test/{rgb,depth_gray,nir_gray,GT_color}/...

exist (the archive's `freiburg_forest_annotated/` directory may also be kept as
<data_dir>/freiburg_forest/freiburg_forest_annotated/). mm_tf passes
<data_dir>/freiburg_forest as the manual dir; nothing is downloaded.
"""


def colour_to_label_lut(palette=None) -> dict:
  """Packed RGB (r << 16 | g << 8 | b) -> label.

  Default: the Freiburg palette with Tree merged into Vegetation; another `palette` (a
  list of RGB colours, index = label) maps its own colours only.
  """
  freiburg = palette is None or tuple(map(tuple, palette)) == modalities.FREIBURG_PALETTE
  lut = {}
  for label, (r, g, b) in enumerate(modalities.FREIBURG_PALETTE if freiburg else palette):
    lut.setdefault((int(r) << 16) | (int(g) << 8) | int(b), label)
  if freiburg:
    r, g, b = TREE_COLOUR
    lut[(r << 16) | (g << 8) | b] = modalities.FREIBURG_CLASS_NAMES.index("vegetation")
  return lut


def colours_to_labels(gt_rgb: np.ndarray, palette=None) -> np.ndarray:
  """uint8 GT_color image [H, W, 3] -> uint8 labels [H, W]; unknown colours -> void (255)."""
  gt = gt_rgb.astype(np.int64)
  packed = (gt[..., 0] << 16) | (gt[..., 1] << 8) | gt[..., 2]
  labels = np.full(packed.shape, modalities.VOID_LABEL, np.uint8)
  for colour, label in colour_to_label_lut(palette).items():
    labels[packed == colour] = label
  return labels


def depth_gray_to_metres(raw: np.ndarray, path: str, strict: bool = False) -> np.ndarray:
  """Decodes a depth_gray image: 16-bit = millimetres, 8-bit = 0..255 -> 0..40 m."""
  raw = common.gray_channel(raw, path, "an 8- or 16-bit depth PNG", strict)
  if raw.dtype == np.uint8:
    return raw.astype(np.float32) * (DEPTH_8BIT_RANGE_M / 255.0)
  if np.issubdtype(raw.dtype, np.integer):
    if raw.max(initial=0) > 65535 or raw.min(initial=0) < 0:
      raise common.BadExampleError(f"{path}: depth values outside 0..65535; expected an 8-bit "
                                   "or 16-bit (millimetre) PNG.")
    return raw.astype(np.float32) / 1000.0
  raise common.BadExampleError(f"{path}: unsupported depth dtype {raw.dtype}; expected an 8-bit "
                               "or 16-bit PNG.")


# ---------------------------------------------------------------- one reader per file format
# Each takes a path or a binary file object (`name` names it in errors) and returns raw file
# units. `strict` (used for uploads, whose slot may be the wrong one) also rejects channel
# counts the dataset's folders never hold: a gray image as RGB, a colour image as depth/NIR.
def read_rgb(source, name=None, strict=False) -> np.ndarray:
  """RGB JPEG/PNG -> uint8 [H, W, 3] (8-bit gray repeated unless `strict`)."""
  name = name or str(source)
  rgb = common.read_image(source, "an RGB JPEG/PNG", name)
  if rgb.dtype != np.uint8:
    raise common.BadExampleError(f"{name} has {rgb.dtype} pixels; expected an 8-bit RGB JPEG/PNG.")
  if rgb.ndim == 2:
    if strict:
      raise common.BadExampleError(f"{name} has 1 channel (gray); expected an RGB image with 3.")
    rgb = np.repeat(rgb[..., None], 3, axis=-1)
  return rgb[..., :3]


def read_depth(source, name=None, strict=False) -> np.ndarray:
  """depth_gray PNG (16-bit millimetres or 8-bit relative) -> float32 metres [H, W], 0 = invalid."""
  name = name or str(source)
  return depth_gray_to_metres(common.read_image(source, "an 8- or 16-bit depth PNG", name), name,
                              strict)


def read_nir(source, name=None, strict=False) -> np.ndarray:
  """nir_gray TIFF/PNG (8-bit, 16-bit or float) -> uint8 [H, W]."""
  name = name or str(source)
  raw = common.read_image(source, "a gray NIR TIFF/PNG", name)
  return common.to_uint8_intensity(common.gray_channel(raw, name, "a gray NIR image", strict), name)


def read_segmentation(source, name=None, strict=False, palette=None) -> np.ndarray:
  """GT_color PNG in the Freiburg palette (or `palette`) -> uint8 labels [H, W]; other
  colours are void."""
  del strict  # An RGB file is required either way.
  name = name or str(source)
  gt = common.read_image(source, "an RGB GT_color PNG in the Freiburg palette", name)
  if gt.ndim != 3 or gt.shape[-1] < 3:
    raise common.BadExampleError(f"{name} is not an RGB image (shape {gt.shape}); "
                                 "expected GT colours in the Freiburg palette.")
  return colours_to_labels(gt[..., :3], palette)


READERS = {"rgb": read_rgb, "depth": read_depth, "nir": read_nir,
           "segmentation": read_segmentation}


def find_root(manual_dir: str) -> str:
  """The directory holding train/ and test/ (accepts the archive's extra level)."""
  for candidate in (manual_dir, os.path.join(manual_dir, "freiburg_forest_annotated")):
    if all(os.path.isdir(os.path.join(candidate, s)) for s in SPLITS):
      return candidate
  raise common.BadExampleError(
      f"{manual_dir} has no train/ and test/ directories: expected the Freiburg Forest layout "
      f"(train/rgb/<id>_Clipped.jpg, ...). {_MANUAL}")


def list_examples(split_dir: str):
  """(id, {modality: file path or None}) for every RGB image of a split, sorted by id."""
  common.require_dir(os.path.join(split_dir, "rgb"), "RGB images <id>_Clipped.jpg")
  rgb = common.files_by_id(os.path.join(split_dir, "rgb"), RGB_EXTENSIONS)
  if not rgb:
    raise common.BadExampleError(f"{split_dir}/rgb has no .jpg/.png images: expected <id>_Clipped.jpg.")
  depth = common.files_by_id(os.path.join(split_dir, "depth_gray"), (".png",))
  nir = common.files_by_id(os.path.join(split_dir, "nir_gray"), (".tif", ".tiff", ".png"))
  gt = common.files_by_id(os.path.join(split_dir, "GT_color"), (".png",))

  def path(sub, name):
    return None if name is None else os.path.join(split_dir, sub, name)

  for file_id in sorted(rgb):
    yield file_id, {
        "rgb": path("rgb", common.pick(rgb[file_id], ("_Clipped.jpg",))),
        "depth": path("depth_gray", common.pick(depth.get(file_id), ("_redict_depth_gray.png",))),
        "nir": path("nir_gray", common.pick(nir.get(file_id), (f"{file_id}.tif",))),
        "segmentation": path("GT_color", common.pick(gt.get(file_id), ("_Clipped.png", "_mask.png"))),
    }


_EXPECTED = {
    "depth": ("depth_gray", "{id}_Clipped_redict_depth_gray.png (8- or 16-bit depth PNG)"),
    "nir": ("nir_gray", "{id}.tif (8- or 16-bit gray NIR image)"),
    "segmentation": ("GT_color", "{id}_Clipped.png or {id}_mask.png (Freiburg palette PNG)"),
}


def read_example(split_dir: str, file_id: str, paths: dict) -> dict:
  """Reads and converts one example (numpy), raising BadExampleError naming the file."""
  for name, file_path in paths.items():
    if file_path is None:
      sub, pattern = _EXPECTED[name]
      raise common.BadExampleError(
          f"example {file_id!r} in {split_dir} has no {name} file: expected "
          f"{os.path.join(split_dir, sub, pattern.format(id=file_id))}.")
  rgb = read_rgb(paths["rgb"])
  height, width = rgb.shape[:2]
  depth_m = read_depth(paths["depth"])
  nir = read_nir(paths["nir"])
  labels = read_segmentation(paths["segmentation"])
  return {
      "id": file_id,
      "scene_id": file_id,
      "rgb": rgb,
      common.DEPTH_FEATURE: common.metres_to_stored_depth(common.resize_nearest(depth_m, height, width)),
      "nir": common.resize_bilinear_uint8(nir, height, width)[..., None],
      "segmentation": common.resize_nearest(labels, height, width)[..., None],
  }


class FreiburgForest(common.ManualBuilder):
  """Freiburg Forest: RGB, depth, NIR and 5-class segmentation (manual download)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release (mm_tf)."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL


  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="Freiburg Forest (DeepScene) multispectral forest scenes; see mm_tf docs/data.md.",
        features=common.scene_features(with_nir=True),
        homepage="http://deepscene.cs.uni-freiburg.de/",
    )

  def _split_generators(self, dl_manager):
    root = find_root(str(dl_manager.manual_dir))
    return {split: self._generate_examples(os.path.join(root, split)) for split in SPLITS}

  def _generate_examples(self, split_dir):
    policy = common.BadExamplePolicy(self._skip_bad_examples, "freiburg_forest")
    produced = 0
    for file_id, paths in list_examples(split_dir):
      try:
        example = read_example(split_dir, file_id, paths)
      except common.BadExampleError as e:
        policy.handle(e)
        continue
      produced += 1
      yield file_id, example
    policy.report(split_dir)
    if not produced:
      raise common.BadExampleError(f"{split_dir}: no usable examples.")
