"""The experiment runner: a smoke suite trains, scores and writes the comparison; re-running
resumes (finished rows are not redone, cached stage weights are not retrained)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mm_tf import config as mm_config
from mm_tf import experiments
from mm_tf import training
from tests import test_baselines as tb


class TinyData:
  """In-memory stand-in for `experiments.Data` (same structure as the real pipeline)."""

  modalities = tb.MODALITIES
  streams = tb.STREAMS

  def train(self, seed_offset=0, oracle=False):
    if oracle:
      scenes = tb.tiny_scenes(4, seed=7)
      return tf.data.Dataset.from_tensors(
          {"depth+segmentation": {m: scenes[m] for m in ("depth", "segmentation")}}).repeat()
    return tb.repeated_batches(seed=seed_offset)

  def test(self):
    scenes = tb.tiny_scenes(6, seed=99)
    return tf.data.Dataset.from_tensor_slices(
        {m: scenes[m] for m in ("rgb", "depth", "segmentation")}).batch(4)

  def few_pair_candidates(self):
    scenes = tb.tiny_scenes(8, seed=3)
    return {m: scenes[m] for m in ("depth", "segmentation")}


CONFIG = mm_config.ExperimentConfig(image_size=32, width=1 / 16, batch_size=4, steps=(1, 1, 1))
ROWS = ("pix2pix", "distillation", "cascade_switches", "mmnets", "oracle",
        "few_pairs_1_kmedoids")


def smoke_rows():
  rows = [r for r in experiments.suite_rows("smoke") if r.name in ROWS]
  assert len(rows) == len(ROWS)
  return rows


def runner(output_dir):
  return experiments.Runner(CONFIG, str(output_dir), data=TinyData(), baseline_steps=1,
                            suite="smoke", run_eagerly=True)


def test_smoke_suite_writes_comparison_and_resumes(tmp_path, monkeypatch):
  rows = smoke_rows()
  comparison = runner(tmp_path).run(rows)
  assert [r["row"]["name"] for r in comparison["rows"]] == [r.name for r in rows]
  for result in comparison["rows"]:
    columns = result["columns"]
    assert 0.0 <= columns["D->S"]["miou"] <= 1.0
    assert len(columns["D->S"]["per_class_iou"]) == tb.CLASSES
    if result["row"]["name"] == "oracle":  # It trains only x -> segmentation.
      assert "S->D" not in columns
    else:
      assert np.isfinite(columns["S->D"]["rmse"])
  on_disk = json.loads((tmp_path / "comparison.json").read_text())
  assert [r["row"]["name"] for r in on_disk["rows"]] == list(ROWS)
  markdown = (tmp_path / "comparison.md").read_text()
  assert "| M&MNets |" in markdown and "| 2xpix2pix (D->R->S) |" in markdown
  assert "orderings" in markdown
  # The mmnets row reports the multimodal column, the cascade row does not.
  by_name = {r["row"]["name"]: r for r in comparison["rows"]}
  assert "(R,D)->S" in by_name["mmnets"]["columns"]
  assert "(R,D)->S" not in by_name["cascade_switches"]["columns"]
  assert (tmp_path / "models" / "few_pairs_1_kmedoids" / "selected.json").exists()

  # Resume: nothing may train again. Finished rows are read back; a row whose result
  # was lost is re-scored from the cached stage weights.
  def no_training(*args, **kwargs):
    raise AssertionError("a finished row or cached stage was trained again")

  monkeypatch.setattr(experiments.Runner, "_fit", no_training)
  os.remove(tmp_path / "rows" / "mmnets" / experiments.RESULT_FILE)
  again = runner(tmp_path).run(rows)
  assert [r["row"]["name"] for r in again["rows"]] == list(ROWS)
  for first, second in zip(comparison["rows"], again["rows"]):
    assert first["columns"]["D->S"]["miou"] == pytest.approx(second["columns"]["D->S"]["miou"])


def test_suites_and_orderings():
  paper = experiments.suite_rows("paper")
  names = [r.name for r in paper]
  assert len(names) == len(set(names))
  for required in ("pix2pix", "cyclegan", "stargan_unpaired", "stargan_paired", "unit",
                   "cascade_switches", "cascade_skip", "oracle", "mmnets", "mmnets_pp",
                   "side_none", "side_skip", "ladder_translations", "rgb_decoder_switches",
                   "few_pairs_20_kmedoids", "few_pairs_20_random"):
    assert required in names
  fake = [{"row": {"name": n, "group": g, "few_pairs": 0}, "columns": {"D->S": {"miou": v}}}
          for n, g, v in [("side_switches", "side_information", 0.5),
                          ("side_none", "side_information", 0.3),
                          ("side_skip", "side_information", 0.4)]]
  claims = {c["claim"]: c["holds"] for c in experiments.check_orderings(fake)}
  assert claims["switches > none"] and not claims["none > skip"]
  with pytest.raises(ValueError, match="Unknown suite"):
    experiments.suite_rows("everything")


def test_side_information_rows_are_the_papers_at_every_level(tmp_path):
  # With the paper's switches at every level the side_switches row is the main run ...
  every_level = runner(tmp_path / "every")
  assert every_level.mmnets_model("side_switches", 1) is every_level.mmnets_model("main", 1)
  # ... with fewer levels (the synthetic main job) it is its own model, and the Table 2
  # rows keep every level while the M&MNets rows follow the config.
  finest = experiments.Runner(CONFIG.replace(num_pools=3, side_information_levels=1),
                              str(tmp_path / "finest"), data=TinyData(), baseline_steps=1,
                              suite="smoke", run_eagerly=True)
  assert finest.build_mmnets(experiments.variant("main")).side_information_levels == 1
  for name in ("side_switches", "side_skip"):
    assert finest.build_mmnets(experiments.variant(name)).side_information_levels == 3
  assert finest.mmnets_model("side_switches", 1) is not finest.mmnets_model("main", 1)


def test_rows_recalibrate_batch_norm_like_the_main_job(tmp_path, monkeypatch):
  """Every M&MNets stage and the oracle end with precise batch-norm statistics, as in
  `mm_tf.training.train_stage`; the suite would otherwise score weaker models."""
  from mm_tf import model as mm_model
  calls = []
  original = mm_model.MixAndMatchNetworks.recalibrate_batch_norm

  def recording(self, batches):
    calls.append((self.anchor, self.stage))
    return original(self, batches)

  monkeypatch.setattr(mm_model.MixAndMatchNetworks, "recalibrate_batch_norm", recording)
  rows = [r for r in experiments.suite_rows("smoke") if r.name in ("mmnets", "oracle")]
  runner(tmp_path).run(rows)
  assert calls == [("rgb", 1), ("rgb", 2), ("segmentation", 1)]
  # The cached weights carry the recalibrated statistics: a resumed run does not redo it.
  calls.clear()
  for name in ("mmnets", "oracle"):
    os.remove(tmp_path / "rows" / name / experiments.RESULT_FILE)
  runner(tmp_path).run(rows)
  assert calls == []


class VaryingData(TinyData):
  """TinyData whose training batches differ from step to step (so a resume that took the
  wrong batches would end with other weights)."""

  def train(self, seed_offset=0, oracle=False):
    if oracle:
      return super().train(seed_offset, oracle)
    batches = [tf.data.Dataset.from_tensors(tb.zero_pair_batch(4, tb.SIZE, seed_offset + i))
               for i in range(4)]
    dataset = batches[0]
    for batch in batches[1:]:
      dataset = dataset.concatenate(batch)
    return dataset.repeat()


def test_a_row_killed_mid_training_resumes_from_its_checkpoint(tmp_path, monkeypatch):
  """A row's training (M&MNets stage, baseline) checkpoints every --checkpoint_every_steps
  steps; a re-run continues from the last checkpoint and ends with the uninterrupted run's
  weights; the checkpoints are removed once the weights file is written."""
  config = CONFIG.replace(steps=(3, 1, 1), checkpoint_every_steps=1)

  def make(output_dir):
    return experiments.Runner(config, str(output_dir), data=VaryingData(), baseline_steps=3,
                              suite="smoke", run_eagerly=True)

  uninterrupted = make(tmp_path / "uninterrupted").mmnets_model("main", 1).get_weights()

  save = training.CheckpointCallback.save

  def interrupted_after_step_2(self, step):
    save(self, step)
    if step == 2:
      raise KeyboardInterrupt("killed after step 2")

  killed = tmp_path / "killed"
  monkeypatch.setattr(training.CheckpointCallback, "save", interrupted_after_step_2)
  with pytest.raises(KeyboardInterrupt):
    make(killed).mmnets_model("main", 1)
  with pytest.raises(KeyboardInterrupt):
    make(killed).trained_baseline("pix2pix")
  monkeypatch.setattr(training.CheckpointCallback, "save", save)
  paths = [make(killed).weights_path(key, 1) for key in ("main", "pix2pix")]
  for path in paths:
    assert not os.path.exists(path)
    assert os.path.exists(path + experiments.CHECKPOINTS_SUFFIX)

  steps_run = []
  run_train_steps = training.run_train_steps

  def counting(model, strategy, dataset, num_steps, *args, **kwargs):
    steps_run.append(num_steps)
    return run_train_steps(model, strategy, dataset, num_steps, *args, **kwargs)

  monkeypatch.setattr(training, "run_train_steps", counting)
  resumed = make(killed).mmnets_model("main", 1).get_weights()
  make(killed).trained_baseline("pix2pix")
  assert steps_run == [1, 1]  # Only the step after the last checkpoint, in each.
  for a, b in zip(uninterrupted, resumed):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for path in paths:
    assert os.path.exists(path)
    assert not os.path.exists(path + experiments.CHECKPOINTS_SUFFIX)
