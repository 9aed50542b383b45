"""What the demo page does on the server, without the HTTP part.

1. Uploads are decoded with the data package's readers (`mm_tf.data.freiburg_forest.READERS`:
   one reader per file format, the ones that prepare the datasets), in their strict mode
   (a colour image in the depth slot, a gray one in the RGB slot is an error, not guessed).
2. Inputs get a valid size (`fit_inputs`): by default the whole image is resized to the
   model's training size S x S, as the test pipeline does; with `size_mode="native"` other
   inputs are resized to the first input's size, images larger than `MAX_SIDE` are scaled
   down, and height and width are centre-cropped to multiples of 32. Resizing uses the
   pipeline's `resize_modality` (bilinear for images, nearest for labels, mask-aware for
   depth). Every change is reported as a note.
3. Translations run through `RegistryClient`: the REST client's composition
   (`ServingClient.encode` -> `decode` with the source encoder's switches, and
   `translate_multimodal` for fusion) with its transport replaced by direct calls of the
   SavedModels the server has loaded. No third composition.
4. Pictures: segmentation in the manifest's palette (void white), depth through a colour map
   on a fixed 0..max_depth metre scale (invalid = black), NIR grey, RGB as is.
"""

import base64
import collections
import io
import json
import os
import threading
import time
import uuid
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from PIL import Image
import tensorflow as tf

from mm_tf import export as mm_export
from mm_tf import serving_client
from mm_tf.data import common
from mm_tf.data import freiburg_forest
from mm_tf.data import pipeline

# File formats (PIL names) each slot takes, and how the page describes them.
FORMATS = {
    "rgb": (("JPEG", "MPO", "PNG"), "RGB JPEG or PNG"),
    "depth": (("PNG",), "depth PNG: 16-bit millimetres or 8-bit relative (x 40/255 m)"),
    "nir": (("TIFF", "PNG"), "gray NIR TIFF or PNG (8/16-bit or float)"),
    "segmentation": (("PNG",), "segmentation PNG in the dataset palette"),
}
ACCEPT = {"rgb": ".jpg,.jpeg,.png", "depth": ".png", "nir": ".tif,.tiff,.png",
          "segmentation": ".png"}
SIZE_MODES = ("model", "native")
MAX_SIDE = 512
MAX_UPLOAD_BYTES = 32 * 2**20
DEPTH_COLORMAP = "turbo"
CACHE_ENTRIES = 16


class UploadError(ValueError):
  """A bad upload; the message is shown on the page next to its slot."""


# ---------------------------------------------------------------- manifest
def manifest_from_registry(registry) -> Optional[dict]:
  """The manifest an encoder of the registry carries (assets.extra), None if none does."""
  for name in registry.names():
    if name.endswith(serving_client.ENCODER_SUFFIX):
      path = os.path.join(registry.get(name).path, "assets.extra", mm_export.MANIFEST_FILE)
      if os.path.isfile(path):
        with open(path) as f:
          return json.load(f)
  return None


def export_dir_of(registry) -> Optional[str]:
  """The export directory (`<export_dir>/<model>/<version>`) of the registry's encoders."""
  for name in registry.names():
    if name.endswith(serving_client.ENCODER_SUFFIX):
      return os.path.dirname(os.path.dirname(registry.get(name).path))
  return None


def translation_kind(manifest: Mapping, source: str, target: str) -> str:
  """"seen" (trained on pairs), "zero-pair" (never), or "unknown" (old manifest)."""
  seen = manifest.get("seen_translations")
  if seen is None:
    streams, anchor = manifest.get("streams"), manifest.get("anchor")
    if streams is None:
      return "unknown"
    seen = [mm_export.translation_signature_name(a, b) for stream in streams
            for other in stream if other != anchor for a, b in ((anchor, other), (other, anchor))]
  return "seen" if mm_export.translation_signature_name(source, target) in seen else "zero-pair"


# ---------------------------------------------------------------- decoding uploads
def decode_upload(manifest: Mapping, modality: str, data: bytes, filename: str):
  """Upload bytes -> (raw array, notes) with the dataset's reader for that modality.

  Returns rgb uint8 [H, W, 3], depth float32 metres [H, W] (0 = invalid), nir uint8 [H, W],
  segmentation uint8 labels [H, W] (255 = void).

  Raises:
    UploadError: empty, too large, wrong format, unreadable, wrong channel count, too small.
  """
  entry = manifest["modalities"].get(modality)
  if entry is None or modality not in freiburg_forest.READERS:
    raise UploadError(f"This model has no {modality!r} input.")
  formats, what = FORMATS[modality]
  name = filename or "the file"
  if not data:
    raise UploadError(f"{name} is empty; expected a {what}.")
  if len(data) > MAX_UPLOAD_BYTES:
    raise UploadError(f"{name} is {len(data) / 2**20:.0f} MiB; the limit is "
                      f"{MAX_UPLOAD_BYTES // 2**20} MiB.")
  notes = []
  try:
    with Image.open(io.BytesIO(data)) as header:  # Reads the header only.
      file_format, mode = header.format, header.mode
  except Exception:  # pylint: disable=broad-except
    file_format = mode = None  # Not an image PIL knows: the reader says so below.
  if file_format is not None and file_format not in formats:
    raise UploadError(f"{name} is a {file_format} image; the {modality} slot takes a {what}.")
  reader = freiburg_forest.READERS[modality]
  kwargs = {"palette": entry.get("palette")} if entry.get("categorical") else {}
  try:
    array = reader(io.BytesIO(data), name=name, strict=True, **kwargs)
  except common.BadExampleError as e:
    raise UploadError(str(e)) from e
  multiple = int(manifest.get("size_multiple", 32))
  if min(array.shape[:2]) < multiple:
    raise UploadError(f"{name} is too small: {array.shape[1]}x{array.shape[0]} pixels; the "
                      f"networks need at least {multiple}x{multiple}.")
  if modality == "depth":
    notes.append("8-bit depth read as relative depth (value x 40/255 m)" if mode == "L"
                 else "16-bit depth read as millimetres")
  if entry.get("categorical"):
    void = float(np.mean(array == int(entry.get("void_label", 255))))
    if void == 1.0:
      raise UploadError(f"{name} has no colour of the dataset palette; expected a "
                        f"{what} (see the legend).")
    if void > 0:
      notes.append(f"{100 * void:.0f}% of pixels are not palette colours (void)")
  return array, notes


def to_model_input(modality_entry: Mapping, array: np.ndarray) -> np.ndarray:
  """Reader output -> the encoder's raw input for one image (float32 [H,W,C] / int32 [H,W])."""
  if modality_entry.get("categorical"):
    return array.astype(np.int32)
  array = array.astype(np.float32)
  return array[..., None] if array.ndim == 2 else array


def _resize(name: str, image: np.ndarray, height: int, width: int) -> np.ndarray:
  if image.shape[:2] == (height, width):
    return image
  resized = pipeline.resize_modality(name, tf.constant(image), height, width).numpy()
  return resized.astype(image.dtype) if image.dtype.kind in "iu" else resized


def fit_inputs(manifest: Mapping, images: Dict[str, np.ndarray], size_mode: str = "model"):
  """Gives every input one valid size; returns (images, {modality: [notes]}).

  Args:
    manifest: The export's manifest (image_size, size_multiple, modality order).
    images: {modality: `to_model_input` array}, any sizes >= size_multiple.
    size_mode: "model" (whole image resized to the training size S x S, as the test
      pipeline does) or "native" (the first input's size, at most MAX_SIDE, centre-cropped
      to multiples of size_multiple; other inputs resized to it).
  """
  if size_mode not in SIZE_MODES:
    raise UploadError(f"size_mode must be one of {SIZE_MODES}, got {size_mode!r}.")
  multiple = int(manifest.get("size_multiple", 32))
  order = [m for m in manifest["modalities"] if m in images]
  notes = {m: [] for m in order}
  if size_mode == "model":
    size = int(manifest["image_size"])
    height = width = size - size % multiple or multiple
    reason = "the model's training size; the whole image, as the test pipeline does"
  else:
    height, width = images[order[0]].shape[:2]
    reason = f"the size of the {order[0]} input"
  out = {}
  for m in order:
    h, w = images[m].shape[:2]
    if (h, w) != (height, width):
      notes[m].append(f"resized from {w}x{h} to {width}x{height} ({reason})")
      out[m] = _resize(m, images[m], height, width)
    else:
      out[m] = images[m]
  if size_mode == "native":
    scale = min(1.0, MAX_SIDE / max(height, width))
    if scale < 1.0:
      new_h, new_w = max(multiple, round(height * scale)), max(multiple, round(width * scale))
      for m in order:
        notes[m].append(f"scaled down from {width}x{height} to {new_w}x{new_h} "
                        f"(at most {MAX_SIDE} pixels a side)")
        out[m] = _resize(m, out[m], new_h, new_w)
      height, width = new_h, new_w
    crop_h, crop_w = height - height % multiple, width - width % multiple
    if (crop_h, crop_w) != (height, width):
      top, left = (height - crop_h) // 2, (width - crop_w) // 2
      for m in order:
        notes[m].append(f"centre-cropped from {width}x{height} to {crop_w}x{crop_h} "
                        f"(multiples of {multiple})")
        out[m] = out[m][top:top + crop_h, left:left + crop_w]
  return out, notes


# ---------------------------------------------------------------- translation
class _RegistryTransport:
  """The client transport of `RegistryClient`: numpy arrays to and from `predict`."""

  def __init__(self, client):
    self.client = client

  def signature(self, signature_name):
    return signature_name

  def from_array(self, array):
    return np.asarray(array)

  def to_array(self, value, dtype=None):
    return np.asarray(value, dtype=dtype)

  def call(self, model, signature_name, wire, version=None, request_format=None):
    del request_format
    return self.client.predict(model, wire, signature_name, version)


class RegistryClient(serving_client.ServingClient):
  """`ServingClient` whose requests are direct calls of the server's loaded SavedModels.

  `translate`, `translate_multimodal`, `encode`, `decode`, `colorize` and the default
  fusion weights are the client's own; only the transport (`predict`) differs.
  """

  def __init__(self, registry, manifest):
    super().__init__("http://in-process", manifest=manifest)
    self.registry = registry
    # Every composition goes through the client's transports: this one hands arrays to
    # `predict` below instead of sending them over HTTP or gRPC.
    self._numbers = self._bytes = _RegistryTransport(self)

  def _module_transport(self, model):
    del model  # No signature choice to make: arrays go in as they are.
    return self._numbers

  def predict(self, model, inputs, signature_name=mm_export.SERVING_SIGNATURE, version=None,
              request_format=None):
    del request_format
    loaded = self.registry.get(model, self.version if version is None else version)
    specs = loaded.input_specs[signature_name]
    tensors = {name: tf.constant(np.asarray(value), specs[name].dtype)
               for name, value in inputs.items()}
    try:
      outputs = loaded.signatures[signature_name](**tensors)
    except (tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
      raise serving_client.ServingRequestError(str(e)[:500], 400) from e
    return {name: tensor.numpy() for name, tensor in outputs.items()}


def _ms(seconds):
  return round(1000.0 * seconds, 1)


def fusion_weights(manifest: Mapping, sources: Sequence[str], weight: Optional[float]):
  """Weights for fusing `sources`: the lead (the anchor if given, else the first) gets
  1 - weight and the others share `weight`; None = the model's defaults."""
  if weight is None:
    return None
  anchor = manifest.get("anchor")
  lead = anchor if anchor in sources else sources[0]
  others = [s for s in sources if s != lead]
  weights = {lead: 1.0 - float(weight)}
  weights.update({s: float(weight) / len(others) for s in others})
  return weights


class Translator:
  """Runs every translation of a set of inputs and renders the pictures."""

  def __init__(self, registry, manifest):
    self.manifest = manifest
    self.client = RegistryClient(registry, manifest)
    self.order = list(manifest["modalities"])
    self.pictures = Pictures(manifest)
    self._cache = collections.OrderedDict()
    self._lock = threading.Lock()
    self._warm_up()

  def _warm_up(self):
    """One call of every encoder and decoder, so the first user's latencies are not the
    graphs' one-time initialisation."""
    size = int(self.manifest.get("size_multiple", 32))
    for name, entry in self.manifest["modalities"].items():
      shape = (1, size, size) if entry.get("categorical") else (1, size, size, entry["channels"])
      encoded = self.client.encode(name, np.zeros(shape, np.float32 if len(shape) == 4 else np.int32))
      self.client.decode(name, encoded)

  # ------------------------------------------------------------ state for the slider
  def remember(self, images) -> str:
    token = uuid.uuid4().hex
    with self._lock:
      self._cache[token] = images
      while len(self._cache) > CACHE_ENTRIES:
        self._cache.popitem(last=False)
    return token

  def recall(self, token):
    with self._lock:
      if token not in self._cache:
        raise KeyError(token)
      self._cache.move_to_end(token)
      return self._cache[token]

  # ------------------------------------------------------------ translations
  def translate_all(self, images: Mapping[str, np.ndarray]) -> List[dict]:
    """Every input into every other modality: encoder once per source, then each decoder."""
    results = []
    for source in [m for m in self.order if m in images]:
      start = time.perf_counter()
      encoded = self.client.encode(source, images[source][None])
      encode_s = time.perf_counter() - start
      for target in self.order:
        if target == source:
          continue
        start = time.perf_counter()
        translation = self.client.decode(target, encoded)
        decode_s = time.perf_counter() - start
        results.append({
            "source": source, "target": target,
            "kind": translation_kind(self.manifest, source, target),
            "image": self.pictures.data_url(target, first_picture(translation)),
            "latency_ms": {"encoder": _ms(encode_s), "decoder": _ms(decode_s),
                           "total": _ms(encode_s + decode_s)},
        })
    return results

  def fuse_all(self, images: Mapping[str, np.ndarray], weight: Optional[float]) -> List[dict]:
    """For every target, the fusion of the other inputs (when there are two or more)."""
    results = []
    for target in self.order:
      sources = [m for m in self.order if m in images and m != target]
      if len(sources) < 2:
        continue
      weights = fusion_weights(self.manifest, sources, weight)
      start = time.perf_counter()
      translation = self.client.translate_multimodal({s: images[s][None] for s in sources},
                                                     target, weights=weights)
      elapsed = time.perf_counter() - start
      used = weights or self.client.multimodal_weights(sources)
      results.append({
          "target": target, "sources": sources,
          "weights": {s: round(float(used[s]), 3) for s in sources},
          "image": self.pictures.data_url(target, first_picture(translation)),
          "latency_ms": {"total": _ms(elapsed)},
      })
    return results


def first_picture(translation) -> np.ndarray:
  """The raw array of a decoded batch of one: labels for segmentation, else the image."""
  return (translation.labels if translation.labels is not None else translation.image)[0]


# ---------------------------------------------------------------- pictures
class Pictures:
  """Raw arrays -> uint8 RGB pictures and PNG data URLs."""

  def __init__(self, manifest):
    self.manifest = manifest
    import matplotlib  # pylint: disable=g-import-not-at-top
    self.lut = (matplotlib.colormaps[DEPTH_COLORMAP](np.linspace(0, 1, 256))[:, :3] * 255
                ).round().astype(np.uint8)

  def depth_range(self):
    entry = self.manifest["modalities"].get("depth", {})
    return entry.get("raw_range", [0.0, 40.0])

  def picture(self, modality: str, array: np.ndarray) -> np.ndarray:
    entry = self.manifest["modalities"][modality]
    array = np.asarray(array)
    if entry.get("categorical"):
      palette = entry["palette"]
      lut = np.full((256, 3), 255, np.uint8)
      lut[: len(palette)] = np.asarray(palette, np.uint8)
      return lut[np.clip(array, 0, 255).astype(np.int64)]
    if array.ndim == 3 and array.shape[-1] == 1:
      array = array[..., 0]
    if modality == "depth":
      lo, hi = self.depth_range()
      valid = np.isfinite(array) & (array > 0)
      index = np.clip((np.nan_to_num(array) - lo) / (hi - lo) * 255, 0, 255).round()
      picture = self.lut[index.astype(np.int64)]
      picture[~valid] = 0
      return picture
    lo, hi = entry.get("raw_range", [0.0, 255.0])
    scaled = np.clip((np.nan_to_num(array) - lo) / (hi - lo) * 255, 0, 255).round().astype(np.uint8)
    return scaled if scaled.ndim == 2 else scaled[..., :3]

  def data_url(self, modality: str, array: np.ndarray) -> str:
    return png_data_url(self.picture(modality, array))

  def colorbar(self) -> str:
    return png_data_url(np.repeat(self.lut[None], 12, axis=0))


def png_bytes(picture: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(picture)).save(buffer, format="PNG")
  return buffer.getvalue()


def png_data_url(picture: np.ndarray) -> str:
  return "data:image/png;base64," + base64.b64encode(png_bytes(picture)).decode("ascii")
