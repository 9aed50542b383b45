"""The demo page's HTTP side: a Flask blueprint that `mm_tf.serve` registers at `/`.

Routes (all JSON except the page and the files):
  GET  /                                    the page (static/index.html; no external resources)
  GET  /demo/api/info                       modalities, formats, classes, palette, depth scale,
                                            streams, seen translations, examples
  POST /demo/api/translate                  multipart form: one file per modality (field name =
                                            modality), `size_mode` (model|native), `weight`
                                            -> inputs, every translation, the fusions, notes,
                                            per-slot errors, a token for /demo/api/fuse
  POST /demo/api/fuse                       {"token", "weight"} -> the fusions again (slider)
  GET  /demo/examples/<id>/<modality>       an example's file as the dataset stores it
  GET  /demo/examples/<id>/<modality>/preview   the same, as a picture

A bad upload is answered with its message (HTTP 200 when other inputs still translate, 400
when none does); nothing a user sends stops the server.
"""

import logging
import os
import threading
import time
from importlib import resources

import flask

from mm_tf.demo import core
from mm_tf.demo import examples as demo_examples

STATIC_PAGE = "index.html"


def _page_html() -> str:
  return resources.files("mm_tf.demo").joinpath("static").joinpath(STATIC_PAGE).read_text("utf-8")


class _State:
  """Manifest and translator, built on first use (the REST API does not pay for them)."""

  def __init__(self, registry):
    self.registry = registry
    self._lock = threading.Lock()
    self._translator = None
    self.manifest = None

  def translator(self) -> core.Translator:
    with self._lock:
      if self._translator is None:
        self.manifest = core.manifest_from_registry(self.registry)
        if self.manifest is None:
          raise core.UploadError("The served models carry no mm_tf manifest "
                                 "(assets.extra/manifest.json): the demo needs an mm_tf export.")
        self._translator = core.Translator(self.registry, self.manifest)
      return self._translator

  def export_dir(self):
    return core.export_dir_of(self.registry)


def _error(message, status=400, **extra):
  return flask.jsonify({"error": message, **extra}), status


def _weight(value):
  if value in (None, "", "default"):
    return None
  try:
    weight = float(value)
  except (TypeError, ValueError) as e:
    raise core.UploadError(f"weight must be a number in [0, 1], got {value!r}.") from e
  if not 0.0 <= weight <= 1.0:
    raise core.UploadError(f"weight must be in [0, 1], got {weight}.")
  return weight


def blueprint(registry) -> flask.Blueprint:
  """The demo blueprint for a `mm_tf.serve.ModelRegistry`."""
  bp = flask.Blueprint("demo", __name__)
  state = _State(registry)

  @bp.route("/", methods=["GET"])
  def index():
    return flask.Response(_page_html(), mimetype="text/html")

  @bp.route("/demo/api/info", methods=["GET"])
  def info():
    try:
      translator = state.translator()
    except core.UploadError as e:
      return _error(str(e), 500)
    manifest = translator.manifest
    modalities = {}
    for name, entry in manifest["modalities"].items():
      modalities[name] = {
          "categorical": bool(entry.get("categorical")),
          "accept": core.ACCEPT.get(name, "image/*"),
          "formats": core.FORMATS.get(name, ((), "an image"))[1],
          "unit": entry.get("unit", ""),
          "raw_range": entry.get("raw_range"),
          "class_names": entry.get("class_names"),
          "palette": entry.get("palette"),
          "accepted": name in core.FORMATS,
      }
    return flask.jsonify({
        "version": manifest.get("version"),
        "order": list(manifest["modalities"]),
        "modalities": modalities,
        "anchor": manifest.get("anchor"),
        "image_size": manifest.get("image_size"),
        "size_multiple": manifest.get("size_multiple", 32),
        "max_side": core.MAX_SIDE,
        "streams": manifest.get("streams"),
        "seen_translations": manifest.get("seen_translations"),
        "default_weight": manifest.get("multimodal_non_anchor_weight", 0.2),
        "depth_range": translator.pictures.depth_range(),
        "depth_colormap": core.DEPTH_COLORMAP,
        "colorbar": translator.pictures.colorbar(),
        "examples": demo_examples.list_examples(state.export_dir() or ""),
    })

  @bp.route("/demo/api/translate", methods=["POST"])
  def translate():
    start = time.perf_counter()
    try:
      translator = state.translator()
      size_mode = flask.request.form.get("size_mode", "model")
      if size_mode not in core.SIZE_MODES:
        raise core.UploadError(f"size_mode must be one of {core.SIZE_MODES}, got {size_mode!r}.")
      weight = _weight(flask.request.form.get("weight"))
    except core.UploadError as e:
      return _error(str(e))
    manifest = translator.manifest
    errors, notes, images, files = {}, {}, {}, {}
    for name in manifest["modalities"]:
      upload = flask.request.files.get(name)
      if upload is None or not upload.filename:
        continue
      files[name] = upload.filename
      try:
        array, notes[name] = core.decode_upload(manifest, name, upload.read(), upload.filename)
        images[name] = core.to_model_input(manifest["modalities"][name], array)
      except core.UploadError as e:
        errors[name] = str(e)
    unknown = sorted(set(flask.request.files) - set(manifest["modalities"]))
    for name in unknown:
      errors[name] = f"This model has no {name!r} input; it has {', '.join(manifest['modalities'])}."
    if not images:
      return _error("No usable input: " + ("; ".join(f"{k}: {v}" for k, v in errors.items())
                                           if errors else "choose at least one file."),
                    errors=errors)
    images, size_notes = core.fit_inputs(manifest, images, size_mode)
    for name, extra in size_notes.items():
      notes[name] = notes.get(name, []) + extra
    decode_s = time.perf_counter() - start
    try:
      translations = translator.translate_all(images)
      fusion = translator.fuse_all(images, weight)
    except Exception as e:  # pylint: disable=broad-except
      logging.exception("Demo translation failed.")
      return _error(f"Translation failed: {type(e).__name__}: {e}", 500, errors=errors)
    height, width = next(iter(images.values())).shape[:2]
    return flask.jsonify({
        "token": translator.remember(images),
        "size": [height, width],
        "inputs": {name: {"file": files[name], "notes": notes.get(name, []),
                          "image": translator.pictures.data_url(name, images[name])}
                   for name in images},
        "errors": errors,
        "translations": translations,
        "fusion": fusion,
        "weight": weight,
        "timing_ms": {"decode_and_resize": round(1000 * decode_s, 1),
                      "server_total": round(1000 * (time.perf_counter() - start), 1)},
    })

  @bp.route("/demo/api/fuse", methods=["POST"])
  def fuse():
    body = flask.request.get_json(silent=True) or {}
    try:
      translator = state.translator()
      weight = _weight(body.get("weight"))
      images = translator.recall(str(body.get("token")))
    except core.UploadError as e:
      return _error(str(e))
    except KeyError:
      return _error("These inputs are no longer on the server (it keeps the last "
                    f"{core.CACHE_ENTRIES}); translate them again.", 404)
    return flask.jsonify({"fusion": translator.fuse_all(images, weight), "weight": weight})

  def _example_path(example_id, modality):
    try:
      return demo_examples.example_file(state.export_dir() or "", example_id, modality)
    except KeyError:
      return None

  @bp.route("/demo/examples/<example_id>/<modality>", methods=["GET"])
  def example_file(example_id, modality):
    path = _example_path(example_id, modality)
    if path is None:
      return _error(f"No example {example_id!r} with a {modality} file.", 404)
    return flask.send_file(os.path.abspath(path), download_name=os.path.basename(path))

  @bp.route("/demo/examples/<example_id>/<modality>/preview", methods=["GET"])
  def example_preview(example_id, modality):
    path = _example_path(example_id, modality)
    if path is None:
      return _error(f"No example {example_id!r} with a {modality} file.", 404)
    try:
      translator = state.translator()
      with open(path, "rb") as f:
        array, _ = core.decode_upload(translator.manifest, modality, f.read(),
                                      os.path.basename(path))
    except core.UploadError as e:
      return _error(str(e))
    return flask.Response(core.png_bytes(translator.pictures.picture(modality, array)),
                          mimetype="image/png")

  return bp


def register(flask_app: flask.Flask, registry) -> None:
  """Adds the demo page (`/`) and its API (`/demo/...`) to the server's Flask app."""
  flask_app.register_blueprint(blueprint(registry))
