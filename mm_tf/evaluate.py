r"""Evaluates a trained model directory on its dataset's test split.

  python -m mm_tf.evaluate --model_dir=runs/synthetic_forest \
      [--oracle_model_dir=runs/synthetic_forest/oracle]

Writes `<model_dir>/eval/results.json`, `results.md` (paper-style tables; after-each-stage
table from `eval/stage_<n>/`; published Freiburg numbers as a side column) and
`figures/*.png` (qualitative grids like paper Fig. 18). The work is done by
`mm_tf.evaluation.evaluate_model_dir`; this module is only the command line.
"""

import os

from absl import flags

from mm_tf import config as mm_config
from mm_tf import errors

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("model_dir", None, "Training model_dir to evaluate (holds config.json "
                      "and model/).")
  flags.DEFINE_string("oracle_model_dir", "", "model_dir of an --oracle run on the same "
                      "dataset; its rows are added to the tables.")
  flags.DEFINE_string("data_dir", "", "Override of the data_dir saved in config.json.")
  flags.DEFINE_integer("batch_size", 0, "Override of the evaluation batch size (0: saved).")
  flags.DEFINE_integer("num_figure_examples", 4, "Test examples shown in the figures.")


def check_model_dir(model_dir: str, flag: str = "--model_dir"):
  """Raises a `UserError` unless `model_dir` holds a trained run (no TensorFlow needed)."""
  if not model_dir:
    raise errors.ConfigError(f"{flag} is required: the model_dir of a training run.")
  if not os.path.isfile(os.path.join(model_dir, mm_config.CONFIG_FILE)):
    raise errors.MissingInputError(
        f"{flag}={model_dir} is not a training model_dir (no {mm_config.CONFIG_FILE}): give "
        "the --model_dir of a `python -m mm_tf.train` run.")
  if not os.path.isfile(os.path.join(model_dir, "model", "model_config.json")):
    raise errors.MissingInputError(
        f"{flag}={model_dir} has no trained model yet (model/ is missing): re-run its "
        "training command to finish it.")


def main(argv):
  del argv
  check_model_dir(FLAGS.model_dir)
  if FLAGS.oracle_model_dir:
    check_model_dir(FLAGS.oracle_model_dir, "--oracle_model_dir")
  from mm_tf import evaluation  # pylint: disable=g-import-not-at-top
  eval_dir = evaluation.evaluate_model_dir(
      FLAGS.model_dir, oracle_model_dir=FLAGS.oracle_model_dir or None,
      data_dir=FLAGS.data_dir or None, batch_size=FLAGS.batch_size or None,
      num_figure_examples=FLAGS.num_figure_examples)
  print(f"Wrote {eval_dir}/results.json, results.md and figures/")


if __name__ == "__main__":
  define_flags()
  errors.run_cli(main, "mm_tf.evaluate")
