"""`ExperimentConfig`: every setting of a training run, built from absl flags.

One frozen dataclass holds data, model, stage and runtime settings. `define_flags()`
declares the flags (with help strings; `python -m mm_tf.train --helpfull` lists them),
`from_flags()` builds the config, `stages()` turns it into the model's `StageSpec`s.
The config is written to `<model_dir>/config.json` (and the flags to `flags.txt`); a
re-run in the same model_dir is compared with it by `check_compatible`.
"""

import dataclasses
import glob
import json
import os
from typing import Dict, Optional, Tuple

from mm_tf import errors
from mm_tf import stages as mm_stages

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
# mm_tf.data.dataset_names(), listed here so that flags are checked before TensorFlow is
# imported (tests keep the two lists equal). The raw files of dataset X are in
# <data_dir>/X (DatasetSpec.source_dir), the prepared tfds data in <data_dir>/tfds/X.
DATASETS = ("synthetic_forest", "freiburg_forest", "sun_rgbd", "scenenet_rgbd")
GENERATED_DATASETS = ("synthetic_forest",)
CONFIG_FILE = "config.json"
STRATEGIES = ("default", "mirrored", "multi_worker")
SIDE_INFORMATION = ("switches", "skip", "none")
# --class_balancing choices with weights: the power of the median-frequency weights
# (`Modality.with_median_frequency_weights`); "none" is the paper's plain loss.
CLASS_WEIGHT_POWERS = {"median_frequency": 1.0, "sqrt_median_frequency": 0.5}
CLASS_BALANCING = ("none", *CLASS_WEIGHT_POWERS)

# Settings that change the networks' shapes, the data or the meaning of a checkpoint: a
# run resumed with another value would silently mix two experiments, so it is refused.
# Everything else (steps, logging, evaluation, export, lambdas, learning rates, precision,
# batch size) may change between runs of the same model_dir.
INCOMPATIBLE_FIELDS = ("dataset", "image_size", "width", "side_information", "num_pools",
                       "side_information_levels", "unpool_implementation", "oracle",
                       "rgb_encoder_vgg16_h5", "synthetic_num_train", "synthetic_num_test",
                       "seed", "noise_std", "latent_calibration_batches")


# The targets the oracle is trained and judged on (x -> segmentation): its stage trains
# only these translations, and the evaluation and the experiment runner score only these.
ORACLE_TARGETS = ("segmentation",)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """Every setting of a training run (see the flag help strings in `define_flags`)."""

  # Data.
  dataset: str = "synthetic_forest"
  data_dir: str = "data"
  image_size: int = 64
  batch_size: int = 8
  augment: bool = True
  skip_bad_examples: bool = False
  synthetic_num_train: int = 400
  synthetic_num_test: int = 100
  # Model.
  width: float = 0.125
  side_information: str = "switches"
  num_pools: int = 5
  side_information_levels: int = -1
  noise_std: float = 0.5
  unpool_implementation: str = "fused"
  rgb_encoder_vgg16_h5: str = ""
  oracle: bool = False
  # Stages: steps, learning rates and lambdas (lambda_R, lambda_S, lambda_D, lambda_N,
  # lambda_L2, GAN weight, lambda_A, lambda_PP), one value per stage.
  steps: Tuple[int, int, int] = mm_stages.PAPER_STEPS
  learning_rate: Tuple[float, float, float] = (2e-4, 2e-4, 2e-5)
  learning_rate_decay: str = "constant"
  lambda_rgb: Tuple[float, float, float] = (1.0, 10.0, 10.0)
  lambda_segmentation: Tuple[float, float, float] = (100.0, 100.0, 100.0)
  lambda_depth: Tuple[float, float, float] = (10.0, 10.0, 10.0)
  lambda_nir: Tuple[float, float, float] = (10.0, 10.0, 10.0)
  lambda_l2: Tuple[float, float, float] = (1.0, 100.0, 100.0)
  lambda_gan: Tuple[float, float, float] = (1.0, 1.0, 1.0)
  lambda_latent: Tuple[float, float, float] = (1.0, 10.0, 10.0)
  lambda_pseudo_pairs: float = 100.0
  pseudo_pairs_train_decoders: str = "all"
  side_consistency: bool = False
  autoencoders: bool = True
  latent_consistency: bool = True
  latent_noise: bool = True
  freeze_rgb_encoder: bool = True
  oracle_steps: int = -1
  with_oracle: bool = False
  batch_norm_recalibration_batches: int = 4
  latent_calibration_batches: int = 0
  class_balancing: str = "none"
  # Runtime.
  model_dir: str = "runs/synthetic_forest"
  seed: int = 0
  precision: str = "auto"
  run_eagerly: bool = False
  distribution_strategy: str = "default"
  checkpoint_every_steps: int = 100
  log_every_steps: int = 25
  image_summary_every_steps: int = 200
  keep_checkpoints: int = 2
  eval_batch_size: int = 16
  evaluate_each_stage: bool = True
  run_evaluation: bool = True
  export: bool = True
  num_figure_examples: int = 4
  oracle_model_dir: str = ""

  def __post_init__(self):
    for name in ("steps", "learning_rate", "lambda_rgb", "lambda_segmentation",
                 "lambda_depth", "lambda_nir", "lambda_l2", "lambda_gan", "lambda_latent"):
      value = tuple(getattr(self, name))
      if len(value) != 3:
        raise errors.ConfigError(f"--{name} needs one value per stage (3), got {list(value)}.")
      object.__setattr__(self, name, value)
    _check_choice("precision", self.precision, PRECISIONS)
    _check_choice("distribution_strategy", self.distribution_strategy, STRATEGIES)
    _check_choice("side_information", self.side_information, SIDE_INFORMATION)
    _check_choice("dataset", self.dataset, DATASETS)
    _check_choice("class_balancing", self.class_balancing, CLASS_BALANCING)
    _check_choice("learning_rate_decay", self.learning_rate_decay,
                  mm_stages.LEARNING_RATE_DECAYS)
    if not 1 <= self.num_pools <= 5:
      raise errors.ConfigError(f"--num_pools must be between 1 and 5 (the paper's VGG16 encoder "
                               f"has 5 pooling levels), got {self.num_pools}.")
    if not -1 <= self.side_information_levels <= self.num_pools:
      raise errors.ConfigError(f"--side_information_levels must be -1 (every level, the paper) "
                               f"or between 0 and --num_pools={self.num_pools}, got "
                               f"{self.side_information_levels}.")
    if self.latent_calibration_batches < 0:
      raise errors.ConfigError(f"--latent_calibration_batches must be >= 0 (0: off), got "
                               f"{self.latent_calibration_batches}.")
    if self.image_size % 2**self.num_pools:
      raise errors.ConfigError(f"--image_size must be a multiple of {2**self.num_pools} "
                               f"({self.num_pools} 2x2 poolings), got {self.image_size}.")
    if self.batch_size < 1 or self.width <= 0:
      raise errors.ConfigError(f"--batch_size must be >= 1 and --width > 0, got {self.batch_size} "
                       f"and {self.width}.")
    if any(s < 0 for s in self.steps) or any(lr <= 0 for lr in self.learning_rate):
      raise errors.ConfigError(f"--steps must be >= 0 and --learning_rate > 0, got {list(self.steps)} "
                       f"and {list(self.learning_rate)}.")
    for name in ("checkpoint_every_steps", "log_every_steps", "image_summary_every_steps"):
      if getattr(self, name) < 1:
        raise errors.ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}.")

  # ---------------------------------------------------------------- stages
  def stage_numbers(self) -> Tuple[int, ...]:
    """Stages this run trains: (1, 2, 3), or (1,) for the oracle."""
    return (1,) if self.oracle else (1, 2, 3)

  def stages(self) -> Dict[int, mm_stages.StageSpec]:
    """The `StageSpec`s of this run (paper 6.1 structure; values from the flags)."""
    if self.oracle:
      # The oracle sees the (x, segmentation) pairs directly: translations only, one stage.
      # It is judged on x -> segmentation only, so the reverse translations get weight 0 and
      # are not computed: they would train the segmentation encoder and the depth/NIR
      # decoders, which no x -> segmentation translation uses (the same oracle, ~2x faster).
      steps = self.oracle_steps if self.oracle_steps >= 0 else sum(self.steps)
      weights = {name: (weight if name in ORACLE_TARGETS else 0.0)
                 for name, weight in self._modality_weights(0).items()}
      return {1: mm_stages.StageSpec(
          number=1, steps=steps, learning_rate=self.learning_rate[0],
          learning_rate_decay=self.learning_rate_decay,
          modality_weights=weights, l2_weight=self.lambda_l2[0],
          gan_weight=self.lambda_gan[0], latent_weight=self.lambda_latent[0])}
    specs = {}
    for index, number in enumerate((1, 2, 3)):
      later = number > 1
      specs[number] = mm_stages.StageSpec(
          number=number, steps=self.steps[index], learning_rate=self.learning_rate[index],
          learning_rate_decay=self.learning_rate_decay,
          autoencoders=later and self.autoencoders,
          latent_consistency=later and self.latent_consistency,
          latent_noise=later and self.latent_noise,
          pseudo_pairs=number == 3,
          frozen=("rgb_encoder",) if later and self.freeze_rgb_encoder else (),
          modality_weights=self._modality_weights(index), l2_weight=self.lambda_l2[index],
          gan_weight=self.lambda_gan[index], latent_weight=self.lambda_latent[index],
          pseudo_pair_weight=self.lambda_pseudo_pairs if number == 3 else 0.0,
          pseudo_pairs_train_decoders=self.pseudo_pair_decoders(),
          side_consistency=later and self.side_consistency)
    return specs

  def pseudo_pair_decoders(self) -> Tuple[str, ...]:
    """`--pseudo_pairs_train_decoders` as `StageSpec.pseudo_pairs_train_decoders`."""
    names = tuple(n.strip() for n in self.pseudo_pairs_train_decoders.split(",") if n.strip())
    return () if names == ("none",) else names

  def _modality_weights(self, index) -> Dict[str, float]:
    return {"rgb": self.lambda_rgb[index], "segmentation": self.lambda_segmentation[index],
            "depth": self.lambda_depth[index], "nir": self.lambda_nir[index]}

  # ---------------------------------------------------------------- files
  def to_dict(self) -> dict:
    config = dataclasses.asdict(self)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()}

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, values) -> "ExperimentConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})

  @classmethod
  def from_json_file(cls, path) -> "ExperimentConfig":
    with open(path) as f:
      return cls.from_dict(json.load(f))

  def replace(self, **changes) -> "ExperimentConfig":
    return dataclasses.replace(self, **changes)


def check_compatible(saved: ExperimentConfig, current: ExperimentConfig):
  """Raises ValueError naming every flag that may not change within one model_dir."""
  changed = [name for name in INCOMPATIBLE_FIELDS
             if getattr(saved, name) != getattr(current, name)]
  if changed:
    details = "; ".join(f"--{n}: saved {getattr(saved, n)!r}, now {getattr(current, n)!r}"
                        for n in changed)
    raise errors.ConfigError(
        f"--model_dir {current.model_dir!r} holds a run with other settings that cannot "
        f"change on resume ({details}). Use the saved values, or pick a new --model_dir.")


def _check_choice(name, value, choices):
  if value not in choices:
    raise errors.ConfigError(f"--{name} must be one of {', '.join(choices)}; got {value!r}.")


# ------------------------------------------------------------------ flags
def define_flags():
  """Declares the training flags (call once, from the `main` module)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  d = ExperimentConfig()

  def floats(values):
    return [str(v) for v in values]

  # Data.
  flags.DEFINE_string("dataset", d.dataset, "Dataset name: synthetic_forest (generated on "
                      "first use), freiburg_forest, sun_rgbd or scenenet_rgbd.")
  flags.DEFINE_string("data_dir", d.data_dir, "Project data directory. Raw files of dataset X "
                      "live in <data_dir>/X (see docs/data.md); tfds caches in <data_dir>/tfds.")
  flags.DEFINE_integer("image_size", d.image_size, "Height and width (pixels) the images are "
                       "resized/cropped to; a multiple of 2**num_pools (paper: 256).")
  flags.DEFINE_integer("batch_size", d.batch_size, "Examples per training stream per step "
                       "(paper: 6).")
  flags.DEFINE_bool("augment", d.augment, "Random scale/crop/flip of training examples.")
  flags.DEFINE_bool("skip_bad_examples", d.skip_bad_examples, "Skip (and log) unreadable or "
                    "too small examples instead of failing.")
  flags.DEFINE_integer("synthetic_num_train", d.synthetic_num_train, "synthetic_forest only: "
                       "number of training scenes to generate (split between the streams).")
  flags.DEFINE_integer("synthetic_num_test", d.synthetic_num_test, "synthetic_forest only: "
                       "number of test scenes to generate.")
  # Model.
  flags.DEFINE_float("width", d.width, "Channel multiplier of every network (1.0 = paper's "
                     "VGG16 widths, 64..512 channels).")
  flags.DEFINE_enum("side_information", d.side_information, list(SIDE_INFORMATION),
                    "What the decoders get from the source encoder besides the latent: pooling "
                    "indices (paper), skip connections or nothing (paper Table 2).")
  flags.DEFINE_integer("num_pools", d.num_pools, "Argmax-pooling levels of every encoder and "
                       "decoder (paper: 5, 256x256 -> 8x8 latent). Fewer levels drop the "
                       "deepest VGG16 stages so small images keep a latent with spatial "
                       "detail (64x64 with 3 pools gives the paper's 8x8 latent); "
                       "--image_size must be a multiple of 2**num_pools.")
  flags.DEFINE_integer("side_information_levels", d.side_information_levels, "How many of "
                       "the finest pooling levels pass the source encoder's side information "
                       "(--side_information) to the decoders; the deeper levels upsample as "
                       "with 'none'. -1: every level (the paper). Not in the paper: at 64x64 "
                       "the deeper levels' switches are where zero-pair translations lose "
                       "(the segmentation decoder learned them from RGB), while the finest "
                       "level's carry detail (docs/training.md).")
  flags.DEFINE_float("noise_std", d.noise_std, "Std of the Gaussian noise added to latents in "
                     "stages 2-3 (paper: 0.5).")
  flags.DEFINE_enum("unpool_implementation", d.unpool_implementation, ["fused", "scatter"],
                    "Unpooling kernel (identical results; fused is faster).")
  flags.DEFINE_string("rgb_encoder_vgg16_h5", d.rgb_encoder_vgg16_h5, "Optional local .h5 with "
                      "VGG16 ImageNet weights (keras.applications layout) to initialise the RGB "
                      "encoder (then built without batch norm, as in the paper). Never "
                      "downloaded; requires --width=1.")
  flags.DEFINE_bool("oracle", d.oracle, "Train the oracle instead: the same architecture on "
                    "the (depth, segmentation) and (nir, segmentation) pairs that zero-pair "
                    "training never sees, in one stage of --oracle_steps.")
  # Stages.
  flags.DEFINE_list("steps", [str(s) for s in d.steps], "Optimizer steps of stages 1,2,3 "
                    "(paper: 200000,200000,100000). Stage 1: translations; stage 2: + "
                    "autoencoders, latent consistency, noise, RGB encoder frozen; stage 3: + "
                    "pseudo-pairs.")
  flags.DEFINE_list("learning_rate", floats(d.learning_rate), "Adam learning rate of stages "
                    "1,2,3 (paper: 2e-4,2e-4,2e-5).")
  flags.DEFINE_enum("learning_rate_decay", d.learning_rate_decay,
                    list(mm_stages.LEARNING_RATE_DECAYS), "How each stage's learning rate "
                    "changes over its steps: constant (the paper, which trains 200K steps a "
                    "stage) or cosine (from --learning_rate to 0 by the stage's last step; "
                    "at the synthetic main job's scale it measured worse than constant: "
                    "docs/training.md).")
  flags.DEFINE_list("lambda_rgb", floats(d.lambda_rgb), "lambda_R per stage: weight of the RGB "
                    "loss (paper: 1,10,10).")
  flags.DEFINE_list("lambda_segmentation", floats(d.lambda_segmentation), "lambda_S per stage: "
                    "weight of the segmentation cross-entropy (paper: 100).")
  flags.DEFINE_list("lambda_depth", floats(d.lambda_depth), "lambda_D per stage: weight of the "
                    "depth BerHu loss (paper: 10).")
  flags.DEFINE_list("lambda_nir", floats(d.lambda_nir), "Weight of the NIR BerHu loss per stage "
                    "(not in the paper; same as lambda_D).")
  flags.DEFINE_list("lambda_l2", floats(d.lambda_l2), "lambda_L2 per stage inside the RGB loss "
                    "L_RGB = lambda_L2 * L2 + L_GAN (paper: 1,100,100).")
  flags.DEFINE_list("lambda_gan", floats(d.lambda_gan), "Weight of the LSGAN term inside the "
                    "RGB loss per stage (paper: 1; 0 turns the discriminator off).")
  flags.DEFINE_list("lambda_latent", floats(d.lambda_latent), "lambda_A per stage: weight of "
                    "the latent consistency loss (used from stage 2; paper: 10).")
  flags.DEFINE_float("lambda_pseudo_pairs", d.lambda_pseudo_pairs, "lambda_PP: weight of the "
                     "stage-3 pseudo-pair losses (paper: 100).")
  flags.DEFINE_string("pseudo_pairs_train_decoders", d.pseudo_pairs_train_decoders,
                      "Whose decoders the stage-3 pseudo-pair losses update: 'all', 'none' or "
                      "comma-separated modality names (e.g. 'segmentation'). The paper (5.2) "
                      "keeps the translators involving RGB out of these losses, and the "
                      "segmentation, depth and NIR decoders are shared with them (R->S uses the "
                      "segmentation decoder); a decoder not listed only passes the gradient on "
                      "to the source encoder. Measured in docs/training.md.")
  flags.DEFINE_bool("side_consistency", d.side_consistency, "Not in the paper. In stages 2-3, "
                    "also decode the RGB latent with the switches (or skips) of each other "
                    "modality of the same example into the modalities its stream lacks (e.g. "
                    "RGB's latent with depth's switches into segmentation), against RGB's own "
                    "translation: teaches each decoder to read the switches of encoders it "
                    "gets no pairs from, which zero-pair translations hand it. Uses no "
                    "depth/segmentation pair. Measured in docs/training.md.")
  flags.DEFINE_bool("autoencoders", d.autoencoders, "Train m->m autoencoders in stages 2-3.")
  flags.DEFINE_bool("latent_consistency", d.latent_consistency, "Latent consistency loss in "
                    "stages 2-3.")
  flags.DEFINE_bool("latent_noise", d.latent_noise, "Gaussian latent noise in stages 2-3.")
  flags.DEFINE_bool("freeze_rgb_encoder", d.freeze_rgb_encoder, "Freeze the RGB encoder in "
                    "stages 2-3 (paper).")
  flags.DEFINE_integer("batch_norm_recalibration_batches", d.batch_norm_recalibration_batches,
                       "At the end of every stage, set the batch-norm moving statistics of the "
                       "modules it trained to the mean moments of this many training batches "
                       "(precise BN; the frozen RGB encoder of stages 2-3 keeps stage 1's). "
                       "Keras' momentum-0.99 averages lag short stages. 0 turns it off.")
  flags.DEFINE_integer("latent_calibration_batches", d.latent_calibration_batches,
                       "At the end of every stage with latent consistency (2-3), map each "
                       "non-anchor encoder's latent (in inference mode: evaluation, export, "
                       "serving) onto the anchor's per-channel mean and std, measured on this "
                       "many training batches. Latent consistency is an L2 regression onto "
                       "the anchor's latent and leaves the aligned latents narrower (about "
                       "0.75x the anchor's spread on the synthetic forest), so zero-pair "
                       "decoders see a distribution they were not trained on. Uses no "
                       "cross-modal pairs; training is unchanged. Not in the paper; 0 turns "
                       "it off (the paper, the default). docs/training.md, 'Latent "
                       "calibration'.")
  flags.DEFINE_enum("class_balancing", d.class_balancing, list(CLASS_BALANCING),
                    "Class weights of the segmentation cross-entropy (and its pseudo-pair "
                    "term): none (the paper's plain loss), median_frequency (SegNet's "
                    "median-frequency balancing, counted on the training labels) or "
                    "sqrt_median_frequency (their square roots: a milder balance; measured in "
                    "docs/training.md, 'Teacher-label reference').")
  flags.DEFINE_integer("oracle_steps", d.oracle_steps, "Steps of the --oracle run (-1: the sum "
                       "of --steps).")
  flags.DEFINE_bool("with_oracle", d.with_oracle, "After training, also train the oracle "
                    "(--oracle settings, --oracle_steps) in <model_dir>/oracle and show it in "
                    "the results table.")
  # Runtime.
  flags.DEFINE_string("model_dir", d.model_dir, "Where checkpoints (stage_<n>/), TensorBoard "
                      "logs (tensorboard/), the final model (model/), evaluation (eval/) and "
                      "export (export/) go. Re-running with the same model_dir resumes.")
  flags.DEFINE_integer("seed", d.seed, "Seed of initialisation, data order and augmentation "
                       "(and of the synthetic dataset).")
  flags.DEFINE_enum("precision", d.precision, list(PRECISIONS), "Keras mixed-precision policy. "
                    "auto: mixed_bfloat16 where it is faster (CPUs with AMX-bf16, GPUs of "
                    "compute capability >= 8.0), float32 elsewhere; the choice and its reason "
                    "are logged. mixed_float16 is for older GPUs but the train steps apply no "
                    "loss scaling.")
  flags.DEFINE_bool("run_eagerly", d.run_eagerly, "Run train steps eagerly instead of as a "
                    "tf.function: no graph tracing (tens of seconds per stage on 2 CPU cores), "
                    "slower steps. For tiny runs and debugging.")
  flags.DEFINE_enum("distribution_strategy", d.distribution_strategy, list(STRATEGIES),
                    "tf.distribute strategy: default (one device), mirrored (all local GPUs), "
                    "multi_worker (every worker runs the same command with its own TF_CONFIG; "
                    "--model_dir must be one directory all workers see). batch_size is per "
                    "replica; each replica gets its own share of the examples.")
  flags.DEFINE_integer("checkpoint_every_steps", d.checkpoint_every_steps, "Save a resumable "
                       "checkpoint (weights, optimizer state, step) every N steps.")
  flags.DEFINE_integer("log_every_steps", d.log_every_steps, "Write loss terms and alignment "
                       "factors to TensorBoard every N steps.")
  flags.DEFINE_integer("image_summary_every_steps", d.image_summary_every_steps, "Write image "
                       "grids of seen and unseen translations every N steps.")
  flags.DEFINE_integer("keep_checkpoints", d.keep_checkpoints, "Checkpoints kept per stage.")
  flags.DEFINE_integer("eval_batch_size", d.eval_batch_size, "Batch size of the evaluation.")
  flags.DEFINE_bool("evaluate_each_stage", d.evaluate_each_stage, "Evaluate after every stage "
                    "(eval/stage_<n>/), so the table shows what each stage adds.")
  flags.DEFINE_bool("run_evaluation", d.run_evaluation, "Evaluate on the test split when "
                    "training ends (eval/results.{json,md}, eval/figures/).")
  flags.DEFINE_bool("export", d.export, "Export SavedModels (export/) when training ends, if "
                    "mm_tf.export is available.")
  flags.DEFINE_integer("num_figure_examples", d.num_figure_examples, "Test examples shown in "
                       "the qualitative figures.")
  flags.DEFINE_string("oracle_model_dir", d.oracle_model_dir, "Optional model_dir of a trained "
                      "--oracle run; its numbers are added to the results table.")


def from_flags(flag_values=None) -> ExperimentConfig:
  """Builds the config from parsed absl flags.

  Raises:
    errors.ConfigError: a value that is not a number where one is needed, or any check
      of `ExperimentConfig` (the message names the flag).
  """
  if flag_values is None:
    from absl import flags  # pylint: disable=g-import-not-at-top
    flag_values = flags.FLAGS
  values = {}
  for field in dataclasses.fields(ExperimentConfig):
    value = flag_values[field.name].value
    if isinstance(field.default, tuple):
      kind = int if field.name == "steps" else float
      try:
        value = tuple(kind(v) for v in value)
      except ValueError:
        raise errors.ConfigError(f"--{field.name}={','.join(map(str, value))}: every value must "
                                 f"be {'an integer' if kind is int else 'a number'}, one per "
                                 "stage (e.g. --steps=250,700,300).") from None
    values[field.name] = value
  return ExperimentConfig(**values)


def check_inputs(config: ExperimentConfig):
  """Checks the dataset and --model_dir before anything is built (no TensorFlow needed).

  Raises:
    errors.MissingInputError: the dataset's files are not there, or --model_dir is not
      a directory.
    errors.ConfigError: --model_dir holds a run whose fixed settings differ.
  """
  if not config.model_dir:
    raise errors.ConfigError("--model_dir is empty: give the directory of the run.")
  if os.path.exists(config.model_dir) and not os.path.isdir(config.model_dir):
    raise errors.MissingInputError(f"--model_dir={config.model_dir} is a file, not a "
                                   "directory: pick another --model_dir.")
  saved = os.path.join(config.model_dir, CONFIG_FILE)
  if os.path.isfile(saved):
    try:
      check_compatible(ExperimentConfig.from_json_file(saved), config)
    except (json.JSONDecodeError, TypeError) as e:
      raise errors.ConfigError(f"{saved} is unreadable ({e}): pick a new --model_dir.") from e
  if config.dataset in GENERATED_DATASETS:
    return
  raw = os.path.join(config.data_dir, config.dataset)
  prepared = glob.glob(os.path.join(config.data_dir, "tfds", config.dataset, "*",
                                    "dataset_info.json"))
  if not os.path.isdir(raw) and not prepared:
    raise errors.MissingInputError(
        f"Dataset {config.dataset} not found: {raw} does not exist (and it was not prepared "
        f"in {os.path.join(config.data_dir, 'tfds')}). Put its files there (docs/data.md) "
        "or pass --data_dir.")
