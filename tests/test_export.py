"""Tests of mm_tf.export: layout, manifest, models.config, compact switches, atomicity.

The composition test loads the SavedModels in a separate Python process that imports
only TensorFlow, as TF Serving would, and compares with the in-memory model.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from unittest import mock

import numpy as np
import tensorflow as tf

from mm_tf import export
from mm_tf import layers
from tests import serving_fixture

# Runs in a fresh interpreter: TensorFlow only, never mm_tf.
_COMPOSE_SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
export_dir, inputs_path, outputs_path = sys.argv[1:4]
inputs = np.load(inputs_path)
def load(name):
  return tf.saved_model.load(f"{export_dir}/{name}/1").signatures["serving_default"]
encoder, decoder = load("depth_encoder"), load("segmentation_decoder")
wire = encoder(image=tf.constant(inputs["depth"]))
composed = decoder(**wire)
# Any batch size: the same images one at a time give the same result.
single = decoder(**encoder(image=tf.constant(inputs["depth"][:1])))
mmnet = tf.saved_model.load(f"{export_dir}/mmnet/1").signatures
via_mmnet = mmnet["depth_to_segmentation"](image=tf.constant(inputs["depth"]))
fused = mmnet["rgb_and_depth_to_segmentation"](rgb=tf.constant(inputs["rgb"]),
                                               depth=tf.constant(inputs["depth"]))
seg_to_depth = load("depth_decoder")(**load("segmentation_encoder")(
    image=tf.constant(inputs["labels"])))
rgb_out = load("rgb_decoder")(**wire)
np.savez(outputs_path, probabilities=composed["image"].numpy(),
         labels=composed["labels"].numpy(), single=single["image"].numpy(),
         mmnet=via_mmnet["image"].numpy(), fused=fused["image"].numpy(),
         seg_to_depth=seg_to_depth["image"].numpy(), rgb=rgb_out["image"].numpy(),
         wire_dtypes=np.array(json.dumps({k: v.dtype.name for k, v in wire.items()})))
print("MM_TF_IMPORTED", "mm_tf" in sys.modules)
"""


def _saved_model_cli():
  """TF's own `saved_model_cli`, from the running interpreter's environment."""
  script = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  if os.path.exists(script):
    return [script]
  return [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


class SwitchCompactionTest(tf.test.TestCase):

  def test_round_trip_is_exact_for_any_channel_count(self):
    rng = np.random.default_rng(0)
    for channels in (1, 3, 4, 5, 8, 13):
      x = tf.constant(rng.normal(size=(3, 8, 12, channels)), tf.float32)
      _, switches = layers.MaxPoolWithArgmax()(x)
      packed = layers.compact_switches(switches)
      self.assertEqual(packed.dtype, tf.uint8)
      self.assertEqual(packed.shape, (3, 4, 6, -(-channels // 4)))
      self.assertAllEqual(layers.expand_switches(packed, channels), switches)

  def test_positions_match_numpy_reference(self):
    x = np.random.default_rng(1).normal(size=(1, 4, 4, 4)).astype(np.float32)
    _, switches = layers.MaxPoolWithArgmax()(tf.constant(x))
    packed = layers.compact_switches(switches).numpy()
    for i in range(2):
      for j in range(2):
        for c in range(4):
          window = x[0, 2 * i:2 * i + 2, 2 * j:2 * j + 2, c].reshape(-1)
          position = (packed[0, i, j, 0] >> (2 * c)) & 3
          self.assertEqual(position, int(np.argmax(window)))

  def test_every_byte_expands_into_its_window(self):
    packed = tf.reshape(tf.range(256, dtype=tf.int32), [1, 16, 16, 1])
    switches = layers.expand_switches(tf.cast(packed, tf.uint8), 4).numpy()
    pixel = switches // 4
    y, x = pixel // 32, pixel % 32
    rows, cols = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    self.assertTrue(np.all((y[0] // 2) == rows[..., None]))
    self.assertTrue(np.all((x[0] // 2) == cols[..., None]))


class ExportTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model, cls.export_dir, cls.model_dir = serving_fixture.exported()

  def test_tf_serving_layout_manifest_and_models_config(self):
    names = [f"{m}_{kind}" for kind in ("encoder", "decoder") for m in self.model.modalities]
    for name in names + ["mmnet"]:
      self.assertTrue(os.path.isfile(os.path.join(self.export_dir, name, "1", "saved_model.pb")),
                      name)
    with open(os.path.join(self.export_dir, "models.config")) as f:
      entries = export.parse_models_config(f.read())
    self.assertCountEqual([n for n, _ in entries], names + ["mmnet"])
    for name, base_path in entries:
      self.assertEqual(base_path, os.path.join(self.export_dir, name))
    with open(os.path.join(self.export_dir, "manifest.json")) as f:
      manifest = json.load(f)
    self.assertEqual(manifest["version"], 1)
    self.assertEqual(manifest["image_size"], serving_fixture.IMAGE_SIZE)
    segmentation = self.model.modalities["segmentation"]
    self.assertEqual(manifest["modalities"]["segmentation"]["class_names"],
                     list(segmentation.class_names))
    self.assertEqual(manifest["modalities"]["segmentation"]["palette"],
                     [list(p) for p in segmentation.palette])
    self.assertEqual(manifest["modalities"]["depth"]["raw_range"],
                     list(self.model.modalities["depth"].raw_range))
    self.assertIn("depth_to_segmentation", manifest["models"]["mmnet"]["translations"])
    self.assertIn("rgb_and_depth_to_segmentation", manifest["models"]["mmnet"]["multimodal"])
    self.assertIn("serialize_tensor", manifest["tensor_encodings"]["serving_bytes"])

  def test_models_config_parser_rejects_garbage(self):
    with self.assertRaisesRegex(ValueError, "ModelServerConfig"):
      export.parse_models_config("model_config_list { config { nme: 'x' } }")
    with self.assertRaisesRegex(ValueError, "no model"):
      export.parse_models_config("")

  def test_variables_are_stored_once(self):
    encoder = self.model.encoders["depth"]
    parameter_bytes = sum(int(np.prod(v.shape)) * 4 for v in encoder.variables)
    variables_dir = os.path.join(self.export_dir, "depth_encoder", "1", "variables")
    stored = sum(os.path.getsize(os.path.join(variables_dir, f)) for f in os.listdir(variables_dir))
    self.assertLess(stored, 1.3 * parameter_bytes)
    self.assertGreater(stored, parameter_bytes)

  def test_separate_tensorflow_only_process_matches_in_memory_translation(self):
    modalities = self.model.modalities
    depth = serving_fixture.raw_batch(modalities["depth"], batch=3)
    depth[0, 5, 5, 0] = np.nan  # Invalid pixel: normalised in-graph, never propagated.
    rgb = serving_fixture.raw_batch(modalities["rgb"], batch=3, seed=1)
    labels = serving_fixture.raw_batch(modalities["segmentation"], batch=3, seed=2)
    with tempfile.TemporaryDirectory() as tmp:
      inputs_path, outputs_path = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
      np.savez(inputs_path, depth=depth, rgb=rgb, labels=labels)
      result = subprocess.run(
          [sys.executable, "-c", _COMPOSE_SCRIPT, self.export_dir, inputs_path, outputs_path],
          capture_output=True, text=True, timeout=170, cwd=tmp,
          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
      self.assertEqual(result.returncode, 0, result.stderr[-3000:])
      self.assertIn("MM_TF_IMPORTED False", result.stdout)
      out = dict(np.load(outputs_path))
    depth_model = modalities["depth"].normalize(depth)
    logits = self.model.translate("depth", "segmentation", depth_model)
    expected = tf.nn.softmax(logits).numpy()
    self.assertAllClose(out["probabilities"], expected, atol=1e-5, rtol=0)
    self.assertAllEqual(out["labels"], tf.argmax(logits, -1).numpy())
    self.assertAllClose(out["single"], expected[:1], atol=1e-5, rtol=0)
    self.assertAllClose(out["mmnet"], expected, atol=1e-5, rtol=0)
    fused = self.model.translate_multimodal(
        {"rgb": modalities["rgb"].normalize(rgb), "depth": depth_model}, "segmentation")
    self.assertAllClose(out["fused"], tf.nn.softmax(fused).numpy(), atol=1e-5, rtol=0)
    seg_to_depth = modalities["depth"].denormalize(self.model.translate(
        "segmentation", "depth", modalities["segmentation"].normalize(labels)))
    self.assertAllClose(out["seg_to_depth"], seg_to_depth.numpy(), atol=1e-5, rtol=0)
    # Raw units: metres within the depth range, rgb within 0..255.
    self.assertAllInRange(out["seg_to_depth"], *modalities["depth"].raw_range)
    self.assertAllInRange(out["rgb"], 0.0, 255.0)
    wire_dtypes = json.loads(str(out["wire_dtypes"]))
    self.assertEqual(wire_dtypes["latent"], "float32")
    self.assertEqual({wire_dtypes[f"switches_{k}"] for k in range(1, 6)}, {"uint8"})

  def test_saved_model_cli_shows_and_runs_an_encoder_and_a_decoder(self):
    def cli(*args):
      result = subprocess.run(_saved_model_cli() + list(args), capture_output=True, text=True,
                              timeout=170, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
      self.assertEqual(result.returncode, 0, result.stderr[-3000:])
      return result.stdout

    encoder_dir = os.path.join(self.export_dir, "depth_encoder", "1")
    decoder_dir = os.path.join(self.export_dir, "segmentation_decoder", "1")
    shown = cli("show", "--all", "--dir", encoder_dir)
    for expected in ("signature_def['serving_default']", "signature_def['serving_bytes']",
                     "inputs['image']", "outputs['switches_5']", "inputs['image_bytes']",
                     "outputs['latent_bytes']", "DT_UINT8", "DT_STRING"):
      self.assertIn(expected, shown)
    shown = cli("show", "--all", "--dir", decoder_dir)
    for expected in ("inputs['latent']", "inputs['switches_1']", "outputs['labels']",
                     "inputs['switches_1_bytes']", "outputs['image_bytes']"):
      self.assertIn(expected, shown)
    depth = serving_fixture.raw_batch(self.model.modalities["depth"], batch=2)
    with tempfile.TemporaryDirectory() as tmp:
      np.save(os.path.join(tmp, "depth.npy"), depth)
      encoded, decoded = os.path.join(tmp, "encoded"), os.path.join(tmp, "decoded")
      cli("run", "--dir", encoder_dir, "--tag_set", "serve", "--signature_def",
          "serving_default", "--inputs", f"image={os.path.join(tmp, 'depth.npy')}",
          "--outdir", encoded)
      wire = ["latent"] + [f"switches_{k}" for k in range(1, 6)]
      cli("run", "--dir", decoder_dir, "--tag_set", "serve", "--signature_def",
          "serving_default", "--inputs",
          ";".join(f"{name}={os.path.join(encoded, name + '.npy')}" for name in wire),
          "--outdir", decoded)
      probabilities = np.load(os.path.join(decoded, "image.npy"))
      labels = np.load(os.path.join(decoded, "labels.npy"))
    logits = self.model.translate("depth", "segmentation",
                                  self.model.modalities["depth"].normalize(depth))
    self.assertAllClose(probabilities, tf.nn.softmax(logits), atol=1e-5, rtol=0)
    self.assertAllEqual(labels, tf.argmax(logits, -1))

  def test_bytes_signatures_round_trip_serialized_tensor_protos(self):
    from mm_tf import tensor_protos  # pylint: disable=g-import-not-at-top
    depth = serving_fixture.raw_batch(self.model.modalities["depth"], batch=2)
    encoder = tf.saved_model.load(os.path.join(self.export_dir, "depth_encoder", "1"))
    decoder = tf.saved_model.load(os.path.join(self.export_dir, "segmentation_decoder", "1"))
    # Inputs written without TensorFlow (tensor_protos), outputs read by tf.io.parse_tensor.
    images = tf.constant([tensor_protos.serialize_tensor(image) for image in depth])
    wire = encoder.signatures[export.BYTES_SIGNATURE](image_bytes=images)
    self.assertCountEqual(wire, ["latent_bytes"] + [f"switches_{k}_bytes" for k in range(1, 6)])
    numbers = encoder.signatures[export.SERVING_SIGNATURE](image=tf.constant(depth))
    for name, value in numbers.items():
      self.assertEqual(wire[name + "_bytes"].shape, [2])
      self.assertAllEqual(tf.io.parse_tensor(wire[name + "_bytes"][1], value.dtype), value[1])
    decoded = decoder.signatures[export.BYTES_SIGNATURE](**wire)
    expected = decoder.signatures[export.SERVING_SIGNATURE](**numbers)
    for name in ("image", "labels"):
      parsed = np.stack([tensor_protos.parse_tensor(b) for b in decoded[name + "_bytes"].numpy()])
      self.assertAllEqual(parsed, expected[name])
    with self.assertRaises(tf.errors.InvalidArgumentError):
      encoder.signatures[export.BYTES_SIGNATURE](image_bytes=tf.constant(
          [tensor_protos.serialize_tensor(np.zeros((64, 64, 3), np.float32))]))

  def test_loaded_model_translator_predicts_numpy_like_translate(self):
    import mm_tf  # pylint: disable=g-import-not-at-top
    loaded = mm_tf.load(self.model_dir)
    depth = self.model.modalities["depth"].normalize(
        serving_fixture.raw_batch(self.model.modalities["depth"], batch=3)).numpy()
    translator = loaded.translator("depth", "segmentation")
    self.assertFalse(translator.jit_compile)
    predicted = translator.predict(depth, batch_size=2, verbose=0)
    self.assertIsInstance(predicted, np.ndarray)
    self.assertAllClose(predicted, self.model.translate("depth", "segmentation", depth),
                        atol=1e-5, rtol=0)
    with self.assertRaisesRegex(ValueError, "Unknown modality"):
      loaded.translator("depth", "thermal")

  def test_interrupted_export_leaves_no_loadable_version(self):
    calls = []
    real_save = export._save

    def save_then_fail(*args, **kwargs):
      calls.append(args[1])
      if len(calls) == 3:
        raise KeyboardInterrupt("simulated interruption")
      return real_save(*args, **kwargs)

    with mock.patch.object(export, "_save", save_then_fail):
      with self.assertRaises(KeyboardInterrupt):
        export.export_model(self.model, self.export_dir, version=2, include_mmnet=False)
    self.assertLen(calls, 3)
    for name in os.listdir(self.export_dir):
      path = os.path.join(self.export_dir, name)
      self.assertFalse(name.startswith(export.STAGING_PREFIX), "staging directory left over")
      if os.path.isdir(path):
        self.assertEqual(export.versions(path), [1], name)
    self.assertEqual(export.next_version(self.export_dir), 2)
    with open(os.path.join(self.export_dir, "manifest.json")) as f:
      self.assertEqual(json.load(f)["version"], 1)

  def test_killed_export_staging_is_ignored_and_existing_versions_are_kept(self):
    # What a SIGKILL leaves behind: a staging directory holding a complete-looking model.
    staging = tempfile.mkdtemp(prefix=export.STAGING_PREFIX, dir=self.export_dir)
    try:
      os.makedirs(os.path.join(staging, "depth_encoder"))
      open(os.path.join(staging, "depth_encoder", "saved_model.pb"), "wb").close()
      self.assertEqual(export.versions(staging), [])
      self.assertEqual(export.next_version(self.export_dir), 2)
    finally:
      shutil.rmtree(staging)
    with self.assertRaisesRegex(FileExistsError, "already exists"):
      export.export_model(self.model, self.export_dir, version=1)

  def test_next_export_removes_only_abandoned_staging_directories(self):
    dead = subprocess.Popen(["true"])  # A pid of this host that no longer runs.
    dead.wait()
    host = export._staging_prefix().split("@", 1)[1]
    names = {
        "dead_here": f"{export.STAGING_PREFIX}{dead.pid}@{host}abc123",
        "alive_here": f"{export._staging_prefix()}abc123",
        "other_host": f"{export.STAGING_PREFIX}{dead.pid}@elsewhere.example-abc123",
        "other_host_old": f"{export.STAGING_PREFIX}{dead.pid}@elsewhere.example-old123",
        "old_format": f"{export.STAGING_PREFIX}abc123",
        "alive_here_old": f"{export._staging_prefix()}old123",  # A reused pid.
    }
    for name in names.values():
      os.makedirs(os.path.join(self.export_dir, name, "depth_encoder"))
    old = time.time() - export.STALE_STAGING_SECONDS - 60
    for stale in ("other_host_old", "alive_here_old"):
      os.utime(os.path.join(self.export_dir, names[stale]), (old, old))
    export._remove_stale_staging(self.export_dir)
    left = set(os.listdir(self.export_dir))
    self.assertNotIn(names["dead_here"], left)
    self.assertNotIn(names["other_host_old"], left)
    self.assertNotIn(names["alive_here_old"], left)
    for kept in ("alive_here", "other_host", "old_format"):
      self.assertIn(names[kept], left, kept)



class FewerPoolingLevelsExportTest(tf.test.TestCase):
  """The main job's models (3 pooling levels, switches at the finest only, calibrated
  latents) export and compose like the paper's."""

  def test_three_pool_export_composes_and_checks_its_size_multiple(self):
    from mm_tf.model import MixAndMatchNetworks  # pylint: disable=g-import-not-at-top
    model = MixAndMatchNetworks(serving_fixture.MODALITIES, serving_fixture.STREAMS,
                                width=0.0625, image_size=32, num_pools=3,
                                side_information_levels=1, latent_calibration=True)
    depth_encoder = model.encoders["depth"]
    channels = depth_encoder.latent_channels
    # A map that is not the identity: the exported encoder must apply it.
    depth_encoder.set_latent_calibration(tf.linspace(0.5, 1.5, channels),
                                         tf.fill([channels], 0.1))
    export_dir = os.path.join(self.get_temp_dir(), "export")
    export.export_model(model, export_dir, include_mmnet=False)
    with open(os.path.join(export_dir, "manifest.json")) as f:
      manifest = json.load(f)
    self.assertEqual(manifest["size_multiple"], 8)
    self.assertEqual(manifest["side_information_levels"], 1)
    self.assertTrue(manifest["latent_calibration"])
    self.assertEqual([s["name"] for s in manifest["side"]], ["switches_1", "switches_2",
                                                              "switches_3"])
    encoder = tf.saved_model.load(os.path.join(export_dir, "depth_encoder", "1"))
    decoder = tf.saved_model.load(os.path.join(export_dir, "segmentation_decoder", "1"))
    depth = serving_fixture.raw_batch(model.modalities["depth"], size=40)  # 8 | 40, 32 does not.
    wire = encoder.signatures["serving_default"](image=tf.constant(depth))
    self.assertEqual(wire["latent"].shape[1:3], (5, 5))
    composed = decoder.signatures["serving_default"](**wire)["image"]
    expected = tf.nn.softmax(model.translate(
        "depth", "segmentation", model.modalities["depth"].normalize(depth)))
    self.assertAllClose(composed, expected, atol=1e-5, rtol=0)
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "multiples of 8"):
      encoder.signatures["serving_default"](image=tf.zeros([1, 36, 36, 1]))


if __name__ == "__main__":
  tf.test.main()
