r"""Trains mix and match networks: all stages, then evaluation and export.

  python -m mm_tf.train --flagfile=configs/synthetic_forest.flags

Re-running the same command resumes from the last checkpoint (see mm_tf.training).
`python -m mm_tf.train --helpfull` lists every flag.
"""

from absl import app
from absl import flags
from absl import logging

from mm_tf import config as mm_config

mm_config.define_flags()
flags.adopt_module_key_flags(mm_config)  # `--help` lists them, not only `--helpfull`.
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = mm_config.from_flags(FLAGS)
  from mm_tf import training  # pylint: disable=g-import-not-at-top
  logging.info("Config: %s", config)
  training.run_training(config, flags_text=FLAGS.flags_into_string())


if __name__ == "__main__":
  app.run(main)
