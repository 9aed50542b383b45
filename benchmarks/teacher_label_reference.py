r"""What RGB's labels can teach depth: an oracle trained on a teacher's labels, not the truth.

Zero-pair D->S never sees a depth/segmentation pair: its only segmentation supervision
reaches it through RGB (stage 1's (RGB, segmentation) pairs, aligned latents, and stage
3's pseudo-labels, which are the R->S outputs). So the R->S teacher bounds what D->S can
learn, whatever the alignment. This benchmark measures that bound:

1. copies a synthetic-forest data dir and replaces every TRAIN label map with the
   argmax of a trained run's R->S on that scene's RGB (the test labels stay true);
2. trains the oracle of the main job on the copy (`--oracle`: (depth, segmentation) and
   (NIR, segmentation) pairs of the whole train split, fully supervised, but on the
   teacher's labels);
3. prints its D->S, N->S and (D,N)->S mIoU and per-class IoU on the true test labels,
   next to the run's own zero-pair rows and, when given, the true-label oracle's.

If zero-pair D->S reaches this reference trained with the same loss, alignment is not what
holds it back: the teacher is. `--oracle_flags` trains the reference (and should train the
true-label oracle) with other settings, e.g. class weights, to see what a free fit to the
teacher's labels can reach (docs/training.md, "Teacher-label reference").

  python benchmarks/teacher_label_reference.py --data_dir runs/data_s0 \
      --model_dir runs/main_s0 --output_dir runs/teacher_ref_s0 --seed 0 \
      --oracle_model_dir runs/oracle_s0
"""

import os
import shutil
import subprocess
import sys

from absl import app, flags
import numpy as np

flags.DEFINE_string("data_dir", None, "Project data dir of the run (holds synthetic_forest/).")
flags.DEFINE_string("model_dir", None, "Trained run whose final R->S is the teacher.")
flags.DEFINE_string("output_dir", None, "Where the relabelled data (data/) and the oracle "
                    "trained on it (oracle/) go. Emptied first.")
flags.DEFINE_integer("seed", 0, "Seed of the oracle's training (use the run's).")
flags.DEFINE_string("flagfile_for_oracle", "configs/synthetic_forest.flags",
                    "Flagfile the oracle is trained with (the main job's).")
flags.DEFINE_string("oracle_model_dir", "", "Optional true-label `--oracle` run to compare with.")
flags.DEFINE_list("oracle_flags", [], "Extra flags of the oracle's training, e.g. "
                  "--oracle_flags=--class_balancing=sqrt_median_frequency (give the true-label "
                  "oracle of --oracle_model_dir the same ones).")
flags.DEFINE_bool("train", True, "Train the oracle (else only relabel and score the teacher).")
flags.mark_flags_as_required(["data_dir", "model_dir", "output_dir"])
FLAGS = flags.FLAGS
SOURCE = "synthetic_forest"


def _relabel(data_dir, model_dir, out_data):
  """Copies data_dir's raw files to out_data, TRAIN labels replaced by the teacher's."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import mm_tf  # pylint: disable=g-import-not-at-top
  from mm_tf import metrics, modalities  # pylint: disable=g-import-not-at-top
  from mm_tf.data import datasets, freiburg_forest  # pylint: disable=g-import-not-at-top

  src = os.path.join(data_dir, SOURCE)
  if not os.path.isdir(os.path.join(src, "train")):
    raise FileNotFoundError(f"--data_dir={data_dir}: no {SOURCE}/train in it; pass the data "
                            "dir the run was trained on (its flags.txt says which).")
  model = mm_tf.load(model_dir)
  spec = {m.name: m for m in datasets.get_dataset_spec(SOURCE).modalities}
  rgb, segmentation = spec["rgb"], spec["segmentation"]
  shutil.copytree(src, os.path.join(out_data, SOURCE))
  palette = np.array(modalities.FREIBURG_PALETTE, np.uint8)
  # Only scenes with a label map are relabelled: the oracle trains on those alone.
  examples = [e for e in freiburg_forest.list_examples(os.path.join(out_data, SOURCE, "train"))
              if e[1]["segmentation"] is not None]
  agreement = metrics.SegmentationMetric(segmentation.channels,
                                         class_names=segmentation.class_names)
  for start in range(0, len(examples), 50):
    paths = [p for _, p in examples[start:start + 50]]
    images = rgb.normalize(np.stack([freiburg_forest.read_rgb(p["rgb"]) for p in paths]))
    labels = tf.argmax(model.translate("rgb", "segmentation", images), -1).numpy()
    for p, teacher in zip(paths, labels.astype(np.uint8)):
      agreement.update(freiburg_forest.read_segmentation(p["segmentation"]), teacher)
      Image.fromarray(palette[teacher]).save(p["segmentation"])
  scores = agreement.result()
  print(f"{len(examples)} train label maps replaced by {model_dir}'s R->S; agreement with the "
        f"true train labels: pixels {scores['global_accuracy']:.3f}, mIoU {scores['miou']:.3f} ("
        + ", ".join(f"{c} {'n/a' if v is None else f'{v:.2f}'}"
                    for c, v in scores["per_class_iou"].items()) + ")")
  return segmentation.class_names


def _stage_results(model_dir, stage=None):
  """Segmentation rows of model_dir's evaluation after `stage` (default: its last)."""
  from mm_tf import evaluation  # pylint: disable=g-import-not-at-top
  eval_dir = os.path.join(model_dir, evaluation.EVAL_SUBDIR)
  if stage is None:
    stage = max(int(d.split("_")[1]) for d in os.listdir(eval_dir) if d.startswith("stage_"))
  return evaluation.segmentation_metrics(os.path.join(eval_dir, f"stage_{stage}",
                                                      "results.json"))


def _print_row(label, scores, class_names):
  iou = scores["per_class_iou"]  # Keyed by name (results.json sorts its keys).
  print(f"{label:<44}{100 * scores['miou']:>6.1f}  " +
        " ".join(f"{100 * (iou[c] or 0.0):>6.1f}" for c in class_names))


def main(argv):
  del argv
  out_data = os.path.join(FLAGS.output_dir, "data")
  oracle_dir = os.path.join(FLAGS.output_dir, "oracle")
  shutil.rmtree(FLAGS.output_dir, ignore_errors=True)
  class_names = _relabel(FLAGS.data_dir, FLAGS.model_dir, out_data)
  if not FLAGS.train:
    return
  command = [sys.executable, "-m", "mm_tf.train", f"--flagfile={FLAGS.flagfile_for_oracle}",
             "--oracle", f"--seed={FLAGS.seed}", f"--data_dir={out_data}",
             f"--model_dir={oracle_dir}", "--noexport", *FLAGS.oracle_flags]
  print("training:", " ".join(command), flush=True)
  with open(os.path.join(FLAGS.output_dir, "oracle.log"), "w") as log:
    subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
  teacher_oracle = _stage_results(oracle_dir, stage=1)
  run = _stage_results(FLAGS.model_dir)
  true_oracle = _stage_results(FLAGS.oracle_model_dir, stage=1) if FLAGS.oracle_model_dir else {}
  print(f"{'mIoU % / IoU % on the true test labels':<44}{'mIoU':>6}  " +
        " ".join(f"{c[:6]:>6}" for c in class_names))
  for name, zero_pair in (("D->S", "D->S"), ("N->S", "N->S"), ("(D,N)->S", None)):
    if zero_pair and zero_pair in run:
      _print_row(f"{name} zero-pair (the run)", run[zero_pair], class_names)
    _print_row(f"{name} oracle on the teacher's labels", teacher_oracle[name], class_names)
    if name in true_oracle:
      _print_row(f"{name} oracle on the true labels", true_oracle[name], class_names)


if __name__ == "__main__":
  app.run(main)
