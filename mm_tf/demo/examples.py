"""Test scenes that an export carries for the demo page: `<export_dir>/examples/`.

`write_examples(export_dir, dataset_dir)` copies the first test scenes of a dataset in the
Freiburg Forest layout (the synthetic forest, or the real data) as they are on disk - the
dataset's own file formats - so clicking an example on the page sends exactly the bytes a
user would upload:

  <export_dir>/examples/index.json            [{"id": ..., "files": {modality: file name}}]
  <export_dir>/examples/<id>/rgb.jpg  depth.png  nir.tif  segmentation.png

No TensorFlow or Flask here: `python -m mm_tf.export --examples_from DIR` calls it.
"""

import json
import os
import shutil
import tempfile
from typing import Dict, List

EXAMPLES_DIR = "examples"
INDEX_FILE = "index.json"


def write_examples(export_dir: str, dataset_dir: str, count: int = 4, split: str = "test") -> str:
  """Copies the first `count` scenes of `split` into `<export_dir>/examples` (replacing it).

  Args:
    export_dir: Root written by `mm_tf.export`.
    dataset_dir: A dataset in the Freiburg layout (`<dataset_dir>/<split>/rgb/...`), e.g.
      `data/synthetic_forest`.
    count: Number of scenes.
    split: Split to take them from.

  Returns:
    The examples directory.
  """
  from mm_tf.data import freiburg_forest  # pylint: disable=g-import-not-at-top
  split_dir = os.path.join(freiburg_forest.find_root(dataset_dir), split)
  os.makedirs(export_dir, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".examples-", dir=export_dir)
  index = []
  try:
    for file_id, paths in freiburg_forest.list_examples(split_dir):
      if len(index) >= count:
        break
      if any(path is None for path in paths.values()):
        continue
      os.makedirs(os.path.join(staging, file_id))
      files = {}
      for modality, path in paths.items():
        name = modality + os.path.splitext(path)[1].lower()
        shutil.copyfile(path, os.path.join(staging, file_id, name))
        files[modality] = name
      index.append({"id": file_id, "files": files})
    with open(os.path.join(staging, INDEX_FILE), "w") as f:
      json.dump(index, f, indent=2)
    target = os.path.join(export_dir, EXAMPLES_DIR)
    if os.path.exists(target):
      shutil.rmtree(target)
    os.rename(staging, target)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return target


def list_examples(export_dir: str) -> List[Dict]:
  """The index of `<export_dir>/examples` (empty if the export carries none)."""
  path = os.path.join(export_dir, EXAMPLES_DIR, INDEX_FILE)
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    return json.load(f)


def example_file(export_dir: str, example_id: str, modality: str) -> str:
  """Path of one example file; KeyError if the example or modality is not in the index."""
  for entry in list_examples(export_dir):
    if entry["id"] == example_id and modality in entry["files"]:
      return os.path.join(export_dir, EXAMPLES_DIR, example_id, entry["files"][modality])
  raise KeyError(f"No example {example_id!r} with a {modality} file.")
