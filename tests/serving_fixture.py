"""A small trained-looking model exported once per test process (shared by serving tests)."""

import atexit
import functools
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

MODALITIES = ["rgb", "depth", "nir", "segmentation"]
STREAMS = [("rgb", "segmentation"), ("rgb", "depth", "nir")]
IMAGE_SIZE = 64


def make_model():
  """Width-1/16 model whose batch-norm statistics moved away from their init values.

  A few training-mode passes on random data update the moving statistics, so the
  inference graph that export writes differs from a fresh model (a test that forgot
  `training=False` somewhere would see it).
  """
  from mm_tf.model import MixAndMatchNetworks  # pylint: disable=g-import-not-at-top
  keras_seed = 7
  tf.keras.utils.set_random_seed(keras_seed)
  model = MixAndMatchNetworks(MODALITIES, STREAMS, width=0.0625, image_size=IMAGE_SIZE)
  rng = np.random.default_rng(0)
  for _ in range(2):
    for name, modality in model.modalities.items():
      x = tf.constant(rng.normal(size=(4, IMAGE_SIZE, IMAGE_SIZE, modality.encoder_channels)),
                      tf.float32)
      latent, side = model.encoders[name](x, training=True)
      model.decoders[name](latent, side, training=True)
  return model


def raw_batch(modality, batch=2, size=IMAGE_SIZE, seed=0):
  """Raw-unit inputs as a user would send them (depth metres with invalid zeros)."""
  rng = np.random.default_rng(seed)
  if modality.is_categorical:
    labels = rng.integers(0, modality.channels, size=(batch, size, size)).astype(np.int32)
    labels[:, :4, :4] = modality.void_label
    return labels
  lo, hi = modality.raw_range
  x = rng.uniform(lo, hi * 1.1, size=(batch, size, size, modality.channels)).astype(np.float32)
  if modality.invalid_value is not None:
    x[:, :3] = modality.invalid_value
  return x


@functools.lru_cache(maxsize=None)
def exported():
  """(model, export_dir, model_dir) built and exported once per process."""
  from mm_tf import export, saving  # pylint: disable=g-import-not-at-top
  root = tempfile.mkdtemp(prefix="mm_tf_serving_test_")
  atexit.register(shutil.rmtree, root, True)
  model = make_model()
  model_dir = os.path.join(root, "run")
  saving.save_model(model, os.path.join(model_dir, "model"))
  export_dir = os.path.join(root, "serving")
  export.export_model(model, export_dir, version=1)
  return model, export_dir, model_dir


def depth_to_segmentation_case(model):
  """(depth, rgb, softmax, labels): raw inputs and the in-process depth->segmentation result
  that every serving test composes against."""
  modalities = model.modalities
  depth = raw_batch(modalities["depth"], batch=2)
  rgb = raw_batch(modalities["rgb"], batch=2, seed=1)
  logits = model.translate("depth", "segmentation", modalities["depth"].normalize(depth))
  return depth, rgb, tf.nn.softmax(logits).numpy(), tf.argmax(logits, -1).numpy()
