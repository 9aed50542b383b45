"""Client that composes M&MNets translations from TF Serving requests (REST or gRPC).

Works against `python -m mm_tf.serve` and against real `tensorflow_model_server` started
with the exported `models.config`, using only TF Serving's standard request fields and
the exported signature names.

A translation source->target is an encoder request (`<source>_encoder`, raw image in,
`latent` + compact `switches_1..5` out) followed by a decoder request
(`<target>_decoder`, those outputs in, raw-unit `image` (+ `labels`) out), or a single
request to the `mmnet` model's `<source>_to_<target>` signature (`via="mmnet"`).

Protocols:
  * `protocol="rest"` (default, port 8501). Encoders and decoders are called through
    their `serving_bytes` signatures: every tensor is the base64 of one example's
    serialized TensorProto (`{"b64": ...}`, TF Serving's convention for DT_STRING tensors
    named `*_bytes`), about 3.5x smaller than decimal numbers and parsed at memcpy speed.
    The encoder's outputs are passed to the decoder as they came, without decoding.
    `rest_encoding="numbers"` (or an export without `serving_bytes`) sends JSON numbers.
    Needs only numpy and the standard library (orjson is used when installed).
  * `protocol="grpc"` (port 8500): PredictionService/ModelService from
    tensorflow-serving-api and grpcio; tensors are TensorProtos with binary
    `tensor_content`, passed from encoder response to decoder request untouched.

Example:
  >>> client = ServingClient("http://localhost:8501",
  ...                        manifest="export/serving/manifest.json")
  >>> result = client.translate("depth", "segmentation", depth_metres)  # [B, H, W, 1]
  >>> result.labels.shape, result.image.shape    # class map, class probabilities
  ((2, 256, 256), (2, 256, 256, 5))
  >>> fused = client.translate_multimodal({"rgb": rgb, "depth": depth}, "segmentation")
  >>> grpc_client = ServingClient("localhost:8500", protocol="grpc",
  ...                             manifest="export/serving/manifest.json")

Version pinning: with a manifest, every request asks for the manifest's version, so an
encoder and a decoder always come from the same export even while a newer export is
being rolled out.
"""

import base64
import dataclasses
import json
from typing import Dict, Mapping, Optional
import urllib.error
import urllib.request

import numpy as np

from mm_tf import json_tensors
from mm_tf import tensor_protos

ENCODER_SUFFIX = "_encoder"
DECODER_SUFFIX = "_decoder"
MMNET_MODEL = "mmnet"
LATENT_KEY = "latent"
IMAGE_KEY = "image"
LABELS_KEY = "labels"
SERVING_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serving_bytes"  # mm_tf.export.BYTES_SIGNATURE (no TF import here).
BYTES_SUFFIX = "_bytes"
REQUEST_FORMATS = ("inputs", "instances")
PROTOCOLS = ("rest", "grpc")
REST_ENCODINGS = ("bytes", "numbers")
DEFAULT_URLS = {"rest": "http://localhost:8501", "grpc": "localhost:8500"}


class ServingRequestError(RuntimeError):
  """A request the server answered with an error.

  Attributes:
    status: HTTP status (REST), else None.
    code: gRPC status code name such as "INVALID_ARGUMENT" (gRPC), else None.
    message: The server's error message.
  """

  def __init__(self, message, status=None, code=None):
    super().__init__(f"HTTP {status}: {message}" if status is not None else f"{code}: {message}")
    self.status = status
    self.code = code
    self.message = message


@dataclasses.dataclass
class Translation:
  """A decoded batch in raw units.

  Attributes:
    image: [B, H, W, C] float32 raw-unit image (rgb 0..255, depth metres, ...) or, for a
      categorical target, class probabilities [B, H, W, K].
    labels: int32 [B, H, W] class map for categorical targets, else None.
  """

  image: np.ndarray
  labels: Optional[np.ndarray] = None


# ---------------------------------------------------------------- transports
# A transport calls one signature of one model. Its "wire" values are what it sends and
# receives per tensor (numpy arrays, base64 JSON objects, TensorProtos): an encoder's
# outputs go to a decoder of the same transport without being decoded.
class _RestTransport:
  """HTTP/JSON; tensors as JSON numbers, or as `{"b64": ...}` for `serving_bytes`."""

  def __init__(self, client, encoding):
    self.client = client
    self.encoding = encoding

  def signature(self, signature_name):
    return BYTES_SIGNATURE if self.encoding == "bytes" else signature_name

  def from_array(self, array):
    array = np.asarray(array)
    if self.encoding == "bytes":
      return [{"b64": base64.b64encode(tensor_protos.serialize_tensor(example)).decode("ascii")}
              for example in array]
    return array

  def to_array(self, value, dtype=None):
    if self.encoding == "bytes":
      return np.stack([tensor_protos.parse_tensor(base64.b64decode(item["b64"]))
                       for item in value])
    return np.asarray(value, dtype=dtype)

  def call(self, model, signature_name, wire, version=None, request_format=None):
    """Sends `{name: wire value}` (names without `_bytes`); returns the outputs alike."""
    client = self.client
    request_format = request_format or client.request_format
    suffix = BYTES_SUFFIX if self.encoding == "bytes" else ""
    named = {name + suffix: value for name, value in wire.items()}
    dtypes = client._signature_outputs(model, signature_name, version)
    if request_format == "inputs":
      body = {"signature_name": signature_name, "inputs": named}
    else:
      batch = len(next(iter(named.values())))
      body = {"signature_name": signature_name,
              "instances": [{name: value[i] for name, value in named.items()}
                            for i in range(batch)]}
    payload = json_tensors.dumps(body)
    raw = client._http(client._model_url(model, version) + ":predict", payload)
    client.transfers.append((model, len(payload), len(raw)))
    response = json_tensors.loads(raw)
    names = sorted(dtypes)
    if request_format == "inputs":
      outputs = response["outputs"]
      if not isinstance(outputs, dict):
        outputs = {names[0]: outputs}
    else:
      predictions = response["predictions"]
      if len(names) > 1:  # Rows of {output: value}; a single output is its bare values.
        outputs = {name: [p[name] for p in predictions] for name in predictions[0]}
      else:
        outputs = {names[0]: predictions}
    if self.encoding == "bytes":
      return {name[:-len(BYTES_SUFFIX)] if name.endswith(BYTES_SUFFIX) else name: value
              for name, value in outputs.items()}
    return {name: np.asarray(value, dtype=dtypes.get(name, np.float32))
            for name, value in outputs.items()}


class _GrpcTransport:
  """TF Serving's PredictionService over gRPC; tensors as TensorProtos."""

  def __init__(self, client):
    self.client = client

  def signature(self, signature_name):
    return signature_name

  def from_array(self, array):
    return tensor_protos.array_to_tensor_proto(array)

  def to_array(self, value, dtype=None):
    del dtype  # TensorProtos carry their dtype.
    return tensor_protos.tensor_proto_to_array(value)

  def call(self, model, signature_name, wire, version=None, request_format=None):
    del request_format  # REST only.
    from tensorflow_serving.apis import predict_pb2
    client = self.client
    request = predict_pb2.PredictRequest()
    client._model_spec(request.model_spec, model, version)
    request.model_spec.signature_name = signature_name
    for name, proto in wire.items():
      request.inputs[name].CopyFrom(proto)
    response = client._grpc_call(client._prediction_stub().Predict, request)
    client.transfers.append((model, request.ByteSize(), response.ByteSize()))
    return dict(response.outputs)


class ServingClient:
  """TF Serving client for exported mm_tf models, over REST or gRPC.

  Args:
    url: Server address: "http://localhost:8501" (REST) or "localhost:8500" (gRPC; a
      "grpc://" prefix is accepted). Default: TF Serving's port of the protocol.
    manifest: `manifest.json` of the export (path or dict). Gives the version to pin,
      the anchor and default multimodal weights; optional for plain translations.
    version: Version to request (default: the manifest's, else the server's latest).
    request_format: REST body format, "inputs" (columnar) or "instances" (row).
    timeout: Seconds per request.
    protocol: "rest" or "grpc".
    rest_encoding: REST tensors of encoder/decoder requests: "bytes" (the
      `serving_bytes` signatures, default; falls back to numbers for models without it)
      or "numbers" (JSON numbers, `serving_default`).
  """

  def __init__(self, url=None, manifest=None, version=None, request_format="inputs",
               timeout=120.0, protocol="rest", rest_encoding="bytes"):
    if protocol not in PROTOCOLS:
      raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}.")
    if request_format not in REQUEST_FORMATS:
      raise ValueError(f"request_format must be one of {REQUEST_FORMATS}, got {request_format!r}.")
    if rest_encoding not in REST_ENCODINGS:
      raise ValueError(f"rest_encoding must be one of {REST_ENCODINGS}, got {rest_encoding!r}.")
    self.protocol = protocol
    url = url or DEFAULT_URLS[protocol]
    if protocol == "grpc":
      for scheme in ("grpc://", "http://"):
        url = url[len(scheme):] if url.startswith(scheme) else url
    self.url = url.rstrip("/")
    if isinstance(manifest, str):
      with open(manifest) as f:
        manifest = json.load(f)
    self.manifest = manifest
    self.version = version if version is not None else (manifest or {}).get("version")
    self.request_format = request_format
    self.rest_encoding = rest_encoding
    self.timeout = timeout
    self._metadata_cache = {}
    self._channel = None
    self._stubs = {}
    # (model, request bytes, response bytes) of every predict call, for benchmarks.
    self.transfers = []
    if protocol == "grpc":
      self._numbers = self._bytes = _GrpcTransport(self)
    else:
      self._numbers = _RestTransport(self, "numbers")
      self._bytes = _RestTransport(self, "bytes")

  def close(self):
    """Closes the gRPC channel (REST holds no connection)."""
    if self._channel is not None:
      self._channel.close()
      self._channel = None
      self._stubs = {}

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()

  # ------------------------------------------------------------ REST plumbing
  def _model_url(self, model, version=None):
    version = self.version if version is None else version
    return f"{self.url}/v1/models/{model}" + (f"/versions/{int(version)}" if version else "")

  def _http(self, url, body: Optional[bytes] = None):
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                     headers={"Content-Type": "application/json"})
    try:
      with urllib.request.urlopen(request, timeout=self.timeout) as response:
        return response.read()
    except urllib.error.HTTPError as e:
      text = e.read().decode("utf-8", "replace")
      try:
        message = json.loads(text).get("error", text)
      except ValueError:
        message = text
      raise ServingRequestError(message, status=e.code) from e

  # ------------------------------------------------------------ gRPC plumbing
  def _stub(self, kind):
    if kind not in self._stubs:
      import grpc
      from tensorflow_serving.apis import model_service_pb2_grpc
      from tensorflow_serving.apis import prediction_service_pb2_grpc
      if self._channel is None:
        # Unlimited message sizes, as TF Serving's server (class maps exceed 4 MiB).
        self._channel = grpc.insecure_channel(self.url, options=[
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
      stub_class = (prediction_service_pb2_grpc.PredictionServiceStub if kind == "prediction"
                    else model_service_pb2_grpc.ModelServiceStub)
      self._stubs[kind] = stub_class(self._channel)
    return self._stubs[kind]

  def _prediction_stub(self):
    return self._stub("prediction")

  def _model_spec(self, spec, model, version=None):
    spec.name = model
    version = self.version if version is None else version
    if version:
      spec.version.value = int(version)

  def _grpc_call(self, method, request):
    import grpc
    try:
      return method(request, timeout=self.timeout)
    except grpc.RpcError as e:
      raise ServingRequestError(e.details(), code=e.code().name) from e

  # ------------------------------------------------------------ status and metadata
  def status(self, model, version=None):
    """Model version status, as REST's GET /v1/models/NAME[/versions/N] body."""
    if self.protocol == "rest":
      return json.loads(self._http(self._model_url(model, version)))
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_status_pb2
    request = get_model_status_pb2.GetModelStatusRequest()
    self._model_spec(request.model_spec, model, version)
    response = self._grpc_call(self._stub("model").GetModelStatus, request)
    return json_format.MessageToDict(response, preserving_proto_field_name=True)

  def metadata(self, model, version=None):
    """Signature defs, as REST's GET /v1/models/NAME[/versions/N]/metadata body."""
    if self.protocol == "rest":
      return json.loads(self._http(self._model_url(model, version) + "/metadata"))
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_metadata_pb2
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    self._model_spec(request.model_spec, model, version)
    request.metadata_field.append("signature_def")
    response = self._grpc_call(self._prediction_stub().GetModelMetadata, request)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    return {"model_spec": json_format.MessageToDict(response.model_spec),
            "metadata": {"signature_def": json_format.MessageToDict(
                signature_map, preserving_proto_field_name=True)}}

  def _signatures(self, model, version=None):
    """{signature name: signature def as JSON} of a model (cached per version)."""
    key = (model, version if version is not None else self.version)
    if key not in self._metadata_cache:
      self._metadata_cache[key] = self.metadata(model, version)[
          "metadata"]["signature_def"]["signature_def"]
    return self._metadata_cache[key]

  def _signature_outputs(self, model, signature_name, version):
    """{output name: numpy dtype} from the model's metadata (cached)."""
    signatures = self._signatures(model, version)
    if signature_name not in signatures:
      raise ServingRequestError(f"model {model} has no signature {signature_name!r} (it has "
                                f"{sorted(signatures)})", status=400, code="INVALID_ARGUMENT")
    return {name: tensor_protos.DTYPE_NAMES.get(spec.get("dtype"), np.float32)
            for name, spec in signatures[signature_name]["outputs"].items()}

  # ------------------------------------------------------------ requests
  def predict(self, model, inputs: Mapping[str, np.ndarray], signature_name=SERVING_SIGNATURE,
              version=None, request_format=None) -> Dict[str, np.ndarray]:
    """One Predict request with tensors as themselves; returns {output: numpy array}."""
    transport = self._numbers
    wire = {name: transport.from_array(value) for name, value in inputs.items()}
    outputs = transport.call(model, signature_name, wire, version, request_format)
    return {name: transport.to_array(value) for name, value in outputs.items()}

  def _module_transport(self, model):
    """The transport for an encoder/decoder: bytes over REST if the model has them."""
    if (self.protocol == "rest" and self.rest_encoding == "bytes"
        and BYTES_SIGNATURE in self._signatures(model)):
      return self._bytes
    return self._numbers

  def _call_module(self, model, wire, transport):
    return transport.call(model, transport.signature(SERVING_SIGNATURE), wire)

  @staticmethod
  def _convert(wire, source, target):
    if source is target:
      return wire
    return {name: target.from_array(source.to_array(value)) for name, value in wire.items()}

  # ------------------------------------------------------------ composition
  def _encode_wire(self, modality, images):
    model = modality + ENCODER_SUFFIX
    transport = self._module_transport(model)
    return self._call_module(model, {IMAGE_KEY: transport.from_array(images)}, transport), \
        transport

  def _decode_wire(self, modality, wire, transport) -> Translation:
    model = modality + DECODER_SUFFIX
    target = self._module_transport(model)
    outputs = self._call_module(model, self._convert(wire, transport, target), target)
    return _translation({name: target.to_array(value) for name, value in outputs.items()})

  def encode(self, modality, images) -> Dict[str, np.ndarray]:
    """Encoder request: raw images -> {"latent", "switches_1".."switches_5"} arrays."""
    wire, transport = self._encode_wire(modality, images)
    return {name: transport.to_array(value) for name, value in wire.items()}

  def decode(self, modality, encoded: Mapping[str, np.ndarray]) -> Translation:
    """Decoder request: encoder outputs (arrays) -> raw-unit `Translation`."""
    return self._decode_wire(modality, dict(encoded), _ArrayWire)

  def translate(self, source, target, images, via="modules") -> Translation:
    """Translates raw `images` of `source` into `target`.

    Args:
      source: Source modality, e.g. "depth".
      target: Target modality, e.g. "segmentation".
      images: Raw batch: float [B, H, W, C] (depth in metres, rgb/nir 0..255) or int
        labels [B, H, W] for segmentation. H and W multiples of the manifest's
        size_multiple (2**num_pools: 32 with the paper's five pools).
      via: "modules" (encoder request + decoder request) or "mmnet" (one request to
        the mmnet model's `<source>_to_<target>` signature).
    """
    if via == "mmnet":
      return _translation(self.predict(MMNET_MODEL, {IMAGE_KEY: images},
                                       signature_name=f"{source}_to_{target}"))
    if via != "modules":
      raise ValueError(f"via must be 'modules' or 'mmnet', got {via!r}.")
    wire, transport = self._encode_wire(source, images)
    return self._decode_wire(target, wire, transport)

  def multimodal_weights(self, sources):
    """The model's default fusion weights (needs the manifest)."""
    if not self.manifest:
      return {s: 1.0 / len(sources) for s in sources}
    anchor = self.manifest["anchor"]
    non_anchor = float(self.manifest.get("multimodal_non_anchor_weight", 0.2))
    if anchor in sources and len(sources) > 1:
      weights = {s: non_anchor for s in sources if s != anchor}
      weights[anchor] = 1.0 - non_anchor * (len(sources) - 1)
      if weights[anchor] > 0:
        return weights
    return {s: 1.0 / len(sources) for s in sources}

  def translate_multimodal(self, images: Mapping[str, np.ndarray], target, weights=None,
                           via="modules") -> Translation:
    """Decodes the weighted average of several sources' latents (paper 6.3).

    With `via="modules"` one encoder request per source is sent, the latents are fused
    here and the side information is the anchor's (else the first source's, in the
    manifest's modality order), as `MixAndMatchNetworks.translate_multimodal` does.
    `via="mmnet"` sends one request to `<a>_and_<b>_to_<target>` (default weights only).
    """
    order = list((self.manifest or {}).get("modalities", images))
    sources = sorted(images, key=lambda s: order.index(s) if s in order else len(order))
    if via == "mmnet":
      if weights is not None:
        raise ValueError("mmnet multimodal signatures use the default weights; use "
                         "via='modules' for custom weights.")
      name = "_and_".join(sources) + f"_to_{target}"
      return _translation(self.predict(MMNET_MODEL, {s: images[s] for s in sources},
                                       signature_name=name))
    weights = dict(weights or self.multimodal_weights(sources))
    total = sum(float(weights[s]) for s in sources)
    encoded = {s: self._encode_wire(s, images[s]) for s in sources}
    anchor = (self.manifest or {}).get("anchor")
    side_source = anchor if anchor in encoded else sources[0]
    wire, transport = encoded[side_source]
    fused = dict(wire)
    # Same accumulation order and float32 arithmetic as the in-graph fusion.
    latent = sum(encoded[s][1].to_array(encoded[s][0][LATENT_KEY])
                 * np.float32(float(weights[s]) / total) for s in sources).astype(np.float32)
    fused[LATENT_KEY] = transport.from_array(latent)
    return self._decode_wire(target, fused, transport)

  def colorize(self, labels, modality="segmentation"):
    """uint8 RGB image of a class map with the manifest's palette (void -> white)."""
    palette = self.manifest["modalities"][modality]["palette"]
    lut = np.full((256, 3), 255, np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    return lut[np.clip(np.asarray(labels), 0, 255).astype(np.int64)]


class _ArrayWire:
  """Wire of plain numpy arrays (what `encode` returns and `decode` accepts)."""

  @staticmethod
  def from_array(array):
    return np.asarray(array)

  @staticmethod
  def to_array(value, dtype=None):
    return np.asarray(value, dtype=dtype)


def _translation(outputs):
  return Translation(image=outputs[IMAGE_KEY], labels=outputs.get(LABELS_KEY))
