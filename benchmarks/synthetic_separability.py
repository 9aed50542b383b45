r"""How separable the synthetic forest classes are from each modality alone.

Trains a tiny per-pixel MLP (one hidden layer of 64 units) on each pixel's values in a
3x3 neighbourhood plus a dilated (x2) 3x3 neighbourhood, for RGB alone, depth alone,
NIR alone and all three together, and reports pixel accuracy, mIoU and per-class IoU
on held-out scenes, plus the class frequencies. A good embedded dataset is clearly
imperfect on RGB alone (grass/vegetation and trail/obstacle confusable) and good on
RGB+depth+NIR.

  python benchmarks/synthetic_separability.py --image_size 64 --num_train 200 --num_test 60
"""

import time

from absl import app, flags
import numpy as np

flags.DEFINE_integer("image_size", 64, "Scene size in pixels.")
flags.DEFINE_integer("num_train", 200, "Scenes to train the per-pixel classifier on.")
flags.DEFINE_integer("num_test", 60, "Held-out scenes to score it on.")
flags.DEFINE_integer("pixels_per_scene", 1000, "Pixels sampled per training scene.")
flags.DEFINE_integer("epochs", 4, "Training epochs.")
flags.DEFINE_integer("seed", 0, "Generation seed.")
FLAGS = flags.FLAGS
CLASSES = ("sky", "trail", "grass", "vegetation", "obstacle")


def _features(image):
  """[S,S,C] -> [S,S,18*C]: 3x3 neighbourhood at dilation 1 and 2 (edge padded)."""
  padded = np.pad(image, ((2, 2), (2, 2), (0, 0)), mode="edge")
  size = image.shape[0]
  feats = []
  for dilation in (1, 2):
    for dy in (-1, 0, 1):
      for dx in (-1, 0, 1):
        oy, ox = 2 + dy * dilation, 2 + dx * dilation
        feats.append(padded[oy:oy + size, ox:ox + size])
  return np.concatenate(feats, -1)


def _scenes(split, count, size, seed):
  from mm_tf.data import synthetic_forest as sf  # pylint: disable=g-import-not-at-top
  out = {"rgb": [], "depth": [], "nir": [], "labels": []}
  for i in range(count):
    s = sf.render_scene(sf.scene_rng(seed, split, i), size)
    out["rgb"].append(_features(s["rgb"].astype(np.float32) / 127.5 - 1))
    depth = s["depth"][..., None] / sf.MAX_DEPTH_M
    out["depth"].append(_features(np.concatenate([depth, (depth > 0).astype(np.float32)], -1)))
    out["nir"].append(_features(s["nir"][..., None].astype(np.float32) / 255))
    out["labels"].append(s["labels"])
  return {k: np.stack(v) for k, v in out.items()}


def _score(pred, labels):
  conf = np.bincount(labels * 5 + pred, minlength=25).reshape(5, 5)
  iou = np.diag(conf) / np.maximum(conf.sum(0) + conf.sum(1) - np.diag(conf), 1)
  return np.trace(conf) / conf.sum(), iou.mean(), iou


def main(argv):
  del argv
  import keras  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(FLAGS.seed)
  start = time.time()
  train = _scenes("train", FLAGS.num_train, FLAGS.image_size, FLAGS.seed)
  test = _scenes("test", FLAGS.num_test, FLAGS.image_size, FLAGS.seed)
  print(f"rendered {FLAGS.num_train + FLAGS.num_test} scenes in {time.time() - start:.1f} s")
  freq = np.bincount(train["labels"].ravel(), minlength=5) / train["labels"].size
  print("class frequencies (train):", ", ".join(f"{c} {f:.3f}" for c, f in zip(CLASSES, freq)))
  rng = np.random.default_rng(FLAGS.seed)
  n, s = FLAGS.num_train, FLAGS.image_size
  pick = rng.integers(0, s * s, (n, FLAGS.pixels_per_scene)) + np.arange(n)[:, None] * s * s
  pick = pick.ravel()
  print(f"{'inputs':<16}{'pixel acc':>10}{'mIoU':>8}   IoU " + " ".join(f"{c[:5]:>6}" for c in CLASSES))
  for name, keys in (("rgb", ["rgb"]), ("depth", ["depth"]), ("nir", ["nir"]),
                     ("depth+nir", ["depth", "nir"]), ("rgb+depth+nir", ["rgb", "depth", "nir"])):
    x_train = np.concatenate([train[k].reshape(n * s * s, -1) for k in keys], -1)[pick]
    y_train = train["labels"].reshape(-1)[pick]
    x_test = np.concatenate([test[k].reshape(-1, test[k].shape[-1]) for k in keys], -1)
    model = keras.Sequential([keras.Input((x_train.shape[1],)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(64, activation="relu"), keras.layers.Dense(5)])
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, batch_size=512, epochs=FLAGS.epochs, verbose=0)
    pred = model.predict(x_test, batch_size=8192, verbose=0).argmax(-1)
    acc, miou, iou = _score(pred, test["labels"].reshape(-1).astype(np.int64))
    print(f"{name:<16}{acc:>10.3f}{miou:>8.3f}       " + " ".join(f"{v:>6.3f}" for v in iou))
  print(f"total {time.time() - start:.1f} s")


if __name__ == "__main__":
  app.run(main)
