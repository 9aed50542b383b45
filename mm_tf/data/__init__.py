"""Datasets of mm_tf: specs, the synthetic forest generator, tfds builders, pipelines.

Importing this package registers the tfds builders "freiburg_forest", "sun_rgbd" and
"scenenet_rgbd". See docs/data.md.

Example:
  >>> import mm_tf.data
  >>> spec = mm_tf.data.get_dataset_spec("synthetic_forest")
  >>> mm_tf.data.ensure_synthetic_forest("/tmp/data", num_train=200, num_test=50, image_size=64)
  >>> batches = mm_tf.data.pipeline.train_dataset(spec, "/tmp/data", 64, 8, seed=0)
"""

from mm_tf.data import freiburg_forest  # Registers the tfds builders.
from mm_tf.data import pipeline
from mm_tf.data import scenenet_rgbd
from mm_tf.data import sun_rgbd
from mm_tf.data.datasets import DatasetSpec, dataset_names, get_dataset_spec, stream_name
from mm_tf.data.pipeline import test_dataset, train_dataset



def ensure_synthetic_forest(data_dir: str, num_train: int = 400, num_test: int = 100,
                            image_size: int = 64, seed: int = 0) -> str:
  """Generates `<data_dir>/synthetic_forest` if absent; see synthetic_forest.ensure_synthetic_forest.

  (A wrapper so that importing mm_tf.data does not import the generator module, which
  `python -m mm_tf.data.synthetic_forest` runs as a script.)
  """
  from mm_tf.data import synthetic_forest  # pylint: disable=g-import-not-at-top
  return synthetic_forest.ensure_synthetic_forest(data_dir, num_train, num_test, image_size, seed)


__all__ = ["DatasetSpec", "dataset_names", "get_dataset_spec", "stream_name", "pipeline",
           "train_dataset", "test_dataset", "ensure_synthetic_forest", "freiburg_forest",
           "sun_rgbd", "scenenet_rgbd"]
