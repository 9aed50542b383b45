r"""Where a trained run's zero-pair translations lose points: a diagnosis, not a timing.

For one stage of a training `--model_dir` it prints, on a test batch:

* the latent scale of every encoder (RMS, mean per-channel std, share of exact zeros,
  L2 norm per example) next to the norm of the latent noise (`noise_std` of the run),
  and the cosine / L2 distance of each latent to the anchor's; with
  `--latent_calibration_batches` these are of the calibrated latents, and the map's
  scale is printed too;
* for every pooling level, the share of pooling windows whose maximum is positive and
  tied: there the argmax (the switch) is arbitrary (TensorFlow takes the first
  position), which happens in flat regions such as depth's invalid (0) sky;
* mIoU into segmentation from one encoder's latent with another's side information
  (depth's latent with RGB's switches, RGB's latent with depth's switches, ...), and
  with the anchor's side information at some pooling levels only (which level's
  switches a zero-pair translation loses on);
* per-class IoU of every translation into segmentation, from the stage's
  `eval/stage_<n>/results.json`, and of `--oracle_model_dir`'s oracle when given, with
  the mIoU points each class costs against the oracle.

  python benchmarks/zero_pair_diagnosis.py --model_dir runs/synthetic_forest --stage 3 \
      --oracle_model_dir runs/oracle_640
"""

import os

from absl import app, flags
import numpy as np

flags.DEFINE_string("model_dir", None, "Training model_dir (holds config.json, stage_<n>/).")
flags.DEFINE_integer("stage", 3, "Which stage's model and evaluation to diagnose.")
flags.DEFINE_string("oracle_model_dir", "", "Optional model_dir of an `--oracle` run "
                    "(its eval/stage_1/results.json) to compare per-class IoU against.")
flags.DEFINE_integer("batch_size", 32, "Test examples for the latent and switch statistics.")
flags.mark_flag_as_required("model_dir")
FLAGS = flags.FLAGS


def _tied_windows(x):
  """Share of 2x2 windows (per channel) whose max is positive and reached twice or more."""
  b, h, w, c = x.shape
  windows = x[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
  windows = windows.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // 2, w // 2, c, 4)
  peak = windows.max(-1)
  tied = ((windows == peak[..., None]).sum(-1) > 1) & (peak > 0)
  return tied.mean(), tied.sum() / max(1, (peak > 0).sum())


def _label_targets_and_sources(model):
  """(label modalities, non-anchor sources), or None when the decoders take no side
  information (then there is nothing to swap)."""
  targets = [n for n in model.modality_names if model.modalities[n].is_categorical]
  sources = [n for n in model.modality_names if n != model.anchor and n not in targets]
  decoder = model.decoders[targets[0]] if targets else None
  if (decoder is None or decoder.side_information not in ("switches", "skip")
      or not decoder.side_information_levels):
    return None
  return targets, sources


def _segmentation_metric(model, target, metrics):
  modality = model.modalities[target]
  return metrics.SegmentationMetric(modality.channels, class_names=modality.class_names)


def _print_miou(title, scores, describe):
  """Prints one line per scored key: `describe(key)`, mIoU and per-class IoU."""
  print(f"\n== {title}")
  for key, metric in scores.items():
    if not metric.confusion.any():
      continue  # A test split without this modality (e.g. no NIR).
    result = metric.result()
    print(f"{describe(key)}: {100 * result['miou']:.1f} (" + ", ".join(
        f"{n} {100 * v:.0f}" for n, v in result["per_class_iou"].items() if v is not None)
          + ")")


def _swapped_side_information(model, config, training, metrics):
  """mIoU into each label modality with the latent of one encoder and the side information
  (switches or skips) of another, over the whole test split.

  A zero-pair translation D->S decodes depth's latent with depth's switches; the
  segmentation decoder only ever saw RGB's and its own before stage 3. Decoding depth's
  latent with the RGB switches of the same scene (which a zero-pair user does not have)
  separates what the latent loses from what the switches do.
  """
  found = _label_targets_and_sources(model)
  if found is None:
    return
  targets, sources = found
  anchor = model.anchor
  combos = [(t, lat, side) for t in targets for s in sources
            for lat, side in ((s, s), (s, anchor), (anchor, s), (anchor, anchor))]
  scores = {c: _segmentation_metric(model, c[0], metrics) for c in dict.fromkeys(combos)}
  for batch in training.test_dataset(config):
    encoded = {}
    for target, latent_of, side_of in scores:
      if any(n not in batch for n in (target, latent_of, side_of)):
        continue
      for name in (latent_of, side_of):
        if name not in encoded:
          encoded[name] = model.encode(name, batch[name], training=False)
      logits = model.decode(target, encoded[latent_of][0], encoded[side_of][1])
      scores[target, latent_of, side_of].update(
          batch[target], model.modalities[target].to_labels(logits))
  _print_miou("latent of one encoder, side information of another (test split, mIoU %)",
              scores, lambda key: f"{key[0]} from the {key[1]} latent with {key[2]} side "
                                  "information")


def _side_information_per_level(model, config, training, metrics):
  """mIoU of each zero-pair translation into a label modality when the source's side
  information is replaced by the anchor's at one level, at all but one, or at all.

  Tells at which pooling level (1 = finest) the source's switches differ from what the
  decoder learned to read.
  """
  found = _label_targets_and_sources(model)
  if found is None:
    return
  targets, sources = found
  # Only the levels the decoders read (`side_information_levels`): swapping the others
  # changes nothing. Variants that pick the same levels are scored once.
  anchor, levels = model.anchor, model.decoders[targets[0]].side_information_levels
  named = [("own", ())]
  named += [(f"{anchor}'s at level {i + 1} only", (i,)) for i in range(levels)]
  named += [(f"{anchor}'s except at level {i + 1}",
             tuple(j for j in range(levels) if j != i)) for i in range(levels)]
  named.append((f"{anchor}'s at every level", tuple(range(levels))))
  variants = {}
  for name, picked in named:
    if picked not in variants.values():
      variants[name] = picked
  scores = {(t, s, v): _segmentation_metric(model, t, metrics)
            for t in targets for s in sources for v in variants}
  for batch in training.test_dataset(config):
    if anchor not in batch:
      continue
    anchor_side = model.encode(anchor, batch[anchor], training=False)[1]
    for source in sources:
      if source not in batch:
        continue
      latent, side = model.encode(source, batch[source], training=False)
      for target in targets:
        if target not in batch:
          continue
        for name, swapped in variants.items():
          mixed = tuple(anchor_side[i] if i in swapped else side[i] for i in range(len(side)))
          scores[target, source, name].update(
              batch[target], model.modalities[target].to_labels(
                  model.decode(target, latent, mixed)))
  _print_miou(f"a source's latent with its own side information, or {anchor}'s at some "
              "pooling levels (1 = finest; test split, mIoU %)",
              scores, lambda key: f"{key[1]}->{key[0]}, {key[2]}")


def main(argv):
  del argv
  # Heavy imports after flag parsing, so --help is fast.
  from mm_tf import config as mm_config  # pylint: disable=g-import-not-at-top
  from mm_tf import evaluation, layers, metrics, saving, training  # pylint: disable=g-import-not-at-top
  config_path = os.path.join(FLAGS.model_dir, mm_config.CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise app.UsageError(f"--model_dir: {config_path} is missing; pass the model_dir of a "
                         "`python -m mm_tf.train` run.")
  config = mm_config.ExperimentConfig.from_json_file(config_path)
  model = saving.load_model(training.stage_dir(FLAGS.model_dir, FLAGS.stage))
  batch = next(iter(training.test_dataset(config, batch_size=FLAGS.batch_size)))

  # Record what each pooling layer sees (the layer is called eagerly here).
  pooled_inputs = []
  original_call = layers.MaxPoolWithArgmax.call

  def recording_call(self, inputs):
    pooled_inputs.append(inputs.numpy())
    return original_call(self, inputs)

  layers.MaxPoolWithArgmax.call = recording_call
  latents = {}
  print(f"== stage {FLAGS.stage} of {FLAGS.model_dir}: latents and switches "
        f"({FLAGS.batch_size} test examples)")
  for name in model.modality_names:
    if name not in batch:
      continue
    pooled_inputs.clear()
    latent = model.encode(name, batch[name], training=False)[0].numpy()
    latents[name] = latent
    flat = latent.reshape(len(latent), -1)
    noise_norm = model.noise_std * np.sqrt(flat.shape[1])
    ties = ", ".join(f"level {i + 1} {100 * a:.1f} % ({100 * p:.1f} % of positive)"
                     for i, (a, p) in enumerate(map(_tied_windows, pooled_inputs)))
    print(f"{name:>12}: latent {latent.shape[1:]}, RMS {np.sqrt((latent ** 2).mean()):.3f}, "
          f"channel std {latent.std(axis=(0, 1, 2)).mean():.3f}, zeros "
          f"{100 * (latent == 0).mean():.0f} %, norm {np.linalg.norm(flat, axis=1).mean():.1f} "
          f"(noise norm {noise_norm:.1f}); tied positive pooling windows: {ties or '-'}")
    encoder = model.encoders[name]
    if encoder.latent_calibration:
      # The statistics above are of the calibrated latent (inference mode); the map's
      # scale says how much narrower the encoder's own latent is than the anchor's.
      scale = encoder.latent_scale.numpy()
      print(f"{'':>12}  latent calibration: scale median {np.median(scale):.2f} (min "
            f"{scale.min():.2f}, max {scale.max():.2f})")
  layers.MaxPoolWithArgmax.call = original_call
  anchor = latents.get(model.anchor)
  for name, latent in latents.items():
    if name == model.anchor or anchor is None:
      continue
    a, b = anchor.reshape(len(anchor), -1), latent.reshape(len(latent), -1)
    cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                         1e-12)
    print(f"{model.anchor}-{name}: cosine {cosine.mean():.3f}, L2 distance "
          f"{np.linalg.norm(a - b, axis=1).mean():.1f}")

  _swapped_side_information(model, config, training, metrics)
  _side_information_per_level(model, config, training, metrics)

  results = os.path.join(FLAGS.model_dir, "eval", f"stage_{FLAGS.stage}", "results.json")
  if not os.path.isfile(results):
    print(f"(no {results}: run the stage's evaluation for per-class IoU)")
    return
  rows = evaluation.segmentation_metrics(results)
  oracle = {}
  if FLAGS.oracle_model_dir:
    oracle = evaluation.segmentation_metrics(os.path.join(FLAGS.oracle_model_dir, "eval",
                                                          "stage_1", "results.json"))
  classes = list(next(iter(rows.values()))["per_class_iou"])
  print(f"\n== per-class IoU % (stage {FLAGS.stage}" + (", oracle in brackets)" if oracle
                                                        else ")"))
  print(f"{'translation':>12} {'mIoU':>11} " + " ".join(f"{c:>15}" for c in classes))
  for short_name, metrics in rows.items():
    reference = oracle.get(short_name)
    cells = []
    for c in classes:
      cell = f"{100 * metrics['per_class_iou'][c]:.0f}"
      if reference:
        cell += f" [{100 * reference['per_class_iou'][c]:.0f}]"
      cells.append(f"{cell:>15}")
    miou = f"{100 * metrics['miou']:.1f}" + (f" [{100 * reference['miou']:.1f}]"
                                             if reference else "")
    print(f"{short_name:>12} {miou:>11} " + " ".join(cells))
    if reference:
      cost = {c: 100 * (reference["per_class_iou"][c] - metrics["per_class_iou"][c])
              / len(classes) for c in classes}
      print(f"{'':>12} {'':>11} mIoU points lost to the oracle per class: " + ", ".join(
          f"{c} {v:+.1f}" for c, v in sorted(cost.items(), key=lambda kv: -kv[1])))


if __name__ == "__main__":
  app.run(main)
