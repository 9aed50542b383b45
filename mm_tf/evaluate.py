r"""Evaluates a trained model directory on its dataset's test split.

  python -m mm_tf.evaluate --model_dir=runs/synthetic_forest \
      [--oracle_model_dir=runs/synthetic_forest/oracle]

Writes `<model_dir>/eval/results.json`, `results.md` (paper-style tables; after-each-stage
table from `eval/stage_<n>/`; published Freiburg numbers as a side column) and
`figures/*.png` (qualitative grids like paper Fig. 18).
"""

import json
import os
from typing import Optional

import numpy as np

from mm_tf import config as mm_config
from mm_tf import evaluation

EVAL_SUBDIR = "eval"


def _load_stage_results(model_dir):
  per_stage, predictions = {}, {}
  eval_dir = os.path.join(model_dir, EVAL_SUBDIR)
  if not os.path.isdir(eval_dir):
    return per_stage, predictions
  for name in sorted(os.listdir(eval_dir)):
    if not name.startswith("stage_"):
      continue
    stage = int(name.split("_")[1])
    path = os.path.join(eval_dir, name, "results.json")
    if os.path.exists(path):
      with open(path) as f:
        per_stage[stage] = json.load(f)
    npz = os.path.join(eval_dir, name, "predictions.npz")
    if os.path.exists(npz):
      with np.load(npz) as data:
        predictions[stage] = {
            "inputs": {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("input/")},
            "outputs": {k.split("/", 1)[1]: data[k] for k in data.files
                        if k.startswith("output/")}}
  return per_stage, predictions


def evaluate_model_dir(model_dir: str, oracle_model_dir: Optional[str] = None, model=None,
                       data_dir: Optional[str] = None, batch_size: Optional[int] = None,
                       num_figure_examples: Optional[int] = None,
                       reuse_stage_results: bool = False) -> str:
  """Evaluates `model_dir` (and optionally an oracle) and writes `model_dir/eval/`.

  Args:
    model_dir: A training model_dir (config.json + model/).
    oracle_model_dir: model_dir of an `--oracle` run on the same dataset.
    model: The already loaded model (default: `mm_tf.load(model_dir)`).
    data_dir: Override of the data_dir stored in config.json.
    batch_size: Override of the evaluation batch size.
    num_figure_examples: Override of the number of examples in figures.
    reuse_stage_results: Take the final model's results from `eval/stage_<last>/` when
      they are there (training evaluated the same weights at the end of the last stage).

  Returns:
    The eval directory.
  """
  import mm_tf  # pylint: disable=g-import-not-at-top
  from mm_tf import training  # pylint: disable=g-import-not-at-top
  config_path = os.path.join(model_dir, training.CONFIG_FILE)
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{config_path} not found: {model_dir!r} is not a training "
                            "model_dir (train one with python -m mm_tf.train).")
  config = mm_config.ExperimentConfig.from_json_file(config_path)
  overrides = {}
  if data_dir:
    overrides["data_dir"] = data_dir
  if batch_size:
    overrides["eval_batch_size"] = batch_size
  if num_figure_examples is not None:
    overrides["num_figure_examples"] = num_figure_examples
  config = config.replace(**overrides)
  model = model or mm_tf.load(model_dir)
  examples = config.num_figure_examples
  per_stage, stage_predictions = _load_stage_results(model_dir)
  final_stage = max(config.stage_numbers())
  if (reuse_stage_results and final_stage in per_stage
      and stage_predictions.get(final_stage, {}).get("inputs")):
    results = {k: v for k, v in per_stage[final_stage].items() if k != "stage"}
    predictions = stage_predictions[final_stage]
  else:
    results = evaluation.evaluate_model(model, training.test_dataset(config),
                                        prediction_examples=examples)
    predictions = results.pop("_predictions")
  oracle_results, oracle_predictions = None, None
  if oracle_model_dir:
    oracle = mm_tf.load(oracle_model_dir)
    if oracle.image_size != model.image_size:
      raise ValueError(f"The oracle in {oracle_model_dir} is {oracle.image_size}px, the model "
                       f"{model.image_size}px; they must be evaluated on the same images.")
    oracle_results = evaluation.evaluate_model(
        oracle, training.test_dataset(config),
        translations=evaluation.default_translations(oracle, targets=["segmentation"]),
        alignment=False, prediction_examples=examples)
    oracle_predictions = oracle_results.pop("_predictions")["outputs"]
    for entry in oracle_results["translations"]:
      entry["kind"] = "oracle"
  eval_dir = os.path.join(model_dir, EVAL_SUBDIR)
  full = dict(results, dataset=config.dataset, model_dir=os.path.abspath(model_dir),
              stage=final_stage,
              per_stage={str(s): evaluation.summary(r) for s, r in per_stage.items()},
              oracle=oracle_results)
  evaluation.write_json(full, os.path.join(eval_dir, "results.json"))
  markdown = evaluation.results_markdown(results, config.dataset, per_stage=per_stage or None,
                                         oracle=oracle_results, stage=final_stage)
  with open(os.path.join(eval_dir, "results.md"), "w") as f:
    f.write(markdown + "\n")
  write_figures(model, predictions, stage_predictions, oracle_predictions,
                os.path.join(eval_dir, "figures"))
  print(markdown)
  return eval_dir


def write_figures(model, predictions, stage_predictions, oracle_predictions, directory):
  """Paper Fig. 18-style grids into segmentation and into depth (what the model has)."""
  from mm_tf import figures  # pylint: disable=g-import-not-at-top
  inputs, outputs = predictions["inputs"], predictions["outputs"]
  modalities = model.modalities
  written = []
  anchor = model.anchor
  before_pp = stage_predictions.get(2, {}).get("outputs", {})
  for target in [m for m in modalities if not modalities[m].adversarial]:
    sources = [m for m in modalities if m != target and m != anchor]
    columns = []
    for source in sources:
      cascade = f"{source}->{anchor}->{target}"
      direct = f"{source}->{target}"
      if cascade in outputs:
        columns.append((f"cascade {_short(cascade)}", target, outputs[cascade]))
      if direct in before_pp and len(stage_predictions) > 1:
        columns.append((f"{_short(direct)} (stage 2)", target, before_pp[direct]))
      if direct in outputs:
        label = f"{_short(direct)} +PP" if before_pp else _short(direct)
        columns.append((label, target, outputs[direct]))
      if oracle_predictions and direct in oracle_predictions:
        columns.append((f"oracle {_short(direct)}", target, oracle_predictions[direct]))
    multimodal = "+".join([anchor] + sources) + f"->{target}"
    if multimodal in outputs:
      columns.append((_short(multimodal), target, outputs[multimodal]))
    if f"{anchor}->{target}" in outputs:
      columns.append((_short(f"{anchor}->{target}"), target, outputs[f"{anchor}->{target}"]))
    if not columns:
      continue
    path = os.path.join(directory, f"into_{target}.png")
    figures.qualitative_grid(path, modalities, inputs, columns, target,
                             input_names=[m for m in modalities if m != target],
                             title=f"Translations into {target}")
    written.append(path)
  segmentation = [m for m in modalities.values() if m.is_categorical]
  if segmentation:
    written.append(figures.palette_legend(os.path.join(directory, "legend.png"),
                                          segmentation[0]))
  return written


def _short(name):
  short = evaluation.SHORT_NAMES
  source, rest = name.split("->", 1)
  parts = source.split("+")
  source = short.get(parts[0], parts[0]) if len(parts) == 1 else \
      "(" + ",".join(short.get(p, p) for p in parts) + ")"
  return "->".join([source] + [short.get(p, p) for p in rest.split("->")])


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  eval_dir = evaluate_model_dir(f.model_dir, oracle_model_dir=f.oracle_model_dir or None,
                                data_dir=f.data_dir or None, batch_size=f.batch_size or None,
                                num_figure_examples=f.num_figure_examples)
  print(f"Wrote {eval_dir}/results.json, results.md and figures/")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("model_dir", None, "Training model_dir to evaluate (holds config.json "
                      "and model/).", required=True)
  flags.DEFINE_string("oracle_model_dir", "", "model_dir of an --oracle run on the same "
                      "dataset; its rows are added to the tables.")
  flags.DEFINE_string("data_dir", "", "Override of the data_dir saved in config.json.")
  flags.DEFINE_integer("batch_size", 0, "Override of the evaluation batch size (0: saved).")
  flags.DEFINE_integer("num_figure_examples", 4, "Test examples shown in the figures.")
  app.run(main)
