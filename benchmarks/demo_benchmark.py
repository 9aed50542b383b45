"""Demo page latency, upload to pictures shown, in headless Chromium (and its screenshot).

  python benchmarks/demo_benchmark.py [--width 0.125] [--sizes 64,256] [--repeats 5]
  python benchmarks/demo_benchmark.py --export_dir runs/synthetic_forest/export \
      --screenshot docs/demo.png --screenshot_example <id>

Without --export_dir it exports a randomly initialised model at --width (latency does not
depend on the weights) with two synthetic test scenes as examples. The server is
`mm_tf.serve`'s (`make_server`, in a thread of this process); the browser is Debian's
chromium driven by Selenium (tests/demo_browser.py). For each size the page (size mode
"native", so pictures keep their size) gets
  (a) one 16-bit depth PNG: 3 translations;
  (b) all four files of a synthetic scene rendered at that size: 12 translations + 4 fusions;
and the table gives the median over --repeats of the page's own measure (`performance.now()`
from the file input's change event to every result picture decoded) and of the server's
share (decoding, resizing, every translation, PNG encoding).
"""

import base64
import io
import os
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
from PIL import Image
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mm_tf import export  # pylint: disable=g-import-not-at-top,wrong-import-position
from mm_tf import serve  # pylint: disable=wrong-import-position
from mm_tf.data import synthetic_forest  # pylint: disable=wrong-import-position
from mm_tf.demo import examples as demo_examples  # pylint: disable=wrong-import-position
from mm_tf.model import MixAndMatchNetworks  # pylint: disable=wrong-import-position
from tests import demo_browser  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
SCREENSHOT_WIDTH = 1024
flags.DEFINE_string("export_dir", None, "An existing export (default: export a random model).")
flags.DEFINE_float("width", 0.125, "Network width of the random model (0.125 = the synthetic "
                   "default).")
flags.DEFINE_list("sizes", ["64", "256"], "Square image sizes.")
flags.DEFINE_integer("repeats", 5, "Timed uploads per case (after one warm-up).")
flags.DEFINE_string("screenshot", None, "Save a full-page PNG screenshot here.")
flags.DEFINE_string("screenshot_example", None, "Example scene shown in the screenshot "
                    "(default: the first).")
flags.DEFINE_float("screenshot_weight", None, "Fusion weight set with the slider before the "
                   "screenshot (default: the model's).")


def export_random_model(root):
  model = MixAndMatchNetworks(["rgb", "depth", "nir", "segmentation"],
                              [("rgb", "segmentation"), ("rgb", "depth", "nir")],
                              width=FLAGS.width, image_size=64)
  export_dir = os.path.join(root, "serving")
  export.export_model(model, export_dir, version=1, include_mmnet=False)
  dataset = os.path.join(root, "data")
  synthetic_forest.generate(dataset, num_train=2, num_test=2, image_size=64)
  demo_examples.write_examples(export_dir, dataset, count=2)
  return export_dir


def scene_files(size, directory):
  """The four files of one synthetic scene rendered at `size`, in the dataset's formats."""
  split_dir = os.path.join(directory, f"scene{size}")
  for sub in ("rgb", "depth_gray", "nir_gray", "GT_color"):
    os.makedirs(os.path.join(split_dir, sub), exist_ok=True)
  synthetic_forest.write_scene(split_dir, "bench", synthetic_forest.render_scene(
      synthetic_forest.scene_rng(0, "test", 0), size))
  return {"rgb": f"{split_dir}/rgb/bench_Clipped.jpg",
          "depth": f"{split_dir}/depth_gray/bench_Clipped_redict_depth_gray.png",
          "nir": f"{split_dir}/nir_gray/bench.tif",
          "segmentation": f"{split_dir}/GT_color/bench_Clipped.png"}


class Page:
  """The demo page in headless Chromium."""

  def __init__(self, url):
    from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
    from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top
    self.by, self.wait_class = By, WebDriverWait
    self.driver = demo_browser.start()
    self.driver.get(url)
    self.wait(lambda d: d.find_elements(By.ID, "file-depth"))

  def wait(self, condition, timeout=300):
    return self.wait_class(self.driver, timeout, poll_frequency=0.02).until(condition)

  def run(self, files, size_mode="native"):
    """Uploads {modality: path}; returns (page ms, server ms) of the last upload."""
    d = self.driver
    d.execute_script("""
      document.getElementById('size-mode').value = arguments[0];
      for (const m of ['rgb', 'depth', 'nir', 'segmentation']) {
        const input = document.getElementById('file-' + m); if (input) input.value = '';
      }
      document.body.dataset.state = 'waiting';""", size_mode)
    items = list(files.items())
    # All but the last file are set without an upload: the page uploads on each change,
    # so they are attached by a script that does not fire the event.
    if len(items) > 1:
      d.execute_script("window.__suppress = true;")
    for index, (modality, path) in enumerate(items):
      if index == len(items) - 1:
        d.execute_script("window.__suppress = false; document.body.dataset.state = 'waiting';")
      d.find_element(self.by.ID, f"file-{modality}").send_keys(path)
    self.wait(lambda dr: dr.execute_script("return document.body.dataset.state") == "done")
    errors = d.find_element(self.by.ID, "messages").text
    if errors:
      raise RuntimeError(errors)
    return (float(d.execute_script("return document.body.dataset.elapsedMs")),
            float(d.execute_script("return document.body.dataset.serverMs")))

  def close(self):
    demo_browser.stop(self.driver)


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)
  tf.get_logger().setLevel("ERROR")
  root = tempfile.mkdtemp(prefix="mm_tf_demo_bench_")
  export_dir = FLAGS.export_dir or export_random_model(root)
  registry = serve.ModelRegistry.from_export_dir(export_dir)
  server = serve.make_server(registry, "127.0.0.1", 0)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  page = Page(f"http://127.0.0.1:{server.port}/")
  # The page uploads on every file change; the benchmark attaches several files first, so
  # it wraps the page's (global) submit() with a switch.
  page.driver.execute_script("""
    const original = window.submit;
    window.submit = () => { if (!window.__suppress) original(); };""")
  try:
    if FLAGS.repeats:
      print(f"Demo page, upload to pictures shown (median of {FLAGS.repeats}; export "
            f"{'given' if FLAGS.export_dir else f'random width {FLAGS.width:g}'}):")
      print(f"{'size':>9} {'inputs':>26} {'page ms':>9} {'server ms':>10}")
      for size in [int(s) for s in FLAGS.sizes]:
        depth_path = os.path.join(root, f"depth{size}.png")
        metres = np.random.default_rng(size).uniform(2, 18, (size, size))
        Image.fromarray(np.round(metres * 1000).astype(np.uint16)).save(depth_path)
        cases = {"depth PNG (3 results)": {"depth": depth_path},
                 "4 files (12 + 4 fused)": scene_files(size, root)}
        for label, files in cases.items():
          page.run(files)  # Warm-up.
          times = [page.run(files) for _ in range(FLAGS.repeats)]
          page_ms, server_ms = np.median(np.asarray(times), axis=0)
          print(f"{size:>4}x{size:<4} {label:>26} {page_ms:>9.0f} {server_ms:>10.0f}", flush=True)
    if FLAGS.screenshot:
      page.driver.get(f"http://127.0.0.1:{server.port}/")
      page.wait(lambda d: d.find_elements(page.by.ID, "examples"))
      example = FLAGS.screenshot_example or demo_examples.list_examples(export_dir)[0]["id"]
      page.wait(lambda d: d.find_elements(page.by.ID, f"example-{example}"))
      page.driver.execute_script("document.body.dataset.state = 'waiting';")
      page.driver.find_element(page.by.ID, f"example-{example}").click()
      page.wait(lambda d: d.execute_script("return document.body.dataset.state") == "done")
      if FLAGS.screenshot_weight is not None:
        page.driver.execute_script(
            "const s = document.getElementById('fusion-weight'); s.value = arguments[0];"
            "s.dispatchEvent(new Event('input'));", FLAGS.screenshot_weight)
        time.sleep(2.0)
      page.driver.set_window_size(SCREENSHOT_WIDTH, 1000)
      time.sleep(0.5)
      height = page.driver.execute_script("return document.documentElement.scrollHeight")
      shot = page.driver.execute_cdp_cmd("Page.captureScreenshot", {
          "format": "png", "captureBeyondViewport": True,
          "clip": {"x": 0, "y": 0, "width": SCREENSHOT_WIDTH, "height": height, "scale": 1}})
      png = base64.b64decode(shot["data"])
      Image.open(io.BytesIO(png)).convert("RGB").save(FLAGS.screenshot, optimize=True)
      print(f"Screenshot: {FLAGS.screenshot}")
  finally:
    page.close()
    server.shutdown()
    server.server_close()


if __name__ == "__main__":
  app.run(main)
