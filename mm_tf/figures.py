"""Qualitative figures (matplotlib, no display): a grid like the paper's Fig. 18.

Rows are test examples; columns are the inputs, then predictions of several translations
(cascade, zero-pair, +PP, multimodal), then the ground truth. Segmentation is drawn with
the class palette, depth/NIR with a colour map on a shared range, RGB as is.
"""

import os
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np

DEPTH_COLORMAP = "magma_r"


def _matplotlib():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")  # Files only; never needs a display.
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def to_display(modality, value, raw: bool) -> Tuple[np.ndarray, dict]:
  """An image for `imshow` and its keyword arguments.

  Args:
    modality: The `Modality` of `value`.
    value: One example: labels [H,W] or an image [H,W,C].
    raw: Whether `value` is already in raw units (predictions from `evaluate_model` are;
      test inputs are in model space).
  """
  value = np.asarray(value)
  if modality.is_categorical:
    return modality.colorize(value), {}
  if not raw:
    value = np.asarray(modality.denormalize(value))
  lo, hi = modality.raw_range
  if value.ndim == 3 and value.shape[-1] == 3:
    return np.clip((value - lo) / (hi - lo), 0, 1), {}
  value = value.reshape(value.shape[:2])
  if modality.invalid_value is not None:
    value = np.ma.masked_where(value <= lo, value)
  return value, {"cmap": DEPTH_COLORMAP if modality.unit == "m" else "gray",
                 "vmin": lo, "vmax": hi}


def qualitative_grid(path: str, modalities: Mapping, inputs: Mapping[str, np.ndarray],
                     columns: Sequence[Tuple[str, str, np.ndarray]], target: str,
                     input_names: Optional[Sequence[str]] = None, title: str = ""):
  """Writes a grid figure.

  Args:
    path: Output .png.
    modalities: `{name: Modality}`.
    inputs: `{modality: [N, ...]}` test inputs in model space (ground truth included).
    columns: `(column title, output modality, [N, ...] predictions in raw units)`.
    target: Modality whose ground truth is the last column.
    input_names: Input modalities shown first (default: all but `target`).
    title: Figure title.
  """
  plt = _matplotlib()
  input_names = list(input_names or [m for m in inputs if m != target])
  num_rows = len(next(iter(inputs.values())))
  num_cols = len(input_names) + len(columns) + 1
  fig, axes = plt.subplots(num_rows, num_cols, figsize=(1.6 * num_cols, 1.6 * num_rows + 0.4),
                           squeeze=False)
  for row in range(num_rows):
    cells = [(name, name, inputs[name][row], False) for name in input_names]
    cells += [(label, modality, values[row], True) for label, modality, values in columns]
    cells.append(("ground truth", target, inputs[target][row], False))
    for col, (label, modality, value, raw) in enumerate(cells):
      image, kwargs = to_display(modalities[modality], value, raw)
      ax = axes[row][col]
      ax.imshow(image, interpolation="nearest", **kwargs)
      ax.set_xticks([])
      ax.set_yticks([])
      if row == 0:
        ax.set_title(label, fontsize=7)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def palette_legend(path: str, segmentation):
  """A small legend of the segmentation classes and their colours."""
  plt = _matplotlib()
  fig, ax = plt.subplots(figsize=(2.2, 0.3 * segmentation.num_classes + 0.2))
  for i, (name, colour) in enumerate(zip(segmentation.class_names, segmentation.palette)):
    ax.add_patch(plt.Rectangle((0, i), 1, 0.8, color=np.asarray(colour) / 255.0))
    ax.text(1.2, i + 0.4, name, va="center", fontsize=8)
  ax.set_xlim(0, 4)
  ax.set_ylim(segmentation.num_classes, -0.2)
  ax.axis("off")
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path
