r"""Writes a forest with the real Freiburg release's file quirks, to check the main job on it.

The synthetic forest is written in the Freiburg layout, but its files are easier than the
DeepScene release's. This script generates a forest (`mm_tf.data.synthetic_forest`, by
default at 256x256 with seed 7: other scenes and another rendering resolution than the
main job's) and rewrites it the way the release stores its files:

* RGB: JPEG (quality 88, 4:2:0), non-square, `--height` rows and a random width of 1.45 to
  2.1 times that (the release: about 480 x 700-1000); the top and bottom 3/16 are cropped.
* depth_gray: 8-bit *relative* depth, normalised per image (the release's maps are
  non-metric), 0 = invalid, at half the RGB resolution.
* nir_gray: 8-bit TIFF.
* GT_color: vegetation in the upper half in the Tree colour (merged into vegetation by the
  reader), white (void) pixels on every class border, `<id>_mask.png` for every third id.
* ids like `b3-1002` (the text before the first `_` pairs the files).

  python benchmarks/freiburg_layout_check.py --output_dir /tmp/fl/freiburg_forest
  python -m mm_tf.train --flagfile=configs/freiburg_cpu.flags --data_dir=/tmp/fl \
      --model_dir=/tmp/fl_run --noexport

Results and timings: docs/training.md, "Freiburg-layout data".
"""

import os
import tempfile

from absl import app, flags
import numpy as np
from PIL import Image

flags.DEFINE_string("output_dir", None, "Where to write {train,test}/ (the freiburg_forest "
                    "directory of a data_dir).")
flags.DEFINE_integer("num_train", 230, "Train scenes (the release has 230).")
flags.DEFINE_integer("num_test", 100, "Test scenes (the release has 136).")
flags.DEFINE_integer("render_size", 256, "Size the scenes are rendered at.")
flags.DEFINE_integer("height", 480, "Rows of the written RGB, NIR and GT images.")
flags.DEFINE_integer("seed", 7, "Scene and width seed.")
flags.mark_flag_as_required("output_dir")
FLAGS = flags.FLAGS

VEGETATION_COLOUR = (102, 102, 51)
TREE_COLOUR = (0, 60, 0)
VOID_COLOUR = (255, 255, 255)


def rewrite(source_dir: str, output_dir: str, num_train: int, num_test: int, height: int,
            seed: int) -> None:
  """Rewrites a generated forest (`source_dir`) with the release's quirks into `output_dir`."""
  rng = np.random.default_rng(seed)
  for split, count in (("train", num_train), ("test", num_test)):
    names = sorted(os.listdir(os.path.join(source_dir, split, "rgb")))[:count]
    for index, name in enumerate(names):
      scene_id = name.split("_")[0]
      source = os.path.join(source_dir, split)
      rgb = np.asarray(Image.open(f"{source}/rgb/{name}"))
      size = rgb.shape[0]
      rows = slice(size * 3 // 16, size * 13 // 16)
      width = int(rng.integers(int(1.45 * height), int(2.1 * height)))
      file_id = f"b{index % 7 + 1}-{1000 + index}"
      target = os.path.join(output_dir, split)
      for folder in ("rgb", "depth_gray", "nir_gray", "GT_color"):
        os.makedirs(os.path.join(target, folder), exist_ok=True)
      Image.fromarray(rgb[rows]).resize((width, height), Image.BICUBIC).save(
          f"{target}/rgb/{file_id}_Clipped.jpg", quality=88)
      depth = np.asarray(Image.open(
          f"{source}/depth_gray/{scene_id}_Clipped_redict_depth_gray.png")).astype(np.float64)[rows]
      relative = np.zeros(depth.shape, np.uint8)
      valid = depth > 0
      if valid.any():
        relative[valid] = np.clip(np.round(depth[valid] / depth[valid].max() * 254 + 1), 1, 255)
      Image.fromarray(relative).resize((width // 2, height // 2), Image.NEAREST).save(
          f"{target}/depth_gray/{file_id}_Clipped_redict_depth_gray.png")
      nir = np.asarray(Image.open(f"{source}/nir_gray/{scene_id}.tif"))[rows]
      Image.fromarray(nir).resize((width, height), Image.BILINEAR).save(
          f"{target}/nir_gray/{file_id}.tif")
      gt = np.asarray(Image.open(f"{source}/GT_color/{scene_id}_Clipped.png").convert("RGB"))
      gt = gt[rows].copy()
      upper = np.zeros(gt.shape[:2], bool)
      upper[: gt.shape[0] // 2] = True
      gt[(gt == VEGETATION_COLOUR).all(-1) & upper] = TREE_COLOUR
      gt = np.asarray(Image.fromarray(gt).resize((width, height), Image.NEAREST)).copy()
      code = gt.astype(np.int64) @ np.array([65536, 256, 1])
      border = np.zeros(code.shape, bool)
      border[1:] |= code[1:] != code[:-1]
      border[:, 1:] |= code[:, 1:] != code[:, :-1]
      gt[border] = VOID_COLOUR
      suffix = "_mask.png" if index % 3 == 0 else "_Clipped.png"
      Image.fromarray(gt).save(f"{target}/GT_color/{file_id}{suffix}")


def main(argv):
  del argv
  from mm_tf.data import synthetic_forest  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory(prefix="mm_tf_forest_") as source:
    synthetic_forest.generate(source, FLAGS.num_train, FLAGS.num_test, FLAGS.render_size,
                              FLAGS.seed)
    rewrite(source, FLAGS.output_dir, FLAGS.num_train, FLAGS.num_test, FLAGS.height,
            FLAGS.seed)
  print(f"Wrote {FLAGS.num_train} train + {FLAGS.num_test} test scenes in the Freiburg "
        f"release's style to {FLAGS.output_dir}")


if __name__ == "__main__":
  app.run(main)
