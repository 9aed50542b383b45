"""A local server that speaks TF Serving's REST API for exported mm_tf SavedModels.

`tensorflow_model_server` cannot be installed on every machine (NOTES.md 5), so
`python -m mm_tf.serve --export_dir export/serving --port 8501` loads the SavedModels of
`mm_tf.export` with TensorFlow and answers the same requests, with the same JSON:

  GET  /v1/models/NAME[/versions/N]              model version status
  GET  /v1/models/NAME[/versions/N]/metadata     signature defs
  POST /v1/models/NAME[/versions/N]:predict      {"instances": [...]} (row format) or
                                                 {"inputs": ...} (columnar format), with an
                                                 optional "signature_name"

Errors come back as `{"error": "..."}` with TF Serving's HTTP codes: 400 for a bad request
(malformed JSON, both or neither of instances/inputs, unknown signature or input, wrong
dtype, shape or channel count, a failing in-graph check), 404 for an unknown model,
version or URL, 500 for anything unexpected. A bad request never stops the server.

Models come from `<export_dir>/models.config` (parsed with TF Serving's protos; a model
is looked up in `<export_dir>/<name>` when its `base_path` is a container path such as
`/models/...`) or, without it, from every sub-directory holding numbered SavedModels. As in
TF Serving's default version policy, only the latest version of each model is served
unless `--all_versions` is given. HTTP is Flask/Werkzeug (threaded).
"""

import json
import logging
import os
import re
import threading
from typing import Dict, List, Optional

from absl import flags
import flask
from google.protobuf import json_format
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from mm_tf import errors
from mm_tf import export as mm_export

PREDICT_METHOD = "tensorflow/serving/predict"
_INT_RANGES = {tf.uint8: (0, 255), tf.int8: (-128, 127), tf.int16: (-2**15, 2**15 - 1),
               tf.uint16: (0, 2**16 - 1), tf.int32: (-2**31, 2**31 - 1),
               tf.int64: (-2**63, 2**63 - 1)}


class ServingError(Exception):
  """An error with the HTTP code TF Serving gives it (400 invalid argument, 404 not found)."""

  def __init__(self, message, status=400):
    super().__init__(message)
    self.status = status


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

  def metadata(self):
    """TF Serving's GetModelMetadata response body for this version."""
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in self.signature_defs.items():
      signature_map.signature_def[key].CopyFrom(sig)
    return {
        "model_spec": {"name": self.name, "signature_name": "", "version": str(self.version)},
        "metadata": {"signature_def": json_format.MessageToDict(
            signature_map, preserving_proto_field_name=True)},
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
    """The requested version (latest if None); ServingError 404 as TF Serving words it."""
    with self._lock:
      loaded = self._models.get(name)
      if version is None:
        if not loaded:
          raise ServingError(f"Servable not found for request: Latest({name})", 404)
        return loaded[max(loaded)]
      if not loaded or version not in loaded:
        raise ServingError(f"Servable not found for request: Specific({name}, {version})", 404)
      return loaded[version]


# ---------------------------------------------------------------- JSON <-> tensors
def _to_array(value, spec, where):
  """JSON value -> numpy array of the spec's dtype, with TF-Serving-like messages."""
  dtype = spec.dtype
  try:
    array = np.array(value)
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


def parse_predict_request(body, loaded: LoadedVersion):
  """Validates a predict body; returns (signature_name, {input: array}, row_format)."""
  if not isinstance(body, dict):
    raise ServingError("Expected a JSON object with 'instances' or 'inputs' key.")
  signature_name = body.get("signature_name", mm_export.SERVING_SIGNATURE)
  if not isinstance(signature_name, str):
    raise ServingError("'signature_name' must be a string.")
  if signature_name not in loaded.signatures:
    raise ServingError(f"Serving signature name: \"{signature_name}\" not found in signature "
                       f"def (model {loaded.name} has: {', '.join(sorted(loaded.signatures))}).")
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
    if not isinstance(instances, list) or not instances:
      raise ServingError("'instances' must be a non-empty list (one entry per example).")
    if all(isinstance(i, dict) for i in instances):
      columns = {}
      for index, instance in enumerate(instances):
        if set(instance) != set(specs):
          raise ServingError(f"instance {index}: expected the inputs {sorted(specs)}, got "
                             f"{sorted(instance)}.")
        for name, value in instance.items():
          columns.setdefault(name, []).append(value)
    elif len(specs) == 1 and not any(isinstance(i, dict) for i in instances):
      columns = {next(iter(specs)): instances}
    else:
      raise ServingError(f"Each instance must be an object with the inputs {sorted(specs)} "
                         "(a bare value is only allowed for single-input signatures).")
    for name, value in columns.items():
      arrays[name] = _to_array(value, specs[name], f"input {name!r} of 'instances'")
  else:
    inputs = body["inputs"]
    if isinstance(inputs, dict):
      if set(inputs) != set(specs):
        raise ServingError(f"input size does not match signature: expected the inputs "
                           f"{sorted(specs)}, got {sorted(inputs)}.")
    elif len(specs) == 1:
      inputs = {next(iter(specs)): inputs}
    else:
      raise ServingError(f"'inputs' must be an object with the inputs {sorted(specs)}.")
    for name, value in inputs.items():
      arrays[name] = _to_array(value, specs[name], f"input {name!r}")
  for name, array in arrays.items():
    _check_shape(array, specs[name], name)
  batches = {array.shape[0] for array in arrays.values() if array.ndim}
  if len(batches) > 1:
    raise ServingError(f"All inputs must have the same batch size, got {sorted(batches)}.")
  return signature_name, arrays, has_instances


def _graph_error_message(error):
  """The informative lines of a TF runtime error (drops stack-trace boilerplate)."""
  message = getattr(error, "message", None) or str(error)
  noise = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "[[{{")
  lines = [l.strip() for l in message.splitlines()
           if l.strip() and not l.strip().startswith(noise)]
  return " ".join(lines) or repr(error)


def predict(loaded: LoadedVersion, body):
  """Runs a predict request body; returns the response body (a JSON-able dict)."""
  signature_name, arrays, row_format = parse_predict_request(body, loaded)
  function = loaded.signatures[signature_name]
  try:
    outputs = function(**{name: tf.constant(a) for name, a in arrays.items()})
  except (tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
    raise ServingError(_graph_error_message(e)) from e
  outputs = {name: tensor.numpy() for name, tensor in outputs.items()}
  if row_format:
    if len(outputs) == 1:
      return {"predictions": next(iter(outputs.values())).tolist()}
    names = sorted(outputs)
    lists = {name: outputs[name].tolist() for name in names}
    batch = len(lists[names[0]])
    return {"predictions": [{name: lists[name][i] for name in names} for i in range(batch)]}
  if len(outputs) == 1:
    return {"outputs": next(iter(outputs.values())).tolist()}
  return {"outputs": {name: value.tolist() for name, value in outputs.items()}}


def version_status(registry: ModelRegistry, name, version=None):
  registry.get(name, version)  # 404 if absent.
  versions = [version] if version is not None else registry.versions(name)
  return {"model_version_status": [
      {"version": str(v), "state": "AVAILABLE",
       "status": {"error_code": "OK", "error_message": ""}} for v in reversed(versions)]}


# ---------------------------------------------------------------- HTTP
_MODEL_PATH = re.compile(r"^(?P<name>[^/:]+)(/versions/(?P<version>[0-9]+))?"
                         r"(?P<suffix>/metadata|:predict)?$")


def _json_response(body, status=200):
  # allow_nan: TF Serving writes NaN/Infinity literally too; outputs may contain them.
  return flask.Response(json.dumps(body, separators=(",", ":")), status=status,
                        mimetype="application/json")


def create_app(registry: ModelRegistry) -> flask.Flask:
  """The Flask app serving `registry` with TF Serving's REST routes."""
  flask_app = flask.Flask("mm_tf.serve")

  def route(path, method):
    match = _MODEL_PATH.match(path)
    if not match:
      raise ServingError(f"Malformed request: {method} /v1/models/{path}", 404)
    name, suffix = match.group("name"), match.group("suffix")
    version = int(match.group("version")) if match.group("version") else None
    if method == "GET" and suffix is None:
      return version_status(registry, name, version)
    if method == "GET" and suffix == "/metadata":
      return registry.get(name, version).metadata()
    if method == "POST" and suffix == ":predict":
      loaded = registry.get(name, version)
      try:
        body = json.loads(flask.request.get_data(cache=False))
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ServingError(f"JSON Parse error: {e}") from e
      return predict(loaded, body)
    raise ServingError(f"Malformed request: {method} /v1/models/{path}", 404)

  @flask_app.route("/v1/models/<path:path>", methods=["GET", "POST"])
  def models(path):
    return _json_response(route(path, flask.request.method))

  @flask_app.errorhandler(ServingError)
  def serving_error(error):
    return _json_response({"error": str(error)}, error.status)

  @flask_app.errorhandler(404)
  def not_found(error):
    del error
    return _json_response({"error": f"Malformed request: {flask.request.method} "
                                     f"{flask.request.path}"}, 404)

  @flask_app.errorhandler(405)
  def not_allowed(error):
    del error
    return _json_response({"error": f"Malformed request: {flask.request.method} "
                                     f"{flask.request.path}"}, 405)

  @flask_app.errorhandler(Exception)
  def unexpected(error):
    if isinstance(error, ServingError):
      return serving_error(error)
    logging.exception("Unexpected error while serving a request.")
    return _json_response({"error": f"Internal error: {type(error).__name__}: {error}"}, 500)

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
  flags.DEFINE_bool("all_versions", False, "Serve every version, not only the latest.")


def main(argv):
  del argv
  registry = ModelRegistry.from_export_dir(FLAGS.export_dir, FLAGS.model_config_file,
                                           FLAGS.all_versions)
  server = make_server(registry, FLAGS.host, FLAGS.port)
  for name in registry.names():
    print(f"model {name}: versions {registry.versions(name)}")
  # Printed (and flushed) so scripts that pass --port 0 can read the port.
  print(f"Serving on http://{FLAGS.host}:{server.port}/v1/models/<name>", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()


if __name__ == "__main__":
  _define_flags()
  errors.run_cli(main, "mm_tf.serve")
