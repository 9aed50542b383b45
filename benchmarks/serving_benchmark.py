"""Serving benchmark: REST composition vs in-process translation, and bytes on the wire.

  python benchmarks/serving_benchmark.py [--width 0.25] [--sizes 64,256] [--batch 2]

For each image size it exports a randomly initialised model (latency does not depend on
the weights), starts `python -m mm_tf.serve` in a subprocess on a free port, and reports
per-image latency of depth->segmentation
  * in process: `model.translate` in a tf.function (normalisation + softmax included);
  * REST modules: encoder request + decoder request through `ServingClient`;
  * REST mmnet: one request to the mmnet `depth_to_segmentation` signature;
with the JSON bytes sent and received per image. A second table gives the JSON bytes per
image of the five switch tensors as int64 indices vs the compact uint8 encoding at
`--switch_width` (1.0 = the paper's network).
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import logging
from absl import flags
import numpy as np
import tensorflow as tf

from mm_tf import export
from mm_tf import layers
from mm_tf import networks
from mm_tf import serving_client
from mm_tf.model import MixAndMatchNetworks

FLAGS = flags.FLAGS
flags.DEFINE_float("width", 0.25, "Network width of the latency benchmark.")
flags.DEFINE_float("switch_width", 1.0, "Network width of the switch-bytes table.")
flags.DEFINE_list("sizes", ["64", "256"], "Square image sizes.")
flags.DEFINE_integer("batch", 2, "Images per request.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions (after one warm-up).")


def _time_per_image(fn, batch, repeats):
  fn()  # Warm-up: traces, connection setup.
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats / batch


def start_server(export_dir):
  """`python -m mm_tf.serve` on a free port; returns (process, url)."""
  process = subprocess.Popen(
      [sys.executable, "-m", "mm_tf.serve", f"--export_dir={export_dir}", "--port=0"],
      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  deadline = time.time() + 300
  while time.time() < deadline:
    line = process.stdout.readline()
    if not line and process.poll() is not None:
      raise RuntimeError("mm_tf.serve exited before serving.")
    match = re.search(r"http://[^/]+:(\d+)/", line)
    if match:
      return process, f"http://127.0.0.1:{match.group(1)}"
  process.kill()
  raise RuntimeError("mm_tf.serve did not start within 300 s.")


def switch_bytes(size, width):
  """JSON bytes per image of the five switch tensors: int64 indices vs compact uint8."""
  encoder = networks.SegNetEncoder("depth", width=width)
  _, switches = encoder(tf.random.uniform([1, size, size, 1]), training=False)
  as_int64 = sum(len(json.dumps(s.numpy().tolist(), separators=(",", ":"))) for s in switches)
  compact = sum(len(json.dumps(layers.compact_switches(s).numpy().tolist(),
                               separators=(",", ":"))) for s in switches)
  binary = sum(int(np.prod(s.shape)) * 8 for s in switches)
  return as_int64, compact, binary


def latency_row(size, width, batch, repeats, root):
  model = MixAndMatchNetworks(["rgb", "depth", "nir", "segmentation"],
                              [("rgb", "segmentation"), ("rgb", "depth", "nir")],
                              width=width, image_size=size)
  export_dir = os.path.join(root, f"serving_{size}")
  export.export_model(model, export_dir, version=1, include_multimodal=False)
  depth_modality = model.modalities["depth"]
  depth = np.random.default_rng(0).uniform(0.5, 20, (batch, size, size, 1)).astype(np.float32)

  @tf.function(jit_compile=False)
  def in_process(raw):
    logits = model.translate("depth", "segmentation", depth_modality.normalize(raw))
    return tf.nn.softmax(logits), tf.argmax(logits, -1)

  row = {"size": size, "in_process": _time_per_image(lambda: in_process(depth), batch, repeats)}
  process, url = start_server(export_dir)
  try:
    client = serving_client.ServingClient(url, manifest=os.path.join(export_dir, "manifest.json"))
    for via in ("modules", "mmnet"):
      client.transfers.clear()
      row[via] = _time_per_image(lambda: client.translate("depth", "segmentation", depth, via=via),
                                 batch, repeats)
      calls = repeats + 1
      row[f"{via}_sent"] = sum(t[1] for t in client.transfers) / calls / batch
      row[f"{via}_received"] = sum(t[2] for t in client.transfers) / calls / batch
  finally:
    process.terminate()
    process.wait(timeout=30)
  return row


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)  # SavedModel writing logs every function it renames.
  tf.get_logger().setLevel("ERROR")
  sizes = [int(s) for s in FLAGS.sizes]
  print(f"Switch tensors, JSON bytes per image (width {FLAGS.switch_width:g}):")
  print(f"{'size':>6} {'int64 JSON':>14} {'compact JSON':>14} {'ratio':>7} {'int64 binary':>14}")
  for size in sizes:
    as_int64, compact, binary = switch_bytes(size, FLAGS.switch_width)
    print(f"{size:>6} {as_int64:>14,} {compact:>14,} {as_int64 / compact:>6.1f}x {binary:>14,}")
  print()
  print(f"depth->segmentation per image (width {FLAGS.width:g}, batch {FLAGS.batch}, "
        f"{FLAGS.repeats} repeats), REST = python -m mm_tf.serve on localhost:")
  print(f"{'size':>6} {'in-process':>11} {'REST modules':>13} {'ratio':>7} {'REST mmnet':>11} "
        f"{'ratio':>7} {'modules sent/recv bytes':>25} {'mmnet sent/recv bytes':>23}")
  with tempfile.TemporaryDirectory() as root:
    for size in sizes:
      r = latency_row(size, FLAGS.width, FLAGS.batch, FLAGS.repeats, root)
      print(f"{size:>6} {r['in_process'] * 1e3:>9.1f}ms {r['modules'] * 1e3:>11.1f}ms "
            f"{r['modules'] / r['in_process']:>6.1f}x {r['mmnet'] * 1e3:>9.1f}ms "
            f"{r['mmnet'] / r['in_process']:>6.1f}x "
            f"{r['modules_sent']:>12,.0f}/{r['modules_received']:<12,.0f} "
            f"{r['mmnet_sent']:>11,.0f}/{r['mmnet_received']:<11,.0f}", flush=True)


if __name__ == "__main__":
  app.run(main)
