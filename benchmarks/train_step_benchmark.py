r"""Train-step time of a training config, per stage: Keras' batch norm against the fused one.

Takes the training flags (`mm_tf.train`'s), builds that config's networks and stages, and
times each stage's train step `--repeats` times per implementation, alternating, in one
run. Each time is `model.fit` on a repeated random batch of the config's size, without
tf.data's autotuning as in training, so data loading is not timed:

  * `keras`: `keras.layers.BatchNormalization`'s own computation (separate moments,
    scale and shift ops and their gradients);
  * `fused`: TF's `FusedBatchNormV3` kernel (`mm_tf.layers.FusedBatchNormalization`, what
    every `ConvBlock` uses).

Prints ms per step and the keras / fused ratio per stage; these machines are noisy, so
compare the ratios, and on 2 shared cores prefer whole runs of the job (docs/training.md,
"Fused batch norm"), which also count what happens between the steps. Also times one
batch-norm layer forward and backward at the shapes of the config's first three encoder
stages.

  python benchmarks/train_step_benchmark.py --flagfile=configs/synthetic_forest.flags
  python benchmarks/train_step_benchmark.py --flagfile=configs/freiburg.flags \
      --timed_steps=3 --repeats=1 --benchmark_stages=2
"""

import contextlib
import time

from absl import app
from absl import flags
import keras

from mm_tf import config as mm_config

mm_config.define_flags()
flags.DEFINE_integer("timed_steps", 30, "Timed steps per measurement (after 3 warm-up steps).")
flags.DEFINE_integer("repeats", 3, "Measurements per implementation and stage, alternating; "
                     "the best is reported.")
flags.DEFINE_list("benchmark_stages", ["1", "2", "3"], "Stages whose train step is timed.")
FLAGS = flags.FLAGS


@contextlib.contextmanager
def keras_batch_norm():
  """Within: every FusedBatchNormalization computes as keras.layers.BatchNormalization."""
  from mm_tf import layers  # pylint: disable=g-import-not-at-top
  original = layers.FusedBatchNormalization._fused_applies  # pylint: disable=protected-access
  layers.FusedBatchNormalization._fused_applies = lambda *args: False  # pylint: disable=protected-access
  try:
    yield
  finally:
    layers.FusedBatchNormalization._fused_applies = original  # pylint: disable=protected-access


def random_batch(config, model):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  size, batch = config.image_size, config.batch_size
  data = {}
  for stream in model.streams:
    data["+".join(stream)] = {
        m: (tf.random.uniform([batch, size, size], 0, model.modalities[m].num_classes,
                              tf.int32) if model.modalities[m].is_categorical
            else tf.random.uniform([batch, size, size, model.modalities[m].channels], -1, 1))
        for m in stream}
  return data


def time_stage(config, stage, implementation):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from mm_tf import training  # pylint: disable=g-import-not-at-top
  from mm_tf.data import pipeline  # pylint: disable=g-import-not-at-top
  keras.backend.clear_session()  # Each measurement starts from the same, empty state.
  context = keras_batch_norm() if implementation == "keras" else contextlib.nullcontext()
  with context:
    model = training.build_model(config)
    model.set_stage(stage)
    model.compile()
    dataset = pipeline.without_autotuning(
        tf.data.Dataset.from_tensors(random_batch(config, model)).repeat())
    model.fit(dataset, steps_per_epoch=3, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=FLAGS.timed_steps, epochs=1, verbose=0)
    return (time.perf_counter() - start) / FLAGS.timed_steps


def time_layer(shape, training, implementation, calls=30):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from mm_tf import layers  # pylint: disable=g-import-not-at-top
  context = keras_batch_norm() if implementation == "keras" else contextlib.nullcontext()
  with context:
    norm = layers.FusedBatchNormalization(synchronized=True)
    norm.build(shape)
    x = tf.random.normal(shape)

    @tf.function
    def forward_backward(x):
      with tf.GradientTape() as tape:
        tape.watch(x)
        y = norm(x, training=training)
        loss = tf.reduce_sum(y * y)
      return tape.gradient(loss, x)

    for _ in range(3):
      forward_backward(x)
    start = time.perf_counter()
    for _ in range(calls):
      result = forward_backward(x)
    result.numpy()
    return (time.perf_counter() - start) / calls


def main(argv):
  del argv
  config = mm_config.from_flags()
  print("== batch norm layer forward+backward (ms), keras / fused")
  batch = 3 * config.batch_size  # A decoder's call on three routes' batches.
  size, channels = config.image_size, max(1, int(64 * config.width))  # VGG16's first stage.
  for training in (True, False):
    for level in range(3):
      shape = [batch, size >> level, size >> level, channels << level]
      keras_ms = time_layer(shape, training, "keras") * 1e3
      fused_ms = time_layer(shape, training, "fused") * 1e3
      print(f"{'training ' if training else 'inference'} {shape}: keras {keras_ms:.2f}  "
            f"fused {fused_ms:.2f}  keras/fused {keras_ms / fused_ms:.2f}x")
  print(f"== train step (ms), {config.image_size}x{config.image_size}, width {config.width}, "
        f"batch {config.batch_size} per stream, {config.num_pools} pools")
  for stage in map(int, FLAGS.benchmark_stages):
    times = {"keras": [], "fused": []}
    for _ in range(FLAGS.repeats):  # Alternate, so a slow minute hits both.
      for implementation in times:
        times[implementation].append(time_stage(config, stage, implementation))
    keras_ms, fused_ms = (min(t) * 1e3 for t in times.values())
    print(f"stage {stage}: keras {keras_ms:.0f}  fused {fused_ms:.0f}  "
          f"keras/fused {keras_ms / fused_ms:.2f}x  (best of {FLAGS.repeats} x "
          f"{FLAGS.timed_steps} steps)")


if __name__ == "__main__":
  app.run(main)
