"""A local server that speaks TF Serving's REST and gRPC APIs for exported mm_tf models.

`tensorflow_model_server` cannot be installed on every machine (NOTES.md 5), so
`python -m mm_tf.serve --export_dir export/serving --port 8501 --grpc_port 8500` loads the
SavedModels of `mm_tf.export` with TensorFlow and answers the same requests. gRPC
(`PredictionService.Predict` / `GetModelMetadata`, `ModelService.GetModelStatus`, TF
Serving's own stubs) is in `mm_tf.serve_grpc`; REST, with the same JSON as TF Serving:

  GET  /v1/models/NAME[/versions/N]              model version status
  GET  /v1/models/NAME[/versions/N]/metadata     signature defs
  POST /v1/models/NAME[/versions/N]:predict      {"instances": [...]} (row format) or
                                                 {"inputs": ...} (columnar format), with an
                                                 optional "signature_name"

DT_STRING tensors travel as TF Serving's REST API documents: an element `{"b64": "..."}`
is base64-decoded on input, and outputs whose names end in `_bytes` are written as
`{"b64": "..."}` (the `serving_bytes` signatures of `mm_tf.export`). Request bodies are
parsed into numpy without Python lists of floats and responses written from numpy
(`mm_tf.json_tensors`).

Errors: every failure becomes a `ServingError` with a canonical status code in one place
(`as_serving_error`); REST answers `{"error": "..."}` with the HTTP status TF Serving
gives that code (INVALID_ARGUMENT 400, NOT_FOUND 404, INTERNAL 500, ...), gRPC aborts
with the code itself and the same message. INVALID_ARGUMENT: malformed JSON, both or
neither of instances/inputs, unknown signature or input, wrong dtype, shape or channel
count, undecodable bytes, a failing in-graph check. NOT_FOUND: unknown model, version or
URL. INTERNAL: anything unexpected. A bad request never stops the server.

Models come from `<export_dir>/models.config` (parsed with TF Serving's protos; a model
is looked up in `<export_dir>/<name>` when its `base_path` is a container path such as
`/models/...`) or, without it, from every sub-directory holding numbered SavedModels. As in
TF Serving's default version policy, only the latest version of each model is served
unless `--all_versions` is given. HTTP is Flask/Werkzeug (threaded).
"""

import base64
import binascii
import logging
import os
import re
import threading
from typing import Dict, List, Mapping, Optional, Sequence

from absl import flags
import flask
from google.protobuf import json_format
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from werkzeug import exceptions as werkzeug_exceptions

from mm_tf import errors
from mm_tf import export as mm_export
from mm_tf import json_tensors

PREDICT_METHOD = "tensorflow/serving/predict"
_INT_RANGES = {tf.uint8: (0, 255), tf.int8: (-128, 127), tf.int16: (-2**15, 2**15 - 1),
               tf.uint16: (0, 2**16 - 1), tf.int32: (-2**31, 2**31 - 1),
               tf.int64: (-2**63, 2**63 - 1)}


# HTTP status of each canonical status code, as TF Serving's REST handler maps them.
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400,
    "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500,
    "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}


class ServingError(Exception):
  """A request failure with its canonical status code (gRPC's and TF's code names).

  Attributes:
    code: "INVALID_ARGUMENT", "NOT_FOUND", "INTERNAL", ... (a key of `HTTP_STATUS`).
    status: The HTTP status REST answers with (`HTTP_STATUS[code]`).
  """

  def __init__(self, message, code="INVALID_ARGUMENT"):
    if code not in HTTP_STATUS:
      raise ValueError(f"Unknown status code {code!r}; use one of {sorted(HTTP_STATUS)}.")
    super().__init__(message)
    self.code = code

  @property
  def status(self):
    return HTTP_STATUS[self.code]


def _graph_error_message(error):
  """The informative lines of a TF runtime error (drops stack-trace boilerplate)."""
  message = getattr(error, "message", None) or str(error)
  noise = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "[[{{")
  lines = [l.strip() for l in message.splitlines()
           if l.strip() and not l.strip().startswith(noise)]
  return " ".join(lines) or repr(error)


def as_serving_error(error: BaseException) -> ServingError:
  """The one mapping from an exception to what REST and gRPC answer.

  A `ServingError` is kept; a TensorFlow runtime error keeps its own canonical code (an
  in-graph check of a request is INVALID_ARGUMENT) with the stack-trace noise dropped;
  anything else is a server bug: logged, INTERNAL.
  """
  if isinstance(error, ServingError):
    return error
  if isinstance(error, tf.errors.OpError):
    code = _OP_ERROR_CODES.get(error.error_code, "UNKNOWN")
    return ServingError(_graph_error_message(error), code)
  logging.error("Unexpected error while serving a request.", exc_info=error)
  return ServingError(f"Internal error: {type(error).__name__}: {error}", "INTERNAL")


_OP_ERROR_CODES = {getattr(tf.errors, name): name for name in HTTP_STATUS
                   if name != "OK" and isinstance(getattr(tf.errors, name, None), int)}


# ---------------------------------------------------------------- loaded models
class LoadedVersion:
  """One loaded SavedModel version: its signatures and their SignatureDef protos."""

  def __init__(self, name, version, path):
    self.name = name
    self.version = int(version)
    self.path = path
    self._loaded = tf.saved_model.load(path)
    self.signatures = dict(self._loaded.signatures)
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
      saved_model.ParseFromString(f.read())
    self.signature_defs = {
        key: sig for key, sig in saved_model.meta_graphs[0].signature_def.items()
        if key in self.signatures}
    # The input specs of each signature (keyword arguments of the concrete function).
    self.input_specs = {key: dict(fn.structured_input_signature[1])
                        for key, fn in self.signatures.items()}

  def signature_def_map(self):
    """The `SignatureDefMap` proto that GetModelMetadata returns (REST and gRPC)."""
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in self.signature_defs.items():
      signature_map.signature_def[key].CopyFrom(sig)
    return signature_map

  def metadata(self):
    """TF Serving's REST GetModelMetadata response body for this version."""
    return {
        "model_spec": {"name": self.name, "signature_name": "", "version": str(self.version)},
        "metadata": {"signature_def": json_format.MessageToDict(
            self.signature_def_map(), preserving_proto_field_name=True)},
    }


class ModelRegistry:
  """Loaded models by name and version (thread-safe reads)."""

  def __init__(self):
    self._models: Dict[str, Dict[int, LoadedVersion]] = {}
    self._lock = threading.Lock()

  @classmethod
  def from_export_dir(cls, export_dir, model_config_file=None, all_versions=False):
    """Loads the models of `export_dir` (see module docstring for how they are found)."""
    registry = cls()
    export_dir = os.path.abspath(export_dir)
    config_file = model_config_file or os.path.join(export_dir, mm_export.MODELS_CONFIG_FILE)
    if os.path.isfile(config_file):
      with open(config_file) as f:
        entries = mm_export.parse_models_config(f.read())
      sources = []
      for name, base_path in entries:
        # A base_path written for a container (/models/...) is found next to the config.
        sources.append((name, base_path if os.path.isdir(base_path)
                        else os.path.join(export_dir, name)))
    elif os.path.isdir(export_dir):
      sources = [(name, os.path.join(export_dir, name)) for name in sorted(os.listdir(export_dir))
                 if mm_export.versions(os.path.join(export_dir, name))]
    else:
      raise errors.MissingInputError(f"Export directory {export_dir!r} does not exist; export "
                                     "a model with `python -m mm_tf.export` first.")
    for name, base_path in sources:
      found = mm_export.versions(base_path)
      if not found:
        logging.warning("Model %s: no version with a saved_model.pb under %s.", name, base_path)
        continue
      for version in (found if all_versions else found[-1:]):
        registry.add(LoadedVersion(name, version, os.path.join(base_path, str(version))))
    if not registry.names():
      raise errors.MissingInputError(f"No SavedModel versions found under {export_dir!r}: "
                                     "give the --export_dir of `python -m mm_tf.export`.")
    return registry

  def add(self, loaded: LoadedVersion):
    with self._lock:
      self._models.setdefault(loaded.name, {})[loaded.version] = loaded

  def names(self) -> List[str]:
    return sorted(self._models)

  def versions(self, name) -> List[int]:
    return sorted(self._models.get(name, {}))

  def get(self, name, version: Optional[int] = None) -> LoadedVersion:
    """The requested version (latest if None); NOT_FOUND worded as TF Serving words it."""
    with self._lock:
      loaded = self._models.get(name)
      if version is None:
        if not loaded:
          raise ServingError(f"Servable not found for request: Latest({name})",
                             "NOT_FOUND")
        return loaded[max(loaded)]
      if not loaded or version not in loaded:
        raise ServingError(f"Servable not found for request: Specific({name}, {version})",
                           "NOT_FOUND")
      return loaded[version]


# ---------------------------------------------------------------- requests (REST and gRPC)
def check_signature(loaded: LoadedVersion, signature_name: Optional[str]) -> str:
  """The signature to run (`serving_default` if empty); INVALID_ARGUMENT if absent."""
  signature_name = signature_name or mm_export.SERVING_SIGNATURE
  if not isinstance(signature_name, str):
    raise ServingError("'signature_name' must be a string.")
  if signature_name not in loaded.signatures:
    raise ServingError(f"Serving signature name: \"{signature_name}\" not found in signature "
                       f"def (model {loaded.name} has: {', '.join(sorted(loaded.signatures))}).")
  return signature_name


def _check_input_names(specs, names):
  if set(names) != set(specs):
    raise ServingError(f"input size does not match signature: expected the inputs "
                       f"{sorted(specs)}, got {sorted(names)}.")


def _check_shape(array, spec, name):
  expected = spec.shape
  if expected.rank is not None and (array.ndim != expected.rank or not all(
      e is None or e == a for e, a in zip(expected.as_list(), array.shape))):
    shape = [-1 if d is None else d for d in expected.as_list()]
    if (array.ndim == expected.rank and expected[-1] is not None
        and array.shape[-1] != expected[-1]):
      raise ServingError(f"input {name!r} has {array.shape[-1]} channels; this signature "
                         f"expects {expected[-1]} (shape {shape}, -1 = any).")
    raise ServingError(f"input {name!r}: expected shape {shape} (-1 = any; batch first), got "
                       f"{list(array.shape)}.")


def _numpy_dtype(spec):
  return np.dtype(object) if spec.dtype == tf.string else np.dtype(spec.dtype.as_numpy_dtype)


def run_predict(loaded: LoadedVersion, signature_name: str, arrays: Mapping[str, np.ndarray],
                output_filter: Sequence[str] = ()) -> Dict[str, np.ndarray]:
  """Checks typed inputs against a signature and runs it: the core of both front ends.

  Args:
    loaded: The model version.
    signature_name: A signature of it (from `check_signature`).
    arrays: `{input name: numpy array}`, already of the signature's dtypes (DT_STRING as
      an object array of bytes).
    output_filter: Output names to return (all if empty), as in gRPC's PredictRequest.

  Returns:
    `{output name: numpy array}`.

  Raises:
    ServingError: INVALID_ARGUMENT for any mismatch or failing in-graph check.
  """
  specs = loaded.input_specs[signature_name]
  _check_input_names(specs, arrays)
  for name, array in arrays.items():
    expected = _numpy_dtype(specs[name])
    if array.dtype != expected:
      raise ServingError(f"input {name!r}: expects {specs[name].dtype.name} but "
                         f"{array.dtype.name} is provided.")
    _check_shape(array, specs[name], name)
  batches = {array.shape[0] for array in arrays.values() if array.ndim}
  if len(batches) > 1:
    raise ServingError(f"All inputs must have the same batch size, got {sorted(batches)}.")
  function = loaded.signatures[signature_name]
  output_names = list(function.structured_outputs)
  unknown = sorted(set(output_filter) - set(output_names))
  if unknown:
    raise ServingError(f"output tensor alias not found in signature: {', '.join(unknown)}. "
                       f"Outputs expected to be in the set {sorted(output_names)}.")
  try:
    outputs = function(**{name: tf.constant(a) for name, a in arrays.items()})
  except (ValueError, TypeError) as e:  # Arguments the concrete function rejects.
    raise ServingError(_graph_error_message(e)) from e
  wanted = set(output_filter) or set(output_names)
  return {name: tensor.numpy() for name, tensor in outputs.items() if name in wanted}


# ---------------------------------------------------------------- JSON <-> tensors (REST)
def _string_leaves(value, where):
  """Nested JSON strings / {"b64": ...} -> (flat list of bytes, shape)."""
  if isinstance(value, list):
    parts = [_string_leaves(v, where) for v in value]
    shapes = {tuple(shape) for _, shape in parts}
    if len(shapes) > 1:
      raise ServingError(f"{where}: not a rectangular tensor (ragged lists).")
    inner = list(shapes.pop()) if shapes else []
    return [leaf for leaves, _ in parts for leaf in leaves], [len(value)] + inner
  if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
    try:
      return [base64.b64decode(value["b64"], validate=True)], []
    except (binascii.Error, ValueError) as e:
      raise ServingError(f"{where}: the \"b64\" value is not valid base64 ({e}).") from e
  if isinstance(value, str):
    return [value.encode("utf-8")], []
  raise ServingError(f"{where}: expected strings or {{\"b64\": \"<base64>\"}} objects (DT_STRING), "
                     f"got a JSON {type(value).__name__}.")


def _to_array(value, spec, where):
  """JSON value -> numpy array of the spec's dtype, with TF-Serving-like messages."""
  dtype = spec.dtype
  if dtype == tf.string:
    leaves, shape = _string_leaves(value, where)
    array = np.empty(len(leaves), dtype=object)
    array[:] = leaves
    return array.reshape(shape)
  try:
    # Large number arrays arrive as numpy already (json_tensors.loads); rows of them stack.
    array = value if isinstance(value, np.ndarray) else np.array(value)
  except (ValueError, TypeError) as e:  # Ragged lists.
    raise ServingError(f"{where}: not a rectangular tensor ({e}).") from e
  if array.dtype == object:
    raise ServingError(f"{where}: not a rectangular tensor of numbers (ragged lists?).")
  if array.size and array.dtype.kind not in "iuf":
    raise ServingError(f"{where}: expected {dtype.name} numbers, got JSON values of numpy kind "
                       f"{array.dtype.name!r}.")
  if dtype.is_integer:
    if array.size and array.dtype.kind == "f":
      raise ServingError(f"{where}: expected integer values ({dtype.name}), got floats.")
    low, high = _INT_RANGES.get(dtype, (None, None))
    if array.size and low is not None and (array.min() < low or array.max() > high):
      raise ServingError(f"{where}: values outside the range of {dtype.name} "
                         f"[{low}, {high}].")
  return array.astype(dtype.as_numpy_dtype)


def parse_predict_request(body, loaded: LoadedVersion):
  """Validates a predict body; returns (signature_name, {input: array}, row_format)."""
  if not isinstance(body, dict):
    raise ServingError("Expected a JSON object with 'instances' or 'inputs' key.")
  signature_name = check_signature(loaded, body.get("signature_name"))
  specs = loaded.input_specs[signature_name]
  has_instances, has_inputs = "instances" in body, "inputs" in body
  if has_instances and has_inputs:
    raise ServingError("Not formatted correctly expecting only one of 'inputs' or 'instances' "
                       "keys exists")
  if not has_instances and not has_inputs:
    raise ServingError("Missing 'inputs' or 'instances' key")
  arrays = {}
  if has_instances:
    instances = body["instances"]
    if not isinstance(instances, (list, np.ndarray)) or not len(instances):
      raise ServingError("'instances' must be a non-empty list (one entry per example).")
    if isinstance(instances, list) and all(isinstance(i, dict) for i in instances):
      columns = {}
      for index, instance in enumerate(instances):
        if set(instance) != set(specs):
          raise ServingError(f"instance {index}: expected the inputs {sorted(specs)}, got "
                             f"{sorted(instance)}.")
        for name, value in instance.items():
          columns.setdefault(name, []).append(value)
    elif len(specs) == 1 and (isinstance(instances, np.ndarray)
                              or not any(isinstance(i, dict) for i in instances)):
      columns = {next(iter(specs)): instances}
    else:
      raise ServingError(f"Each instance must be an object with the inputs {sorted(specs)} "
                         "(a bare value is only allowed for single-input signatures).")
    for name, value in columns.items():
      arrays[name] = _to_array(value, specs[name], f"input {name!r} of 'instances'")
  else:
    inputs = body["inputs"]
    if isinstance(inputs, dict):
      _check_input_names(specs, inputs)
    elif len(specs) == 1:
      inputs = {next(iter(specs)): inputs}
    else:
      raise ServingError(f"'inputs' must be an object with the inputs {sorted(specs)}.")
    for name, value in inputs.items():
      arrays[name] = _to_array(value, specs[name], f"input {name!r}")
  return signature_name, arrays, has_instances


def _json_output(name, array):
  """An output as JSON content: numbers stay numpy (written by json_tensors.dumps)."""
  if array.dtype != object:
    return array
  if name.endswith(mm_export.BYTES_SUFFIX):  # TF Serving's rule for binary outputs.
    values = [{"b64": base64.b64encode(b).decode("ascii")} for b in array.reshape(-1)]
  else:
    values = [b.decode("utf-8", "replace") for b in array.reshape(-1)]
  flat = np.empty(array.size, dtype=object)
  flat[:] = values
  return flat.reshape(array.shape).tolist()


def predict(loaded: LoadedVersion, body):
  """Runs a REST predict request body; returns the response body (json_tensors-able)."""
  signature_name, arrays, row_format = parse_predict_request(body, loaded)
  outputs = {name: _json_output(name, value)
             for name, value in run_predict(loaded, signature_name, arrays).items()}
  if row_format:
    if len(outputs) == 1:
      return {"predictions": next(iter(outputs.values()))}
    names = sorted(outputs)
    batch = len(outputs[names[0]])
    return {"predictions": [{name: outputs[name][i] for name in names} for i in range(batch)]}
  if len(outputs) == 1:
    return {"outputs": next(iter(outputs.values()))}
  return {"outputs": outputs}


def version_status(registry: ModelRegistry, name, version=None):
  registry.get(name, version)  # NOT_FOUND if absent.
  versions = [version] if version is not None else registry.versions(name)
  return {"model_version_status": [
      {"version": str(v), "state": "AVAILABLE",
       "status": {"error_code": "OK", "error_message": ""}} for v in reversed(versions)]}


# ---------------------------------------------------------------- HTTP
_MODEL_PATH = re.compile(r"^(?P<name>[^/:]+)(/versions/(?P<version>[0-9]+))?"
                         r"(?P<suffix>/metadata|:predict)?$")


def _json_response(body, status=200):
  # NaN/Infinity are written literally, as TF Serving does; outputs may contain them.
  return flask.Response(json_tensors.dumps(body), status=status, mimetype="application/json")


def create_app(registry: ModelRegistry) -> flask.Flask:
  """The Flask app serving `registry` with TF Serving's REST routes."""
  flask_app = flask.Flask("mm_tf.serve")

  def route(path, method):
    match = _MODEL_PATH.match(path)
    if not match:
      raise ServingError(f"Malformed request: {method} /v1/models/{path}", "NOT_FOUND")
    name, suffix = match.group("name"), match.group("suffix")
    version = int(match.group("version")) if match.group("version") else None
    if method == "GET" and suffix is None:
      return version_status(registry, name, version)
    if method == "GET" and suffix == "/metadata":
      return registry.get(name, version).metadata()
    if method == "POST" and suffix == ":predict":
      loaded = registry.get(name, version)
      try:
        body = json_tensors.loads(flask.request.get_data(cache=False))
      except ValueError as e:  # json, orjson and UnicodeDecodeError are ValueErrors.
        raise ServingError(f"JSON Parse error: {e}") from e
      return predict(loaded, body)
    raise ServingError(f"Malformed request: {method} /v1/models/{path}", "NOT_FOUND")

  from mm_tf.demo import page as demo_page  # pylint: disable=g-import-not-at-top
  demo_page.register(flask_app, registry)  # The demo page at / (docs/serving.md).

  @flask_app.route("/v1/models/<path:path>", methods=["GET", "POST"])
  def models(path):
    return _json_response(route(path, flask.request.method))

  @flask_app.errorhandler(Exception)
  def error_response(error):
    if isinstance(error, werkzeug_exceptions.HTTPException):
      # Routing (unknown URL 404, wrong method 405) and Werkzeug's own 4xx checks.
      return _json_response({"error": f"Malformed request: {flask.request.method} "
                                      f"{flask.request.path}"}, error.code or 500)
    error = as_serving_error(error)
    return _json_response({"error": str(error)}, error.status)

  return flask_app


def make_server(registry, host="127.0.0.1", port=8501):
  """A threaded Werkzeug server (port 0 = any free port; read it from `server.port`)."""
  from werkzeug import serving  # pylint: disable=g-import-not-at-top
  return serving.make_server(host, port, create_app(registry), threaded=True)


# ---------------------------------------------------------------- CLI
FLAGS = flags.FLAGS


def _define_flags():
  flags.DEFINE_string("export_dir", "export/serving", "Root written by `mm_tf.export`.")
  flags.DEFINE_string("model_config_file", None,
                      "TF Serving models.config (default: <export_dir>/models.config if present).")
  flags.DEFINE_string("host", "127.0.0.1", "Address to bind (0.0.0.0 for every interface).")
  flags.DEFINE_integer("port", 8501, "REST port (TF Serving's default is 8501; 0 = any free).")
  flags.DEFINE_integer("grpc_port", 8500, "gRPC port (TF Serving's default is 8500; 0 = any "
                       "free; -1 = no gRPC).")
  flags.DEFINE_integer("grpc_threads", 16, "Threads answering gRPC requests.")
  flags.DEFINE_bool("all_versions", False, "Serve every version, not only the latest.")


def main(argv):
  del argv
  registry = ModelRegistry.from_export_dir(FLAGS.export_dir, FLAGS.model_config_file,
                                           FLAGS.all_versions)
  server = make_server(registry, FLAGS.host, FLAGS.port)
  grpc_server = None
  if FLAGS.grpc_port >= 0:
    from mm_tf import serve_grpc  # pylint: disable=g-import-not-at-top
    grpc_server, grpc_port = serve_grpc.make_grpc_server(registry, FLAGS.host, FLAGS.grpc_port,
                                                         FLAGS.grpc_threads)
    grpc_server.start()
  for name in registry.names():
    print(f"model {name}: versions {registry.versions(name)}")
  # Printed (and flushed) so scripts that pass port 0 can read the ports.
  if grpc_server is not None:
    print(f"Serving gRPC on {FLAGS.host}:{grpc_port}", flush=True)
  print(f"Serving on http://{FLAGS.host}:{server.port}/v1/models/<name>", flush=True)
  print(f"Demo page: http://{FLAGS.host}:{server.port}/", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
    if grpc_server is not None:
      grpc_server.stop(grace=None)


if __name__ == "__main__":
  _define_flags()
  errors.run_cli(main, "mm_tf.serve")
