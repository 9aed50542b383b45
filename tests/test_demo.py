"""Tests of the demo page served by mm_tf.serve at `/` (mm_tf.demo).

Plain tests call the decode/translate endpoints through Flask's test client; the browser
tests open the page in headless Chromium against a server on a free port, upload files and
read the pictures back from the page. They skip (with the reason) only where Chromium,
chromedriver or Selenium is missing; `.ci/run` installs them.
"""

import atexit
import base64
import io
import os
import shutil
import tempfile
import threading
import unittest

import numpy as np
from PIL import Image
import tensorflow as tf

from mm_tf import serve
from mm_tf.data import freiburg_forest
from mm_tf.data import synthetic_forest
from mm_tf.demo import examples as demo_examples
from tests import demo_browser
from tests import serving_fixture

SIZE = serving_fixture.IMAGE_SIZE


def png_bytes(array, fmt="PNG", **kwargs):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt, **kwargs)
  return buffer.getvalue()


def depth_png(size=SIZE, width=None, seed=0, bits=16):
  """A depth_gray PNG: 16-bit millimetres or 8-bit relative, with an invalid top band."""
  rng = np.random.default_rng(seed)
  metres = rng.uniform(2.0, 18.0, (size, width or size))
  metres[:4] = 0.0
  if bits == 16:
    return png_bytes(np.round(metres * 1000).astype(np.uint16))
  return png_bytes(np.round(metres * 255 / 40).astype(np.uint8))


def picture_of(data_url):
  assert data_url.startswith("data:image/png;base64,")
  return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


_SETUP = {}


def setup_export():
  """A copy of the shared exported fixture model, plus two synthetic test scenes as examples.

  A copy, so the shared export dir (which other test modules inspect) stays as export left
  it; without models.config (absolute paths to the original) the server finds the models
  in the copy's sub-directories.
  """
  if not _SETUP:
    model, shared_dir, _ = serving_fixture.exported()
    root = tempfile.mkdtemp(prefix="mm_tf_demo_test_")
    atexit.register(shutil.rmtree, root, True)
    export_dir = os.path.join(root, "serving")
    shutil.copytree(shared_dir, export_dir)
    os.remove(os.path.join(export_dir, "models.config"))
    dataset = os.path.join(root, "data")
    synthetic_forest.generate(dataset, num_train=2, num_test=2, image_size=SIZE, seed=3)
    demo_examples.write_examples(export_dir, dataset, count=2)
    _SETUP.update(model=model, export_dir=export_dir,
                  registry=serve.ModelRegistry.from_export_dir(export_dir))
  return _SETUP


class DemoApiTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    setup = setup_export()
    cls.model, cls.export_dir = setup["model"], setup["export_dir"]
    cls.app = serve.create_app(setup["registry"])
    cls.segmentation = cls.model.modalities["segmentation"]
    cls.palette = np.asarray(cls.segmentation.palette, np.uint8)

  def setUp(self):
    super().setUp()
    self.http = self.app.test_client()

  def translate(self, files, status=200, **form):
    data = {name: (io.BytesIO(content), filename) for name, (filename, content) in files.items()}
    data.update(form)
    response = self.http.post("/demo/api/translate", data=data, content_type="multipart/form-data")
    self.assertEqual(response.status_code, status, response.get_data(as_text=True)[:500])
    return response.get_json()

  def expected_segmentation(self, source_raw_by_modality, weights=None):
    """The in-memory model's answer: labels of the (fused) translation into segmentation."""
    normalized = {m: self.model.modalities[m].normalize(x[None]) for m, x in
                  source_raw_by_modality.items()}
    if len(normalized) == 1:
      (source, x), = normalized.items()
      logits = self.model.translate(source, "segmentation", x)
    else:
      logits = self.model.translate_multimodal(normalized, "segmentation", weights=weights)
    return tf.argmax(logits, -1).numpy()[0]

  def test_page_is_self_contained(self):
    response = self.http.get("/")
    self.assertEqual(response.status_code, 200)
    self.assertEqual(response.mimetype, "text/html")
    html = response.get_data(as_text=True)
    self.assertIn("upload-form", html)
    self.assertNotRegex(html, r"(src|href)\s*=\s*[\"']?(https?:)?//")
    self.assertNotRegex(html, r"@import|url\(\s*[\"']?https?:")
    # The REST API is unchanged next to it.
    self.assertEqual(self.http.get("/v1/models/depth_encoder").status_code, 200)

  def test_info_describes_the_export(self):
    info = self.http.get("/demo/api/info").get_json()
    self.assertEqual(info["order"], ["rgb", "depth", "nir", "segmentation"])
    self.assertEqual(info["modalities"]["segmentation"]["palette"], self.palette.tolist())
    self.assertIn("depth_to_rgb", info["seen_translations"])
    self.assertNotIn("depth_to_segmentation", info["seen_translations"])
    self.assertEqual(info["streams"], [["rgb", "segmentation"], ["rgb", "depth", "nir"]])
    self.assertEqual(info["depth_range"], [0.0, 20.0])
    self.assertEqual([e["id"] for e in info["examples"]],
                     [synthetic_forest.scene_id("test", i) for i in range(2)])
    self.assertEqual(info["examples"][0]["files"],
                     {"rgb": "rgb.jpg", "depth": "depth.png", "nir": "nir.tif",
                      "segmentation": "segmentation.png"})

  def test_depth_png_gives_every_translation_like_the_model(self):
    content = depth_png()
    answer = self.translate({"depth": ("scene.png", content)})
    self.assertEqual(answer["errors"], {})
    self.assertEqual(answer["size"], [SIZE, SIZE])
    kinds = {(t["source"], t["target"]): t["kind"] for t in answer["translations"]}
    self.assertEqual(kinds, {("depth", "rgb"): "seen", ("depth", "nir"): "zero-pair",
                             ("depth", "segmentation"): "zero-pair"})
    self.assertEqual(answer["fusion"], [])
    by_target = {t["target"]: t for t in answer["translations"]}
    for result in answer["translations"]:
      latency = result["latency_ms"]
      self.assertGreater(latency["encoder"], 0)
      self.assertAlmostEqual(latency["total"], latency["encoder"] + latency["decoder"], delta=0.2)
    # Same reader as the data pipeline, same numbers as the model in memory.
    depth_m = freiburg_forest.read_depth(io.BytesIO(content), "scene.png")
    expected = self.expected_segmentation({"depth": depth_m[..., None]})
    picture = picture_of(by_target["segmentation"]["image"])
    self.assertEqual(picture.shape, (SIZE, SIZE, 3))
    self.assertAllEqual(picture, self.palette[expected])
    self.assertEqual(picture_of(by_target["nir"]["image"]).shape, (SIZE, SIZE))
    self.assertEqual(picture_of(by_target["rgb"]["image"]).shape, (SIZE, SIZE, 3))
    # The input picture: invalid depth (the top rows) is black.
    shown = picture_of(answer["inputs"]["depth"]["image"])
    self.assertAllEqual(shown[:4], np.zeros_like(shown[:4]))
    self.assertEqual(answer["inputs"]["depth"]["notes"], ["16-bit depth read as millimetres"])

  def test_sizes_are_made_valid_with_a_note(self):
    content = depth_png(size=80, width=100, bits=8)
    answer = self.translate({"depth": ("d8.png", content)}, size_mode="native")
    self.assertEqual(answer["size"], [64, 96])
    notes = answer["inputs"]["depth"]["notes"]
    self.assertIn("8-bit depth read as relative depth (value x 40/255 m)", notes)
    self.assertIn("centre-cropped from 100x80 to 96x64 (multiples of 32)", notes)
    self.assertEqual(picture_of(answer["translations"][-1]["image"]).shape[:2], (64, 96))
    answer = self.translate({"depth": ("d8.png", content)})  # size_mode="model"
    self.assertEqual(answer["size"], [SIZE, SIZE])
    self.assertTrue(any(n.startswith("resized from 100x80 to 64x64")
                        for n in answer["inputs"]["depth"]["notes"]))
    big = png_bytes(np.full((700, 1000, 3), 90, np.uint8), "JPEG")
    answer = self.translate({"rgb": ("big.jpg", big), "depth": ("d.png", depth_png())},
                            size_mode="native")
    self.assertEqual(answer["size"], [352, 512])  # 358x512 cropped to multiples of 32.
    self.assertTrue(any("resized from 64x64 to 1000x700" in n
                        for n in answer["inputs"]["depth"]["notes"]))

  def test_bad_uploads_get_clear_messages_and_the_server_keeps_serving(self):
    colour = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3)).astype(np.uint8)
    cases = [
        ("depth", "notes.txt", b"not an image at all", r"Cannot read notes\.txt .*not an image"),
        ("depth", "photo.jpg", png_bytes(colour, "JPEG"), r"photo\.jpg is a JPEG image; the depth "
                                                          r"slot takes a depth PNG"),
        ("depth", "colour.png", png_bytes(colour), r"colour\.png is a colour image \(3 different "
                                                   r"channels\); expected .* one channel"),
        ("nir", "colour.tif", png_bytes(colour, "TIFF"), r"colour image"),
        ("rgb", "gray.png", png_bytes(colour[..., 0]), r"gray\.png has 1 channel \(gray\); "
                                                       r"expected an RGB image with 3"),
        ("rgb", "deep.png", png_bytes(np.zeros((SIZE, SIZE), np.uint16)), r"uint16 pixels"),
        ("depth", "tiny.png", depth_png(size=16), r"tiny\.png is too small: 16x16 pixels; .* "
                                                  r"at least 32x32"),
        ("segmentation", "labels.png", png_bytes(np.full((SIZE, SIZE, 3), 7, np.uint8)),
         r"no colour of the dataset palette"),
        ("segmentation", "gray.png", png_bytes(np.zeros((SIZE, SIZE), np.uint8)),
         r"not an RGB image"),
        ("nir", "empty.tif", b"", r"empty"),
        ("nir", "cut.png", png_bytes(colour[..., 0])[:100], r"Cannot read cut\.png"),
    ]
    for modality, filename, content, pattern in cases:
      with self.subTest(filename=filename):
        answer = self.translate({modality: (filename, content)}, status=400)
        self.assertRegex(answer["errors"][modality], pattern)
        self.assertRegex(answer["error"], "No usable input")
    # A bad file next to a good one: the good one is translated, the bad one explained.
    answer = self.translate({"depth": ("d.png", depth_png()), "nir": ("x.tif", b"junk")})
    self.assertEqual(list(answer["errors"]), ["nir"])
    self.assertEqual(len(answer["translations"]), 3)
    self.assertRegex(self.translate({}, status=400)["error"], "choose at least one file")
    self.assertRegex(self.translate({"depth": ("d.png", depth_png())}, status=400,
                                    size_mode="huge")["error"], "size_mode")
    self.assertRegex(self.translate({"depth": ("d.png", depth_png())}, status=400,
                                    weight="heavy")["error"], "weight")
    self.assertIn("thermal", self.translate({"thermal": ("t.png", depth_png()),
                                             "depth": ("d.png", depth_png())})["errors"])
    # Still serving.
    self.assertEqual(self.translate({"depth": ("d.png", depth_png())})["errors"], {})

  def test_fusion_and_its_weight(self):
    rgb = np.random.default_rng(1).integers(0, 255, (SIZE, SIZE, 3)).astype(np.uint8)
    depth = depth_png()
    answer = self.translate({"rgb": ("r.png", png_bytes(rgb)), "depth": ("d.png", depth)})
    self.assertEqual(len(answer["translations"]), 6)
    fusion = {f["target"]: f for f in answer["fusion"]}
    self.assertCountEqual(fusion, ["nir", "segmentation"])
    self.assertEqual(fusion["segmentation"]["weights"], {"rgb": 0.8, "depth": 0.2})
    raw = {"rgb": rgb.astype(np.float32),
           "depth": freiburg_forest.read_depth(io.BytesIO(depth))[..., None]}
    expected = self.expected_segmentation(raw)
    self.assertAllEqual(picture_of(fusion["segmentation"]["image"]), self.palette[expected])
    # The slider: same inputs (by token), other weight.
    response = self.http.post("/demo/api/fuse", json={"token": answer["token"], "weight": 0.6})
    self.assertEqual(response.status_code, 200)
    fused = {f["target"]: f for f in response.get_json()["fusion"]}
    self.assertEqual(fused["segmentation"]["weights"], {"rgb": 0.4, "depth": 0.6})
    expected = self.expected_segmentation(raw, weights={"rgb": 0.4, "depth": 0.6})
    self.assertAllEqual(picture_of(fused["segmentation"]["image"]), self.palette[expected])
    response = self.http.post("/demo/api/fuse", json={"token": "gone", "weight": 0.5})
    self.assertEqual(response.status_code, 404)
    self.assertRegex(response.get_json()["error"], "translate them again")
    response = self.http.post("/demo/api/fuse", json={"token": answer["token"], "weight": 3})
    self.assertEqual(response.status_code, 400)
    # Three inputs: each target fuses the other inputs; the anchor leads.
    answer = self.translate({"rgb": ("r.png", png_bytes(rgb)), "depth": ("d.png", depth),
                             "nir": ("n.png", png_bytes(rgb[..., 1]))}, weight="0.5")
    fusion = {f["target"]: f for f in answer["fusion"]}
    self.assertEqual(fusion["segmentation"]["weights"], {"rgb": 0.5, "depth": 0.25, "nir": 0.25})
    self.assertEqual(fusion["rgb"]["weights"], {"depth": 0.5, "nir": 0.5})

  def test_examples_are_the_dataset_files(self):
    info = self.http.get("/demo/api/info").get_json()
    example = info["examples"][0]
    response = self.http.get(f"/demo/examples/{example['id']}/depth")
    self.assertEqual(response.status_code, 200)
    with open(os.path.join(self.export_dir, "examples", example["id"], "depth.png"), "rb") as f:
      self.assertEqual(response.data, f.read())
    preview = self.http.get(f"/demo/examples/{example['id']}/segmentation/preview")
    self.assertEqual(preview.mimetype, "image/png")
    colours = np.unique(np.asarray(Image.open(io.BytesIO(preview.data))).reshape(-1, 3), axis=0)
    self.assertTrue(set(map(tuple, colours)) <= set(map(tuple, self.palette)))
    self.assertEqual(self.http.get(f"/demo/examples/{example['id']}/thermal").status_code, 404)
    self.assertEqual(self.http.get("/demo/examples/nope/rgb/preview").status_code, 404)
    files = {m: (name, self.http.get(f"/demo/examples/{example['id']}/{m}").data)
             for m, name in example["files"].items()}
    answer = self.translate(files)
    self.assertEqual(answer["errors"], {})
    self.assertEqual(len(answer["translations"]), 12)
    self.assertEqual(len(answer["fusion"]), 4)


class ExamplesTest(tf.test.TestCase):

  def test_training_export_carries_test_scenes_of_freiburg_layout_datasets(self):
    from mm_tf import config as mm_config  # pylint: disable=g-import-not-at-top
    from mm_tf import training  # pylint: disable=g-import-not-at-top
    config = mm_config.ExperimentConfig(data_dir="/data")
    self.assertEqual(training._examples_dir(config), "/data/synthetic_forest")
    self.assertEqual(training._examples_dir(config.replace(dataset="freiburg_forest")),
                     "/data/freiburg_forest")
    self.assertIsNone(training._examples_dir(config.replace(dataset="sun_rgbd")))

  def test_write_examples_replaces_and_skips_incomplete_scenes(self):
    root = self.get_temp_dir()
    dataset = os.path.join(root, "data")
    synthetic_forest.generate(dataset, num_train=2, num_test=3, image_size=32)
    os.remove(os.path.join(dataset, "test", "nir_gray", synthetic_forest.scene_id("test", 0) + ".tif"))
    export_dir = os.path.join(root, "export")
    demo_examples.write_examples(export_dir, dataset, count=5)
    ids = [e["id"] for e in demo_examples.list_examples(export_dir)]
    self.assertEqual(ids, [synthetic_forest.scene_id("test", i) for i in (1, 2)])
    demo_examples.write_examples(export_dir, dataset, count=1)
    self.assertLen(demo_examples.list_examples(export_dir), 1)
    self.assertEqual(sorted(os.listdir(os.path.join(export_dir, "examples"))),
                     sorted([ids[0], "index.json"]))
    self.assertEqual(demo_examples.list_examples(os.path.join(root, "nothing")), [])


@unittest.skipIf(demo_browser.unavailable_reason(), demo_browser.unavailable_reason())
class DemoBrowserTest(tf.test.TestCase):
  """The page in headless Chromium against a real server thread."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    setup = setup_export()
    cls.model = setup["model"]
    cls.server = serve.make_server(setup["registry"], "127.0.0.1", 0)
    cls.thread = threading.Thread(target=cls.server.serve_forever, daemon=True)
    cls.thread.start()
    cls.url = f"http://127.0.0.1:{cls.server.port}/"
    cls.files = tempfile.mkdtemp(prefix="mm_tf_demo_files_")
    cls.depth_path = os.path.join(cls.files, "depth.png")
    with open(cls.depth_path, "wb") as f:
      f.write(depth_png())
    cls.bad_path = os.path.join(cls.files, "readme.tif")
    with open(cls.bad_path, "wb") as f:
      f.write(b"this is text, not a TIFF")
    cls.driver = demo_browser.start()

  @classmethod
  def tearDownClass(cls):
    demo_browser.stop(cls.driver)
    cls.server.shutdown()
    cls.server.server_close()
    cls.thread.join(timeout=10)
    super().tearDownClass()

  def wait(self, condition, timeout=120):
    from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top
    return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(lambda d: condition())

  def element(self, element_id):
    from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
    found = self.driver.find_elements(By.ID, element_id)
    return found[0] if found else None

  def open_page(self):
    self.driver.get(self.url)
    self.wait(lambda: self.element("file-depth") is not None)

  def upload(self, modality, path):
    self.driver.execute_script("document.body.dataset.state = 'waiting';")
    self.element(f"file-{modality}").send_keys(path)
    self.wait(lambda: self.driver.execute_script("return document.body.dataset.state") == "done")

  def test_depth_upload_shows_a_palette_segmentation(self):
    self.open_page()
    self.upload("depth", self.depth_path)
    self.assertIsNotNone(self.element("result-depth-segmentation"))
    width, height, colours = demo_browser.image_colours(self.driver, "result-depth-segmentation")
    self.assertEqual((width, height), (SIZE, SIZE))
    palette = {tuple(c) + (255,) for c in self.model.modalities["segmentation"].palette}
    self.assertTrue(colours <= palette, colours - palette)
    # The seen / zero-pair marks, the latency and the legend are on the page.
    cell = self.element("result-depth-segmentation").find_element("xpath", "..")
    self.assertIn("zero-pair", cell.text)
    self.assertRegex(cell.text, r"[0-9.]+ ms \(encoder [0-9.]+ \+ decoder [0-9.]+\)")
    rgb_cell = self.element("result-depth-rgb").find_element("xpath", "..")
    self.assertIn("seen", rgb_cell.text)
    self.assertIn("vegetation", self.element("legend-segmentation").text)
    self.assertIn("20 m", self.element("legend-depth").text)
    self.assertGreater(int(self.driver.execute_script("return document.body.dataset.elapsedMs")), 0)

  def test_bad_upload_shows_its_message(self):
    self.open_page()
    self.upload("nir", self.bad_path)
    self.assertRegex(self.element("error-nir").text, r"Cannot read readme\.tif .*not an image")
    self.assertIn("nir: Cannot read readme.tif", self.element("messages").text)
    # The page and the server go on: a good file next to the bad one is translated.
    self.upload("depth", self.depth_path)
    self.assertIsNotNone(self.element("result-depth-segmentation"))
    self.assertRegex(self.element("error-nir").text, "Cannot read")

  def test_example_scene_and_fusion_slider(self):
    self.open_page()
    self.driver.execute_script("document.body.dataset.state = 'waiting';")
    self.element("example-" + synthetic_forest.scene_id("test", 0)).click()
    self.wait(lambda: self.driver.execute_script("return document.body.dataset.state") == "done")
    self.assertIsNotNone(self.element("result-nir-segmentation"))
    caption = lambda: self.element("fused-segmentation").find_element("xpath", "..").text
    self.assertIn("rgb 0.6", caption())  # Model defaults with three other inputs.
    self.driver.execute_script(
        "const s = document.getElementById('fusion-weight'); s.value = 0.5;"
        "s.dispatchEvent(new Event('input'));")
    self.wait(lambda: "rgb 0.5" in caption())
    self.assertIn("depth 0.25", caption())


if __name__ == "__main__":
  tf.test.main()
