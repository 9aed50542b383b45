"""Tests of the local TF-Serving-compatible server (mm_tf.serve) and the client.

The server runs on 127.0.0.1 on a free port in a background thread of this process and
is shut down after the tests.
"""

import base64
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import tensorflow as tf

from mm_tf import serve
from mm_tf import serving_client
from tests import serving_fixture


class ServeTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model, cls.export_dir, _ = serving_fixture.exported()
    registry = serve.ModelRegistry.from_export_dir(cls.export_dir)
    cls.server = serve.make_server(registry, "127.0.0.1", 0)
    cls.thread = threading.Thread(target=cls.server.serve_forever, daemon=True)
    cls.thread.start()
    cls.url = f"http://127.0.0.1:{cls.server.port}"
    cls.manifest = f"{cls.export_dir}/manifest.json"
    cls.depth, cls.rgb, cls.expected, cls.expected_labels = (
        serving_fixture.depth_to_segmentation_case(cls.model))

  @classmethod
  def tearDownClass(cls):
    cls.server.shutdown()
    cls.server.server_close()
    cls.thread.join(timeout=10)
    super().tearDownClass()

  def request(self, path, body=None, method=None):
    """(status, parsed JSON) of a raw HTTP request; body bytes or a JSON-able object."""
    if body is not None and not isinstance(body, bytes):
      body = json.dumps(body).encode()
    request = urllib.request.Request(self.url + path, data=body,
                                     method=method or ("POST" if body is not None else "GET"))
    try:
      with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
      return e.code, json.loads(e.read())

  def assert_error(self, path, body, status, pattern):
    code, answer = self.request(path, body)
    self.assertEqual(code, status, answer)
    self.assertRegex(answer["error"], pattern)

  def test_status_and_metadata(self):
    code, answer = self.request("/v1/models/depth_encoder")
    self.assertEqual(code, 200)
    self.assertEqual(answer["model_version_status"][0]["version"], "1")
    self.assertEqual(answer["model_version_status"][0]["state"], "AVAILABLE")
    code, answer = self.request("/v1/models/segmentation_decoder/versions/1/metadata")
    self.assertEqual(code, 200)
    signature = answer["metadata"]["signature_def"]["signature_def"]["serving_default"]
    self.assertCountEqual(signature["inputs"],
                          ["latent"] + [f"switches_{k}" for k in range(1, 6)])
    self.assertCountEqual(signature["outputs"], ["image", "labels"])
    self.assertEqual(signature["inputs"]["switches_1"]["dtype"], "DT_UINT8")
    self.assertEqual(signature["method_name"], serve.PREDICT_METHOD)
    # Every encoder's outputs are exactly every decoder's inputs.
    _, encoder = self.request("/v1/models/nir_encoder/metadata")
    outputs = encoder["metadata"]["signature_def"]["signature_def"]["serving_default"]["outputs"]
    self.assertCountEqual(outputs, signature["inputs"])

  def test_composition_over_rest_matches_in_memory_in_both_formats(self):
    for request_format in ("inputs", "instances"):
      client = serving_client.ServingClient(self.url, manifest=self.manifest,
                                            request_format=request_format)
      result = client.translate("depth", "segmentation", self.depth)
      self.assertEqual(result.image.dtype, np.float32)
      self.assertAllClose(result.image, self.expected, atol=1e-5, rtol=0)
      self.assertAllEqual(result.labels, self.expected_labels)
      via_mmnet = client.translate("depth", "segmentation", self.depth, via="mmnet")
      self.assertAllClose(via_mmnet.image, self.expected, atol=1e-5, rtol=0)
      self.assertEqual(client.colorize(result.labels).shape, self.depth.shape[:3] + (3,))

  def test_multimodal_over_rest_matches_in_memory(self):
    modalities = self.model.modalities
    expected = tf.nn.softmax(self.model.translate_multimodal(
        {"rgb": modalities["rgb"].normalize(self.rgb),
         "depth": modalities["depth"].normalize(self.depth)}, "segmentation")).numpy()
    client = serving_client.ServingClient(self.url, manifest=self.manifest)
    images = {"depth": self.depth, "rgb": self.rgb}
    for via in ("modules", "mmnet"):
      result = client.translate_multimodal(images, "segmentation", via=via)
      self.assertAllClose(result.image, expected, atol=1e-5, rtol=0)

  def test_bad_requests_get_4xx_and_the_server_keeps_serving(self):
    predict = "/v1/models/depth_encoder:predict"
    good = self.depth[:1].tolist()
    self.assert_error(predict, b"{not json", 400, "JSON Parse error")
    self.assert_error(predict, b"[1, 2]", 400, "JSON object")
    self.assert_error("/v1/models/thermal_encoder:predict", {"inputs": good}, 404,
                      r"Servable not found for request: Latest\(thermal_encoder\)")
    self.assert_error("/v1/models/depth_encoder/versions/7:predict", {"inputs": good}, 404,
                      r"Specific\(depth_encoder, 7\)")
    self.assert_error("/v1/models/depth_encoder/versions/7", None, 404, "Servable not found")
    self.assert_error(predict, {"inputs": good, "instances": good}, 400, "only one of")
    self.assert_error(predict, {"signature_name": "serving_default"}, 400,
                      "Missing 'inputs' or 'instances'")
    self.assert_error(predict, {"inputs": self.rgb[:1].tolist()}, 400, "3 channels.*expects 1")
    self.assert_error(predict, {"inputs": self.depth[0].tolist()}, 400, "expected shape")
    self.assert_error(predict, {"instances": [good[0], good[0][:32]]}, 400, "rectangular")
    self.assert_error(predict, {"inputs": [[["a"]]]}, 400, "float32")
    self.assert_error(predict, {"inputs": np.zeros((1, 48, 64, 1)).tolist()}, 400,
                      "multiples of 32")
    self.assert_error(predict, {"inputs": good, "signature_name": "nope"}, 400, "nope")
    self.assert_error("/v1/models/segmentation_encoder:predict",
                      {"inputs": np.zeros((1, 64, 64)).tolist()}, 400, "integer")
    self.assert_error("/v1/models/depth_decoder:predict", {"inputs": {"latent": [0.0]}}, 400,
                      "does not match signature")
    wire = serving_client.ServingClient(self.url).encode("depth", self.depth[:1])
    wire = {k: v.tolist() for k, v in wire.items()}
    self.assert_error("/v1/models/depth_decoder:predict",
                      {"inputs": {**wire, "switches_1": np.full_like(
                          np.asarray(wire["switches_1"]), 300).tolist()}}, 400, "uint8")
    self.assert_error("/v1/models/depth_decoder:predict",
                      {"inputs": {**wire, "latent": np.asarray(wire["latent"])[..., :3].tolist()}},
                      400, "channels")
    self.assert_error("/v1/models/depth_encoder/labels/x", None, 404, "Malformed request")
    as_bytes = lambda value: {"signature_name": "serving_bytes", "inputs": {"image_bytes": value}}
    self.assert_error(predict, as_bytes([{"b64": "%%%"}]), 400, "not valid base64")
    self.assert_error(predict, as_bytes([{"b64": "AAAA"}]), 400, "TensorProto")
    self.assert_error(predict, as_bytes([1.5]), 400, "DT_STRING")
    # NaN in inputs (JSON's NaN token, which TF Serving accepts too) must not crash it.
    nan_depth = np.full((1, 64, 64, 1), np.nan).tolist()
    code, answer = self.request(predict, json.dumps({"inputs": nan_depth}).encode())
    self.assertEqual(code, 200)
    self.assertTrue(np.all(np.isfinite(answer["outputs"]["latent"])))
    nan_latent = {**wire, "latent": np.full_like(np.asarray(wire["latent"]), np.nan).tolist()}
    code, answer = self.request("/v1/models/depth_decoder:predict",
                                json.dumps({"inputs": nan_latent}).encode())
    self.assertEqual(code, 200)
    # Still serving correct answers afterwards.
    client = serving_client.ServingClient(self.url, manifest=self.manifest)
    result = client.translate("depth", "segmentation", self.depth)
    self.assertAllClose(result.image, self.expected, atol=1e-5, rtol=0)

  def test_bytes_signature_speaks_b64_over_raw_rest(self):
    from mm_tf import tensor_protos  # pylint: disable=g-import-not-at-top
    image = base64.b64encode(tensor_protos.serialize_tensor(self.depth[0])).decode()
    code, answer = self.request("/v1/models/depth_encoder:predict", {
        "signature_name": "serving_bytes", "inputs": {"image_bytes": [{"b64": image}]}})
    self.assertEqual(code, 200, answer)
    self.assertCountEqual(answer["outputs"],
                          ["latent_bytes"] + [f"switches_{k}_bytes" for k in range(1, 6)])
    # The encoder's outputs are the decoder's inputs, as they came (row format here).
    code, answer = self.request("/v1/models/segmentation_decoder:predict", {
        "signature_name": "serving_bytes",
        "instances": [{k: v[0] for k, v in answer["outputs"].items()}]})
    self.assertEqual(code, 200, answer)
    labels_b64 = answer["predictions"][0]["labels_bytes"]["b64"]
    self.assertAllEqual(tensor_protos.parse_tensor(base64.b64decode(labels_b64)),
                        self.expected_labels[0])

  def test_client_reports_server_errors(self):
    client = serving_client.ServingClient(self.url)
    with self.assertRaises(serving_client.ServingRequestError) as caught:
      client.translate("depth", "thermal", self.depth)
    self.assertEqual(caught.exception.status, 404)

  def test_registry_reads_models_config_with_container_base_paths(self):
    from mm_tf import export  # pylint: disable=g-import-not-at-top
    config = self.get_temp_dir() + "/models.config"
    with open(config, "w") as f:
      f.write(export.models_config_text(["depth_encoder"], "/models/mmnet"))
    registry = serve.ModelRegistry.from_export_dir(self.export_dir, config)
    self.assertEqual(registry.names(), ["depth_encoder"])
    self.assertEqual(registry.versions("depth_encoder"), [1])


if __name__ == "__main__":
  tf.test.main()
