r"""Trains mix and match networks: all stages, then evaluation and export.

  python -m mm_tf.train --flagfile=configs/synthetic_forest.flags

Re-running the same command resumes from the last checkpoint (see mm_tf.training).
`python -m mm_tf.train --helpfull` lists every flag. A wrong flag value, a missing dataset
or an unusable --model_dir ends the command with one line on stderr (exit status 2),
before TensorFlow is imported or any model is built.
"""

from absl import flags
from absl import logging

from mm_tf import config as mm_config
from mm_tf import errors

mm_config.define_flags()
flags.adopt_module_key_flags(mm_config)  # `--help` lists them, not only `--helpfull`.
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise errors.ConfigError(f"Unexpected arguments {argv[1:]}: flags are written "
                             "--name=value.")
  config = mm_config.from_flags(FLAGS)
  mm_config.check_inputs(config)
  from mm_tf import training  # pylint: disable=g-import-not-at-top
  logging.info("Config: %s", config)
  training.run_training(config, flags_text=FLAGS.flags_into_string())


if __name__ == "__main__":
  errors.run_cli(main, "mm_tf.train")
