"""One description per dataset: its modalities, zero-pair streams and where its files live.

A `DatasetSpec` is what the training and evaluation code needs to know about a dataset:
the `Modality` objects (depth with the dataset's range, segmentation with its classes and
palette), the zero-pair training streams (anchor "rgb" first), the tfds builder that reads
it and the sub-directory of `data_dir` that holds the user's (or the generator's) files.

Example:
  >>> spec = get_dataset_spec("freiburg_forest")
  >>> spec.streams
  (('rgb', 'segmentation'), ('rgb', 'depth', 'nir'))
  >>> spec.modality("depth").raw_range
  (0.0, 40.0)
"""

import dataclasses
from typing import Dict, Tuple

from mm_tf import modalities

# Depth range (metres) of the forest datasets. The synthetic generator clips its ground
# plane at this distance; real Freiburg 8-bit depth_gray is assumed to span it linearly.
FOREST_MAX_DEPTH_M = 40.0
# SUN RGB-D's official toolbox clips depth at 8 m.
SUN_RGBD_MAX_DEPTH_M = 8.0
# SceneNet RGB-D renders indoor rooms; ray lengths beyond 10 m are rare and clipped.
SCENENET_MAX_DEPTH_M = 10.0

# The 13-class indoor set of the paper (SUN RGB-D and SceneNet RGB-D). The datasets' own
# label 0 ("unknown") becomes the void label, so class i here is the datasets' label i + 1.
NYU13_CLASS_NAMES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects",
                     "picture", "sofa", "table", "tv", "wall", "window")
# Colours of the SceneNet RGB-D / NYUv2 13-class colour code (0..1 floats x 255, rounded).
NYU13_PALETTE = ((0, 0, 255), (233, 89, 48), (0, 218, 0), (149, 0, 240), (222, 241, 24),
                 (255, 206, 206), (0, 224, 229), (106, 136, 204), (117, 29, 41),
                 (240, 35, 235), (0, 167, 156), (249, 139, 0), (225, 229, 194))


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Description of one dataset.

  Args:
    name: Dataset name, e.g. "freiburg_forest".
    modalities: The dataset's `Modality` objects; the first one is the anchor ("rgb").
    streams: Zero-pair training streams: tuples of modality names observed together,
      anchor first. Each stream is drawn from its own disjoint part of the train split.
    builder_name: Name of the tfds builder that reads the files (the synthetic forest is
      read by the "freiburg_forest" builder, which is the point of writing it in that
      layout).
    source_dir: Sub-directory of `data_dir` holding the raw files (tfds manual dir).
    description: One line for logs and docs.
  """

  name: str
  modalities: Tuple[modalities.Modality, ...]
  streams: Tuple[Tuple[str, ...], ...]
  builder_name: str
  source_dir: str
  description: str = ""

  def __post_init__(self):
    known = self.modality_names
    for stream in self.streams:
      if stream[0] != modalities.ANCHOR:
        raise ValueError(f"Dataset {self.name!r}: stream {stream} must start with the anchor "
                         f"{modalities.ANCHOR!r}.")
      for name in stream:
        modalities.check_name(name, known, argument=f"modality of stream {stream}")

  @property
  def modality_names(self) -> Tuple[str, ...]:
    return tuple(m.name for m in self.modalities)

  def modality(self, name: str) -> modalities.Modality:
    """The dataset's `Modality` called `name` (ValueError if it has none)."""
    modalities.check_name(name, self.modality_names, argument=f"modality of {self.name!r}")
    return next(m for m in self.modalities if m.name == name)

  @property
  def segmentation(self) -> modalities.Modality:
    return self.modality("segmentation")

  @property
  def stream_names(self) -> Tuple[str, ...]:
    """Names of the zero-pair streams as used in batches, e.g. "rgb+segmentation"."""
    return tuple(stream_name(s) for s in self.streams)

  @property
  def oracle_streams(self) -> Tuple[Tuple[str, ...], ...]:
    """(x, segmentation) for every non-RGB, non-segmentation modality x (oracle baseline)."""
    return tuple((m, "segmentation") for m in self.modality_names
                 if m not in (modalities.ANCHOR, "segmentation"))


def stream_name(stream) -> str:
  """"+".join of a stream's modality names: the key of that stream in a batch."""
  return "+".join(stream)


def _forest_modalities():
  return (modalities.rgb(), modalities.depth(FOREST_MAX_DEPTH_M), modalities.nir(),
          modalities.segmentation(modalities.FREIBURG_CLASS_NAMES, modalities.FREIBURG_PALETTE))


def _indoor_modalities(max_depth):
  return (modalities.rgb(), modalities.depth(max_depth),
          modalities.segmentation(NYU13_CLASS_NAMES, NYU13_PALETTE))


_FOREST_STREAMS = (("rgb", "segmentation"), ("rgb", "depth", "nir"))
_INDOOR_STREAMS = (("rgb", "segmentation"), ("rgb", "depth"))

_SPECS: Dict[str, DatasetSpec] = {
    "synthetic_forest": DatasetSpec(
        name="synthetic_forest", modalities=_forest_modalities(), streams=_FOREST_STREAMS,
        builder_name="freiburg_forest", source_dir="synthetic_forest",
        description="Procedural forest scenes in the Freiburg Forest layout (generated)."),
    "freiburg_forest": DatasetSpec(
        name="freiburg_forest", modalities=_forest_modalities(), streams=_FOREST_STREAMS,
        builder_name="freiburg_forest", source_dir="freiburg_forest",
        description="Freiburg Forest (DeepScene) RGB/depth/NIR/segmentation, 230/136 images."),
    "sun_rgbd": DatasetSpec(
        name="sun_rgbd", modalities=_indoor_modalities(SUN_RGBD_MAX_DEPTH_M),
        streams=_INDOOR_STREAMS, builder_name="sun_rgbd", source_dir="sun_rgbd",
        description="SUN RGB-D, 13 classes, 5285/5050 images."),
    "scenenet_rgbd": DatasetSpec(
        name="scenenet_rgbd", modalities=_indoor_modalities(SCENENET_MAX_DEPTH_M),
        streams=_INDOOR_STREAMS, builder_name="scenenet_rgbd", source_dir="scenenet_rgbd",
        description="SceneNet RGB-D, 13 classes via instance -> WordNet id -> class."),
}


def dataset_names() -> Tuple[str, ...]:
  """Names accepted by `get_dataset_spec`."""
  return tuple(_SPECS)


def get_dataset_spec(name) -> DatasetSpec:
  """Returns the `DatasetSpec` of dataset `name` (a spec passes through).

  Raises:
    ValueError: unknown name; the message lists the known ones.
  """
  if isinstance(name, DatasetSpec):
    return name
  if name not in _SPECS:
    raise ValueError(f"Unknown dataset {name!r}. Known datasets: {', '.join(_SPECS)}.")
  return _SPECS[name]
