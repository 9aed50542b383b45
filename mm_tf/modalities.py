"""One description per modality.

A `Modality` says everything the rest of mm_tf needs to know about a kind of image:
how many channels it has, how raw values map to the values the networks see, which
reconstruction loss trains its decoder, the decoder's output activation, whether its
decoder consumes pooling switches, and (for segmentation) class names, palette and the
void label. Losses, metrics, export signatures and figures all read this description;
nothing else hard-codes a modality.

Value conventions ("model space"):
  * rgb: float32 in [-1, 1] (raw uint8 0..255), decoder output `tanh`.
  * depth: float32 in [0, 1] = metres / max_depth; 0 marks an invalid pixel (raw 0 or NaN).
    Decoder output is linear; BerHu loss masks invalid pixels.
  * nir: float32 in [0, 1] (raw 0..255), linear output, BerHu loss.
  * segmentation: int32 labels [B, H, W] in 0..K-1, `void_label` (255) is ignored. The
    encoder sees a one-hot image (void = all zeros); the decoder outputs K logits.
"""

import dataclasses
from typing import Any, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

LOSSES = ("l2", "berhu", "cross_entropy")
OUTPUT_ACTIVATIONS = ("tanh", "linear", "softmax")
VOID_LABEL = 255

# Freiburg Forest classes (Tree merged into Vegetation) and their GT_color palette.
FREIBURG_CLASS_NAMES = ("sky", "trail", "grass", "vegetation", "obstacle")
FREIBURG_PALETTE = ((0, 120, 255), (170, 170, 170), (0, 255, 0), (102, 102, 51), (0, 0, 0))


@dataclasses.dataclass(frozen=True)
class Modality:
  """Description of one image modality.

  Args:
    name: Unique name, e.g. "depth". Used in layer names, metric names and exports.
    channels: Channels of the decoder output (for segmentation: number of classes, which
      is also the encoder's one-hot input width).
    loss: Reconstruction loss of its decoder: "l2", "berhu" or "cross_entropy".
    output_activation: "tanh", "linear" or "softmax" (softmax decoders output logits;
      the activation is applied when predicting).
    decoder_uses_switches: Whether its decoder consumes the source encoder's side
      information (pooling switches or skips). The paper's RGB decoder does not.
    adversarial: Whether generated images of this modality also get the LSGAN loss.
    raw_range: Range of raw values (file/sensor units) mapped linearly to
      `normalized_range`.
    normalized_range: Range the networks see.
    invalid_value: Raw value that marks a missing measurement (depth: 0). NaN is always
      invalid for continuous modalities. None if every pixel is valid.
    unit: Physical unit of raw values, for reports ("m" for depth).
    class_names: Segmentation class names, index = label.
    palette: Segmentation RGB colour per class.
    void_label: Segmentation label ignored by losses and metrics.
    class_weights: Segmentation only: weight of each class in the cross-entropy (empty =
      unweighted, the paper's loss). Set from the training labels by
      `with_median_frequency_weights`, not by hand.
  """

  name: str
  channels: int
  loss: str
  output_activation: str
  decoder_uses_switches: bool
  adversarial: bool = False
  raw_range: Tuple[float, float] = (0.0, 255.0)
  normalized_range: Tuple[float, float] = (0.0, 1.0)
  invalid_value: Optional[float] = None
  unit: str = ""
  class_names: Tuple[str, ...] = ()
  palette: Tuple[Tuple[int, int, int], ...] = ()
  void_label: Optional[int] = None
  class_weights: Tuple[float, ...] = ()

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise ValueError(f"Modality {self.name!r}: loss must be one of {LOSSES}, got {self.loss!r}.")
    if self.output_activation not in OUTPUT_ACTIVATIONS:
      raise ValueError(f"Modality {self.name!r}: output_activation must be one of "
                       f"{OUTPUT_ACTIVATIONS}, got {self.output_activation!r}.")
    if self.channels < 1:
      raise ValueError(f"Modality {self.name!r}: channels must be >= 1, got {self.channels}.")
    if self.is_categorical:
      if len(self.class_names) != self.channels:
        raise ValueError(f"Modality {self.name!r}: {len(self.class_names)} class_names for "
                         f"{self.channels} channels; they must match.")
      if self.palette and len(self.palette) != self.channels:
        raise ValueError(f"Modality {self.name!r}: palette has {len(self.palette)} colours for "
                         f"{self.channels} classes.")
    # Lists from JSON configs become tuples so the description stays hashable.
    object.__setattr__(self, "raw_range", tuple(float(v) for v in self.raw_range))
    object.__setattr__(self, "normalized_range", tuple(float(v) for v in self.normalized_range))
    object.__setattr__(self, "class_names", tuple(self.class_names))
    object.__setattr__(self, "palette", tuple(tuple(int(c) for c in p) for p in self.palette))
    object.__setattr__(self, "class_weights", tuple(float(w) for w in self.class_weights))
    if self.class_weights and (not self.is_categorical or len(self.class_weights) != self.channels
                               or min(self.class_weights) <= 0):
      raise ValueError(f"Modality {self.name!r}: class_weights must be {self.channels} positive "
                       f"values of a categorical modality, got {list(self.class_weights)}.")

  # ---------------------------------------------------------------- properties
  @property
  def is_categorical(self) -> bool:
    """True for label maps (segmentation): int labels in, logits out."""
    return self.loss == "cross_entropy"

  @property
  def encoder_channels(self) -> int:
    """Channels of the encoder input (one-hot width for labels)."""
    return self.channels

  @property
  def num_classes(self) -> int:
    if not self.is_categorical:
      raise ValueError(f"Modality {self.name!r} is not categorical; it has no classes.")
    return self.channels

  def with_median_frequency_weights(self, class_pixel_counts, power: float = 1.0) -> "Modality":
    """This description with median-frequency class weights (Eigen & Fergus; SegNet).

    weight_c = (median(f) / f_c) ** power, where f_c is class c's share of the labelled
    training pixels: rare classes (Freiburg's obstacles, a few percent of the pixels) are
    not drowned by sky and vegetation. The paper does not say how its cross-entropy treats
    class imbalance; SegNet, whose decoder it uses, trains with power 1. Power 0.5
    (`--class_balancing=sqrt_median_frequency`) is milder: at 64x64 power 1 trades more
    grass and trail than it gains on obstacles (docs/training.md). Classes absent from the
    counts get the largest weight of the present ones.

    Args:
      class_pixel_counts: [K] labelled pixels per class (void excluded).
      power: Exponent of the weights (1 = SegNet's, 0.5 = their square roots).

    Example:
      Counts 100, 200, 400, 400, 0 (frequencies .1 .2 .4 .4, median .3) give weights of
      about 3, 1.5, 0.75, 0.75 and 3 for the absent class; power 0.5 their square roots:

      >>> seg = mm_tf.modalities.get("segmentation")
      >>> weighted = seg.with_median_frequency_weights([100, 200, 400, 400, 0], power=0.5)
      >>> [round(w, 2) for w in weighted.class_weights]
      [1.73, 1.22, 0.87, 0.87, 1.73]
    """
    counts = np.asarray(class_pixel_counts, np.float64)
    if not power > 0:
      raise ValueError(f"Modality {self.name!r}: the class-weight power must be > 0, got {power}.")
    if not self.is_categorical or counts.shape != (self.channels,) or counts.sum() <= 0:
      raise ValueError(f"Modality {self.name!r}: need {self.channels} class pixel counts with "
                       f"a positive sum, got {counts.tolist()}.")
    present = counts > 0
    frequencies = counts / counts.sum()
    weights = np.zeros_like(frequencies)
    weights[present] = (np.median(frequencies[present]) / frequencies[present]) ** power
    weights[~present] = weights[present].max()
    return self.replace(class_weights=tuple(float(w) for w in weights))

  # ---------------------------------------------------------------- conversions
  def normalize(self, raw) -> tf.Tensor:
    """Maps raw values (file units) to model space.

    Args:
      raw: [..., H, W, C] raw image (any numeric dtype) or, for segmentation, integer
        labels [..., H, W] with values 0..K-1 or `void_label`.

    Returns:
      float32 image in `normalized_range` (invalid pixels -> 0 where `invalid_value` is
      set), or int32 labels with out-of-range labels mapped to `void_label`.
    """
    if self.is_categorical:
      labels = tf.cast(raw, tf.int32)
      in_range = (labels >= 0) & (labels < self.channels)
      return tf.where(in_range, labels, tf.cast(self.void_label, tf.int32))
    raw = tf.cast(raw, tf.float32)
    lo, hi = self.raw_range
    a, b = self.normalized_range
    x = (tf.clip_by_value(raw, lo, hi) - lo) / (hi - lo) * (b - a) + a
    valid = tf.math.is_finite(raw)
    if self.invalid_value is not None:
      valid &= tf.not_equal(raw, self.invalid_value)
      return tf.where(valid, x, tf.zeros_like(x))
    return tf.where(valid, x, tf.fill(tf.shape(x), (a + b) / 2.0))

  def denormalize(self, x) -> tf.Tensor:
    """Maps model-space values back to raw units (labels pass through)."""
    if self.is_categorical:
      return tf.cast(x, tf.int32)
    lo, hi = self.raw_range
    a, b = self.normalized_range
    x = tf.cast(x, tf.float32)
    return (tf.clip_by_value(x, a, b) - a) / (b - a) * (hi - lo) + lo

  def valid_mask(self, target) -> tf.Tensor:
    """Boolean mask of pixels that carry a measurement/label, same rank as `target`."""
    if self.is_categorical:
      target = tf.cast(target, tf.int32)
      return (target >= 0) & (target < self.channels)
    finite = tf.math.is_finite(target)
    if self.invalid_value is None:
      return finite
    # In model space an invalid raw value was mapped to exactly 0.
    return finite & tf.not_equal(target, 0.0)

  def encoder_input(self, x) -> tf.Tensor:
    """What this modality's encoder consumes: one-hot for labels, float images otherwise.

    Segmentation accepts int labels [B, H, W] (one-hot, void -> zeros) or already
    float probabilities [B, H, W, K]; other modalities replace NaN by 0.
    """
    if self.is_categorical:
      if x.dtype.is_integer or x.shape.rank == 3:  # Labels [B, H, W] (any dtype).
        return tf.one_hot(tf.cast(x, tf.int32), self.channels, dtype=tf.float32)
      return tf.cast(x, tf.float32)
    x = tf.cast(x, tf.float32)
    return tf.where(tf.math.is_finite(x), x, tf.zeros_like(x))

  def activate(self, output) -> tf.Tensor:
    """Applies the output activation to decoder outputs (softmax for logits)."""
    if self.output_activation == "softmax":
      return tf.nn.softmax(tf.cast(output, tf.float32), axis=-1)
    return tf.cast(output, tf.float32)

  def to_labels(self, output) -> tf.Tensor:
    """Class map from logits/probabilities [..., K] (segmentation only)."""
    if not self.is_categorical:
      raise ValueError(f"Modality {self.name!r} has no labels.")
    return tf.argmax(output, axis=-1, output_type=tf.int32)

  def colorize(self, labels) -> np.ndarray:
    """uint8 RGB image of a label map using the palette (void -> white)."""
    labels = np.asarray(labels)
    lut = np.full((256, 3), 255, np.uint8)
    lut[: len(self.palette)] = np.asarray(self.palette, np.uint8)
    return lut[np.clip(labels, 0, 255).astype(np.int64)]

  # ---------------------------------------------------------------- config
  def to_config(self) -> dict:
    config = dataclasses.asdict(self)
    config["raw_range"] = list(self.raw_range)
    config["normalized_range"] = list(self.normalized_range)
    config["class_names"] = list(self.class_names)
    config["palette"] = [list(p) for p in self.palette]
    config["class_weights"] = list(self.class_weights)
    return config

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> "Modality":
    return cls(**config)

  def replace(self, **changes) -> "Modality":
    return dataclasses.replace(self, **changes)


def rgb() -> Modality:
  return Modality(name="rgb", channels=3, loss="l2", output_activation="tanh",
                  decoder_uses_switches=False, adversarial=True,
                  raw_range=(0.0, 255.0), normalized_range=(-1.0, 1.0))


def depth(max_depth: float = 20.0) -> Modality:
  """Depth in metres; `max_depth` maps to 1.0, farther values are clipped."""
  return Modality(name="depth", channels=1, loss="berhu", output_activation="linear",
                  decoder_uses_switches=True, raw_range=(0.0, float(max_depth)),
                  normalized_range=(0.0, 1.0), invalid_value=0.0, unit="m")


def nir() -> Modality:
  return Modality(name="nir", channels=1, loss="berhu", output_activation="linear",
                  decoder_uses_switches=True, raw_range=(0.0, 255.0),
                  normalized_range=(0.0, 1.0))


def segmentation(class_names: Sequence[str] = FREIBURG_CLASS_NAMES,
                 palette: Sequence[Sequence[int]] = FREIBURG_PALETTE,
                 void_label: int = VOID_LABEL) -> Modality:
  return Modality(name="segmentation", channels=len(class_names), loss="cross_entropy",
                  output_activation="softmax", decoder_uses_switches=True,
                  class_names=tuple(class_names), palette=tuple(map(tuple, palette)),
                  void_label=void_label)


_BUILTINS = {"rgb": rgb, "depth": depth, "nir": nir, "segmentation": segmentation}
ANCHOR = "rgb"


def names() -> Tuple[str, ...]:
  """Names of the built-in modalities."""
  return tuple(_BUILTINS)


def get(name: str, **overrides) -> Modality:
  """Returns the built-in modality `name`, with factory arguments as overrides.

  Example:
    >>> get("depth", max_depth=10.0).raw_range
    (0.0, 10.0)

  Raises:
    ValueError: unknown name (the message lists the known ones).
  """
  if isinstance(name, Modality):
    return name
  if name not in _BUILTINS:
    raise ValueError(f"Unknown modality {name!r}. Known modalities: {', '.join(_BUILTINS)}. "
                     "Define others with mm_tf.modalities.Modality(...).")
  return _BUILTINS[name](**overrides)


def check_name(name: str, available: Sequence[str], argument: str = "modality") -> str:
  """Raises a clear ValueError when `name` is not one of `available`."""
  if name not in available:
    raise ValueError(f"Unknown {argument} {name!r}; this model has: {', '.join(available)}.")
  return name
