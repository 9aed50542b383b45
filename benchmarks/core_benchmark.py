"""Core benchmark: parameter counts, train-step time per precision, unpooling paths.

Run:
  python benchmarks/core_benchmark.py [--sizes 64,128] [--width 0.125] [--steps 5]

Prints numbers and, because these machines are noisy, ratios measured side by side in
the same run (mixed_bfloat16 / float32, scatter / fused).
"""

import time

from absl import app
from absl import flags
import keras
import tensorflow as tf

from mm_tf import layers
from mm_tf import model as mm_model

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["64", "128"], "Square image sizes of the train-step benchmark.")
flags.DEFINE_float("width", 0.125, "Width multiplier of the small model (the synthetic default).")
flags.DEFINE_list("step_widths", ["0.125", "1.0"], "Widths whose train step is timed.")
flags.DEFINE_integer("batch_size", 6, "Examples per stream per step (paper: 6).")
flags.DEFINE_integer("steps", 5, "Timed steps (after 2 warm-up steps).")
flags.DEFINE_integer("stage", 2, "Stage whose train step is timed (2 has every term but PP).")

MODALITIES = ["rgb", "depth", "nir", "segmentation"]
STREAMS = [("rgb", "segmentation"), ("rgb", "depth", "nir")]


def build(width, size):
  return mm_model.MixAndMatchNetworks(MODALITIES, STREAMS, width=width, image_size=size)


def random_batch(size, batch):
  rgb = tf.random.uniform([batch, size, size, 3], -1, 1)
  return {"rgb+segmentation": {"rgb": rgb,
                               "segmentation": tf.random.uniform([batch, size, size], 0, 5,
                                                                 tf.int32)},
          "rgb+depth+nir": {"rgb": rgb, "depth": tf.random.uniform([batch, size, size, 1]),
                            "nir": tf.random.uniform([batch, size, size, 1])}}


def time_train_step(width, size, precision):
  keras.mixed_precision.set_global_policy(precision)
  try:
    model = build(width, size)
    model.set_stage(FLAGS.stage)
    model.compile()
    dataset = tf.data.Dataset.from_tensors(random_batch(size, FLAGS.batch_size)).repeat()
    model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=FLAGS.steps, epochs=1, verbose=0)
    return (time.perf_counter() - start) / FLAGS.steps
  finally:
    keras.mixed_precision.set_global_policy("float32")


def time_unpool(implementation, shape=(6, 128, 128, 64), repeats=10):
  x = tf.random.normal([shape[0], shape[1] * 2, shape[2] * 2, shape[3]])
  pooled, switches = layers.MaxPoolWithArgmax()(x)

  @tf.function
  def forward_backward(values):
    with tf.GradientTape() as tape:
      tape.watch(values)
      out = layers.unpool(values, switches, implementation)
      loss = tf.reduce_sum(out * out)
    return tape.gradient(loss, values)

  forward_backward(pooled)
  start = time.perf_counter()
  for _ in range(repeats):
    forward_backward(pooled).numpy()
  return (time.perf_counter() - start) / repeats


def main(argv):
  del argv
  from mm_tf import training  # pylint: disable=g-import-not-at-top
  policy, reason = training.choose_precision()
  print(f"== --precision=auto on this machine: {policy} ({reason})")
  print("== parameters (4 modalities: 4 encoders, 4 decoders, 1 discriminator)")
  for width in sorted({1.0, FLAGS.width}):
    model = build(width, 64)
    encoder = model.encoders["depth"].count_params()
    segnet_decoder = model.decoders["depth"].count_params()
    rgb_decoder = model.decoders["rgb"].count_params()
    print(f"width {width}: total {model.count_params():,}  encoder {encoder:,}  "
          f"SegNet decoder {segnet_decoder:,}  RGB decoder {rgb_decoder:,}  "
          f"discriminator {model.discriminator.count_params():,}")

  print("== unpooling [6,128,128,64] forward+backward")
  fused = time_unpool("fused")
  scatter = time_unpool("scatter")
  print(f"fused {fused * 1e3:.1f} ms  scatter_nd {scatter * 1e3:.1f} ms  "
        f"scatter/fused {scatter / fused:.2f}x")

  print(f"== train step, stage {FLAGS.stage}, batch {FLAGS.batch_size} per stream, 4 modalities")
  for width in map(float, FLAGS.step_widths):
    for size in map(int, FLAGS.sizes):
      f32 = time_train_step(width, size, "float32")
      bf16 = time_train_step(width, size, "mixed_bfloat16")
      print(f"width {width} {size}x{size}: float32 {f32:.3f} s  mixed_bfloat16 {bf16:.3f} s  "
            f"float32/bf16 {f32 / bf16:.2f}x")


if __name__ == "__main__":
  app.run(main)
