"""Tests of the gRPC front end (mm_tf.serve_grpc) and ServingClient(protocol="grpc").

Both servers (REST and gRPC) run in this process on free ports of 127.0.0.1 over the same
registry and are stopped after the tests.
"""

import threading

from absl.testing import parameterized
import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from mm_tf import serve
from mm_tf import serve_grpc
from mm_tf import serving_client
from mm_tf import tensor_protos
from tests import serving_fixture


class GrpcServeTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model, cls.export_dir, _ = serving_fixture.exported()
    registry = serve.ModelRegistry.from_export_dir(cls.export_dir)
    cls.grpc_server, port = serve_grpc.make_grpc_server(registry, "127.0.0.1", 0, threads=4)
    cls.grpc_server.start()
    cls.target = f"127.0.0.1:{port}"
    cls.rest_server = serve.make_server(registry, "127.0.0.1", 0)
    cls.rest_thread = threading.Thread(target=cls.rest_server.serve_forever, daemon=True)
    cls.rest_thread.start()
    cls.url = f"http://127.0.0.1:{cls.rest_server.port}"
    cls.channel = grpc.insecure_channel(cls.target, options=serve_grpc.MESSAGE_SIZE_OPTIONS)
    cls.stub = prediction_service_pb2_grpc.PredictionServiceStub(cls.channel)
    cls.manifest = f"{cls.export_dir}/manifest.json"
    cls.depth, cls.rgb, cls.expected, cls.expected_labels = (
        serving_fixture.depth_to_segmentation_case(cls.model))

  @classmethod
  def tearDownClass(cls):
    cls.channel.close()
    cls.grpc_server.stop(grace=None).wait()
    cls.rest_server.shutdown()
    cls.rest_server.server_close()
    cls.rest_thread.join(timeout=10)
    super().tearDownClass()

  def client(self, protocol, **kwargs):
    return serving_client.ServingClient(self.target if protocol == "grpc" else self.url,
                                        manifest=self.manifest, protocol=protocol, **kwargs)

  @parameterized.named_parameters(
      ("grpc", "grpc", {}, True),
      ("rest_bytes", "rest", {"rest_encoding": "bytes"}, True),
      ("rest_bytes_rows", "rest", {"rest_encoding": "bytes", "request_format": "instances"},
       False),
      ("rest_numbers", "rest", {"rest_encoding": "numbers"}, False))
  def test_composition_matches_in_process(self, protocol, kwargs, other_pairs):
    with self.client(protocol, **kwargs) as client:
      result = client.translate("depth", "segmentation", self.depth)
      self.assertEqual(result.image.dtype, np.float32)
      self.assertAllClose(result.image, self.expected, atol=1e-5, rtol=0)
      self.assertAllEqual(result.labels, self.expected_labels)
      via_mmnet = client.translate("depth", "segmentation", self.depth, via="mmnet")
      self.assertAllClose(via_mmnet.image, self.expected, atol=1e-5, rtol=0)
      sent = [model for model, _, _ in client.transfers]
      self.assertEqual(sent, ["depth_encoder", "segmentation_decoder", "mmnet"])
      if not other_pairs:
        return
      # Other translations compose too (labels in, depth in metres out).
      labels = serving_fixture.raw_batch(self.model.modalities["segmentation"], batch=2)
      depth_out = client.translate("segmentation", "depth", labels).image
      expected_depth = self.model.modalities["depth"].denormalize(self.model.translate(
          "segmentation", "depth", self.model.modalities["segmentation"].normalize(labels)))
      self.assertAllClose(depth_out, expected_depth, atol=1e-5, rtol=0)

  @parameterized.named_parameters(("grpc", "grpc", {}), ("rest_bytes", "rest", {}))
  def test_multimodal_matches_in_process(self, protocol, kwargs):
    modalities = self.model.modalities
    images = {"depth": self.depth, "rgb": self.rgb}
    normalized = {k: modalities[k].normalize(v) for k, v in images.items()}
    expected = tf.nn.softmax(self.model.translate_multimodal(normalized, "segmentation"))
    custom = tf.nn.softmax(self.model.translate_multimodal(
        normalized, "segmentation", weights={"rgb": 0.5, "depth": 0.5}))
    with self.client(protocol, **kwargs) as client:
      for via in ("modules", "mmnet"):
        result = client.translate_multimodal(images, "segmentation", via=via)
        self.assertAllClose(result.image, expected, atol=1e-5, rtol=0)
      result = client.translate_multimodal(images, "segmentation",
                                           weights={"rgb": 0.5, "depth": 0.5})
      self.assertAllClose(result.image, custom, atol=1e-5, rtol=0)

  def test_rest_bytes_request_is_smaller_than_numbers(self):
    sizes = {}
    for encoding in ("bytes", "numbers"):
      with self.client("rest", rest_encoding=encoding) as client:
        client.translate("depth", "segmentation", self.depth)
        sizes[encoding] = dict((m, sent) for m, sent, _ in client.transfers)
    self.assertLess(sizes["bytes"]["segmentation_decoder"],
                    sizes["numbers"]["segmentation_decoder"] / 2)

  def test_status_and_metadata(self):
    with self.client("grpc") as client:
      status = client.status("depth_encoder")["model_version_status"][0]
      self.assertEqual(status["version"], "1")
      self.assertEqual(status["state"], "AVAILABLE")
      signatures = client.metadata("segmentation_decoder")["metadata"]["signature_def"][
          "signature_def"]
    self.assertCountEqual(signatures, ["serving_default", "serving_bytes"])
    self.assertCountEqual(signatures["serving_default"]["inputs"],
                          ["latent"] + [f"switches_{k}" for k in range(1, 6)])
    self.assertCountEqual(signatures["serving_bytes"]["inputs"],
                          ["latent_bytes"] + [f"switches_{k}_bytes" for k in range(1, 6)])
    self.assertEqual(signatures["serving_bytes"]["outputs"]["labels_bytes"]["dtype"],
                     "DT_STRING")

  def assert_status(self, call, request, code, pattern):
    with self.assertRaises(grpc.RpcError) as caught:
      call(request, timeout=60)
    self.assertEqual(caught.exception.code(), code, caught.exception.details())
    self.assertRegex(caught.exception.details(), pattern)

  def predict_request(self, model, inputs, signature_name="", version=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature_name
    if version is not None:
      request.model_spec.version.value = version
    for name, value in inputs.items():
      proto = (value if isinstance(value, type(request.inputs[name]))
               else tensor_protos.array_to_tensor_proto(value))
      request.inputs[name].CopyFrom(proto)
    return request

  def test_bad_requests_get_status_codes_and_the_server_keeps_serving(self):
    invalid, not_found = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    predict = self.stub.Predict
    good = self.depth[:1]
    self.assert_status(predict, self.predict_request("thermal_encoder", {"image": good}),
                       not_found, r"Servable not found for request: Latest\(thermal_encoder\)")
    self.assert_status(predict, self.predict_request("depth_encoder", {"image": good}, version=7),
                       not_found, r"Specific\(depth_encoder, 7\)")
    labelled = self.predict_request("depth_encoder", {"image": good})
    labelled.model_spec.version_label = "stable"
    self.assert_status(predict, labelled, invalid, "version label: stable")
    self.assert_status(predict, self.predict_request("depth_encoder", {"image": good}, "nope"),
                       invalid, "nope")
    self.assert_status(predict, self.predict_request("depth_encoder", {"picture": good}),
                       invalid, "does not match signature")
    self.assert_status(predict, self.predict_request("depth_encoder",
                                                     {"image": good.astype(np.float64)}),
                       invalid, "expects float32 but float64")
    self.assert_status(predict, self.predict_request("depth_encoder", {"image": self.rgb[:1]}),
                       invalid, "3 channels.*expects 1")
    self.assert_status(predict, self.predict_request("depth_encoder",
                                                     {"image": np.zeros((1, 48, 64, 1),
                                                                        np.float32)}),
                       invalid, "multiples of 32")
    broken = tensor_protos.array_to_tensor_proto(good)
    broken.tensor_content = broken.tensor_content[:-4]
    self.assert_status(predict, self.predict_request("depth_encoder", {"image": broken}),
                       invalid, "tensor_content")
    filtered = self.predict_request("depth_encoder", {"image": good})
    filtered.output_filter.append("nothing")
    self.assert_status(predict, filtered, invalid, "output tensor alias not found")
    garbage = np.array([b"not a TensorProto"], dtype=object)
    self.assert_status(predict, self.predict_request("depth_encoder", {"image_bytes": garbage},
                                                     "serving_bytes"), invalid, ".")
    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = "depth_encoder"
    self.assert_status(self.stub.GetModelMetadata, metadata, invalid, "metadata_field")
    metadata.metadata_field.append("labels")
    self.assert_status(self.stub.GetModelMetadata, metadata, invalid, "not supported")
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "thermal_encoder"
    self.assert_status(model_service_pb2_grpc.ModelServiceStub(self.channel).GetModelStatus,
                       status, not_found, "thermal_encoder")
    # The same request gets the same message over REST (one error mapping).
    with self.client("rest", rest_encoding="numbers") as rest:
      with self.assertRaises(serving_client.ServingRequestError) as caught:
        rest.predict("depth_encoder", {"image": self.rgb[:1]})
    self.assertEqual(caught.exception.status, 400)
    self.assertRegex(caught.exception.message, "3 channels.*expects 1")
    # Output filter and typed-field (float_val) inputs, as other gRPC clients send them.
    request = self.predict_request("depth_encoder", {"image": tf.make_tensor_proto(
        good.tolist(), dtype=tf.float32)})
    request.output_filter.append("latent")
    response = predict(request, timeout=60)
    self.assertEqual(list(response.outputs), ["latent"])
    self.assertEqual(response.model_spec.version.value, 1)
    # Still serving correct answers afterwards.
    with self.client("grpc") as client:
      result = client.translate("depth", "segmentation", self.depth)
      self.assertAllClose(result.image, self.expected, atol=1e-5, rtol=0)
      with self.assertRaises(serving_client.ServingRequestError) as caught:
        client.translate("depth", "thermal", self.depth)
      self.assertEqual(caught.exception.code, "NOT_FOUND")


if __name__ == "__main__":
  tf.test.main()
