"""The training loop: stages in order, resumable checkpoints, TensorBoard, evaluation.

`run_training(config)` trains the stages of an `ExperimentConfig` one after the other with
Keras `fit()`:

  model_dir/
    flags.txt, config.json       what this run was started with (checked on resume)
    stage_<n>/checkpoints/       tf.train.CheckpointManager: weights + optimizer + step
    stage_<n>/model/             the model after stage n (mm_tf.saving layout)
    model/                       the final model (mm_tf.load(model_dir) reads it)
    tensorboard/                 loss terms, alignment factors, image grids
    eval/stage_<n>/              evaluation after stage n (results.json, predictions.npz)
    eval/results.{json,md}, eval/figures/   final evaluation (mm_tf.evaluate)
    oracle/                      the --with_oracle run (a model_dir of its own)

Resume: the stage with the highest-numbered checkpoint is restored at its saved step
(weights, both optimizers' state); earlier stages are finished and not redone; a stage
that reached its step count only runs its end-of-stage actions if they are missing.
Checkpoints are written by `tf.train.CheckpointManager` (index file written last), so a
kill -9 at any moment leaves the previous checkpoint readable.
"""

import json
import logging
import math
import os
import subprocess
import sys
import time
from typing import Dict, Optional

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from mm_tf import config as mm_config
from mm_tf import evaluation
from mm_tf import model as mm_model
from mm_tf import saving

CONFIG_FILE = "config.json"
FLAGS_FILE = "flags.txt"
STAGE_DONE_FILE = "stage_done.json"


# ------------------------------------------------------------------ runtime
def set_precision(precision: str):
  """Sets the Keras dtype policy; must run before the model is built."""
  keras.mixed_precision.set_global_policy(precision)


def make_strategy(name: str) -> tf.distribute.Strategy:
  """The tf.distribute strategy of --distribution_strategy."""
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  raise ValueError(f"Unknown distribution strategy {name!r}; use one of "
                   f"{', '.join(mm_config.STRATEGIES)}.")


# ------------------------------------------------------------------ data
def dataset_spec(config):
  from mm_tf import data as mm_data  # pylint: disable=g-import-not-at-top
  return mm_data.get_dataset_spec(config.dataset)


def prepare_data(config):
  """Generates the synthetic dataset if needed (other datasets are the user's files)."""
  if config.dataset == "synthetic_forest":
    from mm_tf.data import synthetic_forest  # pylint: disable=g-import-not-at-top
    start = time.time()
    path = synthetic_forest.ensure_synthetic_forest(
        config.data_dir, num_train=config.synthetic_num_train,
        num_test=config.synthetic_num_test, image_size=config.image_size, seed=config.seed)
    logging.info("synthetic_forest ready in %s (%.1f s).", path, time.time() - start)


def train_dataset(config, seed_offset=0):
  from mm_tf.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.train_dataset(dataset_spec(config), config.data_dir, config.image_size,
                                config.batch_size, seed=config.seed + seed_offset,
                                oracle=config.oracle, augment=config.augment,
                                skip_bad_examples=config.skip_bad_examples)


def test_dataset(config, batch_size=None):
  from mm_tf.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.test_dataset(dataset_spec(config), config.data_dir, config.image_size,
                               batch_size or config.eval_batch_size,
                               skip_bad_examples=config.skip_bad_examples)


# ------------------------------------------------------------------ model
def build_model(config) -> mm_model.MixAndMatchNetworks:
  """The `MixAndMatchNetworks` (or the oracle's) of a config, built at image_size."""
  spec = dataset_spec(config)
  modalities = model_modalities(config)
  streams = spec.streams
  anchor = "rgb"
  encoder_batch_norm = {}
  if config.oracle:
    # Same architecture, trained directly on the pairs zero-pair training never sees.
    modalities = [m for m in modalities if m.name != "rgb"]
    streams = [("segmentation",) + tuple(s for s in stream if s != "segmentation")
               for stream in spec.oracle_streams]
    anchor = "segmentation"
  if config.rgb_encoder_vgg16_h5 and not config.oracle:
    encoder_batch_norm["rgb"] = False  # VGG16 has no batch norm (paper Appendix A).
  model = mm_model.MixAndMatchNetworks(
      modalities, streams, anchor=anchor, width=config.width,
      side_information=config.side_information, noise_std=config.noise_std,
      stages=config.stages(), image_size=config.image_size,
      unpool_implementation=config.unpool_implementation,
      encoder_batch_norm=encoder_batch_norm, num_pools=config.num_pools)
  return model


def model_modalities(config):
  """The dataset's modality descriptions, with class weights if --class_balancing asks."""
  modalities = list(dataset_spec(config).modalities)
  if config.class_balancing == "median_frequency":
    modalities = [m.with_median_frequency_weights(class_pixel_counts(config, m))
                  if m.is_categorical else m for m in modalities]
  return modalities


def class_pixel_counts(config, modality, batches=50) -> np.ndarray:
  """Labelled pixels per class of `modality` in `batches` training batches (void excluded)."""
  counts = np.zeros(modality.num_classes, np.int64)
  for batch in train_dataset(config, seed_offset=7777).take(batches):
    for stream in batch.values():
      if modality.name in stream:
        labels = np.asarray(stream[modality.name]).ravel()
        labels = labels[(labels >= 0) & (labels < modality.num_classes)]
        counts += np.bincount(labels, minlength=modality.num_classes)
  logging.info("%s class pixel counts %s (%s)", modality.name, counts.tolist(),
               ", ".join(modality.class_names))
  return counts


def load_vgg16_into_rgb_encoder(model, path: str):
  """Copies VGG16's 13 conv kernels/biases (a local keras .h5) into the RGB encoder.

  Reads the Keras 2 weights layout of `vgg16_weights_tf_dim_ordering_tf_kernels*.h5`
  (layer groups `block<b>_conv<i>` with `kernel:0`/`bias:0`) and the Keras 3
  `.weights.h5` layout (`layers/<name>/vars/{0,1}`), in network order.

  Raises:
    ValueError: the file cannot be read, lacks 13 conv layers, or shapes do not match
      (VGG16 needs --width=1 and the RGB encoder without batch norm).
  """
  try:
    import h5py  # pylint: disable=g-import-not-at-top
    with h5py.File(path, "r") as f:
      pairs = _vgg16_kernels(f)
  except (OSError, KeyError, ImportError) as e:
    raise ValueError(f"Cannot read VGG16 weights from --rgb_encoder_vgg16_h5={path!r}: {e}. "
                     "Give a local keras .h5 (nothing is downloaded).") from e
  encoder = model.encoders["rgb"]
  blocks = [block for stage in encoder.stages for block in stage]
  if len(pairs) != len(blocks):
    raise ValueError(f"{path}: found {len(pairs)} conv layers, the RGB encoder has "
                     f"{len(blocks)} (VGG16 has 13).")
  for block, (kernel, bias) in zip(blocks, pairs):
    if tuple(block.conv.kernel.shape) != kernel.shape:
      raise ValueError(f"{path}: kernel {kernel.shape} does not fit {block.name} "
                       f"{tuple(block.conv.kernel.shape)}; VGG16 init needs --width=1.")
    block.conv.kernel.assign(kernel)
    if block.conv.bias is not None:
      block.conv.bias.assign(bias)
  logging.info("RGB encoder initialised from VGG16 weights in %s.", path)


def _vgg16_kernels(f):
  pairs = []
  if "layer_names" in f.attrs:  # Keras 2 layout.
    for name in [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]:
      group = f[name]
      weight_names = [n.decode() if isinstance(n, bytes) else n
                      for n in group.attrs.get("weight_names", [])]
      if len(weight_names) == 2 and group[weight_names[0]].ndim == 4:
        pairs.append((np.asarray(group[weight_names[0]]), np.asarray(group[weight_names[1]])))
    return pairs
  layers = f["layers"]  # Keras 3 layout; groups are named like the layers.
  for name in sorted(layers, key=lambda n: (len(n), n)):
    vars_group = layers[name].get("vars")
    if vars_group is not None and "0" in vars_group and vars_group["0"].ndim == 4:
      pairs.append((np.asarray(vars_group["0"]), np.asarray(vars_group["1"])))
  return pairs


# ------------------------------------------------------------------ model_dir files
def write_run_files(config, flags_text: Optional[str] = None):
  """Checks config.json of an existing run for compatibility, then (re)writes the files."""
  os.makedirs(config.model_dir, exist_ok=True)
  path = os.path.join(config.model_dir, CONFIG_FILE)
  if os.path.exists(path):
    mm_config.check_compatible(mm_config.ExperimentConfig.from_json_file(path), config)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(config.to_json())
  os.replace(tmp, path)
  if flags_text is not None:
    with open(os.path.join(config.model_dir, FLAGS_FILE), "w") as f:
      f.write(flags_text)


def stage_dir(model_dir, stage):
  return os.path.join(model_dir, f"stage_{stage}")


# ------------------------------------------------------------------ summaries
# Written with core `tf.summary.write` and the TensorBoard plugin names, so logging needs
# no `tensorboard` package (TensorBoard reads them as ordinary scalars and images).
def _plugin_metadata(plugin_name):
  metadata = summary_pb2.SummaryMetadata()
  metadata.plugin_data.plugin_name = plugin_name
  return metadata


def write_scalar(tag, value, step):
  tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step,
                   metadata=_plugin_metadata("scalars"))


def write_image(tag, image, step, description=""):
  """`image`: [H, W, 3] float in [0, 1]."""
  image = tf.image.convert_image_dtype(tf.convert_to_tensor(image, tf.float32), tf.uint8,
                                       saturate=True)
  height, width = int(image.shape[0]), int(image.shape[1])
  tensor = tf.stack([tf.as_string(width), tf.as_string(height), tf.io.encode_png(image)])
  metadata = _plugin_metadata("images")
  metadata.summary_description = description
  tf.summary.write(tag, tensor, step=step, metadata=metadata)


# ------------------------------------------------------------------ callbacks
class CheckpointCallback(keras.callbacks.Callback):
  """Saves a resumable checkpoint every `every` steps and at the end of the stage."""

  def __init__(self, manager, step, initial_step, every):
    super().__init__()
    self.manager = manager
    self.step = step
    self.initial_step = initial_step
    self.every = every
    self.last_saved = initial_step

  def current_step(self, batch):
    return self.initial_step + batch + 1

  def on_train_batch_end(self, batch, logs=None):
    step = self.current_step(batch)
    if step % self.every == 0:
      self.save(step)

  def save(self, step):
    self.step.assign(step)
    self.manager.save(checkpoint_number=step)
    self.last_saved = step


class ProgressCallback(keras.callbacks.Callback):
  """A console progress bar with ETA over the whole stage (Keras' Progbar)."""

  def __init__(self, stage, total_steps, initial_step, shown=("loss",)):
    super().__init__()
    self.stage = stage
    self.initial_step = initial_step
    self.shown = shown
    print(f"Stage {stage}: steps {initial_step} -> {total_steps}", flush=True)
    # The values are already running means (the TensorBoard callback resets them).
    self.bar = keras.utils.Progbar(total_steps, stateful_metrics=list(shown), unit_name="step")
    self.bar.update(initial_step)

  def on_train_batch_end(self, batch, logs=None):
    logs = logs or {}
    values = [(k, float(v)) for k, v in logs.items() if k in self.shown]
    self.bar.update(self.initial_step + batch + 1, values=values)


class TensorBoardCallback(keras.callbacks.Callback):
  """Every loss term, alignment factors per encoder pair and translation image grids.

  Loss terms every `log_every` steps; alignment factors (on a fixed test batch) and image
  grids of seen and unseen translations every `image_every` steps and at the stage's end.

  Scalars are the means since the last write (the model's metrics are reset after each
  write), at a global step that counts across stages.
  """

  def __init__(self, writer, step_offset, initial_step, log_every, image_every, probe_batch,
               stage, final_step):
    super().__init__()
    self.final_step = final_step
    self.writer = writer
    self.step_offset = step_offset
    self.initial_step = initial_step
    self.log_every = log_every
    self.image_every = image_every
    self.probe_batch = probe_batch
    self.stage = stage

  def on_train_batch_end(self, batch, logs=None):
    step = self.initial_step + batch + 1
    global_step = self.step_offset + step
    if step % self.log_every == 0 and logs:
      with self.writer.as_default(step=global_step):
        for name, value in logs.items():
          write_scalar(f"loss/{name}", value, global_step)
        write_scalar("stage", self.stage, global_step)
      self.model.reset_metrics()
    if (step % self.image_every == 0 or step == self.final_step) and self.probe_batch is not None:
      # Eager encoder passes: a few seconds on 2 CPU cores, hence their own interval.
      with self.writer.as_default(step=global_step):
        for pair, value in self.model.alignment_factors(self.probe_batch).items():
          write_scalar(f"alignment_factor/{pair}", value, global_step)
      self.write_images(global_step)

  def write_images(self, global_step):
    model = self.model
    with self.writer.as_default(step=global_step):
      for kind, pairs in (("seen", model.seen_translations),
                          ("unseen", model.unseen_translations)):
        columns = []
        for source, target in pairs:
          if source not in self.probe_batch or target not in self.probe_batch:
            continue
          x = self.probe_batch[source][:3]
          output = model.translate(source, target, x)
          # (input | output | ground truth) side by side, examples stacked vertically.
          triple = np.concatenate([
              to_rgb(model.modalities[source], x, False),
              to_rgb(model.modalities[target], output, False, logits=True),
              to_rgb(model.modalities[target], self.probe_batch[target][:3], False)], axis=2)
          columns.append(np.concatenate(list(triple), axis=0))
        if columns:
          spacer = np.ones([columns[0].shape[0], 4, 3], np.float32)
          grid = np.concatenate([c for column in columns for c in (column, spacer)][:-1], axis=1)
          write_image(f"translations/{kind}", grid, global_step,
                      description=", ".join(f"{s}->{t}" for s, t in pairs))
      self.writer.flush()


def to_rgb(modality, value, raw: bool, logits: bool = False) -> np.ndarray:
  """[N,H,W,3] float images in [0, 1] of a batch of any modality (for summaries)."""
  value = np.asarray(tf.cast(value, tf.float32) if not modality.is_categorical or logits
                     else value)
  if modality.is_categorical:
    labels = np.argmax(value, axis=-1) if logits else value
    return modality.colorize(labels).astype(np.float32) / 255.0
  if not raw:
    value = np.asarray(modality.denormalize(value))
  lo, hi = modality.raw_range
  value = np.clip((value - lo) / (hi - lo), 0, 1)
  if value.shape[-1] == 1:
    import matplotlib  # pylint: disable=g-import-not-at-top
    cmap = matplotlib.colormaps["magma_r" if modality.unit == "m" else "gray"]
    value = cmap(value[..., 0])[..., :3]
  return value.astype(np.float32)


# ------------------------------------------------------------------ stages
def _latest_stage_with_checkpoint(config):
  for stage in sorted(config.stage_numbers(), reverse=True):
    if tf.train.latest_checkpoint(os.path.join(stage_dir(config.model_dir, stage),
                                               "checkpoints")):
      return stage
  return None


def _make_checkpoint(model, step):
  """A tf.train.Checkpoint of every model variable, both optimizers and the stage step.

  The variables are listed explicitly by path: a Keras 3 model passed as one object is
  only reached through the optimizers' variable lists, which would leave out the
  non-trainable (batch-norm statistics) and frozen (stage 2-3 RGB encoder) variables.
  """
  # `MixAndMatchNetworks.compile` has already built the optimizers' slots, so every saved
  # value has a home on restore (no deferred restores).
  if not model.generator_optimizer.built:
    raise ValueError("Compile the built model before checkpointing it.")
  variables = {v.path.replace("/", "."): v for v in model.variables}
  if len(variables) != len(model.variables):
    raise ValueError("Model variable paths are not unique; cannot checkpoint them by path.")
  return tf.train.Checkpoint(model_variables=variables,
                             generator_optimizer=model.generator_optimizer,
                             discriminator_optimizer=model.discriminator_optimizer, step=step)


def _console_terms(model, spec):
  """A few loss terms for the progress bar: total, two translations, latent, pseudo-pair."""
  terms = model.active_term_names(spec)
  special = [t for t in terms if t.startswith(("latent_", "pseudo_"))]
  return ["loss"] + terms[:2] + special[:1] + [t for t in special if t.startswith("pseudo_")][:1]


def train_stage(model, config, stage, strategy, writer, probe_batch, restore: bool) -> bool:
  """Trains one stage to its step count; returns True if steps were run."""
  spec = model.stage_specs[stage]
  directory = stage_dir(config.model_dir, stage)
  with strategy.scope():
    model.set_stage(stage)
    model.compile(run_eagerly=config.run_eagerly)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="stage_step")
    checkpoint = _make_checkpoint(model, step)
  manager = tf.train.CheckpointManager(checkpoint, os.path.join(directory, "checkpoints"),
                                       max_to_keep=config.keep_checkpoints)
  initial_step = 0
  if restore and manager.latest_checkpoint:
    checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    initial_step = int(step.numpy())
    print(f"Stage {stage}: resumed from {manager.latest_checkpoint} at step {initial_step}.",
          flush=True)
  remaining = spec.steps - initial_step
  if remaining <= 0:
    return False
  step_offset = sum(model.stage_specs[s].steps for s in config.stage_numbers() if s < stage)
  # A different data seed per stage and resume point: a resumed run does not replay the
  # batches it already trained on.
  data = train_dataset(config, seed_offset=1000 * stage + initial_step)
  checkpointer = CheckpointCallback(manager, step, initial_step, config.checkpoint_every_steps)
  callbacks = [
      ProgressCallback(stage, spec.steps, initial_step, shown=_console_terms(model, spec)),
      TensorBoardCallback(writer, step_offset, initial_step, config.log_every_steps,
                          config.image_summary_every_steps, probe_batch, stage, spec.steps),
      checkpointer,
  ]
  start = time.time()
  model.fit(data, steps_per_epoch=remaining, epochs=1, callbacks=callbacks, verbose=0)
  if config.batch_norm_recalibration_batches > 0:
    # Before the stage's final checkpoint, so a resumed run finds the recalibrated values.
    model.recalibrate_batch_norm(data.take(config.batch_norm_recalibration_batches))
    checkpointer.save(spec.steps)
  elif checkpointer.last_saved != spec.steps:
    checkpointer.save(spec.steps)
  elapsed = time.time() - start
  print(f"Stage {stage}: {remaining} steps in {elapsed:.1f} s "
        f"({1000 * elapsed / remaining:.0f} ms/step).", flush=True)
  return True


def _after_stage(model, config, stage, evaluate: bool, timings: Dict[str, float]):
  """End-of-stage actions (idempotent): the stage's model and its evaluation."""
  directory = stage_dir(config.model_dir, stage)
  done_path = os.path.join(directory, STAGE_DONE_FILE)
  if not os.path.exists(os.path.join(directory, saving.MODEL_SUBDIR, saving.CONFIG_FILE)):
    saving.save_model(model, os.path.join(directory, saving.MODEL_SUBDIR))
  eval_dir = os.path.join(config.model_dir, "eval", f"stage_{stage}")
  if evaluate and not os.path.exists(os.path.join(eval_dir, "results.json")):
    start = time.time()
    results = evaluation.evaluate_model(model, test_dataset(config),
                                        prediction_examples=config.num_figure_examples)
    predictions = results.pop("_predictions")
    os.makedirs(eval_dir, exist_ok=True)
    arrays = {f"output/{k}": v for k, v in predictions["outputs"].items()}
    arrays.update({f"input/{k}": v for k, v in predictions["inputs"].items()})
    np.savez_compressed(os.path.join(eval_dir, "predictions.npz"), **arrays)
    evaluation.write_json(dict(results, stage=stage), os.path.join(eval_dir, "results.json"))
    timings[f"eval_stage_{stage}_s"] = time.time() - start
    headline = evaluation.summary(results)
    keys = [k for k in headline if "->S mIoU" in k][:6] + [k for k in headline
                                                           if k.startswith("AF(")][:3]
    print(f"After stage {stage}: " + ", ".join(f"{k} {headline[k]:.3f}" for k in keys),
          flush=True)
  with open(done_path, "w") as f:
    json.dump({"stage": stage, "steps": model.stage_specs[stage].steps}, f)


def run_training(config: mm_config.ExperimentConfig, flags_text: Optional[str] = None) -> str:
  """Trains every stage of `config` (resuming), then evaluates and exports.

  Returns:
    The model_dir.
  """
  run_start = time.time()
  timings = {}
  set_precision(config.precision)
  keras.utils.set_random_seed(config.seed)
  strategy = make_strategy(config.distribution_strategy)
  write_run_files(config, flags_text)
  prepare_data(config)
  with strategy.scope():
    model = build_model(config)
  if config.rgb_encoder_vgg16_h5 and not config.oracle and \
      _latest_stage_with_checkpoint(config) is None:
    load_vgg16_into_rgb_encoder(model, config.rgb_encoder_vgg16_h5)
  writer = tf.summary.create_file_writer(os.path.join(config.model_dir, "tensorboard"))
  probe_batch = None
  try:
    probe_batch = next(iter(test_dataset(config, batch_size=4)))
    probe_batch = {k: v for k, v in probe_batch.items() if k in model.modalities}
  except (StopIteration, tf.errors.OpError, ValueError) as e:
    logging.warning("No test batch for TensorBoard images/alignment factors: %s", e)
  latest = _latest_stage_with_checkpoint(config)
  for stage in config.stage_numbers():
    if latest is not None and stage < latest:
      print(f"Stage {stage}: finished earlier; skipped.", flush=True)
      continue
    start = time.time()
    train_stage(model, config, stage, strategy, writer, probe_batch,
                restore=latest is not None and stage == latest)
    timings[f"stage_{stage}_s"] = time.time() - start
    _after_stage(model, config, stage, config.evaluate_each_stage, timings)
  saving.save_model(model, os.path.join(config.model_dir, saving.MODEL_SUBDIR))
  print(f"Final model: {os.path.join(config.model_dir, saving.MODEL_SUBDIR)}", flush=True)
  oracle_dir = config.oracle_model_dir
  if config.with_oracle and not config.oracle:
    oracle_dir = os.path.join(config.model_dir, "oracle")
    print(f"Training the oracle in {oracle_dir}", flush=True)
    start = time.time()
    run_training(config.replace(oracle=True, model_dir=oracle_dir, with_oracle=False,
                                run_evaluation=False, export=False, evaluate_each_stage=False,
                                oracle_model_dir=""))
    timings["oracle_s"] = time.time() - start
  if config.run_evaluation and not config.oracle:
    from mm_tf import evaluate  # pylint: disable=g-import-not-at-top
    start = time.time()
    # The last stage's evaluation is the final model's: reused, not recomputed.
    eval_dir = evaluate.evaluate_model_dir(config.model_dir, oracle_model_dir=oracle_dir or None,
                                           model=model,
                                           reuse_stage_results=config.evaluate_each_stage)
    timings["final_eval_s"] = time.time() - start
    print(f"Evaluation: {os.path.join(eval_dir, 'results.md')}", flush=True)
  if config.export and not config.oracle:
    start = time.time()
    export_model(config.model_dir, examples_from=_examples_dir(config))
    timings["export_s"] = time.time() - start
  timings["total_s"] = time.time() - run_start
  with open(os.path.join(config.model_dir, "timings.json"), "w") as f:
    json.dump(timings, f, indent=2)
  print("Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()), flush=True)
  return config.model_dir


def _examples_dir(config):
  """The dataset directory whose test scenes the export carries for the demo page (Freiburg
  layout only: the synthetic forest and Freiburg Forest), else None."""
  spec = dataset_spec(config)
  if spec.builder_name != "freiburg_forest":
    return None
  return os.path.join(config.data_dir, spec.source_dir)


def export_model(model_dir, examples_from=None):
  """Runs `python -m mm_tf.export --model_dir` if mm_tf.export exists (ISSUE 5)."""
  try:
    import importlib.util  # pylint: disable=g-import-not-at-top
    available = importlib.util.find_spec("mm_tf.export") is not None
  except ImportError:
    available = False
  if not available:
    print("Export skipped: mm_tf.export is not available in this version.", flush=True)
    return
  command = [sys.executable, "-m", "mm_tf.export", f"--model_dir={model_dir}",
             f"--export_dir={os.path.join(model_dir, 'export')}"]
  if examples_from and os.path.isdir(examples_from):
    command.append(f"--examples_from={examples_from}")
  result = subprocess.run(command, check=False)
  if result.returncode:
    print(f"Export failed (exit {result.returncode}): {' '.join(command)}", flush=True)
  else:
    print(f"Export: {os.path.join(model_dir, 'export')}", flush=True)
