r"""Experiment runner: every system of the paper's comparison, trained and scored alike.

  python -m mm_tf.experiments --suite=paper --flagfile=configs/synthetic_forest.flags \
      --output_dir=runs/experiments

trains every row of the suite on the zero-pair streams of the configured dataset, scores
each with the same `mm_tf.evaluation.evaluate_model` on the test split and writes
`<output_dir>/comparison.md` and `comparison.json`. Rows already finished in output_dir
(`rows/<name>/result.json`) are skipped, so re-running the command resumes. Finished
stage weights are cached in `models/` (a training in progress checkpoints every
--checkpoint_every_steps steps and resumes there), and rows that share training share it:
the cascade rows evaluate the stage-1 models, the ablation ladder and the few-pair rows
start from the main run's stage 1, "M&MNets" and "M&MNets+PP" are stage 2 and 3 of one run.

Rows (suite "paper"):
  baselines         2xpix2pix, CycleGAN, StarGAN(unpaired/paired), UNIT, cross-modal
                    distillation, M&MNets cascade D->R->S with switches and with skips
                    (stage-1 models), oracle.
  zero-pair         M&MNets (after stage 2), M&MNets+PP (after stage 3).
  side information  none / skip / switches (stage 2; paper Table 2).
  ladder            translations only, +autoencoders, +latent, +noise, +pseudo-pairs
                    (paper Table 3), each with the same step budget.
  RGB decoder       switches in the RGB decoder on (off is the main run).
  few pairs         K (depth, seg) pairs selected by k-medoids / at random, K in
                    --few_pairs, added from stage 2 (K = 0 is M&MNets).

All rows use the flagfile's data, width, image size, batch size and stage steps; the
baselines train `--baseline_steps` steps (default: stage 1 + stage 2 steps, the budget of
M&MNets without pseudo-pairs). Suite "smoke" runs a handful of rows for a few steps.
"""

import dataclasses
import gc
import json
import logging
import os
import shutil
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from mm_tf import config as mm_config
from mm_tf import evaluation
from mm_tf import model as mm_model
from mm_tf import networks
from mm_tf import training
from mm_tf.baselines import cascade as mm_cascade
from mm_tf.baselines import cyclegan as mm_cyclegan
from mm_tf.baselines import distillation as mm_distillation
from mm_tf.baselines import few_pairs as mm_few_pairs
from mm_tf.baselines import pix2pix as mm_pix2pix
from mm_tf.baselines import stargan as mm_stargan
from mm_tf.baselines import unit as mm_unit

RESULT_FILE = "result.json"
ROWS_DIR = "rows"
MODELS_DIR = "models"
CHECKPOINTS_SUFFIX = ".checkpoints"  # <weights file> + this: a row's training in progress.
SUITES = ("paper", "smoke", "baselines", "ablations", "few_pairs")
GROUP_TITLES = {
    "baselines": "Baselines, zero-pair M&MNets and the oracle (paper Tables 4-5, thesis Table 4.8)",
    "side_information": "Side information (paper Table 2)",
    "ladder": "Alignment ladder, each term added in turn (paper Table 3)",
    "rgb_decoder": "Switches in the RGB decoder (paper 6.2.2: on 42.4 vs off 46.7 mIoU)",
    "few_pairs": "Few (depth, segmentation) pairs added to zero-pair training (beyond the paper)",
}
# Published Freiburg Forest numbers (thesis Table 4.8): (mIoU, global) percent, per column.
_F = dict(evaluation.PUBLISHED_FREIBURG, **evaluation.PUBLISHED_FREIBURG_BASELINES)
# Paper SceneNet RGB-D D->S mIoU of the ablations (Tables 2 and 3, 6.2.2).
PUBLISHED_SCENENET_ABLATIONS = {
    "side_none": 29.8, "side_skip": 12.7, "mmnets": 43.2,
    "ladder_translations": 6.5, "ladder_autoencoders": 20.3, "ladder_latent": 45.8,
    "mmnets_pp": 49.2, "rgb_decoder_switches": 42.4,
}
# The ladder's "+noise" row is the main run (46.7 in Table 3 with a pretrained encoder).
PUBLISHED_SCENENET_LADDER_NOISE = 46.7


# ------------------------------------------------------------------ rows
@dataclasses.dataclass(frozen=True)
class Row:
  """One line of the comparison.

  Args:
    name: Unique key (directory `rows/<name>/`).
    label: What the table shows.
    group: Table it belongs to (GROUP_TITLES).
    method: "mmnets", "oracle", "pix2pix", "cyclegan", "stargan_unpaired",
      "stargan_paired", "unit" or "distillation".
    variant: M&MNets training variant (see `MMNetsVariant`), for method "mmnets".
    stage: Stage after which an M&MNets variant is scored.
    cascade: Score unseen translations through RGB (D->R->S) instead of directly.
    few_pairs: K and the selection method, for few-pair rows.
    published: `{column: (mIoU, global)}` published Freiburg numbers.
  """

  name: str
  label: str
  group: str
  method: str
  variant: str = "main"
  stage: int = 2
  cascade: bool = False
  few_pairs: int = 0
  selection: str = "kmedoids"
  published: Mapping[str, tuple] = dataclasses.field(default_factory=dict)


def _published(prefix, columns=("D->S", "N->S")):
  return {c: _F[f"{prefix}{c}".strip()] for c in columns if f"{prefix}{c}".strip() in _F}


def _pp(columns=("D->S", "N->S")):
  return {c: _F[f"{c} +PP"] for c in columns if f"{c} +PP" in _F}


def paper_rows(few_pairs=(0, 1, 5, 20), selections=("kmedoids", "random")) -> List[Row]:
  rows = [
      Row("pix2pix", "2xpix2pix (D->R->S)", "baselines", "pix2pix",
          published=_published("2xpix2pix ")),
      Row("cyclegan", "CycleGAN", "baselines", "cyclegan", published=_published("CycleGAN ")),
      Row("stargan_unpaired", "StarGAN(unpaired)", "baselines", "stargan_unpaired"),
      Row("stargan_paired", "StarGAN(paired)", "baselines", "stargan_paired"),
      Row("unit", "UNIT", "baselines", "unit"),
      Row("distillation", "Cross-modal distillation (R->S labels)", "baselines", "distillation"),
      Row("cascade_switches", "M&MNets D->R->S (switches)", "baselines", "mmnets", "main", 1,
          cascade=True, published={"D->S": _F["D->R->S"], "N->S": _F["N->R->S"]}),
      Row("cascade_skip", "M&MNets D->R->S (skip)", "baselines", "mmnets", "side_skip", 1,
          cascade=True),
      Row("mmnets", "M&MNets", "baselines", "mmnets", "main", 2, published=_published("")),
      Row("mmnets_pp", "M&MNets+PP", "baselines", "mmnets", "main", 3, published=_pp()),
      Row("oracle", "Oracle (paired D->S, N->S)", "baselines", "oracle",
          published={"D->S": _F["oracle D->S"], "N->S": _F["oracle N->S"]}),
      Row("side_none", "no side information", "side_information", "mmnets", "side_none", 2),
      Row("side_skip", "skip connections", "side_information", "mmnets", "side_skip", 2),
      Row("side_switches", "pooling switches, every level", "side_information", "mmnets",
          "side_switches", 2),
      Row("ladder_translations", "translations only", "ladder", "mmnets", "ladder_translations",
          2),
      Row("ladder_autoencoders", "+ autoencoders", "ladder", "mmnets", "ladder_autoencoders", 2),
      Row("ladder_latent", "+ latent consistency", "ladder", "mmnets", "ladder_latent", 2),
      Row("ladder_noise", "+ noise (= M&MNets)", "ladder", "mmnets", "main", 2),
      Row("ladder_pseudo_pairs", "+ pseudo-pairs (= M&MNets+PP)", "ladder", "mmnets", "main", 3),
      Row("rgb_decoder_off", "RGB decoder without switches (= M&MNets)", "rgb_decoder", "mmnets",
          "main", 2),
      Row("rgb_decoder_switches", "RGB decoder with switches", "rgb_decoder", "mmnets",
          "rgb_switches", 2),
  ]
  for k in few_pairs:
    for selection in (selections if k else ("kmedoids",)):
      label = "K = 0 (= M&MNets)" if k == 0 else f"K = {k}, {selection}"
      rows.append(Row(f"few_pairs_{k}" + (f"_{selection}" if k else ""), label, "few_pairs",
                      "mmnets", "main" if k == 0 else f"few_pairs_{k}_{selection}", 2,
                      few_pairs=k, selection=selection))
  return rows


def suite_rows(suite: str, few_pairs=(0, 1, 5, 20), selections=("kmedoids", "random")):
  """The rows of a suite (see module doc)."""
  rows = paper_rows(few_pairs, selections)
  if suite == "paper":
    return rows
  if suite == "baselines":
    return [r for r in rows if r.group == "baselines"]
  if suite == "ablations":
    return [r for r in rows if r.group in ("side_information", "ladder", "rgb_decoder")]
  if suite == "few_pairs":
    return [r for r in rows if r.group == "few_pairs"]
  if suite == "smoke":
    keep = ("pix2pix", "cyclegan", "distillation", "cascade_switches", "mmnets", "side_switches",
            "oracle", "few_pairs_0", "few_pairs_1_kmedoids")
    smoke = paper_rows(few_pairs=(0, 1), selections=("kmedoids",))
    return [r for r in smoke if r.name in keep]
  raise ValueError(f"Unknown suite {suite!r}; suites: {', '.join(SUITES)}.")


# ------------------------------------------------------------------ data
class Data:
  """Where the rows get their data: the flagfile's dataset through mm_tf's pipeline.

  Tests replace it with in-memory batches of the same structure.
  """

  def __init__(self, config: mm_config.ExperimentConfig):
    self.config = config
    self.spec = training.dataset_spec(config)
    self._prepared = False
    self._modalities = None

  def prepare(self):
    if not self._prepared:
      training.prepare_data(self.config)
      self._prepared = True

  @property
  def modalities(self):
    """The modality descriptions every row's model gets (class weights included)."""
    if self._modalities is None:
      if self.config.class_balancing != "none":
        self.prepare()  # The weights are counted on the training labels.
      self._modalities = training.model_modalities(self.config)
    return list(self._modalities)

  @property
  def streams(self):
    return [tuple(s) for s in self.spec.streams]

  def train(self, seed_offset: int = 0, oracle: bool = False) -> tf.data.Dataset:
    self.prepare()
    return training.train_dataset(self.config.replace(oracle=oracle), seed_offset)

  def test(self) -> tf.data.Dataset:
    self.prepare()
    return training.test_dataset(self.config)

  def few_pair_candidates(self, stream=mm_few_pairs.FEW_PAIR_STREAM) -> Dict[str, np.ndarray]:
    """All-modality train-split examples of the depth stream's scenes (never the test split)."""
    self.prepare()
    from mm_tf.data import pipeline  # pylint: disable=g-import-not-at-top
    stream_name = next((n for n in self.spec.stream_names if stream[0] in n.split("+")), None)
    allowed = set(pipeline.stream_scene_ids(self.spec, self.config.data_dir).get(stream_name, []))
    ds = pipeline.test_dataset(self.spec, self.config.data_dir, self.config.image_size, 32,
                               with_ids=True, split="train")
    chosen = {m: [] for m in stream}
    for batch in ds:
      ids = [i.decode() for i in batch["id"].numpy()]
      keep = np.asarray([(not allowed) or i in allowed or i.split("_")[0] in allowed for i in ids])
      for m in stream:
        chosen[m].append(batch[m].numpy()[keep])
    return {m: np.concatenate(v) for m, v in chosen.items()}


# ------------------------------------------------------------------ M&MNets variants
@dataclasses.dataclass(frozen=True)
class MMNetsVariant:
  """How one M&MNets training differs from the main run.

  Args:
    architecture: Key of the stage-1 model it starts from ("main" = the config's).
    side_information: Decoder side information.
    side_information_levels: Finest levels that use it (-1: all, the paper's ablation
      rows); None: the config's `--side_information_levels`.
    rgb_decoder_switches: The RGB decoder consumes switches too.
    stage2: `StageSpec` fields overridden in stage 2 (the ladder).
    few_pairs / selection: Few-pair training from stage 2.
  """

  architecture: str = "main"
  side_information: str = "switches"
  side_information_levels: Optional[int] = None
  rgb_decoder_switches: bool = False
  stage2: Mapping[str, object] = dataclasses.field(default_factory=dict)
  few_pairs: int = 0
  selection: str = "kmedoids"


def variant(name: str) -> MMNetsVariant:
  if name == "main":
    return MMNetsVariant()
  if name in ("side_none", "side_skip", "side_switches"):
    # The paper's Table 2 variants: side information at every level.
    side = name.split("_")[1]
    return MMNetsVariant(architecture=name, side_information=side, side_information_levels=-1)
  if name == "rgb_switches":
    return MMNetsVariant(architecture=name, rgb_decoder_switches=True)
  if name == "ladder_translations":
    return MMNetsVariant(stage2=dict(autoencoders=False, latent_consistency=False,
                                     latent_noise=False))
  if name == "ladder_autoencoders":
    return MMNetsVariant(stage2=dict(latent_consistency=False, latent_noise=False))
  if name == "ladder_latent":
    return MMNetsVariant(stage2=dict(latent_noise=False))
  if name.startswith("few_pairs_"):
    _, _, k, selection = name.split("_")
    return MMNetsVariant(few_pairs=int(k), selection=selection)
  raise ValueError(f"Unknown M&MNets variant {name!r}.")


# ------------------------------------------------------------------ runner
class Runner:
  """Trains (or reloads) what each row needs, scores it, writes the comparison.

  Args:
    config: The flagfile's `ExperimentConfig` (data, width, image size, steps, lambdas).
    output_dir: Where rows, cached models and the comparison go.
    data: A `Data` (default: the config's dataset).
    baseline_steps: Steps of each baseline (default: stage 1 + stage 2 steps).
    baseline_residual_blocks: Residual blocks of CycleGAN/StarGAN/UNIT generators.
    suite: Name written into the comparison.
    run_eagerly: Compile train steps eagerly (tests: a few tiny steps run faster than
      tracing them).
  """

  def __init__(self, config, output_dir, data=None, baseline_steps=-1,
               baseline_residual_blocks=3, suite="paper", run_eagerly=False):
    self.config = config
    self.output_dir = output_dir
    self.data = data or Data(config)
    self.baseline_steps = (baseline_steps if baseline_steps >= 0
                           else config.steps[0] + config.steps[1])
    self.baseline_residual_blocks = baseline_residual_blocks
    self.suite = suite
    self.run_eagerly = run_eagerly
    self._models = {}

  # ---------------------------------------------------------------- files
  def row_dir(self, row: Row) -> str:
    return os.path.join(self.output_dir, ROWS_DIR, row.name)

  def weights_path(self, key: str, stage: int) -> str:
    return os.path.join(self.output_dir, MODELS_DIR, key, f"stage_{stage}.weights.h5")

  def finished(self, row: Row) -> bool:
    return os.path.exists(os.path.join(self.row_dir(row), RESULT_FILE))

  # ---------------------------------------------------------------- M&MNets
  def build_mmnets(self, spec: MMNetsVariant):
    modalities = list(self.data.modalities)
    if spec.rgb_decoder_switches:
      modalities = [m.replace(decoder_uses_switches=True) if m.name == "rgb" else m
                    for m in modalities]
    levels = (self.config.side_information_levels if spec.side_information_levels is None
              else spec.side_information_levels)
    kwargs = dict(width=self.config.width, side_information=spec.side_information,
                  noise_std=self.config.noise_std, stages=self.config.stages(),
                  image_size=self.config.image_size,
                  unpool_implementation=self.config.unpool_implementation,
                  num_pools=self.config.num_pools, side_information_levels=levels,
                  latent_calibration=self.config.latent_calibration_batches > 0)
    if spec.few_pairs:
      return mm_few_pairs.FewPairMixAndMatch(modalities, self.data.streams, **kwargs)
    return mm_model.MixAndMatchNetworks(modalities, self.data.streams, **kwargs)

  def _recalibrate(self, model, stage, dataset):
    """`mm_tf.training.recalibrate_batch_norm`, then `calibrate_latents` (a model built
    with latent calibration), on the runner's data."""
    strategy = tf.distribute.get_strategy()
    training.recalibrate_batch_norm(model, self.config, strategy, stage, dataset)
    training.calibrate_latents(model, self.config, strategy, stage, dataset)

  def _fit(self, model, dataset, steps, label, weights_path):
    """`steps` train steps through the shared loop, under the strategy in scope; resumable.

    A baseline takes over an hour on 2 CPU cores, so a row must survive being killed
    mid-training, like the main job's stages: every `--checkpoint_every_steps` steps the
    weights, both optimizers and the step go to `<weights_path>.checkpoints/` (a
    `tf.train.CheckpointManager`; the state file is replaced last). A re-run restores the
    latest checkpoint and skips the batches already trained on, so it continues the
    interrupted run's batch order. `_save_weights` removes the checkpoints once the
    weights file exists.
    """
    strategy = tf.distribute.get_strategy()
    checkpoint_dir = weights_path + CHECKPOINTS_SUFFIX
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="runner_step")
    checkpoint = training.make_checkpoint(model, step)
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=1)
    initial_step = 0
    if manager.latest_checkpoint:
      checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
      initial_step = min(int(step.numpy()), steps)
      print(f"[{label}] resumed from {manager.latest_checkpoint} at step {initial_step}.",
            flush=True)
    remaining = steps - initial_step
    if remaining <= 0:
      return
    # Each step takes one batch per replica from the (shared) batch order.
    dataset = dataset.skip(initial_step * strategy.num_replicas_in_sync)
    callbacks = [training.CheckpointCallback(manager, step, initial_step,
                                             self.config.checkpoint_every_steps)]
    start = time.time()
    logs = training.run_train_steps(model, strategy, dataset, remaining, callbacks,
                                    run_eagerly=self.run_eagerly)
    losses = {k: round(v, 4) for k, v in logs.items()}
    print(f"[{label}] {remaining} steps in {time.time() - start:.1f} s; {losses}", flush=True)

  @staticmethod
  def _save_weights(model, weights_path):
    """Writes the trained weights atomically, then drops `_fit`'s checkpoints."""
    os.makedirs(os.path.dirname(weights_path), exist_ok=True)
    model.save_weights(weights_path + ".tmp.weights.h5")
    os.replace(weights_path + ".tmp.weights.h5", weights_path)
    shutil.rmtree(weights_path + CHECKPOINTS_SUFFIX, ignore_errors=True)

  def mmnets_model(self, variant_name: str, stage: int):
    """The M&MNets `variant_name` after `stage`, trained (and cached) if needed."""
    if variant_name == "side_switches" and networks.check_side_information_levels(
        self.config.side_information_levels, self.config.num_pools) == self.config.num_pools:
      variant_name = "main"  # The main run has the paper's switches: train them once.
    key = (variant_name, stage)
    if key in self._models:
      return self._models[key]
    spec = variant(variant_name)
    # Stage 1 depends only on the architecture; later stages on the whole variant.
    weights_key = spec.architecture if stage == 1 else variant_name
    path = self.weights_path(weights_key, stage)
    # Seeded before building: a row's initial weights must not depend on which rows ran
    # before it in this process (a resumed suite runs fewer).
    keras.utils.set_random_seed(self.config.seed + stage)
    model = self.build_mmnets(spec)
    if spec.stage2:
      model.stage_specs[2] = model.stage_specs[2].replace(**spec.stage2)
    if os.path.exists(path):
      model.load_weights(path)
    else:
      if stage > 1:
        previous = self.mmnets_model(variant_name if stage == 3 else spec.architecture, stage - 1)
        model.set_weights(previous.get_weights())
      pairs = (self.select_few_pairs(spec, model) if spec.few_pairs and stage >= 2 else None)

      def stage_data(seed_offset):
        dataset = self.data.train(seed_offset=seed_offset)
        if pairs is not None:
          dataset = mm_few_pairs.with_few_pairs(dataset, pairs, self.config.batch_size,
                                                self.config.seed)
        return dataset

      keras.utils.set_random_seed(self.config.seed + stage)
      model.set_stage(stage)
      model.compile(run_eagerly=self.run_eagerly)
      # Trained like `mm_tf.training.train_stage`: its data seeds, then precise batch-norm
      # statistics (without them the suite scored weaker models than the main job: the
      # stage-1 cascade D->R->S 24.0 mIoU against 40.1).
      self._fit(model, stage_data(training.stage_seed_offset(stage)),
                model.stage_specs[stage].steps, f"M&MNets {variant_name} stage {stage}", path)
      self._recalibrate(model, stage, stage_data(training.stage_seed_offset(stage, True)))
      self._save_weights(model, path)
    self._models[key] = model
    return model

  def select_few_pairs(self, spec: MMNetsVariant, model) -> Dict[str, np.ndarray]:
    """K pairs picked with the depth encoder of the main stage-1 model (or at random)."""
    selection_path = os.path.join(self.output_dir, MODELS_DIR,
                                  f"few_pairs_{spec.few_pairs}_{spec.selection}", "selected.json")
    candidates = self.data.few_pair_candidates()
    encoder_model = self.mmnets_model("main", 1) if spec.selection == "kmedoids" else None
    pairs, indices = mm_few_pairs.select_few_pairs(
        candidates, spec.few_pairs, spec.selection, encoder_model, seed=self.config.seed)
    os.makedirs(os.path.dirname(selection_path), exist_ok=True)
    with open(selection_path, "w") as f:
      json.dump({"k": spec.few_pairs, "selection": spec.selection, "indices": indices,
                 "num_candidates": int(len(next(iter(candidates.values()))))}, f)
    return pairs

  # ---------------------------------------------------------------- others
  def oracle_model(self):
    """The oracle: M&MNets' architecture trained on the (x, segmentation) pairs directly.

    Built like `mm_tf.training.build_model` with `--oracle` (segmentation as the anchor,
    no RGB, one stage of `--oracle_steps`), from the runner's `Data` so tests can use
    in-memory data.
    """
    if "oracle" in self._models:
      return self._models["oracle"]
    keras.utils.set_random_seed(self.config.seed)  # As in `mmnets_model`.
    config = self.config.replace(oracle=True)
    modalities = [m for m in self.data.modalities if m.name != "rgb"]
    streams = [("segmentation",) + tuple(s for s in stream if s != "segmentation")
               for stream in self._oracle_streams()]
    model = mm_model.MixAndMatchNetworks(
        modalities, streams, anchor="segmentation", width=config.width,
        side_information=config.side_information, noise_std=config.noise_std,
        stages=config.stages(), image_size=config.image_size,
        unpool_implementation=config.unpool_implementation, num_pools=config.num_pools,
        side_information_levels=config.side_information_levels)
    path = self.weights_path("oracle", 1)
    if os.path.exists(path):
      model.load_weights(path)
    else:
      keras.utils.set_random_seed(self.config.seed)
      model.set_stage(1)
      model.compile(run_eagerly=self.run_eagerly)
      self._fit(model, self.data.train(seed_offset=training.stage_seed_offset(1), oracle=True),
                model.stage_specs[1].steps, "oracle", path)
      self._recalibrate(model, 1, self.data.train(
          seed_offset=training.stage_seed_offset(1, recalibration=True), oracle=True))
      self._save_weights(model, path)
    self._models["oracle"] = model
    return model

  def _oracle_streams(self):
    names = [m.name for m in self.data.modalities]
    return [(m, "segmentation") for m in names if m not in ("rgb", "segmentation")]

  def baseline_model(self, method: str):
    modalities = list(self.data.modalities)
    streams = self.data.streams
    names = [m.name for m in modalities]
    pairs = [(m, "segmentation") for m in ("depth", "nir") if m in names]
    width = self.config.width
    blocks = self.baseline_residual_blocks
    size = self.config.image_size
    if method == "pix2pix":
      return mm_pix2pix.TwoPix2Pix(modalities, streams, width=width, image_size=size)
    if method == "cyclegan":
      return mm_cyclegan.CycleGAN(modalities, pairs, width=width, residual_blocks=blocks,
                                  image_size=size)
    if method == "unit":
      return mm_unit.UNIT(modalities, pairs, width=width, residual_blocks=max(1, blocks - 1),
                          image_size=size)
    if method == "distillation":
      return mm_distillation.CrossModalDistillation(modalities, streams, width=width,
                                                    image_size=size)
    if method in ("stargan_unpaired", "stargan_paired"):
      return mm_stargan.StarGAN(modalities, streams, paired=method == "stargan_paired",
                                width=width, residual_blocks=blocks, image_size=size)
    raise ValueError(f"Unknown baseline {method!r}.")

  def trained_baseline(self, method: str):
    if method in self._models:
      return self._models[method]
    keras.utils.set_random_seed(self.config.seed)  # As in `mmnets_model`.
    model = self.baseline_model(method)
    path = self.weights_path(method, 1)
    if os.path.exists(path):
      model.load_weights(path)
    else:
      keras.utils.set_random_seed(self.config.seed)
      model.compile(self.config.learning_rate[0], run_eagerly=self.run_eagerly)
      self._fit(model, self.data.train(seed_offset=0), self.baseline_steps, method, path)
      self._save_weights(model, path)
    self._models[method] = model
    return model

  # ---------------------------------------------------------------- scoring
  def columns(self, row: Row):
    """`{column: Translation}` scored for a row: D->S, N->S, S->D (+ (R,D,N)->S)."""
    names = [m.name for m in self.data.modalities]
    kind = {"oracle": "oracle"}.get(row.method, "cascade" if row.cascade else "zero_pair")
    via = "rgb" if row.cascade else None
    columns = {}
    for source in ("depth", "nir"):
      if source in names:
        short = evaluation.SHORT_NAMES[source]
        columns[f"{short}->S"] = evaluation.Translation((source,), "segmentation", kind, via)
    if row.method != "oracle" or "depth" in mm_config.ORACLE_TARGETS:
      columns["S->D"] = evaluation.Translation(("segmentation",), "depth", kind, via)
    if row.method == "mmnets" and not row.cascade and row.stage >= 2:
      sources = tuple(m for m in ("rgb", "depth", "nir") if m in names)
      columns["(" + ",".join(evaluation.SHORT_NAMES[s] for s in sources) + ")->S"] = (
          evaluation.Translation(sources, "segmentation", "multimodal"))
    return columns

  def score(self, row: Row):
    columns = self.columns(row)
    translations = list(columns.values())
    modalities = {m.name: m for m in self.data.modalities}
    if row.method in ("mmnets", "oracle"):
      model = (self.oracle_model() if row.method == "oracle"
               else self.mmnets_model(row.variant, row.stage))
      results = evaluation.evaluate_model(model, self.data.test(), modalities=modalities,
                                          translations=translations, alignment=True)
    else:
      baseline = self.trained_baseline(row.method)

      def translate_fn(translation, inputs):
        source = translation.sources[0]
        return baseline.translate(source, translation.target, inputs[source])

      results = evaluation.evaluate_model(translate_fn, self.data.test(), modalities=modalities,
                                          translations=translations, alignment=False)
    by_name = {entry["name"]: entry for entry in results["translations"]}
    return {"columns": {c: by_name[t.name]["metrics"] for c, t in columns.items()},
            "alignment_factors": results.get("alignment_factors", {}),
            "num_test_examples": results["num_test_examples"]}

  def run_row(self, row: Row) -> dict:
    path = os.path.join(self.row_dir(row), RESULT_FILE)
    if os.path.exists(path):
      with open(path) as f:
        print(f"[{row.name}] finished earlier; skipped.", flush=True)
        return json.load(f)
    start = time.time()
    scored = self.score(row)
    result = dict(row=_row_dict(row), seconds=round(time.time() - start, 1), **scored)
    evaluation.write_json(result, path)
    d_s = scored["columns"].get("D->S", {}).get("miou")
    print(f"[{row.name}] done in {result['seconds']} s" +
          (f"; D->S mIoU {100 * d_s:.1f}" if d_s is not None else ""), flush=True)
    return result

  def run(self, rows: Sequence[Row]) -> dict:
    """Runs (or reads back) every row; the comparison is rewritten after each row, so an
    interrupted run still leaves the table of what finished."""
    os.makedirs(self.output_dir, exist_ok=True)
    results = []
    comparison = None
    for row in rows:
      results.append(self.run_row(row))
      comparison = self.write_comparison(results)
      # Every trained stage is cached on disk; dropping the in-memory models (and their
      # traced train functions) between rows keeps the paper suite's memory flat (it grew
      # past 18 GB when all rows' models stayed alive).
      self._models.clear()
      keras.backend.clear_session()
      gc.collect()
    return comparison

  def write_comparison(self, results: Sequence[dict]) -> dict:
    comparison = {
        "suite": self.suite,
        "dataset": self.config.dataset,
        "config": self.config.to_dict(),
        "baseline_steps": self.baseline_steps,
        "rows": list(results),
        "orderings": check_orderings(results),
    }
    evaluation.write_json(comparison, os.path.join(self.output_dir, "comparison.json"))
    tmp = os.path.join(self.output_dir, "comparison.md.tmp")
    with open(tmp, "w") as f:
      f.write(comparison_markdown(comparison))
    os.replace(tmp, os.path.join(self.output_dir, "comparison.md"))
    return comparison


def _row_dict(row: Row) -> dict:
  d = dataclasses.asdict(row)
  d["published"] = {k: list(v) for k, v in row.published.items()}
  return d


# ------------------------------------------------------------------ orderings
def _miou(results_by_name, name, column="D->S"):
  entry = results_by_name.get(name)
  if entry is None or column not in entry["columns"]:
    return None
  return entry["columns"][column].get("miou")


def check_orderings(results: Sequence[dict]) -> List[dict]:
  """The paper's orderings (D->S mIoU) among the rows that were run: holds or not."""
  by_name = {r["row"]["name"]: r for r in results}
  claims = []

  def claim(text, chain, column="D->S", strict=True):
    values = [_miou(by_name, name, column) for name in chain]
    if any(v is None for v in values):
      return
    holds = all((a > b) if strict else (a >= b) for a, b in zip(values, values[1:]))
    claims.append({"claim": text, "column": column, "rows": list(chain),
                   "miou": [round(100 * v, 1) for v in values], "holds": bool(holds)})

  for column in ("D->S", "N->S"):
    for other in ("cascade_switches", "cascade_skip", "pix2pix", "cyclegan", "stargan_unpaired",
                  "stargan_paired", "unit", "distillation"):
      claim(f"M&MNets > {other}", ["mmnets", other], column)
    claim("M&MNets+PP > distillation", ["mmnets_pp", "distillation"], column)
    claim("M&MNets+PP > M&MNets", ["mmnets_pp", "mmnets"], column)
    claim("oracle > M&MNets+PP", ["oracle", "mmnets_pp"], column)
    claim("2xpix2pix > CycleGAN", ["pix2pix", "cyclegan"], column)
  claim("switches > none > skip (side information)", ["side_switches", "side_none", "side_skip"])
  claim("switches > none", ["side_switches", "side_none"])
  claim("none > skip", ["side_none", "side_skip"])
  ladder = ["ladder_pseudo_pairs", "ladder_noise", "ladder_latent", "ladder_autoencoders",
            "ladder_translations"]
  for better, worse in zip(ladder, ladder[1:]):
    claim(f"ladder: {better} > {worse}", [better, worse])
  claim("RGB decoder without switches > with", ["rgb_decoder_off", "rgb_decoder_switches"])
  few = sorted({r["row"]["few_pairs"] for r in results if r["row"]["group"] == "few_pairs"})
  for selection in ("kmedoids", "random"):
    chain = [f"few_pairs_{k}_{selection}" if k else "few_pairs_0" for k in reversed(few)]
    if len(chain) > 1:
      claim(f"few pairs ({selection}): more pairs help", chain, strict=False)
  for k in few:
    if k:
      claim(f"few pairs K={k}: k-medoids >= random",
            [f"few_pairs_{k}_kmedoids", f"few_pairs_{k}_random"], strict=False)
  return claims


# ------------------------------------------------------------------ markdown
def _pct(value):
  return "-" if value is None or (isinstance(value, float) and np.isnan(value)) \
      else f"{100 * value:.1f}"


def _num(value):
  return "-" if value is None or (isinstance(value, float) and np.isnan(value)) \
      else f"{value:.3f}"


def comparison_markdown(comparison: dict) -> str:
  """The tables of comparison.md (see module doc)."""
  rows = comparison["rows"]
  config = comparison.get("config", {})
  freiburg_like = comparison.get("dataset") in ("freiburg_forest", "synthetic_forest")
  lines = [
      f"# Comparison: suite `{comparison.get('suite')}` on `{comparison.get('dataset')}`", "",
      f"image size {config.get('image_size')}, width {config.get('width')}, batch "
      f"{config.get('batch_size')}, M&MNets steps per stage {config.get('steps')}, baseline "
      f"steps {comparison.get('baseline_steps')}. Every row is scored by "
      "`mm_tf.evaluation.evaluate_model` on the same test split. Percent.", ""]
  if freiburg_like:
    lines += ["`published` = Freiburg Forest numbers of the thesis (Table 4.8), mIoU / global, "
              "for reference: the absolute values depend on data and scale; the orderings are "
              "what should reproduce.", ""]
  groups = list(dict.fromkeys(r["row"]["group"] for r in rows))
  for group in groups:
    members = [r for r in rows if r["row"]["group"] == group]
    lines += [f"## {GROUP_TITLES.get(group, group)}", ""]
    if group == "baselines":
      lines += _baseline_tables(members, freiburg_like)
    else:
      lines += _compact_table(members, group)
  claims = comparison.get("orderings", [])
  if claims:
    lines += ["## The paper's orderings on these numbers (D->S / N->S mIoU)", "",
              "| claim | column | mIoU | holds |", "|---|---|---|---|"]
    for c in claims:
      lines.append(f"| {c['claim']} | {c['column']} | {' > '.join(str(v) for v in c['miou'])} "
                   f"| {'yes' if c['holds'] else '**no**'} |")
    lines.append("")
  return "\n".join(lines)


def _baseline_tables(members, freiburg_like):
  lines = []
  seg_columns = [c for c in ("D->S", "N->S") if any(c in r["columns"] for r in members)]
  header = ["method"]
  for c in seg_columns:
    header += [f"{c} mIoU", f"{c} global"]
  header += ["S->D delta1", "S->D RMSE (m)"]
  multimodal = next((c for r in members for c in r["columns"] if c.startswith("(")), None)
  if multimodal:
    header += [f"{multimodal} mIoU"]
  if freiburg_like:
    header += ["published " + " / ".join(seg_columns)]
  lines += ["Summary (mIoU, global pixel accuracy; S->D: delta < 1.25 and RMSE in metres).", "",
            "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in members:
    cells = [r["row"]["label"]]
    for c in seg_columns:
      m = r["columns"].get(c, {})
      cells += [_pct(m.get("miou")), _pct(m.get("global_accuracy"))]
    d = r["columns"].get("S->D", {})
    cells += [_pct(d.get("delta1")), _num(d.get("rmse"))]
    if multimodal:
      cells.append(_pct(r["columns"].get(multimodal, {}).get("miou")))
    if freiburg_like:
      published = r["row"].get("published", {})
      cells.append(" / ".join(f"{published[c][0]}, {published[c][1]}" if c in published else "-"
                              for c in seg_columns))
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  for c in seg_columns:
    classes = next((list(r["columns"][c]["per_class_iou"]) for r in members if c in r["columns"]),
                   [])
    header = ["method"] + classes + ["mIoU", "global"]
    lines += [f"### {c}: per-class IoU", "", "| " + " | ".join(header) + " |",
              "|" + "---|" * len(header)]
    for r in members:
      m = r["columns"].get(c)
      if m is None:
        continue
      lines.append("| " + " | ".join([r["row"]["label"]]
                                     + [_pct(m["per_class_iou"].get(k)) for k in classes]
                                     + [_pct(m["miou"]), _pct(m["global_accuracy"])]) + " |")
    lines.append("")
  lines += ["### S->D: depth metrics", "",
            "| method | delta<1.25 | delta<1.25^2 | delta<1.25^3 | RMSE (m) | RMSE log |",
            "|---|---|---|---|---|---|"]
  for r in members:
    d = r["columns"].get("S->D")
    if d is not None:
      lines.append(f"| {r['row']['label']} | {_pct(d['delta1'])} | {_pct(d['delta2'])} | "
                   f"{_pct(d['delta3'])} | {_num(d['rmse'])} | {_num(d['rmse_log'])} |")
  lines.append("")
  return lines


def _compact_table(members, group):
  seg_columns = [c for c in ("D->S", "N->S") if any(c in r["columns"] for r in members)]
  header = (["row"] + [f"{c} mIoU" for c in seg_columns] + ["S->D delta1", "S->D RMSE (m)"]
            + ["AF(rgb, depth)"])
  if group in ("side_information", "ladder", "rgb_decoder"):
    header.append("published SceneNet D->S mIoU")
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in members:
    cells = [r["row"]["label"]]
    cells += [_pct(r["columns"].get(c, {}).get("miou")) for c in seg_columns]
    d = r["columns"].get("S->D", {})
    cells += [_pct(d.get("delta1")), _num(d.get("rmse"))]
    af = r.get("alignment_factors", {})
    cells.append(_num(af.get("rgb_depth", af.get("depth_rgb"))))
    if group in ("side_information", "ladder", "rgb_decoder"):
      name = r["row"]["name"]
      key = {"side_switches": "mmnets", "ladder_noise": None, "rgb_decoder_off": "mmnets",
             "ladder_pseudo_pairs": "mmnets_pp"}.get(name, name)
      value = (PUBLISHED_SCENENET_LADDER_NOISE if name == "ladder_noise"
               else PUBLISHED_SCENENET_ABLATIONS.get(key))
      cells.append("-" if value is None else f"{value}")
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  return lines


# ------------------------------------------------------------------ main
def define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  mm_config.define_flags()
  flags.DEFINE_enum("suite", "paper", list(SUITES), "Which rows to run: paper (all), smoke "
                    "(a few rows, for tests), baselines, ablations or few_pairs.")
  flags.DEFINE_string("output_dir", "runs/experiments", "Where rows/, models/, comparison.md "
                      "and comparison.json go. Re-running with the same directory resumes.")
  flags.DEFINE_list("rows", [], "Run only these rows of the suite (by name).")
  flags.DEFINE_integer("baseline_steps", -1, "Training steps of every baseline (-1: stage 1 + "
                       "stage 2 steps of --steps, the budget of M&MNets without pseudo-pairs).")
  flags.DEFINE_integer("baseline_residual_blocks", 3, "Residual blocks of the CycleGAN, StarGAN "
                       "and UNIT generators (the papers use 6-9 at 128-256 px).")
  flags.DEFINE_list("few_pairs", ["0", "1", "5", "20"], "K values of the few-pair rows: K "
                    "(depth, segmentation) pairs from the train split added from stage 2.")
  flags.DEFINE_list("few_pair_selection", ["kmedoids", "random"], "How the K pairs are chosen: "
                    "kmedoids (medoids of k-means clusters of depth-encoder features) and/or "
                    "random.")


def main(argv):
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  FLAGS = flags.FLAGS
  config = mm_config.from_flags(FLAGS)
  training.set_precision(config.precision)
  strategy = training.make_strategy(config.distribution_strategy)
  worker = training.worker_of(strategy)
  rows = suite_rows(FLAGS.suite, [int(k) for k in FLAGS.few_pairs], FLAGS.few_pair_selection)
  if FLAGS.rows:
    unknown = set(FLAGS.rows) - {r.name for r in rows}
    if unknown:
      raise app.UsageError(f"Unknown rows {sorted(unknown)}; suite {FLAGS.suite} has "
                           f"{[r.name for r in rows]}.")
    rows = [r for r in rows if r.name in FLAGS.rows]
  # Under multi_worker every worker trains every row (the shared loop runs under the
  # strategy); only the chief keeps files. The others write into a temporary directory,
  # so they cannot resume: restart an interrupted multi-worker suite in a new output_dir.
  output_dir = worker.writable_dir(FLAGS.output_dir)
  runner = Runner(config, output_dir, baseline_steps=FLAGS.baseline_steps,
                  baseline_residual_blocks=FLAGS.baseline_residual_blocks, suite=FLAGS.suite)
  with strategy.scope():
    comparison = runner.run(rows)
  training.barrier(strategy, worker)
  worker.remove_temporary(FLAGS.output_dir)
  print(comparison_markdown(comparison))
  print(f"Wrote {os.path.join(output_dir, 'comparison.md')} and comparison.json")


if __name__ == "__main__":
  from absl import app as _app  # pylint: disable=g-import-not-at-top
  define_flags()
  _app.run(main)
