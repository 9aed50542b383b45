"""tfds builder for SceneNet RGB-D with the 13 NYU classes (manual download).

On-disk layout (as distributed; <split> is "train" or "test", "val" is used for "test"
when there is no test directory):

  <manual_dir>/<split>/<render_path>/photo/N.jpg
  <manual_dir>/<split>/<render_path>/depth/N.png       (uint16 millimetres, ray length)
  <manual_dir>/<split>/<render_path>/instance/N.png    (instance ids)
  <manual_dir>/**/scenenet_rgbd_<split>*.pb             (trajectory protobufs)

The protobufs (scenenet.proto: Trajectories{trajectories=1}, Trajectory{instances=2,
render_path=4}, Instance{instance_id=1, semantic_wordnet_id=2, instance_type=4}) give,
per trajectory, instance id -> WordNet id; `scenenet_wnid_to_nyu13.csv` (shipped with
mm_tf) maps WordNet id -> NYU 13-class label (1..13), stored as label - 1. They are read
with a small wire-format reader, so no generated protobuf module is needed.

Guards: the background instance, instance ids absent from the trajectory and WordNet
ids absent from the table become void (255) and are counted in the log.

Scenes are trajectories: "scene_id" = render path, so the zero-pair split never puts two
views of one trajectory into different streams. Features: "id" (<render_path>/<frame>),
"scene_id", "rgb", "depth_mm", "segmentation".
"""

import csv
import glob
import logging
import os
from typing import Dict, Tuple

import numpy as np
import tensorflow_datasets as tfds

from mm_tf.data import common

SPLITS = ("train", "test")
TABLE_FILE = os.path.join(os.path.dirname(__file__), "scenenet_wnid_to_nyu13.csv")
BACKGROUND = 1  # Instance.InstanceType.BACKGROUND

_MANUAL = """\
Download SceneNet RGB-D (https://robotvault.bitbucket.io/scenenet-rgbd.html): the train
parts and/or the validation/test set with their trajectory protobufs, and extract them into
<data_dir>/scenenet_rgbd/ so that <data_dir>/scenenet_rgbd/train/<render_path>/photo/0.jpg
and <data_dir>/scenenet_rgbd/scenenet_rgbd_train_0.pb (any sub-directory) exist; "val"
serves as the test split when there is no "test". Nothing is downloaded.
"""


def load_wnid_table(path: str = TABLE_FILE) -> Dict[str, int]:
  """WordNet id -> NYU13 label (1..13) from the shipped CSV."""
  with open(path, newline="") as f:
    return {row["wordnet_id"]: int(row["nyu13_label"]) for row in csv.DictReader(f)}


# ---- protobuf wire format (only what scenenet.proto needs).
def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
  result = shift = 0
  while True:
    byte = buf[pos]
    pos += 1
    result |= (byte & 0x7F) << shift
    if not byte & 0x80:
      return result, pos
    shift += 7


def _fields(buf: bytes):
  """Yields (field number, value) of a message: ints for varints, bytes for LEN fields."""
  pos = 0
  while pos < len(buf):
    key, pos = _varint(buf, pos)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _varint(buf, pos)
    elif wire == 2:
      length, pos = _varint(buf, pos)
      value, pos = buf[pos:pos + length], pos + length
    elif wire == 1:
      value, pos = buf[pos:pos + 8], pos + 8
    elif wire == 5:
      value, pos = buf[pos:pos + 4], pos + 4
    else:
      raise ValueError(f"unsupported protobuf wire type {wire}")
    yield number, value


def parse_trajectories(data: bytes) -> Dict[str, Dict[int, Tuple[str, int]]]:
  """render_path -> {instance_id: (wordnet_id, instance_type)} of a Trajectories message."""
  result = {}
  for number, trajectory in _fields(data):
    if number != 1:
      continue
    render_path, instances = None, {}
    for t_number, value in _fields(trajectory):
      if t_number == 4:
        render_path = value.decode()
      elif t_number == 2:
        fields = dict(_fields(value))
        instances[int(fields.get(1, 0))] = (fields.get(2, b"").decode(), int(fields.get(4, 0)))
    if render_path is not None:
      result[render_path] = instances
  return result


def instance_label_lut(instances: Dict[int, Tuple[str, int]], table: Dict[str, int]):
  """uint8 LUT instance id -> label 0..12 / 255, and the WordNet ids missing from `table`."""
  size = max([0] + list(instances)) + 1
  lut = np.full(max(size, 1), 255, np.uint8)
  missing = set()
  for instance_id, (wnid, kind) in instances.items():
    if kind == BACKGROUND or instance_id < 0:
      continue
    if wnid not in table:
      missing.add(wnid)
      continue
    lut[instance_id] = table[wnid] - 1
  return lut, missing


def instances_to_labels(instance: np.ndarray, lut: np.ndarray) -> np.ndarray:
  """Instance image -> labels; ids beyond the LUT (not in the trajectory) -> void."""
  ids = common.first_channel(instance).astype(np.int64)
  inside = (ids >= 0) & (ids < len(lut))
  return np.where(inside, lut[np.clip(ids, 0, len(lut) - 1)], 255).astype(np.uint8)


def split_dir(root: str, split: str) -> Tuple[str, str]:
  """(directory, protobuf name part) of a split; test falls back to val."""
  for name in ((split,) if split == "train" else (split, "val")):
    if os.path.isdir(os.path.join(root, name)):
      return os.path.join(root, name), name
  raise common.BadExampleError(f"{root} has no {split}/ directory: expected "
                               f"{split}/<render_path>/photo/N.jpg. {_MANUAL}")


def load_protobufs(root: str, name: str) -> Dict[str, Dict[int, Tuple[str, int]]]:
  paths = sorted(glob.glob(os.path.join(root, "**", f"scenenet_rgbd_{name}*.pb"), recursive=True))
  if not paths:
    raise common.BadExampleError(f"No trajectory protobuf {root}/**/scenenet_rgbd_{name}*.pb: "
                                 "it maps instance ids to WordNet ids and is needed for labels.")
  trajectories = {}
  for path in paths:
    with open(path, "rb") as f:
      try:
        trajectories.update(parse_trajectories(f.read()))
      except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise common.BadExampleError(f"Cannot parse {path} as a SceneNet Trajectories protobuf: {e}") from e
  return trajectories


class ScenenetRgbd(common.ManualBuilder):
  """SceneNet RGB-D: RGB, depth and 13-class segmentation (manual download)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release (mm_tf)."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL


  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="SceneNet RGB-D synthetic indoor scenes, 13 NYU classes; see mm_tf docs/data.md.",
        features=common.scene_features(with_nir=False),
        homepage="https://robotvault.bitbucket.io/scenenet-rgbd.html",
    )

  def _split_generators(self, dl_manager):
    root = str(dl_manager.manual_dir)
    return {split: self._generate_examples(root, split) for split in SPLITS}

  def _generate_examples(self, root, split):
    directory, name = split_dir(root, split)
    trajectories = load_protobufs(root, name)
    table = load_wnid_table()
    policy = common.BadExamplePolicy(self._skip_bad_examples, "scenenet_rgbd")
    produced, missing_wnids = 0, set()
    for render_path in sorted(trajectories):
      photo_dir = os.path.join(directory, render_path, "photo")
      if not os.path.isdir(photo_dir):
        continue  # Protobufs cover all parts; only the downloaded ones are on disk.
      lut, missing = instance_label_lut(trajectories[render_path], table)
      missing_wnids |= missing
      frames = sorted((int(os.path.splitext(n)[0]) for n in os.listdir(photo_dir)
                       if n.endswith(".jpg") and os.path.splitext(n)[0].isdigit()))
      for frame in frames:
        file_id = f"{render_path}/{frame}"
        try:
          example = self._read(directory, render_path, frame, lut)
        except common.BadExampleError as e:
          policy.handle(e)
          continue
        produced += 1
        yield file_id, dict(example, id=file_id, scene_id=render_path)
    if missing_wnids:
      logging.warning("scenenet_rgbd: %d WordNet id(s) not in %s labelled void: %s",
                      len(missing_wnids), TABLE_FILE, sorted(missing_wnids)[:20])
    policy.report(directory)
    if not produced:
      raise common.BadExampleError(f"{directory}: no usable examples (expected "
                                   "<render_path>/photo/N.jpg listed in the protobufs).")

  @staticmethod
  def _read(directory, render_path, frame, lut):
    base = os.path.join(directory, render_path)
    rgb = common.read_image(os.path.join(base, "photo", f"{frame}.jpg"), "an RGB JPEG")
    if rgb.ndim == 2:
      rgb = np.repeat(rgb[..., None], 3, axis=-1)
    rgb = rgb[..., :3].astype(np.uint8)
    height, width = rgb.shape[:2]
    depth_path = os.path.join(base, "depth", f"{frame}.png")
    depth = common.first_channel(common.read_image(depth_path, "a 16-bit depth PNG (millimetres)"))
    if not np.issubdtype(depth.dtype, np.integer) or depth.dtype == np.uint8:
      raise common.BadExampleError(f"{depth_path}: dtype {depth.dtype}; expected 16-bit millimetres.")
    instance = common.read_image(os.path.join(base, "instance", f"{frame}.png"), "an instance-id PNG")
    labels = instances_to_labels(instance, lut)
    depth_mm = np.clip(depth.astype(np.int64), 0, 65535).astype(np.uint16)
    return {
        "rgb": rgb,
        common.DEPTH_FEATURE: common.resize_nearest(depth_mm, height, width)[..., None],
        "segmentation": common.resize_nearest(labels, height, width)[..., None],
    }
