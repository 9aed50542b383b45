r"""Throughput of the zero-pair training pipeline (examples/second), decoded cache off and on.

By default generates a synthetic forest at each size (in a temporary or given data_dir)
and trains at that size. With `--dataset` another dataset's prepared files are read from
`--data_dir`, at each `--sizes` training size (real Freiburg images are about 480 x 880,
much larger than the 64x64 main job). Each size builds
`mm_tf.data.pipeline.train_dataset` without and with the decoded cache and times batches
after a warm-up, side by side in one run. One "example" is one example of one stream, so
a batch of size B with two streams counts 2B examples.

  python benchmarks/data_benchmark.py --sizes 64,256 --batch_size 8 --num_batches 30
  python benchmarks/data_benchmark.py --dataset freiburg_forest --data_dir data --sizes 64
"""

import tempfile
import time

from absl import app, flags

flags.DEFINE_list("sizes", ["64", "256"], "Training image sizes to benchmark.")
flags.DEFINE_string("dataset", "synthetic_forest", "Dataset; other than synthetic_forest "
                    "it must already be in --data_dir.")
flags.DEFINE_integer("batch_size", 8, "Batch size per stream.")
flags.DEFINE_integer("num_batches", 30, "Timed batches per size.")
flags.DEFINE_integer("warmup_batches", 5, "Untimed batches first (one pass over a stream "
                     "fills the decoded cache, so at least the stream's size / batch_size).")
flags.DEFINE_integer("num_train", 64, "Synthetic training scenes to generate per size.")
flags.DEFINE_boolean("augment", True, "Random scale/crop/flip.")
flags.DEFINE_string("data_dir", None, "Data directory (synthetic default: a temporary one "
                    "per size).")
FLAGS = flags.FLAGS


def _time(spec, data_dir, size, decoded_cache):
  import mm_tf.data  # pylint: disable=g-import-not-at-top
  ds = mm_tf.data.train_dataset(spec, data_dir, size, FLAGS.batch_size, seed=0,
                                augment=FLAGS.augment, decoded_cache=decoded_cache)
  iterator = iter(ds)
  start = time.time()
  for _ in range(FLAGS.warmup_batches):
    next(iterator)
  warmup = time.time() - start
  start = time.time()
  for _ in range(FLAGS.num_batches):
    next(iterator)
  elapsed = time.time() - start
  return FLAGS.num_batches * FLAGS.batch_size * len(spec.streams) / elapsed, warmup


def main(argv):
  del argv
  import mm_tf.data  # pylint: disable=g-import-not-at-top
  spec = mm_tf.data.get_dataset_spec(FLAGS.dataset)
  synthetic = spec.name == "synthetic_forest"
  if not synthetic and not FLAGS.data_dir:
    raise app.UsageError(f"--dataset={spec.name} needs --data_dir holding its files.")
  for size in map(int, FLAGS.sizes):
    data_dir, note = FLAGS.data_dir, ""
    if synthetic:
      data_dir = data_dir or tempfile.mkdtemp(prefix=f"mm_tf_bench_{size}_")
      start = time.time()
      mm_tf.data.ensure_synthetic_forest(data_dir, FLAGS.num_train, 4, size, seed=0)
      note = f"; generation of {FLAGS.num_train + 4} scenes {time.time() - start:.1f} s"
    mm_tf.data.pipeline.prepare(spec, data_dir)
    rates = {}
    for decoded_cache in (False, True):
      rates[decoded_cache], warmup = _time(spec, data_dir, size, decoded_cache)
      print(f"{spec.name} at {size}x{size}, decoded cache {'on ' if decoded_cache else 'off'}: "
            f"{rates[decoded_cache]:8.1f} examples/s ({len(spec.streams)} streams x "
            f"{FLAGS.batch_size}); prepare+warm-up {warmup:.1f} s{note}", flush=True)
    print(f"{spec.name} at {size}x{size}: the decoded cache is {rates[True] / rates[False]:.2f}x "
          "as fast", flush=True)


if __name__ == "__main__":
  app.run(main)
