"""Helpers shared by the dataset builders: image reading with clear errors, bad-example policy.

Every reader here names the file it failed on and says what it expected, because "cannot
identify image file" deep inside tfds is not an actionable message.
"""

import inspect
import logging
import os
from typing import Dict, Iterable, Optional

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import py_utils

# Depth is stored in the prepared (tfds) datasets as uint16 millimetres, 0 = invalid:
# compact, lossless at sensor precision, decoded by the fast PNG path.
DEPTH_FEATURE = "depth_mm"
MAX_STORED_DEPTH_M = 65.535


class BadExampleError(ValueError):
  """An input file is missing, unreadable or inconsistent with its example."""


def read_image(source, what: str, name: Optional[str] = None) -> np.ndarray:
  """Reads an image file into a numpy array (PIL modes kept: uint8, uint16, int32, float).

  Args:
    source: Path of the file to read, or a binary file object (an upload).
    what: What the file should be, for the error message (e.g. "8- or 16-bit depth PNG").
    name: How to call the file in messages (default: the path).

  Raises:
    BadExampleError: missing or unreadable file (the message names it).
  """
  is_path = isinstance(source, (str, os.PathLike))
  name = name or (str(source) if is_path else "the file")
  if is_path and not os.path.exists(source):
    raise BadExampleError(f"Missing file {name}: expected {what}.")
  try:
    with Image.open(source) as image:
      image.load()
      if image.mode in ("P", "PA", "RGBA", "LA", "CMYK", "YCbCr", "1"):
        image = image.convert("RGB" if image.mode not in ("LA", "1") else "L")
      array = np.asarray(image)
  except Image.UnidentifiedImageError as e:
    raise BadExampleError(f"Cannot read {name} (expected {what}): not an image file in a "
                          "format PIL knows.") from e
  except Exception as e:  # PIL raises many types for corrupt files.
    raise BadExampleError(f"Cannot read {name} (expected {what}): {type(e).__name__}: {e}") from e
  if array.ndim not in (2, 3) or array.size == 0:
    raise BadExampleError(f"{name} has shape {array.shape}; expected {what}.")
  return array


def first_channel(array: np.ndarray) -> np.ndarray:
  """Gray images sometimes come as 3-channel files: keep one channel, [H, W]."""
  return array[..., 0] if array.ndim == 3 else array


# Channels of a gray image saved as colour may differ this much (8-bit steps) after JPEG.
GRAY_TOLERANCE = 2


def gray_channel(array: np.ndarray, name: str, what: str, strict: bool = False) -> np.ndarray:
  """`first_channel`; with `strict`, a colour image (channels that differ) is an error."""
  if strict and array.ndim == 3 and array.shape[-1] > 1:
    spread = array.astype(np.float64).max(axis=-1) - array.astype(np.float64).min(axis=-1)
    if spread.max(initial=0) > GRAY_TOLERANCE:
      raise BadExampleError(f"{name} is a colour image ({array.shape[-1]} different channels); "
                            f"expected {what} with one channel.")
  return first_channel(array)


def resize_nearest(array: np.ndarray, height: int, width: int) -> np.ndarray:
  """Nearest-neighbour resize of [H, W] or [H, W, C] (labels, depth with invalid pixels)."""
  if array.shape[:2] == (height, width):
    return array
  rows = (np.arange(height) + 0.5) * array.shape[0] / height
  cols = (np.arange(width) + 0.5) * array.shape[1] / width
  return array[rows.astype(np.int64)[:, None], cols.astype(np.int64)[None, :]]


def resize_bilinear_uint8(array: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear resize of a uint8 [H, W] image (NIR)."""
  if array.shape[:2] == (height, width):
    return array
  return np.asarray(Image.fromarray(array).resize((width, height), Image.BILINEAR))


def to_uint8_intensity(array: np.ndarray, path: str) -> np.ndarray:
  """Maps an 8-bit, 16-bit or float gray image to uint8 0..255 (NIR)."""
  array = first_channel(array)
  if array.dtype == np.uint8:
    return array
  if np.issubdtype(array.dtype, np.integer):
    if array.max(initial=0) > 65535 or array.min(initial=0) < 0:
      raise BadExampleError(f"{path}: integer values outside 0..65535; expected an 8- or 16-bit image.")
    return np.round(array.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
  array = np.nan_to_num(array.astype(np.float64))
  scale = 255.0 if array.max(initial=0) <= 1.0 else 1.0  # Floats in 0..1 or 0..255.
  return np.clip(np.round(array * scale), 0, 255).astype(np.uint8)


def metres_to_stored_depth(depth_m: np.ndarray) -> np.ndarray:
  """float metres (0 or NaN = invalid) -> uint16 millimetres [H, W, 1] for the tfds feature."""
  depth_m = np.nan_to_num(np.asarray(depth_m, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
  depth_mm = np.clip(np.round(depth_m * 1000.0), 0, 65535).astype(np.uint16)
  return depth_mm[..., None] if depth_mm.ndim == 2 else depth_mm


def depth_feature():
  return tfds.features.Image(shape=(None, None, 1), dtype=np.uint16, encoding_format="png",
                             doc="Depth in millimetres (uint16), 0 = invalid.")


def label_feature():
  return tfds.features.Image(shape=(None, None, 1), dtype=np.uint8, encoding_format="png",
                             doc="Class labels 0..K-1, 255 = void.")


class BadExamplePolicy:
  """Raise on the first bad example, or skip bad examples and count them in the log."""

  def __init__(self, skip: bool, dataset: str):
    self.skip = skip
    self.dataset = dataset
    self.skipped = 0

  def handle(self, error: Exception) -> None:
    if not self.skip:
      raise BadExampleError(f"{self.dataset}: {error} (pass skip_bad_examples=True to skip and "
                            "count such examples instead).") from error
    self.skipped += 1
    logging.warning("%s: skipping a bad example (%d so far): %s", self.dataset, self.skipped, error)

  def report(self, where: str) -> None:
    if self.skipped:
      logging.warning("%s: skipped %d bad example(s) in %s.", self.dataset, self.skipped, where)


def require_dir(path: str, what: str) -> str:
  """Returns `path` if it is a non-empty directory, else raises a clear error."""
  if not os.path.isdir(path):
    raise BadExampleError(f"Directory {path} does not exist: expected {what}.")
  if not os.listdir(path):
    raise BadExampleError(f"Directory {path} is empty: expected {what}.")
  return path


def files_by_id(directory: str, extensions: Iterable[str]) -> Dict[str, list]:
  """Files of `directory` grouped by id (text before the first "_" or the extension)."""
  extensions = tuple(e.lower() for e in extensions)
  grouped: Dict[str, list] = {}
  for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else ():
    if name.startswith(".") or not name.lower().endswith(extensions):
      continue
    file_id = os.path.splitext(name)[0].split("_")[0]
    grouped.setdefault(file_id, []).append(name)
  return grouped


def pick(candidates: Optional[list], preferred_suffixes: Iterable[str]) -> Optional[str]:
  """The candidate ending with the first matching preferred suffix, else the first one."""
  if not candidates:
    return None
  for suffix in preferred_suffixes:
    for name in candidates:
      if name.endswith(suffix):
        return name
  return candidates[0]


def scene_features(with_nir: bool = False) -> tfds.features.FeaturesDict:
  """The features every mm_tf builder stores: ids, RGB, depth, (NIR,) segmentation."""
  features = {
      "id": tfds.features.Text(),
      "scene_id": tfds.features.Text(),
      "rgb": tfds.features.Image(shape=(None, None, 3)),
      DEPTH_FEATURE: depth_feature(),
  }
  if with_nir:
    features["nir"] = tfds.features.Image(shape=(None, None, 1))
  features["segmentation"] = label_feature()
  return tfds.features.FeaturesDict(features)


class ManualBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of mm_tf's manual-download builders (abstract: tfds does not register it).

  Adds `skip_bad_examples` and a plain `code_path`: tfds 4.9.10 resolves builder code paths
  through the `importlib_resources` backport, which it only declares for Python < 3.9, so
  the default fails on 3.10+ unless that package happens to be installed.
  """

  def __init__(self, *, skip_bad_examples: bool = False, **kwargs):
    """Args: skip_bad_examples: skip (and count in the log) examples with missing or
    unreadable files instead of failing; other arguments as tfds builders take them."""
    self._skip_bad_examples = skip_bad_examples
    super().__init__(**kwargs)

  @py_utils.classproperty
  @classmethod
  def code_path(cls) -> Optional[epath.Path]:  # pylint: disable=no-self-argument
    try:
      return epath.Path(inspect.getfile(cls))
    except (TypeError, OSError):
      return None
