"""Serving benchmark: composition over REST and gRPC vs in process, bytes, and a load run.

  python benchmarks/serving_benchmark.py                       # the full run (width 1.0)
  python benchmarks/serving_benchmark.py --width 0.125 --sizes 64 --batches 1 \
      --repeats 2 --load_requests 100                          # a quick run

It exports a randomly initialised model once (latency does not depend on the weights;
height and width are dynamic, so one export serves every size), starts
`python -m mm_tf.serve` in a subprocess on free REST and gRPC ports, and times
depth->segmentation per request (one batch), in these modes:

  * in process: the exported depth_encoder and segmentation_decoder SavedModels called
    in this process (numpy in, numpy out), the baseline;
  * REST numbers: `ServingClient(rest_encoding="numbers")`, JSON numbers (serving_default);
  * REST bytes: `ServingClient()` (default), base64 TensorProtos (serving_bytes);
  * gRPC: `ServingClient(protocol="grpc")`, TensorProtos with tensor_content;
  * mmnet REST / mmnet gRPC: one request to the `mmnet` model's `depth_to_segmentation`
    signature (`via="mmnet"`).

Modes are interleaved (one call of each per round, `--repeats` timed rounds after a
warm-up round) so background load hits all of them alike; the median and the best round
are reported (compare medians: on a shared machine one lucky round can be 2x faster).
Bytes are per image, as the client sent/received them (HTTP bodies, protobuf messages).

The load run sends `--load_requests` requests from `--load_concurrency` threads to each
protocol: encoder and decoder requests (REST: bytes and numbers bodies), every 10th
(`--load_malformed`) malformed in a rotating way. It reports throughput, p50/p99 latency
of the valid requests, 5xx / INTERNAL answers, failed valid requests, malformed requests
answered 4xx / INVALID_ARGUMENT, and the server's RSS after warm-up and after the run.
"""

import base64
import concurrent.futures
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

from mm_tf import export
from mm_tf import serving_client
from mm_tf import tensor_protos
from mm_tf.model import MixAndMatchNetworks

FLAGS = flags.FLAGS
flags.DEFINE_float("width", 1.0, "Network width (1.0 = the paper's VGG16 SegNet).")
flags.DEFINE_list("sizes", ["64", "256"], "Square image sizes.")
flags.DEFINE_list("batches", ["1", "8"], "Images per request.")
flags.DEFINE_integer("repeats", 3, "Timed rounds (after one warm-up round).")
flags.DEFINE_list("modes", ["in_process", "rest_numbers", "rest_bytes", "grpc", "mmnet_rest",
                            "mmnet_grpc"], "Modes to time.")
flags.DEFINE_integer("load_requests", 1000, "Requests per protocol in the load run (0 = none).")
flags.DEFINE_integer("load_concurrency", 8, "Concurrent clients in the load run.")
flags.DEFINE_float("load_malformed", 0.1, "Fraction of malformed requests in the load run.")
flags.DEFINE_integer("load_size", 64, "Image size of the load run.")
flags.DEFINE_list("load_protocols", ["rest", "grpc"], "Protocols of the load run.")
flags.DEFINE_string("export_dir", None, "Reuse this export (default: a temporary one).")
flags.DEFINE_bool("export_only", False, "Only export into --export_dir (run in a child "
                  "process, so the timing process holds no Keras model).")

MIB = 1024 * 1024


# ---------------------------------------------------------------- server
def start_server(export_dir):
  """`python -m mm_tf.serve` on free ports; returns (process, rest url, grpc target)."""
  process = subprocess.Popen(
      [sys.executable, "-m", "mm_tf.serve", f"--export_dir={export_dir}", "--port=0",
       "--grpc_port=0"],
      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  grpc_target = None
  deadline = time.time() + 600
  while time.time() < deadline:
    line = process.stdout.readline()
    if not line and process.poll() is not None:
      raise RuntimeError("mm_tf.serve exited before serving.")
    match = re.search(r"Serving gRPC on [^:]+:(\d+)", line)
    if match:
      grpc_target = f"127.0.0.1:{match.group(1)}"
    match = re.search(r"http://[^/]+:(\d+)/", line)
    if match:
      return process, f"http://127.0.0.1:{match.group(1)}", grpc_target
  process.kill()
  raise RuntimeError("mm_tf.serve did not start within 600 s.")


def rss_mib(pid):
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return float("nan")


# ---------------------------------------------------------------- latency
class Modes:
  """One callable per mode, each translating a depth batch to segmentation."""

  def __init__(self, export_dir, url, grpc_target, manifest):
    load = lambda name: tf.saved_model.load(
        os.path.join(export_dir, name, "1")).signatures[export.SERVING_SIGNATURE]
    self.encoder, self.decoder = load("depth_encoder"), load("segmentation_decoder")
    self.clients = {
        "rest_numbers": serving_client.ServingClient(url, manifest, rest_encoding="numbers"),
        "rest_bytes": serving_client.ServingClient(url, manifest),
        "grpc": serving_client.ServingClient(grpc_target, manifest, protocol="grpc"),
    }
    self.clients["mmnet_rest"] = self.clients["rest_numbers"]
    self.clients["mmnet_grpc"] = self.clients["grpc"]

  def in_process(self, depth):
    wire = self.encoder(image=tf.constant(depth))
    outputs = self.decoder(**wire)
    return {name: value.numpy() for name, value in outputs.items()}

  def call(self, mode, depth):
    if mode == "in_process":
      return self.in_process(depth)
    via = "mmnet" if mode.startswith("mmnet") else "modules"
    return self.clients[mode].translate("depth", "segmentation", depth, via=via)

  def transfers(self, mode, depth):
    """[(model, sent, received)] of one call."""
    if mode == "in_process":
      return []
    client = self.clients[mode]
    client.transfers.clear()
    self.call(mode, depth)
    return list(client.transfers)


def latency_table(modes, sizes, batches, repeats, names):
  rows = []
  for size in sizes:
    for batch in batches:
      depth = np.random.default_rng(0).uniform(0.5, 20, (batch, size, size, 1)).astype(
          np.float32)
      times = {mode: [] for mode in names}
      for round_index in range(repeats + 1):
        for mode in names:
          start = time.perf_counter()
          modes.call(mode, depth)
          if round_index:  # Round 0 warms up (traces, connections, caches).
            times[mode].append(time.perf_counter() - start)
      row = {"size": size, "batch": batch,
             "time": {mode: statistics.median(t) for mode, t in times.items()},
             "best": {mode: min(t) for mode, t in times.items()},
             "bytes": {mode: modes.transfers(mode, depth) for mode in names}}
      rows.append(row)
      print_latency_row(row, names)
  return rows


def print_latency_row(row, names):
  base = row["time"].get("in_process")
  cells = []
  for mode in names:
    t = row["time"][mode]
    ratio = f" ({t / base:.2f}x)" if base and mode != "in_process" else ""
    cells.append(f"{mode} {t * 1e3:,.0f} ms{ratio}")
  print(f"{row['size']}x{row['size']} batch {row['batch']}: " + "; ".join(cells), flush=True)


def print_markdown(rows, names):
  for statistic, title in (("time", "median"), ("best", "best round")):
    print(f"\nLatency per request ({title}), ratio to in process:\n")
    print("| size | batch | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for row in rows:
      base = row[statistic].get("in_process")
      cells = []
      for mode in names:
        t = row[statistic][mode]
        cells.append(f"{t * 1e3:,.0f} ms" + (f" ({t / base:.2f}x)" if base and
                                               mode != "in_process" else ""))
      print(f"| {row['size']} | {row['batch']} | " + " | ".join(cells) + " |")
  print("\nBytes per image (request / response), encoder + decoder or one mmnet request:\n")
  transfer_modes = [m for m in names if m != "in_process"]
  print("| size | batch | " + " | ".join(transfer_modes) + " | decoder request |")
  print("|---|---|" + "---|" * (len(transfer_modes) + 1))
  for row in rows:
    cells, decoder_requests = [], []
    for mode in transfer_modes:
      transfers = row["bytes"][mode]
      sent = sum(t[1] for t in transfers) / row["batch"]
      received = sum(t[2] for t in transfers) / row["batch"]
      cells.append(f"{sent:,.0f} / {received:,.0f}")
      decoder = [t[1] for t in transfers if t[0].endswith("_decoder")]
      if decoder:
        decoder_requests.append(f"{mode} {decoder[0] / row['batch'] / MIB:.2f} MiB")
    print(f"| {row['size']} | {row['batch']} | " + " | ".join(cells) + " | "
          + ", ".join(decoder_requests) + " |")


# ---------------------------------------------------------------- load
def _rest_bodies(client, size):
  """Valid and malformed REST requests: lists of (path, body bytes)."""
  depth = np.random.default_rng(1).uniform(0.5, 20, (1, size, size, 1)).astype(np.float32)
  encoded = client.encode("depth", depth)
  b64 = lambda a: [{"b64": base64.b64encode(tensor_protos.serialize_tensor(x)).decode()}
                   for x in a]
  version = client.version
  encoder = f"/v1/models/depth_encoder/versions/{version}:predict"
  decoder = f"/v1/models/segmentation_decoder/versions/{version}:predict"
  body = lambda inputs, signature="serving_default": json.dumps(
      {"signature_name": signature, "inputs": inputs}).encode()
  valid = [
      (encoder, body({"image_bytes": b64(depth)}, "serving_bytes")),
      (decoder, body({k + "_bytes": b64(v) for k, v in encoded.items()}, "serving_bytes")),
      (encoder, body({"image": depth.tolist()})),
      (decoder, body({k: v.tolist() for k, v in encoded.items()})),
  ]
  bad_switches = {k: v.tolist() for k, v in encoded.items()}
  bad_switches["switches_1"] = (encoded["switches_1"].astype(np.float32) + 0.5).tolist()
  malformed = [
      (encoder, b"{not json"),
      (encoder, body({"image": depth[..., 0].tolist()})),                      # rank
      (decoder, body(bad_switches)),                                            # dtype
      (encoder, body({"image": depth.tolist()}, "nope")),                       # signature
      (encoder, body({"image_bytes": [{"b64": "%%%"}]}, "serving_bytes")),      # base64
      (encoder, body({"image_bytes": [{"b64": "AAAA"}]}, "serving_bytes")),     # TensorProto
      (encoder, body({"image": np.zeros((1, size - 16, size, 1)).tolist()})),  # size % 32
      (decoder, body({"latent": encoded["latent"].tolist()})),                 # inputs
  ]
  return valid, malformed


def _grpc_requests(client, size):
  """Valid and malformed PredictRequests."""
  from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
  depth = np.random.default_rng(1).uniform(0.5, 20, (1, size, size, 1)).astype(np.float32)
  encoded = client.encode("depth", depth)

  def request(model, inputs, signature="serving_default"):
    message = predict_pb2.PredictRequest()
    message.model_spec.name = model
    message.model_spec.signature_name = signature
    for name, value in inputs.items():
      message.inputs[name].CopyFrom(tensor_protos.array_to_tensor_proto(value))
    return message

  valid = [request("depth_encoder", {"image": depth}),
           request("segmentation_decoder", encoded)]
  bad_switches = dict(encoded, switches_1=encoded["switches_1"].astype(np.int32))
  malformed = [
      request("depth_encoder", {"image": depth.astype(np.float64)}),
      request("depth_encoder", {"image": depth[..., 0]}),
      request("segmentation_decoder", bad_switches),
      request("segmentation_decoder", {"latent": encoded["latent"]}),
      request("depth_encoder", {"image_bytes": np.array([b"garbage"], dtype=object)},
              "serving_bytes"),
      request("depth_encoder", {"image": np.zeros((1, size - 16, size, 1), np.float32)}),
      request("depth_encoder", {"image": depth}, "nope"),
  ]
  return valid, malformed


def load_run(protocol, url, grpc_target, manifest, pid, requests, concurrency, malformed_share,
             size):
  """Sends `requests` requests from `concurrency` threads; returns a result dict."""
  client = serving_client.ServingClient(grpc_target if protocol == "grpc" else url, manifest,
                                        protocol=protocol)
  every = max(1, round(1 / malformed_share)) if malformed_share > 0 else requests + 1
  if protocol == "rest":
    valid, malformed = _rest_bodies(client, size)
    host, port = url.replace("http://", "").split(":")

    def send(item):
      path, body = item
      connection = http.client.HTTPConnection(host, int(port), timeout=600)
      try:
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
      finally:
        connection.close()
    is_ok = lambda status: status == 200
    is_server_error = lambda status: status >= 500
    is_rejected = lambda status: 400 <= status < 500
  else:
    import grpc  # pylint: disable=g-import-not-at-top
    valid, malformed = _grpc_requests(client, size)
    stub = client._prediction_stub()  # pylint: disable=protected-access

    def send(item):
      try:
        stub.Predict(item, timeout=600)
        return "OK"
      except grpc.RpcError as e:
        return e.code().name
    is_ok = lambda status: status == "OK"
    is_server_error = lambda status: status in ("INTERNAL", "UNKNOWN", "UNAVAILABLE",
                                                "DATA_LOSS", "DEADLINE_EXCEEDED")
    is_rejected = lambda status: status == "INVALID_ARGUMENT"

  plan = [(False, malformed[(i // every) % len(malformed)]) if (i + 1) % every == 0
          else (True, valid[i % len(valid)]) for i in range(requests)]
  for _, item in plan[:len(valid)] + [(False, m) for m in malformed]:  # Warm-up.
    send(item)
  rss_before = rss_mib(pid)

  def timed(entry):
    is_valid, item = entry
    start = time.perf_counter()
    status = send(item)
    return is_valid, status, time.perf_counter() - start

  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
    results = list(pool.map(timed, plan))
  elapsed = time.perf_counter() - start
  client.close()
  latencies = sorted(t for v, _, t in results if v)
  return {
      "protocol": protocol, "requests": requests, "seconds": elapsed,
      "throughput": requests / elapsed,
      "p50_ms": 1e3 * latencies[len(latencies) // 2] if latencies else float("nan"),
      "p99_ms": (1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
                 if latencies else float("nan")),
      "server_errors": sum(is_server_error(s) for _, s, _ in results),
      "failed_valid": sum(v and not is_ok(s) for v, s, _ in results),
      "malformed": sum(not v for v, _, _ in results),
      "malformed_rejected": sum(not v and is_rejected(s) for v, s, _ in results),
      "rss_before_mib": rss_before, "rss_after_mib": rss_mib(pid),
  }


def print_load(results, concurrency, size, width):
  print(f"\nLoad run: {size}x{size}, width {width:g}, {concurrency}-way concurrency, "
        "encoder and decoder requests:\n")
  print("| protocol | requests | throughput | p50 | p99 | 5xx / INTERNAL | failed valid | "
        "malformed rejected 4xx / INVALID_ARGUMENT | server RSS after warm-up -> after |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in results:
    growth = 100 * (r["rss_after_mib"] / r["rss_before_mib"] - 1)
    print(f"| {r['protocol']} | {r['requests']} | {r['throughput']:.1f} req/s | "
          f"{r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | {r['server_errors']} | "
          f"{r['failed_valid']} | {r['malformed_rejected']} / {r['malformed']} | "
          f"{r['rss_before_mib']:,.0f} -> {r['rss_after_mib']:,.0f} MiB ({growth:+.1f}%) |")


# ---------------------------------------------------------------- main
def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)  # SavedModel writing logs every function it renames.
  tf.get_logger().setLevel("ERROR")
  sizes = [int(s) for s in FLAGS.sizes]
  batches = [int(b) for b in FLAGS.batches]
  if FLAGS.export_only:
    model = MixAndMatchNetworks(["rgb", "depth", "nir", "segmentation"],
                                [("rgb", "segmentation"), ("rgb", "depth", "nir")],
                                width=FLAGS.width, image_size=min(sizes + [FLAGS.load_size]))
    export.export_model(model, FLAGS.export_dir, version=1, include_multimodal=False)
    return
  with tempfile.TemporaryDirectory() as root:
    export_dir = FLAGS.export_dir or os.path.join(root, "serving")
    if not os.path.exists(os.path.join(export_dir, "manifest.json")):
      # In a child process: the timing process then holds only the loaded SavedModels, as
      # the server does (a built Keras model and its traces would sit in this one).
      start = time.perf_counter()
      subprocess.run([sys.executable, os.path.abspath(__file__), "--export_only",
                      f"--export_dir={export_dir}", f"--width={FLAGS.width}",
                      f"--sizes={','.join(FLAGS.sizes)}", f"--load_size={FLAGS.load_size}"],
                     check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
      print(f"Exported width {FLAGS.width:g} in {time.perf_counter() - start:.0f} s.", flush=True)
    manifest = os.path.join(export_dir, "manifest.json")
    process, url, grpc_target = start_server(export_dir)
    try:
      print(f"Server pid {process.pid}: REST {url}, gRPC {grpc_target}; {os.cpu_count()} CPUs.",
            flush=True)
      modes = Modes(export_dir, url, grpc_target, manifest)
      rows = latency_table(modes, sizes, batches, FLAGS.repeats, FLAGS.modes)
      print_markdown(rows, FLAGS.modes)
      if FLAGS.load_requests:
        results = []
        for protocol in FLAGS.load_protocols:
          results.append(load_run(protocol, url, grpc_target, manifest, process.pid,
                                  FLAGS.load_requests, FLAGS.load_concurrency,
                                  FLAGS.load_malformed, FLAGS.load_size))
          print(json.dumps(results[-1]), flush=True)
        print_load(results, FLAGS.load_concurrency, FLAGS.load_size, FLAGS.width)
    finally:
      process.terminate()
      process.wait(timeout=60)


if __name__ == "__main__":
  app.run(main)
