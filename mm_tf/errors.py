"""User errors and how the command-line tools report them.

A `UserError` is something the user can fix (a flag value, a missing dataset, a wrong
directory). The CLIs (`train`, `evaluate`, `export`, `serve`) run their `main` through
`run_cli`, which prints such an error as one line on stderr (what is wrong, what to do)
and exits with status 2. Any other exception is a bug and keeps its traceback.

This module imports neither TensorFlow nor Keras, so CLIs can check their inputs before
the (slow, noisy) TensorFlow import.
"""

import sys

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
  """A problem with the user's input that they can fix; reported without a traceback."""


class ConfigError(UserError, ValueError):
  """A flag value that is invalid or inconsistent (names the flag)."""


class MissingInputError(UserError, FileNotFoundError):
  """A file or directory the command needs is missing or of the wrong kind."""


def exit_with_user_error(program: str, message) -> None:
  """Prints `program: error: message` as one line on stderr and exits with status 2."""
  line = " ".join(str(message).split())
  sys.stderr.write(f"{program}: error: {line}\n")
  sys.stderr.flush()
  sys.exit(USER_ERROR_EXIT_CODE)


def run_cli(main, program: str):
  """`absl.app.run(main)`, with flag errors and `UserError`s as one line on stderr.

  Args:
    main: The CLI's `main(argv)`.
    program: Name shown before the message, e.g. "mm_tf.train".
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top

  def parse_flags(argv):
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      message = str(e).removeprefix("ERROR::").strip()
      exit_with_user_error(program, f"{message} (see --helpfull).")

  def guarded_main(argv):
    try:
      return main(argv)
    except UserError as e:
      exit_with_user_error(program, e)

  app.run(guarded_main, flags_parser=parse_flags)
