"""TF Serving's gRPC API for `mm_tf.serve`: PredictionService and ModelService.

Implemented from the stubs that `tensorflow-serving-api` ships, so any TF Serving gRPC
client talks to it unchanged:

  * `PredictionService.Predict`: `model_spec` (name, optional `version`,
    `signature_name`, empty = serving_default), `inputs` as TensorProtos (any encoding;
    `tensor_content` is read with one copy), optional `output_filter`. Outputs are
    TensorProtos with binary `tensor_content`.
  * `PredictionService.GetModelMetadata`: `metadata_field: "signature_def"`.
  * `ModelService.GetModelStatus`.

Requests are checked and run by `mm_tf.serve.run_predict`, and every failure goes through
`mm_tf.serve.as_serving_error`, so a request gets the same status code and message over
gRPC as over REST (INVALID_ARGUMENT, NOT_FOUND, ...). A bad request never stops the
server. Classify, Regress, MultiInference and HandleReloadConfigRequest answer
UNIMPLEMENTED (the stubs' default).

Messages are unlimited in size, as in TF Serving (a 256x256 batch of 8 class-probability
maps is 10 MiB, over gRPC's 4 MiB default).
"""

from concurrent import futures
from typing import Optional

import grpc
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from mm_tf import serve
from mm_tf import tensor_protos

SIGNATURE_DEF_FIELD = "signature_def"
# -1 = no limit (gRPC's defaults are 4 MiB received, unlimited sent).
MESSAGE_SIZE_OPTIONS = [("grpc.max_send_message_length", -1),
                        ("grpc.max_receive_message_length", -1)]


def _version_of(model_spec) -> Optional[int]:
  """The version a ModelSpec asks for (None = latest); labels are not served here."""
  choice = model_spec.WhichOneof("version_choice")
  if choice == "version":
    return int(model_spec.version.value)
  if choice == "version_label":
    raise serve.ServingError(
        f"Unrecognized servable version label: {model_spec.version_label} (mm_tf.serve "
        "serves version numbers only; set model_spec.version instead).")
  return None


def _answer(context, handler, request):
  """Runs `handler(request)`; any failure aborts the call with its status code."""
  try:
    return handler(request)
  except Exception as e:  # pylint: disable=broad-except  # One bad request must not stop us.
    error = serve.as_serving_error(e)
  context.abort(grpc.StatusCode[error.code], str(error))


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
  """Predict and GetModelMetadata over the models of a `serve.ModelRegistry`."""

  def __init__(self, registry: serve.ModelRegistry):
    self.registry = registry

  def Predict(self, request, context):  # pylint: disable=invalid-name  # gRPC's name.
    return _answer(context, self._predict, request)

  def GetModelMetadata(self, request, context):  # pylint: disable=invalid-name
    return _answer(context, self._metadata, request)

  def _predict(self, request):
    spec = request.model_spec
    loaded = self.registry.get(spec.name, _version_of(spec))
    signature_name = serve.check_signature(loaded, spec.signature_name)
    arrays = {}
    for name, proto in request.inputs.items():
      try:
        arrays[name] = tensor_protos.tensor_proto_to_array(proto)
      except ValueError as e:
        raise serve.ServingError(f"input {name!r}: {e}") from e
    outputs = serve.run_predict(loaded, signature_name, arrays, list(request.output_filter))
    response = predict_pb2.PredictResponse()
    response.model_spec.name = loaded.name
    response.model_spec.version.value = loaded.version
    response.model_spec.signature_name = signature_name
    for name, array in outputs.items():
      response.outputs[name].CopyFrom(tensor_protos.array_to_tensor_proto(array))
    return response

  def _metadata(self, request):
    spec = request.model_spec
    loaded = self.registry.get(spec.name, _version_of(spec))
    fields = list(request.metadata_field)
    if not fields:
      raise serve.ServingError("GetModelMetadataRequest must specify at least one "
                               f"metadata_field (supported: {SIGNATURE_DEF_FIELD!r}).")
    unsupported = [f for f in fields if f != SIGNATURE_DEF_FIELD]
    if unsupported:
      raise serve.ServingError(f"Metadata field {unsupported[0]} is not supported (supported: "
                               f"{SIGNATURE_DEF_FIELD!r}).")
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = loaded.name
    response.model_spec.version.value = loaded.version
    response.metadata[SIGNATURE_DEF_FIELD].Pack(loaded.signature_def_map())
    return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
  """GetModelStatus over the models of a `serve.ModelRegistry`."""

  def __init__(self, registry: serve.ModelRegistry):
    self.registry = registry

  def GetModelStatus(self, request, context):  # pylint: disable=invalid-name
    return _answer(context, self._status, request)

  def _status(self, request):
    spec = request.model_spec
    version = _version_of(spec)
    self.registry.get(spec.name, version)  # NOT_FOUND if absent.
    response = get_model_status_pb2.GetModelStatusResponse()
    for v in reversed([version] if version is not None else self.registry.versions(spec.name)):
      status = response.model_version_status.add()
      status.version = v
      status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
      status.status.error_code = 0  # tensorflow.error.OK
    return response


def make_grpc_server(registry: serve.ModelRegistry, host="127.0.0.1", port=8500,
                     threads=16):
  """A gRPC server with both services, bound but not started.

  Args:
    registry: The loaded models.
    host: Address to bind.
    port: Port (0 = any free port).
    threads: Worker threads (concurrent requests).

  Returns:
    `(server, port)`: call `server.start()`, later `server.stop(grace)`.

  Raises:
    RuntimeError: the port cannot be bound.
  """
  server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads,
                                                  thread_name_prefix="mm_tf_grpc"),
                       options=MESSAGE_SIZE_OPTIONS)
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
      PredictionServicer(registry), server)
  model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(registry), server)
  try:
    bound = server.add_insecure_port(f"{host}:{port}")
  except RuntimeError:
    bound = 0
  if not bound:
    raise RuntimeError(f"Cannot bind gRPC to {host}:{port} (in use?); pass another "
                       "--grpc_port (0 = any free port, -1 = no gRPC).")
  return server, bound
