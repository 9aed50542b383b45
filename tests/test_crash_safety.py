"""Crash safety: SIGKILL at several points of a run, rerun, same results as without kills.

A tiny run (32x32 synthetic forest, width 1/16, 2 steps per stage, eager steps) is killed with
SIGKILL at exact points through `mm_tf.saving.kill_point` ($MM_TF_KILL_AT): after a step
of stage 1, in the stage-2 evaluation (its predictions written, its results not yet), after
a step of stage 3 and in the export (every SavedModel staged, none committed). No point
depends on how fast the machine is. After each kill the same command is run again. The
resumed run restores weights, optimizer state and the data position, and its latent noise
depends on the step only, so its final results equal those of an uninterrupted run exactly.

Also: a checkpoint write killed at random moments never leaves an unreadable latest
checkpoint.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

from mm_tf import saving

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_flags(model_dir, data_dir):
  return [f"--model_dir={model_dir}", f"--data_dir={data_dir}", "--dataset=synthetic_forest",
          "--synthetic_num_train=12", "--synthetic_num_test=6", "--image_size=32",
          "--width=0.0625", "--batch_size=2", "--steps=2,2,2", "--checkpoint_every_steps=1",
          "--log_every_steps=1", "--image_summary_every_steps=100", "--eval_batch_size=6",
          "--num_figure_examples=2", "--run_eagerly", "--precision=float32"]


def _numbers(value, path=""):
  """{path: number} of every number in nested dicts/lists (None kept as None)."""
  if isinstance(value, dict):
    return {k: v for key, item in value.items() for k, v in _numbers(item, f"{path}/{key}").items()}
  if isinstance(value, (list, tuple)):
    return {k: v for i, item in enumerate(value) for k, v in _numbers(item, f"{path}/{i}").items()}
  return {path: value} if value is None or isinstance(value, (int, float)) else {}


def _results(model_dir):
  """Every number of the final results: per translation, per stage, alignment factors."""
  with open(os.path.join(model_dir, "eval", "results.json")) as f:
    results = json.load(f)
  return _numbers({"translations": {t["name"]: t["metrics"] for t in results["translations"]},
                   "per_stage": results["per_stage"],
                   "alignment_factors": results["alignment_factors"]})


class CrashSafetyTest(tf.test.TestCase):

  def _train(self, flags, kill_at=None):
    env = dict(os.environ)
    env.pop(saving.KILL_AT_ENV, None)
    if kill_at:
      env[saving.KILL_AT_ENV] = kill_at
    result = subprocess.run([sys.executable, "-m", "mm_tf.train"] + flags, cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=1800)
    output = result.stdout + result.stderr
    if kill_at:
      self.assertEqual(result.returncode, -signal.SIGKILL,
                       f"not killed at {kill_at}: {output[-3000:]}")
    else:
      self.assertEqual(result.returncode, 0, output[-3000:])
    return output

  def test_sigkill_at_four_points_then_same_results(self):
    root = tempfile.mkdtemp(dir=self.get_temp_dir())
    data_dir = os.path.join(root, "data")
    reference = os.path.join(root, "reference")
    self._train(_tiny_flags(reference, data_dir) + ["--noexport"])

    model_dir = os.path.join(root, "killed")
    flags = _tiny_flags(model_dir, data_dir)
    self._train(flags, "stage1_step1")
    self.assertFalse(os.path.exists(os.path.join(model_dir, "stage_1", "stage_done.json")))
    # In the stage-2 evaluation: predictions written, results (what marks it done) not yet.
    output = self._train(flags, "stage2_eval_results")
    self.assertIn("Stage 1: resumed from", output)
    self.assertTrue(os.path.exists(os.path.join(model_dir, "eval", "stage_2", "predictions.npz")))
    self.assertFalse(os.path.exists(os.path.join(model_dir, "eval", "stage_2", "results.json")))
    output = self._train(flags, "stage3_step1")
    self.assertIn("Stage 1: finished earlier; skipped.", output)
    self.assertIn("Stage 2: resumed from", output)  # Trained, not evaluated: redo the end.
    # In the export: every SavedModel staged, none committed.
    output = self._train(flags, "export_commit")
    self.assertRegex(output, r"Stage 3: resumed from .*ckpt-1 at step 1\.")
    self.assertFalse(os.path.exists(os.path.join(model_dir, "export", "models.config")))
    self.assertTrue([n for n in os.listdir(os.path.join(model_dir, "export"))
                     if n.startswith(".export-staging")])
    output = self._train(flags)
    for stage in (1, 2):
      self.assertIn(f"Stage {stage}: finished earlier; skipped.", output)
    self.assertNotIn("steps in", output)  # Nothing was trained again.

    results, expected = _results(model_dir), _results(reference)
    self.assertEqual(sorted(results), sorted(expected))
    self.assertTrue([k for k in expected if k.startswith("/per_stage/3/")])
    for key, value in expected.items():
      if value is None:
        self.assertIsNone(results[key], msg=key)
      else:
        self.assertAllClose(results[key], value, rtol=1e-6, atol=1e-6, msg=key)
    export_dir = os.path.join(model_dir, "export")
    self.assertTrue(os.path.exists(os.path.join(export_dir, "models.config")))
    self.assertFalse([n for n in os.listdir(export_dir) if n.startswith(".export-staging")])
    # A re-run of the finished run exports nothing new.
    self.assertIn("is up to date", self._train(flags))

  def test_checkpoint_write_killed_at_random_times(self):
    directory = tempfile.mkdtemp(dir=self.get_temp_dir())
    # A child saves numbered checkpoints of a 64 MB variable whose value is the step;
    # it is killed at random moments, so some kills land inside a write.
    script = (
        "import sys, tensorflow as tf\n"
        "v = tf.Variable(tf.zeros([16, 1024, 1024]))\n"
        "step = tf.Variable(0, dtype=tf.int64)\n"
        "manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=v, step=step), sys.argv[1],"
        " max_to_keep=2)\n"
        "if manager.latest_checkpoint:\n"
        "  manager.checkpoint.restore(manager.latest_checkpoint)\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "  step.assign_add(1)\n"
        "  v.assign(tf.fill(v.shape, tf.cast(step, tf.float32)))\n"
        "  manager.save(checkpoint_number=int(step))\n")
    rng = np.random.default_rng(0)
    for _ in range(4):
      process = subprocess.Popen([sys.executable, "-c", script, directory],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
      self.assertEqual(process.stdout.readline().strip(), "ready")
      time.sleep(float(rng.uniform(0.5, 2.0)))
      process.send_signal(signal.SIGKILL)
      process.wait()
      latest = tf.train.latest_checkpoint(directory)
      if latest is None:
        continue
      v = tf.Variable(tf.zeros([16, 1024, 1024]))
      step = tf.Variable(0, dtype=tf.int64)
      tf.train.Checkpoint(v=v, step=step).restore(latest).assert_existing_objects_matched()
      self.assertEqual(int(latest.rsplit("-", 1)[1]), int(step.numpy()))
      self.assertAllEqual(v.numpy()[::8, ::256, ::256],
                          np.full([2, 4, 4], float(step.numpy()), np.float32))


if __name__ == "__main__":
  tf.test.main()
