"""Export of a trained `MixAndMatchNetworks` for TF Serving.

`python -m mm_tf.export --model_dir DIR --export_dir export/serving [--version N]` writes

  <export_dir>/<modality>_encoder/<version>/   one SavedModel per encoder
  <export_dir>/<modality>_decoder/<version>/   one SavedModel per decoder
  <export_dir>/mmnet/<version>/                every module once, one signature per translation
  <export_dir>/models.config                   TF Serving `--model_config_file` (text proto)
  <export_dir>/manifest.json                   modalities, normalisation, classes, signatures

Serving contract (DESIGN.md), read from the modality descriptions, never from names:
  * encoder `serving_default`: input `image` with RAW values (rgb 0..255, depth in metres,
    nir 0..255: float32 [B, H, W, C]; segmentation: int32 labels [B, H, W]); outputs
    `latent` (float32 [B, H/32, W/32, L]) and `switches_1..switches_5` (shallow -> deep).
    Normalisation to model space happens in the graph (`Modality.normalize`).
  * decoder `serving_default`: inputs exactly the encoder outputs; output `image` in raw
    units (`Modality.denormalize`; probabilities [B, H, W, K] for segmentation) and, for
    categorical modalities, `labels` (int32 [B, H, W]).
  * Switches travel compactly: uint8 window positions, four per byte
    (`mm_tf.layers.compact_switches`); the decoder graph rebuilds the int64 indices
    (`mm_tf.layers.expand_switches`). With side_information="skip" the side outputs are
    float32 `skip_1..skip_5`; with "none" there is only `latent`.
  * encoders and decoders also have `serving_bytes`: the same computation with every input
    and output `K` replaced by `K_bytes`, DT_STRING [B], each element the serialized
    TensorProto (`tf.io.serialize_tensor`) of one example. TF Serving's REST API carries
    DT_STRING tensors named `*_bytes` as {"b64": "..."}, so the encoder->decoder hop costs
    base64 of the raw bytes instead of decimal numbers.
  * `mmnet` signatures: `<source>_to_<target>` (input `image`) for every ordered pair of
    distinct modalities, and `<a>_and_<b>[_and_<c>]_to_<target>` (one input per source,
    named after it) with the default fusion weights of `model.multimodal_weights`.

Batch size, height and width are dynamic (height and width multiples of the model's
`size_multiple`, 2**num_pools). Nothing is XLA-compiled: `max_pool_with_argmax` has no XLA
kernel. Variables are stored once: the SavedModel root tracks only the variables the
signatures capture (Keras' `model.export` tracks them twice, NOTES.md 5).

Atomicity: all SavedModels of a version are written into one staging directory inside
`export_dir` (`.export-staging-*`, not a version number, so no server loads it), then each
is renamed to `<model>/<version>`; `manifest.json` and `models.config` are replaced last
with `os.replace`. An interrupted export leaves no version directory; a SIGKILL at worst
leaves a staging directory, which the next export removes: the staging name records the
exporting process (`<pid>@<host>`), so a directory whose process is gone on this host is
removed at once, and one from another host (a shared file system) once it is
`STALE_STAGING_SECONDS` old.
"""

import itertools
import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
from typing import Dict, Mapping, Optional, Sequence

from absl import flags
import tensorflow as tf

from mm_tf import errors
from mm_tf import layers as mm_layers
from mm_tf import model as mm_model
from mm_tf import saving

MANIFEST_FILE = "manifest.json"
MODELS_CONFIG_FILE = "models.config"
MMNET_MODEL = "mmnet"
SERVING_SIGNATURE = "serving_default"
# The same computation with every tensor as per-example serialized TensorProtos (DT_STRING
# [B]); names end in `_bytes`, so TF Serving's REST API carries them as {"b64": ...}.
BYTES_SIGNATURE = "serving_bytes"
BYTES_SUFFIX = "_bytes"
IMAGE_KEY = "image"
LATENT_KEY = "latent"
LABELS_KEY = "labels"
STAGING_PREFIX = ".export-staging-"
# A staging directory older than this is an abandoned (killed) export, not a running one.
STALE_STAGING_SECONDS = 6 * 3600
MANIFEST_FORMAT = "mm_tf.serving/1"


def encoder_model_name(modality: str) -> str:
  return f"{modality}_encoder"


def decoder_model_name(modality: str) -> str:
  return f"{modality}_decoder"


def translation_signature_name(source: str, target: str) -> str:
  return f"{source}_to_{target}"


def multimodal_signature_name(sources: Sequence[str], target: str) -> str:
  return f"{'_and_'.join(sources)}_to_{target}"


def side_key(side_information: str, level: int) -> str:
  """Wire name of the side tensor of pooling level `level` (1 = shallowest)."""
  return f"{'switches' if side_information == 'switches' else 'skip'}_{level}"


# ---------------------------------------------------------------- graph pieces
class _WireFormat:
  """Shapes and dtypes of everything that crosses the wire for one model.

  Side channel counts are read from one encoder pass at the model's image size (they do
  not depend on the modality), so decoder signatures can fix their channel dimension.
  """

  def __init__(self, model):
    self.model = model
    self.side_information = model.side_information
    image_size = int(model.image_size)
    name = next(iter(model.modalities))
    dummy = tf.zeros([1, image_size, image_size, model.modalities[name].encoder_channels])
    latent, side = model.encoders[name](dummy, training=False)
    self.latent_channels = int(latent.shape[-1])
    self.side_channels = [int(s.shape[-1]) for s in side]

  def side_keys(self):
    return [side_key(self.side_information, k) for k in range(1, len(self.side_channels) + 1)]

  def wire_side_channels(self, channels):
    if self.side_information == "switches":
      return math.ceil(channels / mm_layers.POSITIONS_PER_BYTE)
    return channels

  def side_dtype(self):
    return tf.uint8 if self.side_information == "switches" else tf.float32

  def encoder_input_spec(self, modality_name, name=IMAGE_KEY):
    modality = self.model.modalities[modality_name]
    if modality.is_categorical:
      return tf.TensorSpec([None, None, None], tf.int32, name=name)
    return tf.TensorSpec([None, None, None, modality.channels], tf.float32, name=name)

  def decoder_input_specs(self):
    specs = {LATENT_KEY: tf.TensorSpec([None, None, None, self.latent_channels], tf.float32,
                                       name=LATENT_KEY)}
    for key, channels in zip(self.side_keys(), self.side_channels):
      specs[key] = tf.TensorSpec([None, None, None, self.wire_side_channels(channels)],
                                 self.side_dtype(), name=key)
    return specs

  # ------------------------------------------------------------ in-graph functions
  def encode(self, modality_name, raw_image):
    """Raw image -> wire dict (`latent` float32 + compact side tensors)."""
    modality = self.model.modalities[modality_name]
    shape = tf.shape(raw_image)
    # A clear message instead of a shape error deep in the decoder's unpooling.
    checks = [tf.debugging.assert_equal(
        shape[axis] % self.model.size_multiple, 0,
        message=f"{IMAGE_KEY} height and width must be multiples of {self.model.size_multiple}")
              for axis in (1, 2)]
    with tf.control_dependencies(checks):
      model_space = modality.normalize(raw_image)
    latent, side = self.model.encoders[modality_name](modality.encoder_input(model_space),
                                                      training=False)
    return self._to_wire(latent, side)

  def _to_wire(self, latent, side):
    wire = {LATENT_KEY: tf.cast(latent, tf.float32)}
    for key, tensor in zip(self.side_keys(), side):
      wire[key] = (mm_layers.compact_switches(tensor) if self.side_information == "switches"
                   else tf.cast(tensor, tf.float32))
    return wire

  def decode(self, modality_name, wire):
    """Wire dict -> raw-unit outputs (`image`, plus `labels` for categorical)."""
    modality = self.model.modalities[modality_name]
    side = []
    for key, channels in zip(self.side_keys(), self.side_channels):
      side.append(mm_layers.expand_switches(wire[key], channels)
                  if self.side_information == "switches" else wire[key])
    output = self.model.decoders[modality_name](wire[LATENT_KEY], tuple(side), training=False)
    if modality.is_categorical:
      return {IMAGE_KEY: modality.activate(output), LABELS_KEY: modality.to_labels(output)}
    return {IMAGE_KEY: modality.denormalize(output)}

  def fuse(self, sources, wires, weights):
    """Weighted average of latents; side of the anchor if given, else the first source."""
    total = sum(float(weights[s]) for s in sources)
    fused = tf.add_n([wires[s][LATENT_KEY] * (float(weights[s]) / total) for s in sources])
    side_source = self.model.anchor if self.model.anchor in sources else sources[0]
    wire = dict(wires[side_source])
    wire[LATENT_KEY] = fused
    return wire


def _concrete(fn, specs):
  return tf.function(fn, autograph=False, jit_compile=False).get_concrete_function(**specs)


def _parse_examples(serialized, spec):
  """[B] serialized TensorProtos, one example each -> one [B, ...] tensor of `spec`."""
  example_shape = spec.shape[1:]

  def parse(one):
    return tf.ensure_shape(tf.io.parse_tensor(one, spec.dtype), example_shape)
  return tf.map_fn(parse, serialized,
                   fn_output_signature=tf.TensorSpec(example_shape, spec.dtype))


def _serialize_examples(batch):
  """[B, ...] tensor -> [B] DT_STRING, each the serialized TensorProto of one example."""
  return tf.map_fn(tf.io.serialize_tensor, batch, fn_output_signature=tf.string)


def bytes_signature(concrete, input_specs):
  """`concrete` with every input and output `K` carried as `K_bytes` (see BYTES_SIGNATURE).

  Args:
    concrete: A concrete function taking keyword tensors `input_specs` and returning a dict.
    input_specs: `{name: tf.TensorSpec}` of its inputs, batch first.

  Returns:
    A concrete function with inputs `{name}_bytes` (DT_STRING [B]) and outputs
    `{output}_bytes` (DT_STRING [B]).
  """
  def fn(**serialized):
    inputs = {name: _parse_examples(serialized[name + BYTES_SUFFIX], spec)
              for name, spec in input_specs.items()}
    return {name + BYTES_SUFFIX: _serialize_examples(value)
            for name, value in concrete(**inputs).items()}
  return _concrete(fn, {name + BYTES_SUFFIX: tf.TensorSpec([None], tf.string,
                                                           name=name + BYTES_SUFFIX)
                        for name in input_specs})


class _Signatures:
  """Concrete serving functions, each module traced once.

  Translation and multimodal signatures call the per-module concrete functions, so a
  SavedModel stores each encoder/decoder graph once in its function library and export
  time grows with the number of modules, not with the number of signatures.
  """

  def __init__(self, wire_format):
    self.wire_format = wire_format
    self._encoders = {}
    self._decoders = {}

  def encoder(self, modality_name):
    if modality_name not in self._encoders:
      wire_format = self.wire_format
      self._encoders[modality_name] = _concrete(
          lambda image: wire_format.encode(modality_name, image),
          {IMAGE_KEY: wire_format.encoder_input_spec(modality_name)})
    return self._encoders[modality_name]

  def decoder(self, modality_name):
    if modality_name not in self._decoders:
      wire_format = self.wire_format
      self._decoders[modality_name] = _concrete(
          lambda **wire: wire_format.decode(modality_name, wire),
          wire_format.decoder_input_specs())
    return self._decoders[modality_name]

  def encoder_bytes(self, modality_name):
    return bytes_signature(
        self.encoder(modality_name),
        {IMAGE_KEY: self.wire_format.encoder_input_spec(modality_name)})

  def decoder_bytes(self, modality_name):
    return bytes_signature(self.decoder(modality_name), self.wire_format.decoder_input_specs())

  def translation(self, source, target):
    encoder, decoder = self.encoder(source), self.decoder(target)
    return _concrete(lambda image: decoder(**encoder(image=image)),
                     {IMAGE_KEY: self.wire_format.encoder_input_spec(source)})

  def multimodal(self, sources, target, weights):
    encoders = {s: self.encoder(s) for s in sources}
    decoder = self.decoder(target)

    def fn(**images):
      wires = {s: encoders[s](image=images[s]) for s in sources}
      return decoder(**self.wire_format.fuse(sources, wires, weights))
    return _concrete(fn, {s: self.wire_format.encoder_input_spec(s, name=s) for s in sources})


def multimodal_combinations(model):
  """(sources, target) of the mmnet multimodal signatures: 2+ sources, target not a source."""
  names = list(model.modalities)
  combos = []
  for count in range(2, len(names)):
    for sources in itertools.combinations(names, count):
      combos += [(sources, t) for t in names if t not in sources]
  return combos


def _save(signatures, directory, assets=None):
  """Saves signatures with each captured variable stored exactly once."""
  root = tf.Module()
  captured = {}
  for concrete in signatures.values():
    for variable in concrete.variables:
      captured.setdefault(id(variable), variable)
  # Only what the signatures capture: no discriminator, no optimizer slots, no duplicates.
  root.serving_variables = list(captured.values())
  tf.saved_model.save(root, directory, signatures=dict(signatures))
  if assets:
    extra = os.path.join(directory, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    for name, text in assets.items():
      with open(os.path.join(extra, name), "w") as f:
        f.write(text)


# ---------------------------------------------------------------- manifest / config
def _spec_json(spec):
  return {"dtype": spec.dtype.name, "shape": [-1 if d is None else d for d in spec.shape]}


def build_manifest(model, wire_format, version, include_multimodal=True):
  """The JSON description a client needs to build requests and read responses."""
  modalities = {}
  for name, m in model.modalities.items():
    lo, hi = m.raw_range
    a, b = m.normalized_range
    entry = {
        "channels": m.channels,
        "categorical": m.is_categorical,
        "decoder_uses_switches": m.decoder_uses_switches,
        "unit": m.unit,
        "encoder_input": _spec_json(wire_format.encoder_input_spec(name)),
    }
    if m.is_categorical:
      entry.update(
          normalization=(f"int labels 0..{m.channels - 1}; other values are void "
                         f"({m.void_label}) and encode as an all-zero one-hot"),
          decoder_outputs={IMAGE_KEY: "float32 [B, H, W, K] class probabilities (softmax)",
                           LABELS_KEY: "int32 [B, H, W] argmax class map"},
          class_names=list(m.class_names), palette=[list(p) for p in m.palette],
          void_label=m.void_label)
    else:
      invalid = ("" if m.invalid_value is None
                 else f"; raw {m.invalid_value:g} and NaN mark invalid pixels (-> 0)")
      entry.update(
          raw_range=[lo, hi], normalized_range=[a, b], invalid_value=m.invalid_value,
          normalization=(f"x = (clip(raw, {lo:g}, {hi:g}) - {lo:g}) / {hi - lo:g} * "
                         f"{b - a:g} + {a:g}{invalid}"),
          decoder_outputs={IMAGE_KEY: f"float32 [B, H, W, {m.channels}] raw units in "
                                      f"[{lo:g}, {hi:g}] {m.unit}".rstrip()})
    modalities[name] = entry
  translations = [translation_signature_name(s, t)
                  for s, t in itertools.permutations(model.modalities, 2)]
  multimodal = {}
  if include_multimodal:
    for sources, target in multimodal_combinations(model):
      multimodal[multimodal_signature_name(sources, target)] = {
          "sources": list(sources), "target": target,
          "weights": model.multimodal_weights(list(sources))}
  side = [{"name": key, "channels": c, "wire_channels": wire_format.wire_side_channels(c),
           "dtype": wire_format.side_dtype().name, "downsampling": 2**level}
          for level, (key, c) in enumerate(zip(wire_format.side_keys(),
                                                wire_format.side_channels), start=1)]
  return {
      "format": MANIFEST_FORMAT,
      "version": int(version),
      "image_size": int(model.image_size),
      "size_multiple": model.size_multiple,
      "anchor": model.anchor,
      # Training streams and the translations they pair (the rest are zero-pair).
      "streams": [list(s) for s in model.streams],
      "seen_translations": [translation_signature_name(s, t) for s, t in model.seen_translations],
      "side_information": model.side_information,
      # Decoders read the side information of this many of the finest levels; clients
      # still send every level (the signatures do not change), the deeper are ignored.
      "side_information_levels": model.side_information_levels,
      # Non-anchor encoders' latents are mapped onto the anchor's per-channel moments
      # (inside the exported encoders: clients need do nothing).
      "latent_calibration": model.latent_calibration,
      "latent": {"name": LATENT_KEY, "channels": wire_format.latent_channels,
                 "dtype": "float32", "downsampling": model.size_multiple},
      "side": side,
      "switch_encoding": (
          "uint8 [B, h, w, ceil(C/4)]: 2x2-window position (2*dy + dx) of each switch, "
          "channel 4k+j in bits 2j..2j+1 of byte k; the decoder rebuilds the int64 index "
          "(y * 2w + x) * C + c in its graph (mm_tf.layers.expand_switches)"
          if model.side_information == "switches" else None),
      "tensor_encodings": {
          SERVING_SIGNATURE: "tensors as themselves: JSON numbers over REST, TensorProto "
                             "over gRPC",
          BYTES_SIGNATURE: (
              f"encoders and decoders: every input/output K of {SERVING_SIGNATURE} becomes "
              f"K{BYTES_SUFFIX}, DT_STRING [B]; element i is the serialized TensorProto "
              "(tf.io.serialize_tensor / tf.io.parse_tensor; dtype, shape, little-endian "
              "tensor_content) of example i, e.g. latent float32 [H/32, W/32, L]; over REST "
              "each element is {\"b64\": base64(bytes)} (TF Serving's rule for DT_STRING "
              "tensors named *_bytes)"),
      },
      "modalities": modalities,
      "models": {
          **{encoder_model_name(m): {"kind": "encoder", "modality": m} for m in model.modalities},
          **{decoder_model_name(m): {"kind": "decoder", "modality": m} for m in model.modalities},
          MMNET_MODEL: {"kind": "mmnet", "translations": translations,
                        "multimodal": multimodal},
      },
      # Default fusion weights (model.multimodal_weights): each non-anchor source gets
      # this weight and the anchor the rest; equal weights without the anchor.
      "multimodal_non_anchor_weight": mm_model.MULTIMODAL_NON_ANCHOR_WEIGHT,
  }


def models_config_text(model_names: Sequence[str], base_path: str) -> str:
  """TF Serving `--model_config_file` text for `model_names` under `base_path`."""
  from tensorflow_serving.config import model_server_config_pb2  # Heavy; only here.
  from google.protobuf import text_format
  config = model_server_config_pb2.ModelServerConfig()
  for name in model_names:
    entry = config.model_config_list.config.add()
    entry.name = name
    entry.base_path = f"{base_path.rstrip('/')}/{name}"
    entry.model_platform = "tensorflow"
  return text_format.MessageToString(config)


def parse_models_config(text: str):
  """Parses models.config with TF Serving's own proto; raises ValueError if invalid.

  Returns:
    `[(name, base_path)]` of every configured model.
  """
  from tensorflow_serving.config import model_server_config_pb2
  from google.protobuf import text_format
  config = model_server_config_pb2.ModelServerConfig()
  try:
    text_format.Parse(text, config)
  except text_format.ParseError as e:
    raise ValueError(f"models.config is not a valid ModelServerConfig: {e}") from e
  entries = [(c.name, c.base_path) for c in config.model_config_list.config]
  if not entries:
    raise ValueError("models.config lists no model.")
  for name, base_path in entries:
    if not name or not base_path:
      raise ValueError(f"models.config entry {name!r} needs a name and a base_path.")
  return entries


# ---------------------------------------------------------------- versions / atomic writes
_VERSION_DIR = re.compile(r"^[0-9]+$")


def versions(model_dir: str):
  """Sorted integer versions of a TF Serving model directory that hold a SavedModel."""
  if not os.path.isdir(model_dir):
    return []
  return sorted(int(d) for d in os.listdir(model_dir)
                if _VERSION_DIR.match(d) and
                os.path.isfile(os.path.join(model_dir, d, "saved_model.pb")))


def next_version(export_dir: str) -> int:
  """One more than the largest version of any model in `export_dir` (1 if none)."""
  latest = 0
  if os.path.isdir(export_dir):
    for name in os.listdir(export_dir):
      found = versions(os.path.join(export_dir, name))
      latest = max([latest] + found)
  return latest + 1


def _write_atomic(path, text):
  directory = os.path.dirname(os.path.abspath(path))
  fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}-", dir=directory)
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


def _host():
  return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())


def _staging_prefix():
  # The owner goes into the name (created atomically by mkdtemp), not into a file written
  # after it, so a kill at any point leaves a directory the next export can attribute.
  return f"{STAGING_PREFIX}{os.getpid()}@{_host()}-"


def _process_alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's process: alive.
    return True
  return True


def _remove_stale_staging(export_dir):
  """Removes staging directories of exports that were killed.

  A directory made by a process of this host that no longer runs is removed at once; any
  (another host's, an older name format, or one whose pid was reused) once it is
  `STALE_STAGING_SECONDS` old, because a running export on another host must not lose
  its files.
  """
  now, host = time.time(), _host()
  owner = re.compile(rf"^{re.escape(STAGING_PREFIX)}(\d+)@([A-Za-z0-9._]+)-[^-]*$")
  for name in os.listdir(export_dir):
    if not name.startswith(STAGING_PREFIX):
      continue
    path = os.path.join(export_dir, name)
    match = owner.match(name)
    try:
      abandoned = ((match and match.group(2) == host
                    and not _process_alive(int(match.group(1))))
                   or now - os.path.getmtime(path) > STALE_STAGING_SECONDS)
    except OSError:  # Removed meanwhile by its own export.
      continue
    if abandoned:
      shutil.rmtree(path, ignore_errors=True)


def export_model(model, export_dir: str, version: Optional[int] = None,
                 include_multimodal: bool = True, serving_base_path: Optional[str] = None,
                 include_mmnet: bool = True) -> Dict[str, str]:
  """Exports every encoder, decoder and the `mmnet` model as TF Serving SavedModels.

  Args:
    model: A built `MixAndMatchNetworks` (e.g. `mm_tf.load(model_dir)`).
    export_dir: Root of the TF Serving layout; created if needed.
    version: Version number; default one more than the largest already there. An
      existing version is never overwritten (servers may have it loaded).
    include_multimodal: Add the multimodal signatures to `mmnet`.
    serving_base_path: Where TF Serving will see `export_dir` (written into
      models.config), e.g. "/models/mmnet" inside a Docker container. Default: the
      absolute `export_dir`.
    include_mmnet: Also write the `mmnet` model.

  Returns:
    `{model_name: version_dir}` plus "manifest" and "models_config" paths.

  Raises:
    FileExistsError: `version` already exists for one of the models.
  """
  if not model.built or model.image_size is None:
    raise ValueError("export_model needs a built model with an image_size; load it with "
                     "mm_tf.load(model_dir) or build it with image_size=...")
  export_dir = os.path.abspath(export_dir)
  os.makedirs(export_dir, exist_ok=True)
  _remove_stale_staging(export_dir)
  version = int(version) if version is not None else next_version(export_dir)
  if version < 1:
    raise ValueError(f"version must be >= 1 (TF Serving loads positive versions), got {version}.")
  wire_format = _WireFormat(model)
  names = list(model.modalities)
  model_names = ([encoder_model_name(m) for m in names] + [decoder_model_name(m) for m in names]
                 + ([MMNET_MODEL] if include_mmnet else []))
  for name in model_names:
    if os.path.exists(os.path.join(export_dir, name, str(version))):
      raise FileExistsError(
          f"{os.path.join(export_dir, name, str(version))} already exists; export another "
          "--version (servers may have this one loaded) or delete it first.")
  manifest = build_manifest(model, wire_format, version, include_multimodal and include_mmnet)
  manifest["models"] = {k: v for k, v in manifest["models"].items() if k in model_names}
  manifest_text = json.dumps(manifest, indent=2)
  assets = {MANIFEST_FILE: manifest_text}

  staging = tempfile.mkdtemp(prefix=_staging_prefix(), dir=export_dir)
  try:
    functions = _Signatures(wire_format)
    for m in names:
      _save({SERVING_SIGNATURE: functions.encoder(m),
             BYTES_SIGNATURE: functions.encoder_bytes(m)},
            os.path.join(staging, encoder_model_name(m)), assets)
      _save({SERVING_SIGNATURE: functions.decoder(m),
             BYTES_SIGNATURE: functions.decoder_bytes(m)},
            os.path.join(staging, decoder_model_name(m)), assets)
    if include_mmnet:
      signatures = {}
      for source, target in itertools.permutations(names, 2):
        signatures[translation_signature_name(source, target)] = functions.translation(
            source, target)
      if include_multimodal:
        for sources, target in multimodal_combinations(model):
          signatures[multimodal_signature_name(sources, target)] = functions.multimodal(
              sources, target, model.multimodal_weights(list(sources)))
      # The anchor's seen translation of the first stream as the default signature.
      default = translation_signature_name(model.streams[0][0], model.streams[0][1])
      signatures[SERVING_SIGNATURE] = signatures[default]
      manifest["models"][MMNET_MODEL]["serving_default"] = default
      assets = {MANIFEST_FILE: json.dumps(manifest, indent=2)}
      _save(signatures, os.path.join(staging, MMNET_MODEL), assets)
    saving.kill_point("export_commit")  # Every SavedModel staged, none committed.
    # Commit: each rename is atomic; a version directory appears complete or not at all.
    paths = {}
    for name in model_names:
      os.makedirs(os.path.join(export_dir, name), exist_ok=True)
      target = os.path.join(export_dir, name, str(version))
      os.rename(os.path.join(staging, name), target)
      paths[name] = target
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  paths["manifest"] = os.path.join(export_dir, MANIFEST_FILE)
  _write_atomic(paths["manifest"], json.dumps(manifest, indent=2))
  config_text = models_config_text(model_names, serving_base_path or export_dir)
  parse_models_config(config_text)  # Never write a config TF Serving would reject.
  paths["models_config"] = os.path.join(export_dir, MODELS_CONFIG_FILE)
  _write_atomic(paths["models_config"], config_text)
  return paths


# ---------------------------------------------------------------- CLI
FLAGS = flags.FLAGS


def _define_flags():
  flags.DEFINE_string("model_dir", None, "Training model_dir (or saved model dir) to export.")
  flags.DEFINE_string("export_dir", "export/serving", "Root of the TF Serving layout.")
  flags.DEFINE_integer("version", None, "Version to write (default: latest + 1).")
  flags.DEFINE_string("serving_base_path", None,
                      "export_dir as TF Serving sees it, for models.config (e.g. /models/mmnet "
                      "in Docker). Default: the absolute export_dir.")
  flags.DEFINE_bool("multimodal", True, "Add multimodal signatures to the mmnet model.")
  flags.DEFINE_string("examples_from", None, "Dataset directory in the Freiburg layout (e.g. "
                      "data/synthetic_forest): copy a few test scenes into <export_dir>/examples "
                      "for the demo page of mm_tf.serve.")
  flags.DEFINE_integer("num_examples", 4, "Test scenes copied by --examples_from.")
  flags.mark_flag_as_required("model_dir")


def main(argv):
  del argv
  import mm_tf  # pylint: disable=g-import-not-at-top
  if os.path.exists(FLAGS.export_dir) and not os.path.isdir(FLAGS.export_dir):
    raise errors.MissingInputError(f"--export_dir={FLAGS.export_dir} is a file, not a "
                                   "directory: pick another --export_dir.")
  model = mm_tf.load(FLAGS.model_dir)  # A missing model is a one-line MissingInputError.
  paths = export_model(model, FLAGS.export_dir, FLAGS.version,
                       include_multimodal=FLAGS.multimodal,
                       serving_base_path=FLAGS.serving_base_path)
  if FLAGS.examples_from:
    from mm_tf.demo import examples  # pylint: disable=g-import-not-at-top
    paths["examples"] = examples.write_examples(FLAGS.export_dir, FLAGS.examples_from,
                                                FLAGS.num_examples)
  for name, path in paths.items():
    print(f"{name}: {path}")


if __name__ == "__main__":
  _define_flags()
  errors.run_cli(main, "mm_tf.export")
