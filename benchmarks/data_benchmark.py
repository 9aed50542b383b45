r"""Throughput of the zero-pair training pipeline (examples/second).

Generates a synthetic forest at each size (in a temporary or given data_dir), builds
`mm_tf.data.pipeline.train_dataset` and times batches after a warm-up. One "example" is
one example of one stream, so a batch of size B with two streams counts 2B examples.

  python benchmarks/data_benchmark.py --sizes 64,256 --batch_size 8 --num_batches 30
"""

import tempfile
import time

from absl import app, flags

flags.DEFINE_list("sizes", ["64", "256"], "Image sizes to benchmark.")
flags.DEFINE_integer("batch_size", 8, "Batch size per stream.")
flags.DEFINE_integer("num_batches", 30, "Timed batches per size.")
flags.DEFINE_integer("warmup_batches", 5, "Untimed batches first (fills caches and buffers).")
flags.DEFINE_integer("num_train", 64, "Synthetic training scenes to generate per size.")
flags.DEFINE_boolean("augment", True, "Random scale/crop/flip.")
flags.DEFINE_string("data_dir", None, "Data directory (default: a temporary one per size).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import mm_tf.data  # pylint: disable=g-import-not-at-top
  spec = mm_tf.data.get_dataset_spec("synthetic_forest")
  for size in map(int, FLAGS.sizes):
    data_dir = FLAGS.data_dir or tempfile.mkdtemp(prefix=f"mm_tf_bench_{size}_")
    start = time.time()
    mm_tf.data.ensure_synthetic_forest(data_dir, FLAGS.num_train, 4, size, seed=0)
    generated = time.time() - start
    ds = mm_tf.data.train_dataset(spec, data_dir, size, FLAGS.batch_size, seed=0, augment=FLAGS.augment)
    iterator = iter(ds)
    start = time.time()
    for _ in range(FLAGS.warmup_batches):
      next(iterator)
    warmup = time.time() - start
    start = time.time()
    for _ in range(FLAGS.num_batches):
      next(iterator)
    elapsed = time.time() - start
    examples = FLAGS.num_batches * FLAGS.batch_size * len(spec.streams)
    print(f"size {size}x{size}: {examples / elapsed:8.1f} examples/s "
          f"({FLAGS.num_batches / elapsed:6.2f} batches/s of {len(spec.streams)} streams x "
          f"{FLAGS.batch_size}); generation of {FLAGS.num_train + 4} scenes {generated:.1f} s, "
          f"prepare+warm-up {warmup:.1f} s", flush=True)


if __name__ == "__main__":
  app.run(main)
