"""tf.data pipelines: zero-pair training streams and the all-modality test set.

Training batches are what `MixAndMatchNetworks.train_step` consumes:

  {"rgb+segmentation": {"rgb": [B,S,S,3] f32, "segmentation": [B,S,S] int32},
   "rgb+depth+nir":    {"rgb": [B,S,S,3] f32, "depth": [B,S,S,1] f32, "nir": [B,S,S,1] f32}}

normalised by `Modality.normalize` (rgb in [-1,1], depth in [0,1] with 0 = invalid, nir in
[0,1], labels with void 255), fixed batch size, infinite, shuffled with a seed, prefetched.

Zero-pair split rule (documented in docs/data.md): the distinct scene ids of the train
split are sorted by SHA-256 of "mm_tf-zero-pair-v1:<scene_id>" and cut into as many
contiguous, equal (+-1) parts as the dataset has streams; stream k gets part k. It depends
only on the ids (not on file order, the training seed or the machine), so no scene is in
two streams, and every run on the same files uses the same split. A "scene" is one image
for Freiburg, synthetic forest and SUN RGB-D, and one trajectory (render path) for SceneNet.

Geometry: train and test images are resized as a whole to S x S (evaluation sees whole
scenes; the aspect ratio is changed, identically in train and test). Training
augmentation resizes to round(S * scale), scale ~ U(1, max_scale), takes a random S x S
crop and flips left-right with probability 1/2 - identically for every modality of an
example: RGB/NIR bilinear (antialiased), labels nearest-neighbour, depth mask-aware (a
pixel is valid only where at least half of its support was valid, and invalid pixels never
blend into valid ones). Images smaller than S x S are errors (or skipped, with a log line
per skipped example, when `skip_bad_examples=True`) rather than silently upsampled.

Decoded cache: when a stream's decoded examples fit in `CACHE_LIMIT_BYTES`, the training
streams decode each example once, shrink it (each axis separately, the same per-modality
resampling) to at most the working size ceil(S * max_scale), the largest size the
augmentation resizes to, and keep it in memory. Each step then only resizes small images.
Real Freiburg images (about 480 x 880) otherwise cost more per step in decoding and
resizing than the 64x64 model's training step (docs/data.md, "Performance"). Images no
larger than the working size (the synthetic forest at S = 64) are not resampled, so
their batches are exactly those of the uncached pipeline.

Example:
  >>> spec = mm_tf.data.get_dataset_spec("synthetic_forest")
  >>> mm_tf.data.ensure_synthetic_forest("/tmp/data", 200, 50, 64)
  >>> batches = train_dataset(spec, "/tmp/data", image_size=64, batch_size=8, seed=0)
  >>> batch = next(iter(batches)); batch["rgb+depth+nir"]["depth"].shape
  TensorShape([8, 64, 64, 1])
"""

import hashlib
import json
import logging
import math
import os
from typing import Dict, List, Optional, Sequence

import tensorflow as tf
import tensorflow_datasets as tfds

from mm_tf.data import common
from mm_tf.data import datasets

SPLIT_SALT = "mm_tf-zero-pair-v1"
DEFAULT_MAX_SCALE = 1.25
# Datasets whose encoded train split is smaller than this are cached in memory.
CACHE_LIMIT_BYTES = 1 << 30
_IMAGE_FEATURES = ("rgb", common.DEPTH_FEATURE, "nir", "segmentation")
# The decoded (raw-unit) modalities an example may hold, as `_decode` names them.
_RAW_MODALITIES = ("rgb", "depth", "nir", "segmentation")


# --------------------------------------------------------------------------- tfds
def tfds_data_dir(spec, data_dir: str) -> str:
  """Where tfds keeps the prepared data of `spec`: `<data_dir>/tfds`.

  The synthetic forest gets its own sub-directory keyed by its generation parameters
  (`<data_dir>/tfds/synthetic_forest-<hash>`), so regenerating it with other parameters
  never reads a stale cache.
  """
  # Imported here: `python -m mm_tf.data.synthetic_forest` must not find it imported already.
  from mm_tf.data import synthetic_forest  # pylint: disable=g-import-not-at-top
  spec = datasets.get_dataset_spec(spec)
  root = os.path.join(data_dir, "tfds")
  if spec.name != "synthetic_forest":
    return root
  params = synthetic_forest.read_generation_parameters(os.path.join(data_dir, spec.source_dir))
  if params is None:
    raise common.BadExampleError(
        f"{os.path.join(data_dir, spec.source_dir)} holds no generated synthetic forest "
        f"({synthetic_forest.METADATA_FILE} missing): call mm_tf.data.ensure_synthetic_forest"
        "(data_dir, ...) or run `python -m mm_tf.data.synthetic_forest --output_dir ...`.")
  key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
  return os.path.join(root, f"synthetic_forest-{key}")


def _builder_class(builder_name: str):
  # Imported here so that importing the pipeline does not require every builder.
  from mm_tf.data import freiburg_forest, scenenet_rgbd, sun_rgbd  # pylint: disable=g-import-not-at-top
  return {"freiburg_forest": freiburg_forest.FreiburgForest, "sun_rgbd": sun_rgbd.SunRgbd,
          "scenenet_rgbd": scenenet_rgbd.ScenenetRgbd}[builder_name]


def prepare(spec, data_dir: str, skip_bad_examples: bool = False):
  """Returns the tfds builder of `spec`, preparing its data offline if not done yet.

  Args:
    spec: A `DatasetSpec` or dataset name.
    data_dir: Project data directory; raw files in `<data_dir>/<spec.source_dir>`.
    skip_bad_examples: Skip (and count in the log) bad examples instead of failing.

  Returns:
    A prepared `tfds.core.DatasetBuilder`.
  """
  spec = datasets.get_dataset_spec(spec)
  manual_dir = os.path.join(data_dir, spec.source_dir)
  builder = _builder_class(spec.builder_name)(data_dir=tfds_data_dir(spec, data_dir),
                                              skip_bad_examples=skip_bad_examples)
  if not builder.is_prepared():
    common.require_dir(manual_dir, f"the {spec.name} files (see docs/data.md)")
    logging.info("Preparing %s from %s into %s.", spec.name, manual_dir, builder.data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir, try_download_gcs=False,
        compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return builder


def scene_ids(builder, split: str) -> List[str]:
  """Scene id of every example of `split`, in file order (cached next to the tfds data)."""
  cache = os.path.join(builder.data_dir, f"mm_tf_scene_ids_{split}.json")
  if tf.io.gfile.exists(cache):
    with tf.io.gfile.GFile(cache) as f:
      return json.load(f)
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={k: tfds.decode.SkipDecoding() for k in _present(builder)})
  ids = [i.decode() for i in ds.map(lambda x: x["scene_id"]).as_numpy_iterator()]
  with tf.io.gfile.GFile(cache, "w") as f:
    json.dump(ids, f)
  return ids


def assign_streams(ids: Sequence[str], num_streams: int) -> Dict[str, int]:
  """The zero-pair split rule: scene id -> stream index (see module doc).

  Raises:
    ValueError: fewer distinct scenes than streams.
  """
  unique = sorted(set(ids), key=lambda i: (hashlib.sha256(f"{SPLIT_SALT}:{i}".encode()).hexdigest(), i))
  if len(unique) < num_streams:
    raise ValueError(f"The train split has {len(unique)} distinct scene(s); {num_streams} disjoint "
                     "zero-pair streams need at least one each.")
  n = len(unique)
  return {scene: k * num_streams // n for k, scene in enumerate(unique)}


def _present(builder) -> List[str]:
  return [k for k in _IMAGE_FEATURES if k in builder.info.features]


def _decode(builder, example):
  """Decodes the SkipDecoding'd image features and converts them to raw file units."""
  features = builder.info.features
  out = {"id": example["id"], "scene_id": example["scene_id"]}
  for key in _present(builder):
    value = features[key].decode_example(example[key])
    if key == common.DEPTH_FEATURE:
      out["depth"] = tf.cast(value, tf.float32) / 1000.0  # Metres, 0 = invalid.
    elif key == "segmentation":
      out["segmentation"] = value[..., 0]
    else:
      out[key] = value
  return out


def _raw_split(spec, data_dir, split, skip_bad_examples, stream_filter=None, cache=None):
  """Decoded raw examples of a split, optionally only those of one stream."""
  builder = prepare(spec, data_dir, skip_bad_examples)
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={k: tfds.decode.SkipDecoding() for k in _present(builder)})
  if stream_filter is not None:
    assignment, stream_index = stream_filter
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(list(assignment)),
                                            tf.constant(list(assignment.values()), tf.int64)), -1)
    ds = ds.filter(lambda x: tf.equal(table.lookup(x["scene_id"]), stream_index))
  if cache is None:
    cache = builder.info.splits[split].num_bytes < CACHE_LIMIT_BYTES
  if cache:
    ds = ds.cache()  # Encoded bytes: decoding and augmentation stay random per epoch.
  return builder, ds


# --------------------------------------------------------------------------- geometry
def resize_modality(name: str, image, height, width):
  """Resizes one raw modality ([H,W,C] or labels [H,W]) the way its values need."""
  size = tf.stack([height, width])
  if name == "segmentation":
    return tf.image.resize(image[..., None], size, method="nearest")[..., 0]
  if name == "depth":
    valid = tf.cast(image > 0, tf.float32)
    num = tf.image.resize(image * valid, size, method="bilinear", antialias=True)
    den = tf.image.resize(valid, size, method="bilinear", antialias=True)
    return tf.where(den > 0.5, num / tf.maximum(den, 1e-6), tf.zeros_like(num))
  return tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=True)


def working_size(image_size: int, max_scale: float = DEFAULT_MAX_SCALE) -> int:
  """The largest size the training augmentation resizes an image to: ceil(S * max_scale)."""
  return int(math.ceil(image_size * max_scale))


def shrink(example: Dict[str, tf.Tensor], size: int) -> Dict[str, tf.Tensor]:
  """Shrinks every modality of a raw example to at most `size` on each axis.

  Axes no longer than `size` keep their length, and an example no larger on either axis
  is returned unchanged (not resampled). Modalities keep their raw dtype (8-bit images are
  rounded back to 8 bits), so the result costs what a small decoded image costs.

  Args:
    example: Raw modalities as `geometric_transform` takes them (other keys pass through).
    size: Largest height and width.

  Returns:
    The example with its modalities shrunk.
  """
  shape = tf.shape(example["rgb"])
  height, width = tf.minimum(shape[0], size), tf.minimum(shape[1], size)
  needed = tf.logical_or(shape[0] > size, shape[1] > size)
  out = dict(example)
  for name in (n for n in _RAW_MODALITIES if n in example):
    image = example[name]

    def resized(image=image, name=name):
      value = resize_modality(name, image, height, width)
      if image.dtype.is_integer and name != "segmentation":
        value = tf.round(tf.clip_by_value(value, image.dtype.min, image.dtype.max))
      return tf.cast(value, image.dtype)

    out[name] = tf.cond(needed, resized, lambda image=image: image)
  return out


def _decoded_bytes(builder, count: int, size: int) -> int:
  """Upper bound of the memory `count` decoded examples take once shrunk to `size`."""
  per_pixel = {"rgb": 3, "nir": 1, "segmentation": 1, common.DEPTH_FEATURE: 4}  # depth: float32.
  return count * size * size * sum(per_pixel[k] for k in _present(builder))


def _check_size(example, image_size: int):
  shape = tf.shape(example["rgb"])
  return tf.logical_and(shape[0] >= image_size, shape[1] >= image_size)


def _assert_size(example, image_size: int, spec_name: str):
  shape = tf.shape(example["rgb"])
  check = tf.debugging.Assert(_check_size(example, image_size), [
      f"{spec_name}: example", example["id"], "has an RGB image of size", shape[0], "x", shape[1],
      f"smaller than image_size {image_size}; use a smaller image_size, other data, or "
      "skip_bad_examples=True."], summarize=8)
  with tf.control_dependencies([check]):
    return {k: tf.identity(v) for k, v in example.items()}


def geometric_transform(example: Dict[str, tf.Tensor], image_size: int, seed=None,
                        augment: bool = True, max_scale: float = DEFAULT_MAX_SCALE):
  """Resizes (and with `augment`, scales/crops/flips) every modality of an example alike.

  Args:
    example: Raw modalities: "rgb" [H,W,3], "depth" [H,W,1] metres, "nir" [H,W,1],
      "segmentation" [H,W] labels (any subset; other keys are dropped).
    image_size: Output size S.
    seed: int32/int64 [2] stateless seed (required when `augment`).
    augment: Random scale in [1, max_scale], random S x S crop and left-right flip.
    max_scale: Largest zoom factor of the augmentation.

  Returns:
    Dict of the same modalities, spatial size S x S, raw units (float32; labels int32).
  """
  names = [k for k in _RAW_MODALITIES if k in example]
  if augment:
    seed = tf.cast(seed, tf.int64)
    seeds = tf.random.experimental.stateless_split(seed, 4)
    scale = tf.random.stateless_uniform([], seeds[0], 1.0, max_scale)
    resized = tf.cast(tf.round(image_size * scale), tf.int32)
    slack = resized - image_size + 1
    top = tf.random.stateless_uniform([], seeds[1], 0, slack, dtype=tf.int32)
    left = tf.random.stateless_uniform([], seeds[2], 0, slack, dtype=tf.int32)
    flip = tf.random.stateless_uniform([], seeds[3]) < 0.5
  else:
    resized, top, left, flip = tf.constant(image_size), 0, 0, tf.constant(False)
  out = {}
  for name in names:
    image = resize_modality(name, example[name], resized, resized)
    image = image[top:top + image_size, left:left + image_size]
    image = tf.cond(flip, lambda im=image: tf.reverse(im, axis=[1]), lambda im=image: im)
    if name == "segmentation":
      image = tf.cast(image, tf.int32)
      image.set_shape([image_size, image_size])
    else:
      image.set_shape([image_size, image_size, 3 if name == "rgb" else 1])
    out[name] = image
  return out


def normalize_example(spec, example: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """Model-space values via each `Modality.normalize` of the dataset."""
  spec = datasets.get_dataset_spec(spec)
  return {name: spec.modality(name).normalize(value) for name, value in example.items()}


# --------------------------------------------------------------------------- datasets
def _examples(ds, builder, spec, image_size, skip_bad_examples):
  ds = ds.map(lambda x: _decode(builder, x), num_parallel_calls=tf.data.AUTOTUNE)
  if skip_bad_examples:
    def keep(x):
      ok = _check_size(x, image_size)
      if not ok:  # Autograph: a log line per skipped example.
        tf.print(f"{spec.name}: skipping example", x["id"], f"smaller than image_size {image_size}.")
      return ok
    return ds.filter(keep)
  return ds.map(lambda x: _assert_size(x, image_size, spec.name))


def train_dataset(spec, data_dir: str, image_size: int, batch_size: int, seed: int,
                  oracle: bool = False, augment: bool = True, skip_bad_examples: bool = False,
                  max_scale: float = DEFAULT_MAX_SCALE,
                  shuffle_buffer: int = 1024, num_shards: int = 1, shard_index: int = 0,
                  skip_examples: int = 0, decoded_cache: Optional[bool] = None) -> tf.data.Dataset:
  """The infinite, batched zero-pair training streams of a dataset.

  Args:
    spec: `DatasetSpec` or dataset name.
    data_dir: Project data directory (raw files in `<data_dir>/<spec.source_dir>`, tfds
      cache in `<data_dir>/tfds`).
    image_size: Output height/width S.
    batch_size: Examples per stream per batch (every stream has the same batch size).
    seed: Seed of shuffling and augmentation (the split itself does not depend on it).
    oracle: Instead of the zero-pair streams, (x, segmentation) pairs for every non-RGB
      modality x ("depth+segmentation", "nir+segmentation"), each from the whole train split.
    augment: Random scale/crop/flip (else whole images resized to S x S).
    skip_bad_examples: Skip and log bad examples instead of failing.
    max_scale: Largest zoom of the scale augmentation.
    shuffle_buffer: Upper bound of each stream's shuffle buffer.
    num_shards: Number of input pipelines (tf.distribute workers) sharing the streams.
    shard_index: This pipeline's index: it gets examples shard_index, shard_index +
      num_shards, ... of each stream's seeded order, so at every step the shards' batches
      together are exactly the batch of one pipeline with num_shards times the batch size,
      and no two shards hold the same example.
    skip_examples: Examples of each stream's seeded order to skip (in the unsharded order)
      before sharding: a resumed run continues where it stopped. Without the decoded
      cache, skipped examples are not decoded (only their encoded bytes are read).
    decoded_cache: Decode and shrink each example once and keep it in memory (module
      doc). None: when a stream's shrunk examples fit in `CACHE_LIMIT_BYTES`. The batches
      are the same either way up to the rounding of the shrink, and exactly the same for
      images no larger than `working_size(image_size, max_scale)`.

  Returns:
    tf.data.Dataset of {stream_name: {modality_name: tensor}} (see module doc).
  """
  spec = datasets.get_dataset_spec(spec)
  builder = prepare(spec, data_dir, skip_bad_examples)
  ids = scene_ids(builder, "train")
  if oracle:
    streams = spec.oracle_streams
    filters = [None] * len(streams)
  else:
    streams = spec.streams
    assignment = assign_streams(ids, len(streams))
    filters = [(assignment, k) for k in range(len(streams))]
  per_stream, sizes = {}, {}
  working = working_size(image_size, max_scale)
  for k, (stream, stream_filter) in enumerate(zip(streams, filters)):
    count = len(ids) if stream_filter is None else sum(1 for i in ids if stream_filter[0][i] == k)
    cache_decoded = (_decoded_bytes(builder, count, working) < CACHE_LIMIT_BYTES
                     if decoded_cache is None else decoded_cache)
    _, ds = _raw_split(spec, data_dir, "train", skip_bad_examples, stream_filter,
                       cache=False if cache_decoded else None)
    sizes[datasets.stream_name(stream)] = count
    if cache_decoded:  # Decoded once, shrunk, kept: shuffling order is unchanged.
      ds = _examples(ds, builder, spec, image_size, skip_bad_examples)
      ds = ds.map(lambda x: shrink(x, working), num_parallel_calls=tf.data.AUTOTUNE).cache()
    ds = ds.shuffle(max(1, min(shuffle_buffer, count)), seed=seed * 7919 + k,
                    reshuffle_each_iteration=True).repeat()
    aug_seeds = tf.data.Dataset.random(seed=seed * 104729 + k).batch(2)
    # Skipped and sharded alike: the example at position p of the seeded order keeps
    # augmentation seed p whatever the sharding or resume point.
    ds = ds.skip(skip_examples).shard(num_shards, shard_index)
    aug_seeds = aug_seeds.skip(skip_examples).shard(num_shards, shard_index)
    if not cache_decoded:  # Decoded after skipping: a resume does not decode what it skips.
      ds = _examples(ds, builder, spec, image_size, skip_bad_examples)

    def transform(x, pair_seed, stream=stream):
      raw = {name: x[name] for name in stream}
      return normalize_example(spec, geometric_transform(raw, image_size, pair_seed, augment, max_scale))

    ds = tf.data.Dataset.zip(ds, aug_seeds).map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    per_stream[datasets.stream_name(stream)] = ds.batch(batch_size, drop_remainder=True)
  logging.info("%s train streams%s (examples each): %s", spec.name, " (oracle)" if oracle else "",
               sizes)
  return without_autotuning(tf.data.Dataset.zip(per_stream).prefetch(tf.data.AUTOTUNE))


def without_autotuning(dataset):
  """`dataset` with tf.data's autotuning off (AUTOTUNE values keep their initial settings).

  On the 2-core machine the autotuner sometimes holds a train step at 256 ms instead of
  160-180 ms for whole stretches of a stage (stage 2 of the main job in 36 or 46 s;
  docs/data.md, "Autotuning"). The training streams need no tuning: after the decoded
  cache their maps are cheap next to a train step.
  """
  options = tf.data.Options()
  options.autotune.enabled = False
  return dataset.with_options(options)


def test_dataset(spec, data_dir: str, image_size: int, batch_size: int,
                 with_ids: bool = False, skip_bad_examples: bool = False,
                 split: str = "test") -> tf.data.Dataset:
  """The finite test set: every modality of every test example, whole images resized to S x S.

  Args:
    spec: `DatasetSpec` or dataset name.
    data_dir: Project data directory.
    image_size: Output height/width S.
    batch_size: Batch size (the last batch may be smaller).
    with_ids: Also yield "id" (string [B]) with the modalities.
    skip_bad_examples: Skip and log bad examples instead of failing.
    split: Split to read ("test"; "train" for debugging).

  Returns:
    tf.data.Dataset of {"rgb": [B,S,S,3], "depth": [B,S,S,1], ("nir": [B,S,S,1],)
    "segmentation": [B,S,S] int32 (, "id": [B] string)}, normalised, in the prepared
    (tfds) order, which is deterministic but not sorted by id.
  """
  spec = datasets.get_dataset_spec(spec)
  builder, ds = _raw_split(spec, data_dir, split, skip_bad_examples, cache=False)
  ds = _examples(ds, builder, spec, image_size, skip_bad_examples)

  def transform(x):
    raw = {name: x[name] for name in spec.modality_names}
    out = normalize_example(spec, geometric_transform(raw, image_size, augment=False))
    if with_ids:
      out["id"] = x["id"]
    return out

  ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def stream_scene_ids(spec, data_dir: str) -> Dict[str, List[str]]:
  """Scene ids of each zero-pair stream (for checks and reports)."""
  spec = datasets.get_dataset_spec(spec)
  builder = prepare(spec, data_dir)
  assignment = assign_streams(scene_ids(builder, "train"), len(spec.streams))
  return {datasets.stream_name(s): sorted(i for i, k in assignment.items() if k == n)
          for n, s in enumerate(spec.streams)}
