"""Evaluation of any translation system on a test set with every modality (a library).

`evaluate_model(model_or_translate_fn, test_dataset, ...)` runs a list of `Translation`s
over the whole test set and returns a results dict (see `evaluate_model`). A
`MixAndMatchNetworks` gives its own translations (`default_translations`: seen, zero-pair,
cascade through the anchor, multimodal) and alignment factors; a baseline passes any
`translate_fn(translation, inputs) -> output` with the translations it supports.

Outputs are compared in raw units: segmentation by one confusion matrix per translation
(void excluded), depth/NIR by `metrics.DepthMetric` after `Modality.denormalize` (metres
for depth), on valid pixels only.
"""

import dataclasses
import itertools
import json
import os
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from mm_tf import config as mm_config
from mm_tf import errors
from mm_tf import metrics as mm_metrics

KINDS = ("seen", "zero_pair", "unseen", "cascade", "multimodal", "oracle")
SHORT_NAMES = {"rgb": "R", "segmentation": "S", "depth": "D", "nir": "N"}


@dataclasses.dataclass(frozen=True)
class Translation:
  """One way of producing `target` from `sources`.

  Args:
    sources: Input modalities (more than one: multimodal fusion).
    target: Output modality.
    kind: "seen" (paired training data), "zero_pair" (never paired, not even in one
      stream), "unseen" (in one stream but not trained directly), "cascade" (through
      `via`), "multimodal", or "oracle" (a model trained on the pair directly).
    via: Intermediate modality of a cascade (source -> via -> target).
  """

  sources: Tuple[str, ...]
  target: str
  kind: str
  via: Optional[str] = None

  def __post_init__(self):
    object.__setattr__(self, "sources", tuple(self.sources))
    if self.kind not in KINDS:
      raise ValueError(f"Translation kind must be one of {KINDS}, got {self.kind!r}.")

  @property
  def name(self) -> str:
    """E.g. "depth->segmentation", "depth->rgb->segmentation", "rgb+depth->segmentation"."""
    source = "+".join(self.sources)
    if self.via:
      return f"{source}->{self.via}->{self.target}"
    return f"{source}->{self.target}"

  @property
  def short_name(self) -> str:
    """Paper notation: "D->S", "D->R->S", "(R,D,N)->S"."""
    short = [SHORT_NAMES.get(s, s) for s in self.sources]
    source = short[0] if len(short) == 1 else "(" + ",".join(short) + ")"
    via = f"->{SHORT_NAMES.get(self.via, self.via)}" if self.via else ""
    return f"{source}{via}->{SHORT_NAMES.get(self.target, self.target)}"

  def to_dict(self) -> dict:
    return {"name": self.name, "short_name": self.short_name, "sources": list(self.sources),
            "target": self.target, "kind": self.kind, "via": self.via}


def _kind(model, source, target):
  if (source, target) in model.seen_translations:
    return "seen"
  if any(source in stream and target in stream for stream in model.streams):
    return "unseen"
  return "zero_pair"


def default_translations(model, targets: Optional[Sequence[str]] = None) -> List[Translation]:
  """The translations the paper evaluates, derived from the model's modalities and streams.

  For every target (default: every non-adversarial modality, i.e. segmentation, depth,
  NIR; RGB outputs are judged in the figures): every other single source (seen, zero-pair
  or unseen), a cascade through the anchor for every zero-pair source, and multimodal
  fusions: the anchor with each other non-target source, and (when there are more than
  two) all sources together.

  Example (Freiburg): R->S, D->S, N->S, D->R->S, N->R->S, (R,D)->S, (R,N)->S, (R,D,N)->S,
  R->D, S->D, N->D, S->R->D, (R,S)->D, (R,N)->D, (R,S,N)->D, ...
  """
  names = list(model.modalities)
  anchor = model.anchor
  if targets is None:
    targets = [m for m in names if not model.modalities[m].adversarial]
    # Segmentation first: the paper's main table.
    targets.sort(key=lambda m: not model.modalities[m].is_categorical)
  translations = []
  for target in targets:
    sources = [m for m in names if m != target]
    single = [Translation((s,), target, _kind(model, s, target)) for s in sources]
    translations += single
    for t in single:
      source = t.sources[0]
      if (t.kind == "zero_pair" and anchor not in (source, target)
          and (source, anchor) in model.seen_translations
          and (anchor, target) in model.seen_translations):
        translations.append(Translation((source,), target, "cascade", via=anchor))
    if anchor in sources and len(sources) >= 2:
      for other in sources:
        if other != anchor:
          translations.append(Translation((anchor, other), target, "multimodal"))
      if len(sources) > 2:
        translations.append(Translation(tuple([anchor] + [s for s in sources if s != anchor]),
                                        target, "multimodal"))
    elif anchor not in sources and len(sources) >= 2:
      translations.append(Translation(tuple(sources), target, "multimodal"))
  return translations


def model_translate_fn(model) -> Callable:
  """`translate_fn` of a `MixAndMatchNetworks`: model-space outputs (logits for labels).

  Cascades decode into `via` first; a categorical intermediate is passed on as its softmax.
  Multimodal translations fuse like `model.translate_multimodal` (its documented weights).
  Each source of a batch is encoded once and reused by every translation from it (the
  evaluation loop passes the same `inputs` dict to every translation of a batch).
  """
  cache = {"inputs": None, "encodings": {}}

  def encode(source, inputs):
    if cache["inputs"] is not inputs:
      cache["inputs"], cache["encodings"] = inputs, {}
    if source not in cache["encodings"]:
      cache["encodings"][source] = model.encode(source, inputs[source])
    return cache["encodings"][source]

  def translate(translation: Translation, inputs: Mapping[str, tf.Tensor]):
    if len(translation.sources) > 1:
      latent, side = model.fuse({s: encode(s, inputs) for s in translation.sources})
      return model.decode(translation.target, latent, side)
    source = translation.sources[0]
    if translation.via:
      x = model.modalities[translation.via].activate(
          model.decode(translation.via, *encode(source, inputs)))
      return model.translate(translation.via, translation.target, x)
    return model.decode(translation.target, *encode(source, inputs))

  def encodings(inputs):
    """`{modality: (latent, side)}` of every modality of `inputs`, from the cache."""
    return {m: encode(m, inputs) for m in inputs if m in model.encoders}

  translate.encodings = encodings
  return translate


def evaluate_model(model_or_translate_fn, test_dataset, modalities: Optional[Mapping] = None,
                   translations: Optional[Sequence[Translation]] = None,
                   alignment: bool = True, max_batches: Optional[int] = None,
                   prediction_examples: int = 0) -> dict:
  """Evaluates translations over a whole test set.

  Args:
    model_or_translate_fn: A `MixAndMatchNetworks`, or a function
      `translate_fn(translation, inputs) -> output` where `inputs` is the test batch
      `{modality: model-space tensor}` and `output` is the target in model space
      (logits or probabilities for segmentation).
    test_dataset: Finite tf.data of `{modality: tensor}` batches (`pipeline.test_dataset`).
    modalities: `{name: Modality}`; default: the model's. Required with a translate_fn.
    translations: What to evaluate; default `default_translations(model)`. Required with
      a translate_fn.
    alignment: Also compute alignment factors between all encoder pairs (model only).
    max_batches: Evaluate only this many batches (debugging).
    prediction_examples: Keep the outputs of the first N test examples (for figures)
      under the returned dict's "_predictions" key (not JSON-serialisable; popped by
      `write_results`).

  Returns:
    {"translations": [{...Translation.to_dict(), "metrics": {...}}], "alignment_factors":
     {"rgb_depth": af, ...}, "num_test_examples": n}.
    Segmentation metrics: miou, global_accuracy, per_class_iou, pixels, confusion_matrix.
    Depth/NIR metrics: delta1..3, rmse, rmse_log, pixels (raw units).

  Example (a baseline):
    >>> results = evaluate_model(lambda t, x: my_net(x[t.sources[0]]), test_ds,
    ...                          modalities=model_modalities,
    ...                          translations=[Translation(("depth",), "segmentation", "seen")])
  """
  is_model = hasattr(model_or_translate_fn, "translate_multimodal")
  if is_model:
    model = model_or_translate_fn
    modalities = modalities or model.modalities
    translations = translations if translations is not None else default_translations(model)
    translate_fn = model_translate_fn(model)
  else:
    model = None
    translate_fn = model_or_translate_fn
    if modalities is None or translations is None:
      raise ValueError("evaluate_model with a translate_fn needs modalities and translations.")
  accumulators = {}
  for t in translations:
    target = modalities[t.target]
    if target.is_categorical:
      accumulators[t.name] = mm_metrics.SegmentationMetric(
          target.num_classes, target.void_label, target.class_names)
    else:
      accumulators[t.name] = mm_metrics.DepthMetric()
  alignment_means = {}
  kept = {"inputs": {}, "outputs": {}}
  count = 0
  for batch_index, batch in enumerate(test_dataset):
    if max_batches is not None and batch_index >= max_batches:
      break
    inputs = {k: v for k, v in batch.items() if k in modalities}
    batch_size = int(next(iter(inputs.values())).shape[0])
    keep = max(0, min(prediction_examples - count, batch_size))
    if keep:
      for name, x in inputs.items():
        kept["inputs"].setdefault(name, []).append(np.asarray(x[:keep]))
    for t in translations:
      if not all(s in inputs for s in t.sources) or t.target not in inputs:
        raise ValueError(f"The test batch lacks a modality of {t.name}; it has "
                         f"{sorted(inputs)}.")
      output = translate_fn(t, inputs)
      target = modalities[t.target]
      if target.is_categorical:
        prediction = target.to_labels(output).numpy()
        accumulators[t.name].update(np.asarray(inputs[t.target]), prediction)
      else:
        prediction = target.denormalize(output).numpy()
        truth = inputs[t.target]
        valid = target.valid_mask(truth).numpy()
        accumulators[t.name].update(target.denormalize(truth).numpy(), prediction, valid)
      if keep:
        kept["outputs"].setdefault(t.name, []).append(np.asarray(prediction[:keep]))
    if is_model and alignment:
      for pair, value in model.alignment_factors(inputs, translate_fn.encodings(inputs)).items():
        alignment_means.setdefault(pair, mm_metrics.MeanMetric()).update(value, batch_size)
    count += batch_size
  if count == 0:
    raise ValueError("The test dataset is empty.")
  results = {
      "num_test_examples": count,
      "translations": [dict(t.to_dict(), metrics=accumulators[t.name].result())
                       for t in translations],
      "alignment_factors": {k: v.result() for k, v in alignment_means.items()},
  }
  if prediction_examples:
    results["_predictions"] = {
        "inputs": {k: np.concatenate(v) for k, v in kept["inputs"].items()},
        "outputs": {k: np.concatenate(v) for k, v in kept["outputs"].items()}}
  return results


def find(results: dict, short_name: str) -> Optional[dict]:
  """The entry of translation `short_name` ("D->S") or `name` in `results`, or None."""
  for entry in results.get("translations", []):
    if short_name in (entry["short_name"], entry["name"]):
      return entry
  return None


def segmentation_metrics(results_path: str) -> Dict[str, dict]:
  """`{short_name: metrics}` of every translation into segmentation in a results.json."""
  with open(results_path) as f:
    translations = json.load(f)["translations"]
  return {t["short_name"]: t["metrics"] for t in translations if t["target"] == "segmentation"}


def summary(results: dict) -> Dict[str, float]:
  """Headline numbers: mIoU of every translation into segmentation, delta1 into others,
  and alignment factors (flat dict, for logs and per-stage comparisons)."""
  flat = {}
  for entry in results.get("translations", []):
    m = entry["metrics"]
    if "miou" in m:
      flat[f"{entry['short_name']} mIoU"] = m["miou"]
    else:
      flat[f"{entry['short_name']} delta1"] = m["delta1"]
  for pair, value in results.get("alignment_factors", {}).items():
    flat[f"AF({pair})"] = value
  return flat


def write_json(results: dict, path: str):
  """Writes results (minus in-memory predictions) as JSON, atomically."""
  clean = {k: v for k, v in results.items() if not k.startswith("_")}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(clean, f, indent=2, sort_keys=True, default=_json_default)
  os.replace(tmp, path)


def _json_default(value):
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  raise TypeError(f"Not JSON-serialisable: {type(value)}")


def combinations_of(names: Sequence[str]):
  """All unordered pairs (for alignment-factor tables)."""
  return list(itertools.combinations(names, 2))


# ------------------------------------------------------------------ tables
# Freiburg Forest, thesis Table 4.8 (NOTES.md section 2): (mIoU, global) in percent.
PUBLISHED_FREIBURG = {
    "D->R->S": (30.0, 33.5), "N->R->S": (35.8, 42.4),
    "D->S": (71.6, 80.0), "N->S": (72.7, 81.0),
    "D->S +PP": (73.4, 81.1), "N->S +PP": (75.3, 83.5),
    "(R,D,N)->S": (81.8, 88.5), "(R,D,N)->S +PP": (83.0, 89.3),
    "oracle D->S": (76.2, 82.2), "oracle N->S": (78.2, 85.4), "oracle (R,D,N)->S": (84.1, 89.4),
}
PUBLISHED_FREIBURG_BASELINES = {
    "CycleGAN D->S": (23.4, 26.2), "CycleGAN N->S": (23.9, 28.5),
    "2xpix2pix D->S": (49.9, 59.9), "2xpix2pix N->S": (53.6, 66.8),
}
KIND_ORDER = {"seen": 0, "zero_pair": 1, "unseen": 2, "cascade": 3, "multimodal": 4,
              "oracle": 5}


def _pct(value):
  return "-" if value is None or (isinstance(value, float) and np.isnan(value)) \
      else f"{100 * value:.1f}"


def _num(value, digits=3):
  return "-" if value is None or (isinstance(value, float) and np.isnan(value)) \
      else f"{value:.{digits}f}"


def _published(dataset, short_name, kind, stage):
  if dataset not in ("freiburg_forest",):
    return None
  key = short_name
  if kind == "oracle":
    key = f"oracle {short_name}"
  elif stage == 3 and f"{short_name} +PP" in PUBLISHED_FREIBURG:
    key = f"{short_name} +PP"
  return PUBLISHED_FREIBURG.get(key)


def results_markdown(results: dict, dataset: str = "", per_stage: Optional[Mapping] = None,
                     oracle: Optional[dict] = None, stage: Optional[int] = None) -> str:
  """A paper-style markdown report of `evaluate_model` results.

  Args:
    results: Final results.
    dataset: Dataset name; "freiburg_forest" adds the published numbers as a side column.
    per_stage: `{stage: results}` after each stage (adds a stage-by-stage mIoU table).
    oracle: Results of an oracle model (`--oracle` run), shown as "oracle" rows.
    stage: Stage the final results were taken after (3 = "+PP").
  """
  lines = [f"# Evaluation{' on ' + dataset if dataset else ''}", "",
           f"{results.get('num_test_examples', '?')} test examples. Percent; "
           "mIoU over classes present in ground truth or prediction; void pixels ignored.", ""]
  seg = [e for e in results["translations"] if "miou" in e["metrics"]]
  oracle_seg = [dict(e, kind="oracle") for e in (oracle or {}).get("translations", [])
                if "miou" in e["metrics"]]
  rows = sorted(seg, key=lambda e: KIND_ORDER[e["kind"]]) + oracle_seg
  if rows:
    class_names = list(rows[0]["metrics"]["per_class_iou"])
    publish = dataset == "freiburg_forest"
    header = ["kind", "translation"] + class_names + ["mIoU", "global"]
    if publish:
      header += ["published mIoU / global"]
    lines += ["## Into segmentation", "", "| " + " | ".join(header) + " |",
              "|" + "---|" * len(header)]
    for e in rows:
      m = e["metrics"]
      cells = [e["kind"], e["short_name"]]
      cells += [_pct(m["per_class_iou"][c]) for c in class_names]
      cells += [_pct(m["miou"]), _pct(m["global_accuracy"])]
      if publish:
        published = _published(dataset, e["short_name"], e["kind"], stage)
        cells.append(f"{published[0]} / {published[1]}" if published else "-")
      lines.append("| " + " | ".join(cells) + " |")
    if dataset == "freiburg_forest":
      lines += ["", "Published baselines (thesis Table 4.8): " + "; ".join(
          f"{k} {v[0]} / {v[1]}" for k, v in PUBLISHED_FREIBURG_BASELINES.items()) + "."]
    lines.append("")
  others = [e for e in results["translations"] if "miou" not in e["metrics"]]
  for target in dict.fromkeys(e["target"] for e in others):
    unit = " (metres)" if target == "depth" else " (raw units)"
    lines += [f"## Into {target}", "",
              f"| kind | translation | delta<1.25 | delta<1.25^2 | delta<1.25^3 | RMSE{unit} "
              "| RMSE log |", "|---|---|---|---|---|---|---|"]
    for e in sorted([e for e in others if e["target"] == target],
                    key=lambda e: KIND_ORDER[e["kind"]]):
      m = e["metrics"]
      lines.append(f"| {e['kind']} | {e['short_name']} | {_pct(m['delta1'])} | "
                   f"{_pct(m['delta2'])} | {_pct(m['delta3'])} | {_num(m['rmse'])} | "
                   f"{_num(m['rmse_log'])} |")
    lines.append("")
  if results.get("alignment_factors"):
    lines += ["## Alignment factors (mean cosine of encoder outputs, paper Eq. 16)", "",
              "| pair | AF |", "|---|---|"]
    lines += [f"| {pair} | {_num(v)} |" for pair, v in results["alignment_factors"].items()]
    lines.append("")
  if per_stage:
    stages_sorted = sorted(per_stage, key=int)
    keys = list(dict.fromkeys(k for s in stages_sorted for k in summary(per_stage[s])))
    lines += ["## After each stage", "",
              "Stage 1: translations; 2: + autoencoders, latent consistency, noise (RGB "
              "encoder frozen); 3: + pseudo-pairs (+PP).", "",
              "| metric | " + " | ".join(f"stage {s}" for s in stages_sorted) + " |",
              "|---|" + "---|" * len(stages_sorted)]
    for key in keys:
      values = [summary(per_stage[s]).get(key) for s in stages_sorted]
      fmt = _num if key.startswith("AF(") else _pct
      lines.append(f"| {key} | " + " | ".join(fmt(v) for v in values) + " |")
    lines.append("")
  return "\n".join(lines)

# ------------------------------------------------------------------ model directories
def test_dataset(config, batch_size: Optional[int] = None) -> tf.data.Dataset:
  """The test split of an `ExperimentConfig`'s dataset, batched for evaluation."""
  from mm_tf.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.test_dataset(config.dataset, config.data_dir, config.image_size,
                               batch_size or config.eval_batch_size,
                               skip_bad_examples=config.skip_bad_examples)


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
  from mm_tf import saving  # pylint: disable=g-import-not-at-top
  config_path = os.path.join(model_dir, mm_config.CONFIG_FILE)
  if not os.path.exists(config_path):
    raise errors.MissingInputError(f"{config_path} not found: {model_dir!r} is not a training "
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
  model = model or saving.load_model(model_dir)
  examples = config.num_figure_examples
  per_stage, stage_predictions = _load_stage_results(model_dir)
  final_stage = max(config.stage_numbers())
  if (reuse_stage_results and final_stage in per_stage
      and stage_predictions.get(final_stage, {}).get("inputs")):
    results = {k: v for k, v in per_stage[final_stage].items() if k != "stage"}
    predictions = stage_predictions[final_stage]
  else:
    results = evaluate_model(model, test_dataset(config),
                                        prediction_examples=examples)
    predictions = results.pop("_predictions")
  oracle_results, oracle_predictions = None, None
  if oracle_model_dir:
    oracle = saving.load_model(oracle_model_dir)
    if oracle.image_size != model.image_size:
      raise ValueError(f"The oracle in {oracle_model_dir} is {oracle.image_size}px, the model "
                       f"{model.image_size}px; they must be evaluated on the same images.")
    oracle_results = evaluate_model(
        oracle, test_dataset(config),
        translations=default_translations(oracle, targets=mm_config.ORACLE_TARGETS),
        alignment=False, prediction_examples=examples)
    oracle_predictions = oracle_results.pop("_predictions")["outputs"]
    for entry in oracle_results["translations"]:
      entry["kind"] = "oracle"
  eval_dir = os.path.join(model_dir, EVAL_SUBDIR)
  full = dict(results, dataset=config.dataset, model_dir=os.path.abspath(model_dir),
              stage=final_stage,
              per_stage={str(s): summary(r) for s, r in per_stage.items()},
              oracle=oracle_results)
  write_json(full, os.path.join(eval_dir, "results.json"))
  markdown = results_markdown(results, config.dataset, per_stage=per_stage or None,
                                         oracle=oracle_results, stage=final_stage)
  saving.write_text_atomic(os.path.join(eval_dir, "results.md"), markdown + "\n")
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
  short = SHORT_NAMES
  source, rest = name.split("->", 1)
  parts = source.split("+")
  source = short.get(parts[0], parts[0]) if len(parts) == 1 else \
      "(" + ",".join(short.get(p, p) for p in parts) + ")"
  return "->".join([source] + [short.get(p, p) for p in rest.split("->")])
