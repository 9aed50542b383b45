"""End-to-end training CLI: three stages, SIGKILL during stage 2, resume, results.

Also: an incompatible flag is refused (CLI and library), a compatible one is accepted.
The run is tiny (32x32 synthetic forest, width 1/16, a few steps) and runs eagerly, so it
spends its time in steps rather than in graph tracing.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image
import tensorflow as tf

from mm_tf import config as mm_config
from mm_tf import training
from mm_tf.data import synthetic_forest as sf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_flags(model_dir, data_dir):
  return [f"--model_dir={model_dir}", f"--data_dir={data_dir}", "--dataset=synthetic_forest",
          "--synthetic_num_train=12", "--synthetic_num_test=6", "--image_size=32",
          "--width=0.0625", "--batch_size=2", "--steps=3,8,3", "--checkpoint_every_steps=2",
          "--log_every_steps=2", "--image_summary_every_steps=3", "--eval_batch_size=6",
          "--num_figure_examples=2", "--noexport", "--run_eagerly"]


def write_freiburg_layout(root, num_train=12, num_test=6, size=48, seed=11):
  """Forest scenes saved with the real Freiburg release's quirks, not the generator's.

  Non-square RGB JPEGs (48x64), 8-bit relative depth normalised per image at another size
  (36x48), Tree-coloured vegetation, void (white) pixels, `_mask.png` GT names for some
  ids and ids with a dash, as in `freiburg_forest_annotated/{train,test}/`.
  """
  tree, void = (0, 60, 0), (255, 255, 255)
  for split, count in (("train", num_train), ("test", num_test)):
    for index in range(count):
      scene = sf.render_scene(sf.scene_rng(seed, split, index), size)
      rows = slice(size // 8, size - size // 8)
      file_id = f"b{index % 3 + 1}-{100 + index}"
      base = os.path.join(root, split)
      for folder in ("rgb", "depth_gray", "nir_gray", "GT_color"):
        os.makedirs(os.path.join(base, folder), exist_ok=True)
      Image.fromarray(scene["rgb"][rows]).resize((64, 48), Image.BILINEAR).save(
          f"{base}/rgb/{file_id}_Clipped.jpg", quality=90)
      depth = scene["depth"][rows]
      relative = np.where(depth > 0, 1 + 254 * depth / max(depth.max(), 1e-6), 0)
      Image.fromarray(relative.astype(np.uint8)).save(
          f"{base}/depth_gray/{file_id}_Clipped_redict_depth_gray.png")
      Image.fromarray(scene["nir"][rows]).resize((64, 48), Image.BILINEAR).save(
          f"{base}/nir_gray/{file_id}.tif")
      gt = sf.PALETTE[scene["labels"][rows]]
      gt[: gt.shape[0] // 2][(scene["labels"][rows][: gt.shape[0] // 2] == sf.VEGETATION)] = tree
      gt[-1, ::5] = void
      suffix = "_mask.png" if index % 2 else "_Clipped.png"
      Image.fromarray(gt).resize((64, 48), Image.NEAREST).save(f"{base}/GT_color/{file_id}{suffix}")


class TrainCliTest(tf.test.TestCase):

  def _command(self, flags):
    return [sys.executable, "-m", "mm_tf.train"] + flags

  def test_kill_during_stage_2_then_resume(self):
    root = tempfile.mkdtemp(dir=self.get_temp_dir())
    model_dir, data_dir = os.path.join(root, "run"), os.path.join(root, "data")
    flags = _tiny_flags(model_dir, data_dir)
    log_path = os.path.join(root, "first.log")
    stage2_checkpoint = os.path.join(model_dir, "stage_2", "checkpoints", "checkpoint")
    with open(log_path, "w") as log:
      process = subprocess.Popen(self._command(flags), cwd=REPO, stdout=log,
                                 stderr=subprocess.STDOUT)
      deadline = time.time() + 240
      while not os.path.exists(stage2_checkpoint) and process.poll() is None:
        self.assertLess(time.time(), deadline, "stage 2 never wrote a checkpoint")
        time.sleep(0.2)
      self.assertIsNone(process.poll(), "the run ended before it could be killed: "
                        + open(log_path).read()[-3000:])
      process.send_signal(signal.SIGKILL)
      process.wait()
    self.assertFalse(os.path.exists(os.path.join(model_dir, "stage_2", "stage_done.json")))

    resumed = subprocess.run(self._command(flags), cwd=REPO, capture_output=True, text=True,
                             timeout=300)
    output = resumed.stdout + resumed.stderr
    self.assertEqual(resumed.returncode, 0, output[-4000:])
    self.assertIn("Stage 1: finished earlier; skipped.", output)
    self.assertRegex(output, r"Stage 2: resumed from .*ckpt-\d+ at step [2-7]\.")
    for stage in (1, 2, 3):
      with open(os.path.join(model_dir, f"stage_{stage}", "stage_done.json")) as f:
        self.assertEqual(json.load(f)["stage"], stage)
      self.assertTrue(os.path.exists(os.path.join(model_dir, "eval", f"stage_{stage}",
                                                  "results.json")))
    with open(os.path.join(model_dir, "eval", "results.json")) as f:
      results = json.load(f)
    names = {t["short_name"]: t for t in results["translations"]}
    for name in ("R->S", "D->S", "N->S", "D->R->S", "(R,D,N)->S", "S->D", "S->R->D"):
      self.assertIn(name, names)
    self.assertBetween(names["D->S"]["metrics"]["miou"], 0.0, 1.0)
    self.assertEqual(sorted(results["per_stage"]), ["1", "2", "3"])
    self.assertIn("rgb_depth", results["alignment_factors"])
    self.assertTrue(os.path.exists(os.path.join(model_dir, "eval", "results.md")))
    self.assertTrue(os.path.exists(os.path.join(model_dir, "eval", "figures",
                                                "into_segmentation.png")))
    self.assertTrue(os.path.exists(os.path.join(model_dir, "model", "model_config.json")))
    self.assertTrue(os.listdir(os.path.join(model_dir, "tensorboard")))

    # Changing an incompatible flag is refused with the flag's name.
    refused = subprocess.run(self._command(flags + ["--width=0.125"]), cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    self.assertNotEqual(refused.returncode, 0)
    self.assertIn("--width", refused.stdout + refused.stderr)

  def test_freiburg_layout_with_the_cpu_config(self):
    # configs/freiburg_cpu.flags (the main job's settings on Freiburg Forest) end to end on
    # files in the real release's layout; 48x64 images are larger than the working size
    # of S = 32, so the training streams shrink them once into the decoded cache.
    root = tempfile.mkdtemp(dir=self.get_temp_dir())
    write_freiburg_layout(os.path.join(root, "data", "freiburg_forest"))
    model_dir = os.path.join(root, "run")
    flags = ["--flagfile=configs/freiburg_cpu.flags", f"--data_dir={root}/data",
             f"--model_dir={model_dir}", "--image_size=32", "--width=0.0625", "--batch_size=2",
             "--steps=2,2,2", "--latent_calibration_batches=1", "--checkpoint_every_steps=2",
             "--log_every_steps=2", "--image_summary_every_steps=3", "--eval_batch_size=6",
             "--num_figure_examples=2", "--noexport", "--run_eagerly"]
    result = subprocess.run(self._command(flags), cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    output = result.stdout + result.stderr
    self.assertEqual(result.returncode, 0, output[-4000:])
    self.assertIn("freiburg_forest train streams (examples each): {'rgb+segmentation': 6, "
                  "'rgb+depth+nir': 6}", output)
    with open(os.path.join(model_dir, "eval", "results.json")) as f:
      results = json.load(f)
    names = {t["short_name"]: t for t in results["translations"]}
    for name in ("R->S", "D->S", "N->S", "(R,D,N)->S", "S->D"):
      metric = "miou" if name.endswith("S") else "delta1"
      self.assertBetween(names[name]["metrics"][metric], 0.0, 1.0)
    with open(os.path.join(model_dir, "config.json")) as f:
      self.assertEqual(json.load(f)["dataset"], "freiburg_forest")


_PARSE_FLAGFILES = """
import json, sys
from absl import flags
from mm_tf import config
config.define_flags()
out = {}
for path in sys.argv[1:]:
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["mm_tf.train", "--flagfile=" + path])
  parsed = config.from_flags()
  out[path] = dict(steps=list(parsed.steps), oracle_steps=parsed.oracle_steps,
                   learning_rate=list(parsed.learning_rate),
                   stages=sorted(parsed.stages()), image_size=parsed.image_size,
                   width=parsed.width, num_pools=parsed.num_pools,
                   batch_size=parsed.batch_size, dataset=parsed.dataset,
                   side_information_levels=parsed.side_information_levels,
                   latent_calibration_batches=parsed.latent_calibration_batches)
print(json.dumps(out))
"""


class ConfigFlagfilesTest(tf.test.TestCase):
  """Every shipped flagfile parses into a valid config (a stale flag fails here, not in a run)."""

  def test_every_flagfile_parses_and_the_paper_configs_keep_the_paper_schedule(self):
    paths = sorted(glob.glob(os.path.join(REPO, "configs", "*.flags")))
    self.assertGreaterEqual(len(paths), 5)
    result = subprocess.run([sys.executable, "-c", _PARSE_FLAGFILES] + paths, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    parsed = {os.path.basename(k): v for k, v in json.loads(result.stdout).items()}
    for name, config in parsed.items():
      self.assertEqual(config["stages"], [1, 2, 3], name)
    for name in ("freiburg.flags", "sun_rgbd.flags", "scenenet_rgbd.flags"):
      self.assertEqual(parsed[name]["steps"], [200000, 200000, 100000], name)
      self.assertEqual((parsed[name]["image_size"], parsed[name]["width"],
                        parsed[name]["num_pools"], parsed[name]["batch_size"],
                        parsed[name]["side_information_levels"],
                        parsed[name]["latent_calibration_batches"]),
                       (256, 1.0, 5, 6, -1, 0), name)
    # The longer synthetic config is the main job's networks with more steps.
    main, long = parsed["synthetic_forest.flags"], parsed["synthetic_forest_long.flags"]
    for key in ("dataset", "image_size", "width", "num_pools", "side_information_levels",
                "latent_calibration_batches", "batch_size", "learning_rate"):
      self.assertEqual(main[key], long[key], key)
    # The same multiple of the main job's steps in every stage (3.2x since the main job
    # moved to 250 / 150 / 50; the long config's runs were measured at 800 / 480 / 160).
    multiples = {l / m for l, m in zip(long["steps"], main["steps"])}
    self.assertLen(multiples, 1)
    self.assertGreaterEqual(multiples.pop(), 3)
    self.assertEqual(long["oracle_steps"], sum(long["steps"]))
    # The CPU-scale Freiburg config is the main job on another dataset.
    cpu = parsed["freiburg_cpu.flags"]
    self.assertEqual(cpu["dataset"], "freiburg_forest")
    self.assertEqual({k: v for k, v in cpu.items() if k != "dataset"},
                     {k: v for k, v in main.items() if k != "dataset"})


class UserErrorTest(tf.test.TestCase):
  """User mistakes end with one line on stderr and exit status 2, before TensorFlow loads."""

  def _run(self, module, flags, only_line=True):
    start = time.time()
    result = subprocess.run([sys.executable, "-m", module] + flags, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    if only_line:  # Checked before TensorFlow is imported: fast, and nothing else on stderr.
      self.assertLess(time.time() - start, 30)
    self.assertEqual(result.returncode, 2, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    if only_line:
      self.assertLen(lines, 1, result.stderr[-2000:])
    self.assertNotIn("Traceback", result.stderr)
    self.assertStartsWith(lines[-1], f"{module}: error: ")
    return lines[-1]

  def test_missing_dataset(self):
    root = tempfile.mkdtemp(dir=self.get_temp_dir())
    line = self._run("mm_tf.train", ["--flagfile=configs/freiburg.flags",
                                     f"--data_dir={root}/data", f"--model_dir={root}/run"])
    self.assertStartsWith(line, "mm_tf.train: error: Dataset freiburg_forest not found")
    self.assertIn("docs/data.md", line)
    self.assertFalse(os.path.exists(os.path.join(root, "run")))  # Nothing was started.

  def test_unreadable_flag_value_and_flagfile(self):
    self.assertIn("--steps=1,x,3: every value must be an integer",
                  self._run("mm_tf.train", ["--steps=1,x,3"]))
    self.assertIn("Unable to open flagfile", self._run("mm_tf.train",
                                                       ["--flagfile=/nonexistent.flags"]))

  def test_wrong_model_dir(self):
    root = tempfile.mkdtemp(dir=self.get_temp_dir())
    a_file = os.path.join(root, "file")
    open(a_file, "w").close()
    self.assertIn("is a file, not a directory",
                  self._run("mm_tf.train", [f"--model_dir={a_file}"]))
    self.assertIn("--model_dir is required", self._run("mm_tf.evaluate", []))
    self.assertIn("is not a training model_dir",
                  self._run("mm_tf.evaluate", [f"--model_dir={root}"]))

  def test_export_and_serve_directories(self):
    # These two import TensorFlow first (its start-up log lines come before the error).
    root = tempfile.mkdtemp(dir=self.get_temp_dir())
    self.assertIn("No trained model in", self._run(
        "mm_tf.export", [f"--model_dir={root}", f"--export_dir={root}/export"],
        only_line=False))
    self.assertIn("does not exist", self._run(
        "mm_tf.serve", [f"--export_dir={root}/missing", "--port=0"], only_line=False))


class RuntimeChoicesTest(tf.test.TestCase):

  def test_precision_auto(self):
    from unittest import mock  # pylint: disable=g-import-not-at-top
    with mock.patch.object(tf.config, "list_physical_devices", return_value=[]):
      for flags, expected in (({"amx_bf16", "avx512_bf16"}, "mixed_bfloat16"),
                              ({"avx512_bf16"}, "float32"), ({"avx2"}, "float32")):
        with mock.patch.object(training, "_cpu_flags", return_value=frozenset(flags)):
          policy, reason = training.choose_precision()
          self.assertEqual(policy, expected, reason)
          self.assertIn("CPU", reason)

  def test_dataset_names_are_known_without_tensorflow(self):
    from mm_tf import data as mm_data  # pylint: disable=g-import-not-at-top
    self.assertEqual(mm_config.DATASETS, mm_data.dataset_names())
    for name in mm_config.DATASETS:  # check_inputs looks for <data_dir>/<name>.
      self.assertEqual(mm_data.get_dataset_spec(name).source_dir, name)

  def test_no_library_module_imports_a_command_line_module(self):
    import ast  # pylint: disable=g-import-not-at-top
    package = os.path.join(REPO, "mm_tf")
    command_lines = {"train", "evaluate"}
    for directory, _, names in os.walk(package):
      for name in names:
        if not name.endswith(".py"):
          continue
        with open(os.path.join(directory, name)) as f:
          tree = ast.parse(f.read())
        imported = set()
        for node in ast.walk(tree):
          if isinstance(node, ast.ImportFrom) and node.module == "mm_tf":
            imported |= {alias.name for alias in node.names}
          elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mm_tf."):
            imported.add(node.module.split(".")[1])
        self.assertEmpty(imported & command_lines, msg=name)
        if name == "evaluation.py":
          self.assertNotIn("training", imported)


class CompatibilityTest(tf.test.TestCase):

  def test_incompatible_flag_is_refused_and_compatible_accepted(self):
    model_dir = tempfile.mkdtemp(dir=self.get_temp_dir())
    config = mm_config.ExperimentConfig(model_dir=model_dir, image_size=64, width=0.125)
    training.write_run_files(config, "--width=0.125\n")
    training.write_run_files(config.replace(steps=(10, 20, 30)))  # More steps: fine.
    with self.assertRaisesRegex(ValueError, "--image_size: saved 64, now 128"):
      training.write_run_files(config.replace(image_size=128))
    with self.assertRaisesRegex(ValueError, "--dataset"):
      training.write_run_files(config.replace(dataset="sun_rgbd"))

  def test_bad_values_name_the_flag(self):
    with self.assertRaisesRegex(ValueError, "--image_size must be a multiple of 32"):
      mm_config.ExperimentConfig(image_size=50)
    with self.assertRaisesRegex(ValueError, "--steps needs one value per stage"):
      mm_config.ExperimentConfig(steps=(1, 2))

  def test_stages_from_flags(self):
    config = mm_config.ExperimentConfig(steps=(5, 6, 7), lambda_latent=(1.0, 100.0, 100.0))
    stages = config.stages()
    self.assertEqual([stages[n].steps for n in (1, 2, 3)], [5, 6, 7])
    self.assertFalse(stages[1].latent_consistency)
    self.assertEqual(stages[2].latent_weight, 100.0)
    self.assertEqual(stages[2].frozen, ("rgb_encoder",))
    self.assertTrue(stages[3].pseudo_pairs)
    oracle = config.replace(oracle=True, oracle_steps=9).stages()
    self.assertEqual(list(oracle), [1])
    self.assertEqual(oracle[1].steps, 9)
    # The oracle is judged on x -> segmentation: only that target weighs.
    self.assertEqual(oracle[1].modality_weights,
                     {"rgb": 0.0, "segmentation": 100.0, "depth": 0.0, "nir": 0.0})
    # --pseudo_pairs_train_decoders: 'all', 'none' or modality names.
    self.assertEqual(stages[3].pseudo_pairs_train_decoders, ("all",))
    self.assertTrue(stages[3].pseudo_pairs_train_decoder("depth"))
    for value, expected in (("none", ()), ("segmentation, nir", ("segmentation", "nir"))):
      spec = config.replace(pseudo_pairs_train_decoders=value).stages()[3]
      self.assertEqual(spec.pseudo_pairs_train_decoders, expected)
      self.assertEqual(spec.pseudo_pairs_train_decoder("depth"), False)
      self.assertEqual(spec.pseudo_pairs_train_decoder("nir"), bool(expected))
    # --side_consistency: off by default (not in the paper); on, in stages 2-3 only.
    self.assertFalse(any(spec.side_consistency for spec in stages.values()))
    sides = config.replace(side_consistency=True).stages()
    self.assertEqual([sides[n].side_consistency for n in (1, 2, 3)], [False, True, True])

  def test_learning_rate_decay(self):
    self.assertEqual(mm_config.ExperimentConfig().stages()[1].learning_rate_schedule(), 2e-4)
    stages = mm_config.ExperimentConfig(steps=(10, 20, 30), learning_rate=(1e-3, 1e-3, 1e-4),
                                        learning_rate_decay="cosine").stages()
    schedule = stages[3].learning_rate_schedule()
    self.assertAllClose([float(schedule(s)) for s in (0, 15, 30)], [1e-4, 5e-5, 0.0])
    with self.assertRaisesRegex(ValueError, "--learning_rate_decay must be one of constant, "
                                "cosine; got 'linear'"):
      mm_config.ExperimentConfig(learning_rate_decay="linear")

  def test_missing_vgg_file_is_a_clear_error(self):
    config = mm_config.ExperimentConfig(width=0.0625, image_size=32,
                                        rgb_encoder_vgg16_h5="/nonexistent/vgg16.h5")
    model = training.build_model(config)
    with self.assertRaisesRegex(ValueError, "Cannot read VGG16 weights"):
      training.load_vgg16_into_rgb_encoder(model, config.rgb_encoder_vgg16_h5)

  def test_checkpoint_restores_every_variable(self):
    # Frozen and non-trainable variables (RGB encoder in stage 2, batch-norm statistics)
    # are not reachable through the optimizers: the checkpoint must hold them too.
    import numpy as np  # pylint: disable=g-import-not-at-top
    config = mm_config.ExperimentConfig(width=0.0625, image_size=32)

    def make():
      model = training.build_model(config)
      model.set_stage(2)
      model.compile()
      step = tf.Variable(0, dtype=tf.int64)
      return model, training.make_checkpoint(model, step), step

    saved, checkpoint, step = make()
    for v in saved.variables:
      v.assign(np.random.default_rng(0).uniform(0.5, 1.5, v.shape).astype(v.dtype))
    step.assign(7)
    path = checkpoint.save(os.path.join(tempfile.mkdtemp(dir=self.get_temp_dir()), "ckpt"))
    restored, checkpoint, step = make()
    checkpoint.restore(path).assert_existing_objects_matched()
    self.assertEqual(int(step.numpy()), 7)
    for a, b in zip(saved.variables, restored.variables):
      self.assertAllClose(a.numpy(), b.numpy(), msg=a.path)

  def test_the_last_step_is_checkpointed_only_after_precise_bn(self):
    # A checkpoint at a stage's last step tells a resumed run the stage is complete (it
    # trains and recalibrates nothing), so the periodic callback must not write it.
    saved_steps = []

    class Manager:
      def save(self, checkpoint_number):
        saved_steps.append(checkpoint_number)

    step = tf.Variable(0, dtype=tf.int64)
    callback = training.CheckpointCallback(Manager(), step, initial_step=0, every=2,
                                           final_step=6)
    for batch in range(6):
      callback.on_train_batch_end(batch)
    self.assertEqual(saved_steps, [2, 4])
    self.assertEqual(callback.last_saved, 4)
    resumed = training.CheckpointCallback(Manager(), step, initial_step=4, every=2)
    resumed.on_train_batch_end(1)  # Without final_step (the suite runner): every 2nd step.
    self.assertEqual(saved_steps, [2, 4, 6])

  def test_vgg16_h5_maps_onto_the_rgb_encoder(self):
    import h5py  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from mm_tf import model as mm_model  # pylint: disable=g-import-not-at-top
    filters = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    names = [f"block{b}_conv{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
             for i in range(1, n + 1)]
    path = os.path.join(tempfile.mkdtemp(dir=self.get_temp_dir()), "vgg16.h5")
    rng = np.random.default_rng(0)
    kernels = []
    with h5py.File(path, "w") as f:  # The Keras 2 layout of keras.applications files.
      f.attrs["layer_names"] = [n.encode() for n in ["input_1"] + names + ["block5_pool"]]
      f.create_group("input_1").attrs["weight_names"] = []
      f.create_group("block5_pool").attrs["weight_names"] = []
      channels = 3
      for name, out in zip(names, filters):
        group = f.create_group(name)
        group.attrs["weight_names"] = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
        kernel = rng.standard_normal((3, 3, channels, out)).astype(np.float32)
        group.create_dataset(f"{name}/kernel:0", data=kernel)
        group.create_dataset(f"{name}/bias:0", data=np.full(out, 0.5, np.float32))
        kernels.append(kernel)
        channels = out
    model = mm_model.MixAndMatchNetworks(["rgb", "segmentation"], [("rgb", "segmentation")],
                                         width=1.0, image_size=32,
                                         encoder_batch_norm={"rgb": False})
    training.load_vgg16_into_rgb_encoder(model, path)
    blocks = [b for stage in model.encoders["rgb"].stages for b in stage]
    self.assertAllClose(blocks[0].conv.kernel, kernels[0])
    self.assertAllClose(blocks[-1].conv.kernel, kernels[-1])
    self.assertAllClose(blocks[5].conv.bias, np.full(256, 0.5))


if __name__ == "__main__":
  tf.test.main()
