"""Client that composes M&MNets translations from TF Serving REST requests.

Works against `python -m mm_tf.serve` and against real `tensorflow_model_server` started
with the exported `models.config`; it only needs numpy and the standard library (no
TensorFlow), so it runs in a light process.

A translation source->target is an encoder request (`<source>_encoder`, raw image in,
`latent` + compact `switches_1..5` out) followed by a decoder request
(`<target>_decoder`, those outputs in, raw-unit `image` (+ `labels`) out), or a single
request to the `mmnet` model's `<source>_to_<target>` signature (`via="mmnet"`).

Example:
  >>> client = ServingClient("http://localhost:8501",
  ...                        manifest="export/serving/manifest.json")
  >>> result = client.translate("depth", "segmentation", depth_metres)  # [B, H, W, 1]
  >>> result.labels.shape, result.image.shape    # class map, class probabilities
  ((2, 256, 256), (2, 256, 256, 5))
  >>> fused = client.translate_multimodal({"rgb": rgb, "depth": depth}, "segmentation")

Version pinning: with a manifest, every request asks for the manifest's version
(`/versions/N`), so an encoder and a decoder always come from the same export even while
a newer export is being rolled out.
"""

import dataclasses
import json
from typing import Dict, Mapping, Optional
import urllib.error
import urllib.request

import numpy as np

ENCODER_SUFFIX = "_encoder"
DECODER_SUFFIX = "_decoder"
MMNET_MODEL = "mmnet"
LATENT_KEY = "latent"
IMAGE_KEY = "image"
LABELS_KEY = "labels"
REQUEST_FORMATS = ("inputs", "instances")
_DTYPES = {"DT_FLOAT": np.float32, "DT_DOUBLE": np.float64, "DT_UINT8": np.uint8,
           "DT_INT8": np.int8, "DT_INT16": np.int16, "DT_UINT16": np.uint16,
           "DT_INT32": np.int32, "DT_INT64": np.int64, "DT_BOOL": np.bool_}


class ServingRequestError(RuntimeError):
  """A request the server answered with an error (`status` = HTTP code)."""

  def __init__(self, message, status):
    super().__init__(f"HTTP {status}: {message}")
    self.status = status


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


class ServingClient:
  """TF Serving REST client for exported mm_tf models.

  Args:
    url: Server root, e.g. "http://localhost:8501".
    manifest: `manifest.json` of the export (path or dict). Gives the version to pin,
      the anchor and default multimodal weights; optional for plain translations.
    version: Version to request (default: the manifest's, else the server's latest).
    request_format: "inputs" (columnar) or "instances" (row) request bodies.
    timeout: Seconds per HTTP request.
  """

  def __init__(self, url="http://localhost:8501", manifest=None, version=None,
               request_format="inputs", timeout=120.0):
    self.url = url.rstrip("/")
    if isinstance(manifest, str):
      with open(manifest) as f:
        manifest = json.load(f)
    self.manifest = manifest
    self.version = version if version is not None else (manifest or {}).get("version")
    if request_format not in REQUEST_FORMATS:
      raise ValueError(f"request_format must be one of {REQUEST_FORMATS}, got {request_format!r}.")
    self.request_format = request_format
    self.timeout = timeout
    self._output_dtypes = {}
    # (model, request bytes, response bytes) of every predict call, for benchmarks.
    self.transfers = []

  # ------------------------------------------------------------ HTTP
  def _model_url(self, model, version=None):
    version = self.version if version is None else version
    return f"{self.url}/v1/models/{model}" + (f"/versions/{int(version)}" if version else "")

  def _request(self, url, body: Optional[bytes] = None):
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
      raise ServingRequestError(message, e.code) from e

  def status(self, model, version=None):
    """GET /v1/models/NAME[/versions/N]."""
    return json.loads(self._request(self._model_url(model, version)))

  def metadata(self, model, version=None):
    """GET /v1/models/NAME[/versions/N]/metadata."""
    return json.loads(self._request(self._model_url(model, version) + "/metadata"))

  def _signature_outputs(self, model, signature_name, version):
    """{output name: numpy dtype} from the model's metadata (cached)."""
    key = (model, signature_name, version if version is not None else self.version)
    if key not in self._output_dtypes:
      signature = self.metadata(model, version)["metadata"]["signature_def"]["signature_def"]
      if signature_name not in signature:
        raise ServingRequestError(f"model {model} has no signature {signature_name!r}", 400)
      outputs = signature[signature_name]["outputs"]
      self._output_dtypes[key] = {name: _DTYPES.get(spec.get("dtype"), np.float32)
                                  for name, spec in outputs.items()}
    return self._output_dtypes[key]

  def predict(self, model, inputs: Mapping[str, np.ndarray], signature_name="serving_default",
              version=None, request_format=None) -> Dict[str, np.ndarray]:
    """One :predict request; returns {output name: numpy array} (batch first)."""
    request_format = request_format or self.request_format
    dtypes = self._signature_outputs(model, signature_name, version)
    lists = {name: np.asarray(value).tolist() for name, value in inputs.items()}
    if request_format == "inputs":
      body = {"signature_name": signature_name, "inputs": lists}
    else:
      batch = len(next(iter(lists.values())))
      body = {"signature_name": signature_name,
              "instances": [{name: value[i] for name, value in lists.items()}
                            for i in range(batch)]}
    payload = json.dumps(body, separators=(",", ":")).encode()
    raw = self._request(self._model_url(model, version) + ":predict", payload)
    self.transfers.append((model, len(payload), len(raw)))
    response = json.loads(raw)
    names = sorted(dtypes)
    if request_format == "inputs":
      outputs = response["outputs"]
      if not isinstance(outputs, dict):
        outputs = {names[0]: outputs}
    else:
      predictions = response["predictions"]
      if predictions and isinstance(predictions[0], dict):
        outputs = {name: [p[name] for p in predictions] for name in predictions[0]}
      else:
        outputs = {names[0]: predictions}
    return {name: np.asarray(value, dtype=dtypes.get(name, np.float32))
            for name, value in outputs.items()}

  # ------------------------------------------------------------ composition
  def encode(self, modality, images) -> Dict[str, np.ndarray]:
    """Encoder request: raw images -> {"latent", "switches_1".."switches_5"}."""
    return self.predict(modality + ENCODER_SUFFIX, {IMAGE_KEY: images})

  def decode(self, modality, encoded: Mapping[str, np.ndarray]) -> Translation:
    """Decoder request: encoder outputs -> raw-unit `Translation`."""
    return _translation(self.predict(modality + DECODER_SUFFIX, encoded))

  def translate(self, source, target, images, via="modules") -> Translation:
    """Translates raw `images` of `source` into `target`.

    Args:
      source: Source modality, e.g. "depth".
      target: Target modality, e.g. "segmentation".
      images: Raw batch: float [B, H, W, C] (depth in metres, rgb/nir 0..255) or int
        labels [B, H, W] for segmentation. H and W multiples of 32.
      via: "modules" (encoder request + decoder request) or "mmnet" (one request to
        the mmnet model's `<source>_to_<target>` signature).
    """
    if via == "mmnet":
      return _translation(self.predict(MMNET_MODEL, {IMAGE_KEY: images},
                                       signature_name=f"{source}_to_{target}"))
    if via != "modules":
      raise ValueError(f"via must be 'modules' or 'mmnet', got {via!r}.")
    return self.decode(target, self.encode(source, images))

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
    encoded = {s: self.encode(s, images[s]) for s in sources}
    anchor = (self.manifest or {}).get("anchor")
    side_source = anchor if anchor in encoded else sources[0]
    fused = dict(encoded[side_source])
    # Same accumulation order and float32 arithmetic as the in-graph fusion.
    fused[LATENT_KEY] = sum(encoded[s][LATENT_KEY] * np.float32(float(weights[s]) / total)
                            for s in sources).astype(np.float32)
    return self.decode(target, fused)

  def colorize(self, labels, modality="segmentation"):
    """uint8 RGB image of a class map with the manifest's palette (void -> white)."""
    palette = self.manifest["modalities"][modality]["palette"]
    lut = np.full((256, 3), 255, np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    return lut[np.clip(np.asarray(labels), 0, 255).astype(np.int64)]


def _translation(outputs):
  return Translation(image=outputs[IMAGE_KEY], labels=outputs.get(LABELS_KEY))
