"""The training loop: stages in order, resumable checkpoints, TensorBoard, evaluation.

`run_training(config)` trains the stages of an `ExperimentConfig` one after the other,
each with `run_train_steps`: `strategy.run(model.train_step)` in a loop with Keras
callbacks, the same for every tf.distribute strategy (Keras 3's `fit()` cannot run under
MultiWorkerMirroredStrategy). Under several workers only the chief writes files:

  model_dir/
    flags.txt, config.json       what this run was started with (checked on resume)
    stage_<n>/checkpoints/       tf.train.CheckpointManager: weights + optimizer + step
    stage_<n>/model/             the model after stage n (mm_tf.saving layout)
    model/                       the final model (mm_tf.load(model_dir) reads it)
    tensorboard/                 loss terms, alignment factors, image grids
    eval/stage_<n>/              evaluation after stage n (results.json, predictions.npz)
    eval/results.{json,md}, eval/figures/   final evaluation (mm_tf.evaluation)
    oracle/                      the --with_oracle run (a model_dir of its own)
    export/                      SavedModels for TF Serving (mm_tf.export)

Resume: the stage with the highest-numbered checkpoint is restored at its saved step
(weights, both optimizers' state); earlier stages are finished and not redone; a stage
that reached its step count only runs its end-of-stage actions if they are missing.
Checkpoints are written by `tf.train.CheckpointManager` (state file replaced last), so a
kill -9 at any moment leaves the previous checkpoint readable; every other file that is
read back is written under a temporary name and renamed. A resumed stage skips the
examples it already trained on and draws the same latent noise (stateless, per step), so
the run ends with the results of an uninterrupted one.
"""

import dataclasses
import json
import logging
import os
import shutil
import time
from typing import Dict, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from mm_tf import config as mm_config
from mm_tf import errors
from mm_tf import evaluation
from mm_tf import model as mm_model
from mm_tf import saving

CONFIG_FILE = mm_config.CONFIG_FILE
FLAGS_FILE = "flags.txt"
STAGE_DONE_FILE = "stage_done.json"


# ------------------------------------------------------------------ runtime
# Measured (README, NOTES.md 5): bf16 is 2.4-2.7x faster than float32 on a CPU with AMX, but
# 1.7x slower on one with AVX512-BF16 and no AMX (and emulated, slower still, without
# either), so on CPUs only AMX turns it on.
_CPU_BF16_FLAG = "amx_bf16"


def choose_precision() -> Tuple[str, str]:
  """The Keras precision policy of --precision=auto for this machine, and why.

  bf16 where the hardware runs it natively: CPUs with AMX-bf16, GPUs of compute
  capability >= 8.0 (bf16 tensor cores, and no loss scaling needed). float32 elsewhere:
  mixed_float16 would suit 7.x GPUs but needs loss scaling, which the train steps do not
  apply; ask for it explicitly with --precision=mixed_float16.

  Returns:
    (policy name, a sentence saying why).
  """
  gpus = tf.config.list_physical_devices("GPU")
  if gpus:
    details = tf.config.experimental.get_device_details(gpus[0])
    name = details.get("device_name", "GPU")
    capability = tuple(details.get("compute_capability") or ())
    if capability >= (8, 0):
      return "mixed_bfloat16", f"{name} (compute capability {capability}) has bf16 tensor cores"
    return "float32", (f"{name} (compute capability {capability or 'unknown'}) has no bf16 "
                       "tensor cores")
  flags = _cpu_flags()
  if _CPU_BF16_FLAG in flags:
    return "mixed_bfloat16", "the CPU has AMX-bf16 (bf16 measured 2.4-2.7x faster)"
  detail = ("AVX512-BF16 but no AMX (bf16 measured 1.7x slower)" if "avx512_bf16" in flags
            else "no AMX (bf16 would be emulated, slower)")
  return "float32", f"the CPU has {detail}"


def _cpu_flags() -> frozenset:
  """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return frozenset(line.split(":", 1)[1].split())
  except OSError:
    pass
  return frozenset()


def set_precision(precision: str) -> str:
  """Sets the Keras dtype policy (before the model is built); resolves "auto".

  Returns:
    The policy set.
  """
  if precision == "auto":
    precision, reason = choose_precision()
    print(f"Precision: {precision} (--precision=auto: {reason}).", flush=True)
  keras.mixed_precision.set_global_policy(precision)
  return precision


def make_strategy(name: str) -> tf.distribute.Strategy:
  """The tf.distribute strategy of --distribution_strategy.

  Raises:
    errors.UserError: multi_worker without a usable TF_CONFIG.
  """
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker":
    _check_tf_config()
    return tf.distribute.MultiWorkerMirroredStrategy()
  raise errors.UserError(f"Unknown distribution strategy {name!r}; use one of "
                         f"{', '.join(mm_config.STRATEGIES)}.")


def _check_tf_config():
  text = os.environ.get("TF_CONFIG", "")
  try:
    tf_config = json.loads(text) if text else None
  except json.JSONDecodeError as e:
    raise errors.UserError(f"TF_CONFIG is not valid JSON ({e}); see docs/training.md, "
                           "'Several workers'.") from e
  if not tf_config or "cluster" not in tf_config or "task" not in tf_config:
    raise errors.UserError("--distribution_strategy=multi_worker needs TF_CONFIG with "
                           "'cluster' and 'task' (see docs/training.md, 'Several workers').")


@dataclasses.dataclass(frozen=True)
class Worker:
  """This process's place in a tf.distribute cluster (one process: the chief).

  Only the chief writes the run's files; the other workers take part in every collective
  operation (checkpoint and model saves included) but write into temporary per-worker
  directories that they delete, as the TF multi-worker guide does.
  """

  task_type: str = "chief"
  task_id: int = 0
  num_workers: int = 1
  is_chief: bool = True

  def writable_dir(self, path: str) -> str:
    """`path` for the chief; `<parent>/workertemp_<id>/<name>` for the other workers."""
    if self.is_chief:
      return path
    return os.path.join(os.path.dirname(path), f"workertemp_{self.task_id}",
                        os.path.basename(path))

  def remove_temporary(self, path: str):
    """Deletes what `writable_dir(path)` wrote on a non-chief worker."""
    if not self.is_chief:
      shutil.rmtree(os.path.dirname(self.writable_dir(path)), ignore_errors=True)


def worker_of(strategy: tf.distribute.Strategy) -> Worker:
  """The `Worker` this process is in `strategy`'s cluster."""
  resolver = getattr(strategy, "cluster_resolver", None)
  cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
  if not cluster or resolver.task_type is None:
    return Worker()
  task_type, task_id = resolver.task_type, int(resolver.task_id)
  is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0
                                      and "chief" not in cluster)
  num_workers = sum(len(cluster.get(job, [])) for job in ("chief", "worker"))
  return Worker(task_type, task_id, num_workers, is_chief)


def barrier(strategy: tf.distribute.Strategy, worker: Worker):
  """Returns once every worker got here (a one-number all-reduce; no-op for one worker)."""
  if worker.num_workers > 1:
    strategy.reduce(tf.distribute.ReduceOp.SUM,
                    strategy.run(lambda: tf.constant(1.0)), axis=None).numpy()


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


def train_dataset(config, seed_offset=0, num_shards=1, shard_index=0, skip_examples=0):
  """The infinite training batches of `config` (see `mm_tf.data.pipeline.train_dataset`)."""
  from mm_tf.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.train_dataset(dataset_spec(config), config.data_dir, config.image_size,
                                config.batch_size, seed=config.seed + seed_offset,
                                oracle=config.oracle, augment=config.augment,
                                skip_bad_examples=config.skip_bad_examples,
                                num_shards=num_shards, shard_index=shard_index,
                                skip_examples=skip_examples)


def distributed_train_dataset(config, strategy, seed_offset, initial_step):
  """The training batches for `strategy`, positioned at `initial_step`.

  Each input pipeline (worker) reads its own shard of every stream, batched at the
  per-replica --batch_size; at every step the replicas' batches together are the batch
  one replica would get with num_replicas * batch_size. A resumed run skips the examples
  of the `initial_step` steps already trained, so it sees what an uninterrupted run sees.
  """
  skip = initial_step * config.batch_size * strategy.num_replicas_in_sync

  def dataset_fn(context):
    return train_dataset(config, seed_offset, context.num_input_pipelines,
                         context.input_pipeline_id, skip)

  return strategy.distribute_datasets_from_function(dataset_fn)


def test_dataset(config, batch_size=None):
  """The test split of `config`'s dataset (see `mm_tf.evaluation.test_dataset`)."""
  return evaluation.test_dataset(config, batch_size)


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
      encoder_batch_norm=encoder_batch_norm, num_pools=config.num_pools,
      side_information_levels=config.side_information_levels,
      # The oracle's encoders are not aligned to an anchor: nothing to calibrate.
      latent_calibration=config.latent_calibration_batches > 0 and not config.oracle)
  return model


def model_modalities(config):
  """The dataset's modality descriptions, with class weights if --class_balancing asks."""
  modalities = list(dataset_spec(config).modalities)
  if config.class_balancing != "none":
    power = mm_config.CLASS_WEIGHT_POWERS[config.class_balancing]
    modalities = [m.with_median_frequency_weights(class_pixel_counts(config, m), power)
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
  saving.write_text_atomic(path, config.to_json())
  if flags_text is not None:
    saving.write_text_atomic(os.path.join(config.model_dir, FLAGS_FILE), flags_text)


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
  """Saves a resumable checkpoint every `every` steps (the caller saves the last one).

  Every worker saves (saving reads distributed variables collectively); a non-chief
  worker's manager writes into a temporary directory that `worker` removes again.
  `final_step` is never saved here: a checkpoint at a stage's last step must mean the
  stage is complete, precise BN included, because a resumed run that finds one trains
  and recalibrates nothing. `train_stage` saves it after the recalibration.
  """

  def __init__(self, manager, step, initial_step, every, worker=None, directory=None,
               final_step=None):
    super().__init__()
    self.manager = manager
    self.step = step
    self.initial_step = initial_step
    self.every = every
    self.final_step = final_step
    self.last_saved = initial_step
    self.worker = worker or Worker()
    self.directory = directory

  def current_step(self, batch):
    return self.initial_step + batch + 1

  def on_train_batch_end(self, batch, logs=None):
    step = self.current_step(batch)
    if step % self.every == 0 and step != self.final_step:
      self.save(step)

  def save(self, step):
    self.step.assign(step)
    self.manager.save(checkpoint_number=step)
    if self.directory:
      self.worker.remove_temporary(self.directory)
    self.last_saved = step


class KillPointCallback(keras.callbacks.Callback):
  """Calls `saving.kill_point(f"{prefix}_step{n}")` after step n (crash-safety tests)."""

  def __init__(self, prefix, initial_step):
    super().__init__()
    self.prefix = prefix
    self.initial_step = initial_step

  def on_train_batch_end(self, batch, logs=None):
    saving.kill_point(f"{self.prefix}_step{self.initial_step + batch + 1}")


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


def make_checkpoint(model, step):
  """A tf.train.Checkpoint of every model variable, both optimizers and the stage step.

  The variables are listed explicitly by path: a Keras 3 model passed as one object is
  only reached through the optimizers' variable lists, which would leave out the
  non-trainable (batch-norm statistics) and frozen (stage 2-3 RGB encoder) variables.
  """
  # `MixAndMatchNetworks.compile` has already built the optimizers' slots, so every saved
  # value has a home on restore (no deferred restores).
  if not model.generator_optimizer.built:
    raise ValueError("Compile the built model before checkpointing it.")
  names = [v.path.replace("/", ".") for v in model.variables]
  if len(set(names)) != len(names):
    # Baselines hold several functional generators whose layers share names, so a path
    # can repeat: then the variables' position (fixed by the model's construction) makes
    # the names unique.
    names = [f"{i:04d}.{name}" for i, name in enumerate(names)]
  variables = dict(zip(names, model.variables))
  return tf.train.Checkpoint(model_variables=variables,
                             generator_optimizer=model.generator_optimizer,
                             discriminator_optimizer=model.discriminator_optimizer, step=step)


def _console_terms(model, spec):
  """A few loss terms for the progress bar: total, two translations, latent, pseudo-pair."""
  terms = model.active_term_names(spec)
  special = [t for t in terms if t.startswith(("latent_", "pseudo_"))]
  return ["loss"] + terms[:2] + special[:1] + [t for t in special if t.startswith("pseudo_")][:1]


def run_train_steps(model, strategy: tf.distribute.Strategy, dataset, num_steps: int,
                    callbacks=(), run_eagerly: bool = False) -> Dict[str, float]:
  """Runs `num_steps` of `model.train_step` under `strategy`, with Keras callbacks.

  This replaces `model.fit`, which cannot run under MultiWorkerMirroredStrategy with
  Keras 3 (keras-team/keras#20585: "Attempt to convert a value (PerReplica...)"), and
  is used for every strategy (the default one included), so there is one loop. Each step
  is `strategy.run(model.train_step)` in a `tf.function` (not XLA-compiled: argmax
  pooling has no XLA kernel); the metrics it returns (each replica's running means) are
  averaged over the replicas, and the callbacks get them as `logs` after every step, as
  with fit. Every worker must call this with the same `num_steps`.

  Args:
    model: A compiled model built in `strategy.scope()`, with a `train_step`.
    strategy: The tf.distribute strategy.
    dataset: A distributed dataset of `strategy` (see `distributed_train_dataset`) or a
      `tf.data.Dataset` of per-replica batches, of which each worker then takes every
      num_workers-th batch.
    num_steps: Steps to run.
    callbacks: `keras.callbacks.Callback`s (`on_train_begin`, `on_train_batch_end`,
      `on_train_end` are called).
    run_eagerly: Run the step without `tf.function` (no tracing; slower steps).

  Returns:
    The logs of the last step as floats (empty when `num_steps` is 0).
  """
  if isinstance(dataset, tf.data.Dataset):
    batches = dataset
    dataset = strategy.distribute_datasets_from_function(
        lambda context: batches.shard(context.num_input_pipelines, context.input_pipeline_id))

  def one_step(batch):
    outputs = strategy.run(model.train_step, args=(batch,))
    return {name: strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
            for name, value in outputs.items()}

  if not run_eagerly:
    # autograph=False: the step has no tensor-dependent Python control flow, and
    # converting the model's and Keras' Python code took about a quarter of each stage's
    # tracing (4 s of 17 s for stage 3 on 2 CPU cores).
    one_step = tf.function(one_step, jit_compile=False, autograph=False)
  callback_list = keras.callbacks.CallbackList(list(callbacks), model=model)
  model.reset_metrics()
  iterator = iter(dataset)
  logs = {}
  callback_list.on_train_begin()
  for batch in range(num_steps):
    logs = one_step(next(iterator))
    callback_list.on_train_batch_end(batch, logs)
  callback_list.on_train_end(logs)
  return {name: float(value) for name, value in logs.items()}


def stage_seed_offset(stage: int, recalibration: bool = False) -> int:
  """Data seed offset of a stage's training batches (or of its recalibration batches)."""
  return 1000 * stage + (999 if recalibration else 0)


def recalibrate_batch_norm(model, config, strategy, stage, dataset=None):
  """Precise batch-norm statistics at the end of a stage (`--batch_norm_recalibration_batches`).

  Skipped (with a log line) under strategies with several replicas: each replica would
  compute its own statistics and the workers' weights would no longer be identical.
  `dataset` (default: the stage's training data with its recalibration seed) gives the
  batches.
  """
  if config.batch_norm_recalibration_batches <= 0:
    return
  if strategy.num_replicas_in_sync > 1:
    logging.info("Batch-norm recalibration skipped: %d replicas.",
                 strategy.num_replicas_in_sync)
    return
  if dataset is None:
    dataset = train_dataset(config, seed_offset=stage_seed_offset(stage, recalibration=True))
  model.recalibrate_batch_norm(dataset.take(config.batch_norm_recalibration_batches))


def calibrate_latents(model, config, strategy, stage, dataset=None):
  """Sets the non-anchor encoders' latent calibration at the end of a stage
  (`--latent_calibration_batches`; `MixAndMatchNetworks.calibrate_latents`).

  Runs after the batch-norm recalibration, on the encoders' final inference-mode latents,
  and only at the end of stages with latent consistency: the map corrects what that L2
  regression does to the latents' spread. A stage without it (stage 1: translators trained
  on pairs, the paper's cascade baseline) keeps the map it has (the identity at first).
  Skipped (with a log line) under strategies with several replicas, like the batch-norm
  recalibration. `dataset` (default: the stage's training data with its recalibration
  seed) gives the batches.
  """
  if not model.latent_calibration or config.latent_calibration_batches <= 0:
    return
  if not model.stage_specs[stage].latent_consistency:
    return
  if strategy.num_replicas_in_sync > 1:
    logging.info("Latent calibration skipped: %d replicas.", strategy.num_replicas_in_sync)
    return
  if dataset is None:
    dataset = train_dataset(config, seed_offset=stage_seed_offset(stage, recalibration=True))
  count = model.calibrate_latents(dataset.take(config.latent_calibration_batches))
  logging.info("Stage %d: latents calibrated on %d batches.", stage, count)


def train_stage(model, config, stage, strategy, writer, probe_batch, restore: bool,
                worker: Optional[Worker] = None) -> bool:
  """Trains one stage to its step count; returns True if steps were run.

  Resumes from the chief's latest checkpoint of the stage when `restore`; every worker
  reads it (the model_dir is shared), so all start from the same weights and step.
  """
  worker = worker or Worker()
  spec = model.stage_specs[stage]
  checkpoint_dir = os.path.join(stage_dir(config.model_dir, stage), "checkpoints")
  with strategy.scope():
    model.set_stage(stage)
    model.compile(run_eagerly=config.run_eagerly)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="stage_step")
    checkpoint = make_checkpoint(model, step)
  manager = tf.train.CheckpointManager(checkpoint, worker.writable_dir(checkpoint_dir),
                                       max_to_keep=config.keep_checkpoints)
  initial_step = 0
  latest = tf.train.latest_checkpoint(checkpoint_dir)
  if restore and latest:
    checkpoint.restore(latest).assert_existing_objects_matched()
    initial_step = int(step.numpy())
    print(f"Stage {stage}: resumed from {latest} at step {initial_step}.", flush=True)
  remaining = spec.steps - initial_step
  if remaining <= 0:
    return False
  step_offset = sum(model.stage_specs[s].steps for s in config.stage_numbers() if s < stage)
  # One data seed per stage; a resumed run skips what it already trained on.
  data = distributed_train_dataset(config, strategy, seed_offset=stage_seed_offset(stage),
                                   initial_step=initial_step)
  checkpointer = CheckpointCallback(manager, step, initial_step, config.checkpoint_every_steps,
                                    worker, checkpoint_dir, final_step=spec.steps)
  callbacks = [
      ProgressCallback(stage, spec.steps, initial_step, shown=_console_terms(model, spec)),
      TensorBoardCallback(writer, step_offset, initial_step, config.log_every_steps,
                          config.image_summary_every_steps, probe_batch, stage, spec.steps),
      checkpointer,
      KillPointCallback(_kill_prefix(config, stage), initial_step),
  ]
  start = time.time()
  run_train_steps(model, strategy, data, remaining, callbacks, config.run_eagerly)
  recalibrate_batch_norm(model, config, strategy, stage)
  calibrate_latents(model, config, strategy, stage)
  # After the recalibrations, so a resumed run finds the recalibrated statistics.
  checkpointer.save(spec.steps)
  check_workers_agree(model, strategy, worker, f"Stage {stage}")
  elapsed = time.time() - start
  print(f"Stage {stage}: {remaining} steps in {elapsed:.1f} s "
        f"({1000 * elapsed / remaining:.0f} ms/step).", flush=True)
  return True


def check_workers_agree(model, strategy, worker: Worker, label: str):
  """Raises unless every worker holds the same weights; prints their checksum.

  A cheap guard (one all-gather of a number) against workers that silently diverged, e.g.
  one resumed from another checkpoint. Synchronous training keeps them bit-identical.
  """
  if worker.num_workers <= 1:
    return
  local = float(tf.add_n([tf.reduce_sum(tf.cast(v, tf.float64)) for v in model.weights]))
  gathered = strategy.gather(strategy.run(lambda: tf.constant([local], tf.float64)), axis=0)
  checksums = [float(c) for c in gathered.numpy()]
  if len(set(checksums)) != 1:
    raise RuntimeError(f"{label}: the workers' weights differ (checksums {checksums}).")
  print(f"{label}: weights of the {len(checksums)} workers agree (checksum {local!r}).",
        flush=True)


def _kill_prefix(config, stage):
  return "oracle" if config.oracle else f"stage{stage}"


def save_model_everywhere(model, path, worker: Worker):
  """`saving.save_model` on every worker: the chief into `path`, the others temporarily."""
  saving.save_model(model, worker.writable_dir(path))
  worker.remove_temporary(path)


def _after_stage(model, config, stage, evaluate: bool, timings: Dict[str, float],
                 worker: Optional[Worker] = None):
  """End-of-stage actions (idempotent): the stage's model and its evaluation."""
  worker = worker or Worker()
  directory = stage_dir(config.model_dir, stage)
  model_path = os.path.join(directory, saving.MODEL_SUBDIR)
  if not os.path.exists(os.path.join(model_path, saving.CONFIG_FILE)):
    save_model_everywhere(model, model_path, worker)
  if not worker.is_chief:
    return
  eval_dir = os.path.join(config.model_dir, "eval", f"stage_{stage}")
  if evaluate and not os.path.exists(os.path.join(eval_dir, "results.json")):
    start = time.time()
    results = evaluation.evaluate_model(model, test_dataset(config),
                                        prediction_examples=config.num_figure_examples)
    predictions = results.pop("_predictions")
    os.makedirs(eval_dir, exist_ok=True)
    arrays = {f"output/{k}": v for k, v in predictions["outputs"].items()}
    arrays.update({f"input/{k}": v for k, v in predictions["inputs"].items()})
    # results.json (written atomically, last) is what says the evaluation is complete.
    npz = os.path.join(eval_dir, "predictions.npz")
    np.savez_compressed(npz + ".tmp.npz", **arrays)
    os.replace(npz + ".tmp.npz", npz)
    saving.kill_point(f"{_kill_prefix(config, stage)}_eval_results")
    evaluation.write_json(dict(results, stage=stage), os.path.join(eval_dir, "results.json"))
    timings[f"eval_stage_{stage}_s"] = time.time() - start
    headline = evaluation.summary(results)
    keys = [k for k in headline if "->S mIoU" in k][:6] + [k for k in headline
                                                           if k.startswith("AF(")][:3]
    print(f"After stage {stage}: " + ", ".join(f"{k} {headline[k]:.3f}" for k in keys),
          flush=True)
  saving.write_text_atomic(os.path.join(directory, STAGE_DONE_FILE),
                    json.dumps({"stage": stage, "steps": model.stage_specs[stage].steps}))


def run_training(config: mm_config.ExperimentConfig, flags_text: Optional[str] = None,
                 strategy: Optional[tf.distribute.Strategy] = None) -> str:
  """Trains every stage of `config` (resuming), then evaluates and exports.

  Under a multi-worker strategy every worker runs this with the same config: all train;
  only the chief writes the run's files, evaluates and exports.

  Args:
    config: The run's settings.
    flags_text: The command line's flags, saved as flags.txt.
    strategy: The strategy to train under (given for the --with_oracle run, which shares
      its parent's); default: a new one from --distribution_strategy, after the
      precision policy is set.

  Returns:
    The model_dir.
  """
  run_start = time.time()
  timings = {}
  top_level = strategy is None
  if top_level:
    mm_config.check_inputs(config)
    set_precision(config.precision)
    strategy = make_strategy(config.distribution_strategy)
  worker = worker_of(strategy)
  keras.utils.set_random_seed(config.seed)
  if worker.is_chief:
    write_run_files(config, flags_text)
    prepare_data(config)
  # The others prepare the data after the chief: on a shared data_dir they find it ready.
  barrier(strategy, worker)
  if not worker.is_chief:
    prepare_data(config)
  with strategy.scope():
    model = build_model(config)
  model.noise_seed = config.seed
  if config.rgb_encoder_vgg16_h5 and not config.oracle and \
      _latest_stage_with_checkpoint(config) is None:
    load_vgg16_into_rgb_encoder(model, config.rgb_encoder_vgg16_h5)
  writer = (tf.summary.create_file_writer(os.path.join(config.model_dir, "tensorboard"))
            if worker.is_chief else tf.summary.create_noop_writer())
  probe_batch = None
  if worker.is_chief:
    try:
      probe_batch = next(iter(test_dataset(config, batch_size=4)))
      probe_batch = {k: v for k, v in probe_batch.items() if k in model.modalities}
    except (StopIteration, tf.errors.OpError, ValueError) as e:
      logging.warning("No test batch for TensorBoard images/alignment factors: %s", e)
  latest = _latest_stage_with_checkpoint(config)
  trained = False
  for stage in config.stage_numbers():
    if latest is not None and stage < latest:
      print(f"Stage {stage}: finished earlier; skipped.", flush=True)
      continue
    start = time.time()
    trained |= train_stage(model, config, stage, strategy, writer, probe_batch,
                           restore=latest is not None and stage == latest, worker=worker)
    timings[f"stage_{stage}_s"] = time.time() - start
    _after_stage(model, config, stage, config.evaluate_each_stage, timings, worker)
  final_model = os.path.join(config.model_dir, saving.MODEL_SUBDIR)
  # Unchanged weights are not saved again: the export stays up to date.
  if trained or not os.path.exists(os.path.join(final_model, saving.WEIGHTS_FILE)):
    save_model_everywhere(model, final_model, worker)
  print(f"Final model: {final_model}", flush=True)
  oracle_dir = config.oracle_model_dir
  if config.with_oracle and not config.oracle:
    oracle_dir = os.path.join(config.model_dir, "oracle")
    print(f"Training the oracle in {oracle_dir}", flush=True)
    start = time.time()
    run_training(config.replace(oracle=True, model_dir=oracle_dir, with_oracle=False,
                                run_evaluation=False, export=False, evaluate_each_stage=False,
                                oracle_model_dir=""), strategy=strategy)
    timings["oracle_s"] = time.time() - start
  if worker.is_chief and config.run_evaluation and not config.oracle:
    start = time.time()
    # The last stage's evaluation is the final model's: reused, not recomputed.
    eval_dir = evaluation.evaluate_model_dir(config.model_dir,
                                             oracle_model_dir=oracle_dir or None, model=model,
                                             reuse_stage_results=config.evaluate_each_stage)
    timings["final_eval_s"] = time.time() - start
    print(f"Evaluation: {os.path.join(eval_dir, 'results.md')}", flush=True)
  if worker.is_chief and config.export and not config.oracle:
    start = time.time()
    export_model(config.model_dir, examples_from=_examples_dir(config))
    timings["export_s"] = time.time() - start
  timings["total_s"] = time.time() - run_start
  if worker.is_chief:
    saving.write_text_atomic(os.path.join(config.model_dir, "timings.json"),
                      json.dumps(timings, indent=2))
  print("Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()), flush=True)
  if top_level:
    barrier(strategy, worker)  # The workers leave together, after the chief's last file.
  return config.model_dir


def _examples_dir(config):
  """The dataset directory whose test scenes the export carries for the demo page (Freiburg
  layout only: the synthetic forest and Freiburg Forest), else None."""
  spec = dataset_spec(config)
  if spec.builder_name != "freiburg_forest":
    return None
  return os.path.join(config.data_dir, spec.source_dir)


def export_model(model_dir, examples_from=None):
  """Exports the final model of `model_dir` into `<model_dir>/export` (mm_tf.export).

  Skipped when that export is newer than the final model (a re-run of a finished run).
  In this process, so that a killed run leaves no export running behind it; the model is
  loaded from disk, outside any strategy scope, so the export holds exactly what was saved.
  `examples_from`: a dataset directory in the Freiburg layout whose first test scenes the
  export carries for the demo page.
  """
  from mm_tf import export  # pylint: disable=g-import-not-at-top
  export_dir = os.path.join(model_dir, "export")
  weights = os.path.join(model_dir, saving.MODEL_SUBDIR, saving.WEIGHTS_FILE)
  models_config = os.path.join(export_dir, export.MODELS_CONFIG_FILE)
  if (os.path.exists(models_config)
      and os.path.getmtime(models_config) >= os.path.getmtime(weights)):
    print(f"Export: {export_dir} is up to date.", flush=True)
    return
  export.export_model(saving.load_model(model_dir), export_dir)
  if examples_from and os.path.isdir(examples_from):
    from mm_tf.demo import examples  # pylint: disable=g-import-not-at-top
    examples.write_examples(export_dir, examples_from)
  print(f"Export: {export_dir}", flush=True)
