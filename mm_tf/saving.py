"""Saving and loading a trained `MixAndMatchNetworks` (config + weights), atomically.

Layout of a saved model directory (`<model_dir>/model/` after training):
  model_config.json   `MixAndMatchNetworks.get_config()` (modalities, streams, width, ...)
  model.weights.h5    every variable (encoders, decoders, discriminator)

Both files are written into a temporary sibling directory that is renamed into place,
so an interrupted save never leaves a half-written model that `load_model` would read.
"""

import json
import os
import shutil
import signal
import sys
import tempfile

from mm_tf import errors
from mm_tf import model as mm_model

# Crash-safety tests kill a run at named points (mm_tf.training, mm_tf.export).
KILL_AT_ENV = "MM_TF_KILL_AT"


def kill_point(name: str):
  """SIGKILLs this process at the point `name` if $MM_TF_KILL_AT names it (tests only).

  Crash-safety tests kill a run at exact points (a step of a stage, the evaluation before
  its results are written, the export before its commit) rather than at racy times: a
  timer would depend on how fast the machine is.
  """
  if os.environ.get(KILL_AT_ENV) == name:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


CONFIG_FILE = "model_config.json"
WEIGHTS_FILE = "model.weights.h5"
MODEL_SUBDIR = "model"


def save_model(model, directory):
  """Writes `model`'s config and weights to `directory` (replaced atomically)."""
  if not model.built or model.image_size is None:
    raise ValueError("Build the model (image_size=... or build_networks) before saving it.")
  directory = os.path.abspath(directory)
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".saving-", dir=parent)
  try:
    with open(os.path.join(staging, CONFIG_FILE), "w") as f:
      json.dump(model.get_config(), f, indent=2)
    model.save_weights(os.path.join(staging, WEIGHTS_FILE))
    backup = None
    if os.path.exists(directory):
      backup = directory + ".old"
      shutil.rmtree(backup, ignore_errors=True)
      os.rename(directory, backup)
    os.rename(staging, directory)
    if backup:
      shutil.rmtree(backup, ignore_errors=True)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return directory


def write_text_atomic(path: str, text: str):
  """Writes `path` through a temporary file and a rename: readers see all of it or none."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def _resolve(path):
  """Accepts a saved-model directory or a training model_dir containing `model/`."""
  if os.path.isfile(os.path.join(path, CONFIG_FILE)):
    return path
  nested = os.path.join(path, MODEL_SUBDIR)
  if os.path.isfile(os.path.join(nested, CONFIG_FILE)):
    return nested
  if os.path.isdir(path + ".old") and os.path.isfile(os.path.join(path + ".old", CONFIG_FILE)):
    return path + ".old"  # A save was interrupted between its two renames.
  raise errors.MissingInputError(
      f"No trained model in {path!r}: expected {CONFIG_FILE} and {WEIGHTS_FILE} there or in "
      f"{os.path.join(path, MODEL_SUBDIR)!r}. Train one with `python -m mm_tf.train` first.")


def load_model(path):
  """Returns the built `MixAndMatchNetworks` saved at `path` (or `<path>/model`).

  Example:
    >>> model = mm_tf.load("runs/synthetic_forest")
    >>> model.translate("depth", "segmentation", depth_batch)
  """
  path = _resolve(path)
  with open(os.path.join(path, CONFIG_FILE)) as f:
    try:
      config = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{os.path.join(path, CONFIG_FILE)} is not valid JSON ({e}); the "
                       "model directory is corrupt: re-export or retrain.") from e
  model = mm_model.MixAndMatchNetworks.from_config(config)
  if model.image_size is None:
    raise ValueError(f"{os.path.join(path, CONFIG_FILE)} has no image_size; cannot build.")
  weights = os.path.join(path, WEIGHTS_FILE)
  if not os.path.isfile(weights):
    raise FileNotFoundError(f"{weights} is missing; the saved model is incomplete.")
  model.load_weights(weights)
  return model
