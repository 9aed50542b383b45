"""Tests of MixAndMatchNetworks: routing per stage, learning, configs, precision, distribution."""

import os
import subprocess
import sys
import tempfile
import textwrap

from absl.testing import parameterized
import keras
import numpy as np
import tensorflow as tf

import mm_tf
from mm_tf import losses as mm_losses
from mm_tf import model as mm_model
from mm_tf import modalities
from mm_tf import networks
from mm_tf import saving
from mm_tf import stages as mm_stages

SIZE = 32
BATCH = 4
FOUR = ["rgb", "depth", "nir", "segmentation"]
FOUR_STREAMS = [("rgb", "segmentation"), ("rgb", "depth", "nir")]
THREE = ["rgb", "depth", "segmentation"]
THREE_STREAMS = [("rgb", "segmentation"), ("rgb", "depth")]


def make_model(names=FOUR, streams=FOUR_STREAMS, **kwargs):
  kwargs.setdefault("width", 1 / 16)
  kwargs.setdefault("image_size", SIZE)
  return mm_model.MixAndMatchNetworks(names, streams, **kwargs)


def structured_batch(names=FOUR, streams=FOUR_STREAMS, seed=0):
  """A batch whose modalities share one layout: labels from quadrant patterns."""
  rng = np.random.default_rng(seed)
  labels = np.zeros((BATCH, SIZE, SIZE), np.int32)
  for i in range(BATCH):
    cut_y, cut_x = rng.integers(8, SIZE - 8, size=2)
    labels[i, :cut_y] = 0
    labels[i, cut_y:, :cut_x] = 1 + i % 2
    labels[i, cut_y:, cut_x:] = 3 + i % 2
  palette = np.array([[0.2, 0.5, 1.0], [0.6, 0.6, 0.6], [0.1, 0.9, 0.1], [0.4, 0.4, 0.2],
                      [0.0, 0.0, 0.0]], np.float32)
  rgb = palette[labels] * 2 - 1 + rng.normal(0, 0.05, (BATCH, SIZE, SIZE, 3)).astype(np.float32)
  depth = (labels[..., None] + 1).astype(np.float32) / 6
  nir = np.isin(labels, [2, 3])[..., None].astype(np.float32)
  data = {"rgb": rgb, "depth": depth, "nir": nir, "segmentation": labels}
  return {"+".join(s): {m: tf.constant(data[m]) for m in s} for s in streams}


def train_steps(model, batch, stage, steps, learning_rate=None, run_eagerly=True):
  """Runs `steps` of fit(). Eager by default: tracing the whole multi-network train step
  costs far more than the one or two steps most tests need (the learning test traces)."""
  model.set_stage(stage)
  if learning_rate:
    model.compile(generator_optimizer=keras.optimizers.Adam(learning_rate),
                  discriminator_optimizer=keras.optimizers.Adam(learning_rate),
                  run_eagerly=run_eagerly)
  else:
    model.compile(run_eagerly=run_eagerly)
  dataset = tf.data.Dataset.from_tensors(batch).repeat()
  return model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)


def snapshot(module):
  return [v.numpy().copy() for v in module.variables]


def moved(before, module):
  return any(not np.array_equal(b, v.numpy()) for b, v in zip(before, module.variables))


def terms_and_gradient_norm(model, batch, prefix):
  """`compute_loss_terms(batch)` and a function giving, per module, the gradient norm of the
  sum of the mean terms whose names start with `prefix`."""
  variables = model.trainable_variables
  with tf.GradientTape() as tape:
    terms, _ = model.compute_loss_terms(batch)
    total = tf.add_n([tf.reduce_mean(tf.concat(v, 0)) for name, v in terms.items()
                      if name.startswith(prefix)])
  gradients = dict(zip([id(v) for v in variables], tape.gradient(total, variables)))

  def gradient_norm(module):
    return sum(float(tf.reduce_sum(tf.abs(gradients[id(v)])))
               for v in module.trainable_variables if gradients[id(v)] is not None)

  return terms, gradient_norm


class RoutingTest(tf.test.TestCase, parameterized.TestCase):

  def test_stage2_freezes_rgb_encoder_and_trains_everything_else(self):
    model = make_model()
    batch = structured_batch()
    modules = {m.name: m for m in list(model.encoders.values()) + list(model.decoders.values())
               + [model.discriminator]}
    before = {name: snapshot(module) for name, module in modules.items()}
    history = train_steps(model, batch, stage=2, steps=1)
    self.assertFalse(moved(before["rgb_encoder"], modules["rgb_encoder"]),
                     "stage 2 must not change the RGB encoder (weights or BN statistics)")
    for name, module in modules.items():
      if name != "rgb_encoder":
        self.assertTrue(moved(before[name], module), f"{name} did not move in stage 2")
    for term in ["latent_rgb_depth", "depth_to_depth", "rgb_to_rgb", "rgb_gan", "discriminator"]:
      self.assertIn(term, history.history)
      self.assertTrue(np.isfinite(history.history[term][0]))

  def test_stage1_has_only_translation_terms_with_three_modalities(self):
    model = make_model(THREE, THREE_STREAMS)
    history = train_steps(model, structured_batch(THREE, THREE_STREAMS), stage=1, steps=1)
    self.assertNotIn("depth_to_depth", history.history)
    self.assertNotIn("latent_rgb_depth", history.history)
    self.assertIn("depth_to_rgb", history.history)
    self.assertIn("rgb_to_segmentation", history.history)
    self.assertNotIn("nir_to_rgb", history.history)

  def test_zero_weight_translations_are_not_computed(self):
    # The oracle's setting: only x -> segmentation weighs; the reverse terms, their decoders
    # and the segmentation encoder are skipped, and the x -> segmentation losses are
    # exactly those of the model that also computes the reverse terms.
    oracle_streams = [("segmentation", "depth"), ("segmentation", "nir")]
    names = ["segmentation", "depth", "nir"]
    full = make_model(names, oracle_streams, anchor="segmentation")
    weights = {"rgb": 1.0, "segmentation": 100.0, "depth": 0.0, "nir": 0.0}
    spec = full.stage_specs[1].replace(modality_weights=weights, gan_weight=0.0)
    batch = structured_batch(names, oracle_streams)
    terms, _ = full.compute_loss_terms(batch, spec)
    self.assertEqual(sorted(terms), ["depth_to_segmentation", "nir_to_segmentation"])
    self.assertEqual(full.active_term_names(spec), ["depth_to_segmentation",
                                                    "nir_to_segmentation"])
    all_terms, _ = full.compute_loss_terms(batch, spec.replace(
        modality_weights=dict(weights, depth=10.0, nir=10.0)))
    self.assertIn("segmentation_to_depth", all_terms)
    for name in terms:
      self.assertAllClose(terms[name][0], all_terms[name][0])
    encoded = []
    encode = full._encode_for_training  # pylint: disable=protected-access
    full._encode_for_training = lambda m, x: encoded.append(m) or encode(m, x)
    full.compute_loss_terms(batch, spec)
    self.assertCountEqual(encoded, ["depth", "nir"])

  @parameterized.parameters(("all",), ("segmentation",), ())
  def test_pseudo_pair_gradient_reaches_only_non_anchor_modules(self, *trained_decoders):
    def stage3_model(weights=None, **changes):
      model = make_model()
      if weights is not None:
        model.set_weights(weights)
      model.set_stage(3)
      changes.setdefault("pseudo_pairs_train_decoders", trained_decoders)
      model.stage_specs[3] = model.stage_specs[3].replace(**changes)
      return model

    model = stage3_model()
    start = model.get_weights()
    batch = structured_batch()
    terms, gradient_norm = terms_and_gradient_norm(model, batch, "pseudo_")
    self.assertEqual(sorted(n for n in terms if n.startswith("pseudo_")),
                     ["pseudo_depth_to_segmentation", "pseudo_nir_to_segmentation",
                      "pseudo_segmentation_to_depth", "pseudo_segmentation_to_nir"])

    self.assertEqual(gradient_norm(model.encoders["rgb"]), 0.0)
    self.assertEqual(gradient_norm(model.decoders["rgb"]), 0.0)
    self.assertEqual(gradient_norm(model.discriminator), 0.0)
    for name in ["depth", "nir", "segmentation"]:
      self.assertGreater(gradient_norm(model.encoders[name]), 0.0, f"{name}_encoder")
      if "all" in trained_decoders or name in trained_decoders:
        self.assertGreater(gradient_norm(model.decoders[name]), 0.0, f"{name}_decoder")
      else:  # Paper 5.2: these decoders are shared with the seen translations from RGB.
        self.assertEqual(gradient_norm(model.decoders[name]), 0.0, f"{name}_decoder")

    # Both settings compute the same losses: only the gradient differs.
    other = stage3_model(start, pseudo_pairs_train_decoders=() if trained_decoders else ("all",))
    for name, values in other.compute_loss_terms(batch)[0].items():
      self.assertAllClose(tf.concat(values, 0), tf.concat(terms[name], 0), rtol=1e-5,
                          atol=1e-5, msg=name)
    # The pseudo-pair call leaves the decoders' moving statistics alone: they are those
    # of a step without pseudo-pairs.
    paired = stage3_model(start, pseudo_pairs=False)
    paired.compute_loss_terms(batch)
    for name in ["depth", "nir", "segmentation"]:
      for ours, theirs in zip(model.decoders[name].non_trainable_variables,
                              paired.decoders[name].non_trainable_variables):
        self.assertAllClose(ours, theirs, msg=f"{name}_decoder {ours.path}")

  def test_pseudo_pairs_are_decoded_with_the_moving_statistics(self):
    # As a zero-pair translation is at test time: the decoder in inference mode (the
    # source encoder is trained, so it runs in training mode as in every other term).
    model = make_model()
    model.set_stage(3)
    spec = model.stage_specs[3].replace(latent_noise=False)
    batch = structured_batch()["rgb+depth+nir"]
    for variable in model.decoders["segmentation"].non_trainable_variables:
      variable.assign(tf.random.stateless_uniform(variable.shape, [7, 8], 0.5, 2.0))
    terms, _ = model.compute_loss_terms(structured_batch(), spec)
    latent, side = model.encoders["depth"](batch["depth"], training=True)
    teacher = model.decoders["segmentation"](
        *model.encoders["rgb"](batch["rgb"], training=False), training=False)
    expected = {}
    for training in (False, True):
      student = model.decoders["segmentation"](latent, side, training=training)
      expected[training] = mm_losses.pseudo_pair(model.modalities["segmentation"], student,
                                                 teacher)
    actual = tf.concat(terms["pseudo_depth_to_segmentation"], 0)
    self.assertAllClose(actual, expected[False], rtol=1e-5)
    self.assertNotAllClose(actual, expected[True])

  @parameterized.parameters(2, 3)
  def test_side_consistency_trains_only_the_target_decoders(self, stage):
    model = make_model()
    model.set_stage(stage)
    model.stage_specs[stage] = model.stage_specs[stage].replace(side_consistency=True)
    batch = structured_batch()
    terms, gradient_norm = terms_and_gradient_norm(model, batch, "side_")
    expected = ["side_depth_to_segmentation", "side_nir_to_segmentation",
                "side_segmentation_to_depth", "side_segmentation_to_nir"]
    self.assertEqual(sorted(n for n in terms if n.startswith("side_")), expected)
    self.assertContainsSubset(expected, model.active_term_names())
    for name in expected:
      self.assertTrue(np.all(np.isfinite(tf.concat(terms[name], 0))), name)
    for encoder in model.encoders.values():  # Switches carry no gradient; latents none.
      self.assertEqual(gradient_norm(encoder), 0.0, encoder.name)
    self.assertEqual(gradient_norm(model.decoders["rgb"]), 0.0)
    for name in ["depth", "nir", "segmentation"]:
      self.assertGreater(gradient_norm(model.decoders[name]), 0.0, f"{name}_decoder")

    # The anchor's own switches would make the term the distance of the anchor's
    # translation in training mode to itself in inference mode: the term is about
    # another encoder's switches, so swapping them in must change it.
    anchor_side = model.compute_loss_terms(batch)[0]["side_depth_to_segmentation"]
    model.encoders["depth"].set_weights(
        [w + 0.5 for w in model.encoders["depth"].get_weights()])
    self.assertNotAllClose(tf.concat(anchor_side, 0), tf.concat(
        model.compute_loss_terms(batch)[0]["side_depth_to_segmentation"], 0))
    # fit() reports the terms (each has its metric tracker).
    history = train_steps(model, batch, stage=stage, steps=1)
    for name in expected:
      self.assertTrue(np.isfinite(history.history[name][0]), name)

  def test_side_consistency_is_off_without_side_information(self):
    model = make_model(side_information="none")
    spec = model.stage_specs[2].replace(side_consistency=True)
    terms, _ = model.compute_loss_terms(structured_batch(), spec)
    self.assertFalse([n for n in terms if n.startswith("side_")])

  def test_translations_are_derived_from_streams(self):
    model = make_model()
    self.assertIn(("depth", "rgb"), model.seen_translations)
    self.assertIn(("depth", "segmentation"), model.unseen_translations)
    self.assertNotIn(("depth", "segmentation"), model.seen_translations)


class LearningTest(tf.test.TestCase):

  def test_stage1_halves_segmentation_cross_entropy(self):
    keras.utils.set_random_seed(1)
    model = make_model()
    batch = structured_batch()
    # A tiny network on one fixed batch: a larger learning rate than the paper's keeps
    # the test short; what it checks is that the losses and gradients are wired to learn.
    def segmentation_cross_entropy():
      terms, _ = model.compute_loss_terms(batch, model.stage_specs[1])
      return float(tf.reduce_mean(terms["rgb_to_segmentation"][0]))

    first = segmentation_cross_entropy()
    train_steps(model, batch, stage=1, steps=150, learning_rate=1e-3, run_eagerly=False)
    last = segmentation_cross_entropy()
    self.assertLess(last, first / 2, f"cross-entropy {first:.3f} -> {last:.3f}")


class InterfaceTest(tf.test.TestCase, parameterized.TestCase):

  def test_translate_shapes_and_multimodal(self):
    model = make_model()
    depth = tf.random.uniform([2, SIZE, SIZE, 1])
    self.assertEqual(model.translate("depth", "segmentation", depth).shape, (2, SIZE, SIZE, 5))
    self.assertEqual(model.translate("segmentation", "rgb",
                                     tf.zeros([2, SIZE, SIZE], tf.int32)).shape,
                     (2, SIZE, SIZE, 3))
    inputs = {"rgb": tf.zeros([2, SIZE, SIZE, 3]), "depth": depth, "nir": depth}
    self.assertEqual(model.multimodal_weights(list(inputs)),
                     {"rgb": 0.6, "depth": 0.2, "nir": 0.2})
    fused = model.translate_multimodal(inputs, "segmentation")
    self.assertEqual(fused.shape, (2, SIZE, SIZE, 5))
    # With all weight on depth, multimodal fusion with depth's side information = depth alone.
    only_depth = model.translate_multimodal({"depth": depth, "nir": depth}, "segmentation",
                                            weights={"depth": 1.0, "nir": 0.0})
    self.assertAllClose(only_depth, model.translate("depth", "segmentation", depth), atol=1e-5)

  def test_evaluation_translations_match_the_model_api(self):
    # evaluation.model_translate_fn encodes each source once per batch; every output must
    # be the one translate / translate_multimodal give.
    from mm_tf import evaluation  # pylint: disable=g-import-not-at-top
    model = make_model()
    batch = structured_batch()
    inputs = dict(batch["rgb+depth+nir"], segmentation=batch["rgb+segmentation"]["segmentation"])
    translate = evaluation.model_translate_fn(model)
    translations = evaluation.default_translations(model)
    self.assertIn("D->R->S", [t.short_name for t in translations])
    for t in translations:
      if len(t.sources) > 1:
        expected = model.translate_multimodal({s: inputs[s] for s in t.sources}, t.target)
      elif t.via:
        via = model.modalities[t.via].activate(model.translate(t.sources[0], t.via,
                                                               inputs[t.sources[0]]))
        expected = model.translate(t.via, t.target, via)
      else:
        expected = model.translate(t.sources[0], t.target, inputs[t.sources[0]])
      self.assertAllClose(translate(t, inputs), expected, atol=1e-5, msg=t.name)
    # Alignment factors from the cached encodings are those of the model.
    for pair, value in model.alignment_factors(inputs, translate.encodings(inputs)).items():
      self.assertAllClose(value, model.alignment_factors(inputs)[pair], atol=1e-6, msg=pair)
    results = evaluation.evaluate_model(model, [inputs], translations=translations[:1])
    for pair, value in model.alignment_factors(inputs).items():
      self.assertAllClose(results["alignment_factors"][pair], value, atol=1e-5, msg=pair)
    # A new batch is encoded anew.
    other = {k: v[::-1] for k, v in inputs.items()}
    self.assertAllClose(translate(translations[0], other),
                        model.translate("rgb", "segmentation", other["rgb"]), atol=1e-5)

  def test_alignment_factor_of_an_encoder_with_itself_is_one(self):
    model = make_model()
    x = tf.random.uniform([2, SIZE, SIZE, 1])
    self.assertAllClose(model.alignment_factor("depth", x, "depth", x), 1.0, atol=1e-5)
    factors = model.alignment_factors({"rgb": tf.zeros([2, SIZE, SIZE, 3]), "depth": x})
    self.assertEqual(list(factors), ["rgb_depth"])

  def test_bad_inputs_raise_clear_errors(self):
    model = make_model()
    with self.assertRaisesRegex(ValueError, "Unknown modality 'thermal'"):
      model.translate("thermal", "rgb", tf.zeros([1, SIZE, SIZE, 1]))
    with self.assertRaisesRegex(ValueError, "expected 1 input channels"):
      model.translate("depth", "rgb", tf.zeros([1, SIZE, SIZE, 3]))
    with self.assertRaisesRegex(ValueError, "multiples of 32"):
      model.translate("depth", "rgb", tf.zeros([1, 40, 40, 1]))
    with self.assertRaisesRegex(ValueError, "Unknown modality"):
      modalities.get("thermal")
    with self.assertRaisesRegex(ValueError, "must start with the anchor"):
      make_model(streams=[("segmentation", "rgb")])
    with self.assertRaisesRegex(ValueError, "no stream"):
      model.compute_loss_terms({"rgb+segmentation": structured_batch()["rgb+segmentation"]})
    stages = {3: mm_stages.StageSpec(3, 1, 1e-3, pseudo_pairs=True,
                                     pseudo_pairs_train_decoders=("thermal",))}
    with self.assertRaisesRegex(ValueError, r"--pseudo_pairs_train_decoders.*\['thermal'\]"):
      make_model(stages=stages)

  def test_get_config_round_trip(self):
    model = make_model(side_information="skip", noise_std=0.3)
    clone = mm_model.MixAndMatchNetworks.from_config(model.get_config())
    self.assertEqual(model.get_config(), clone.get_config())
    for network in [model.encoders["depth"], model.decoders["segmentation"],
                    model.decoders["rgb"]]:
      copy = type(network).from_config(network.get_config())
      self.assertEqual(network.get_config(), copy.get_config())
    disc = networks.PatchDiscriminator.from_config(model.discriminator.get_config())
    self.assertEqual(disc.get_config(), model.discriminator.get_config())

  def test_save_and_load_give_identical_outputs(self):
    model = make_model()
    train_steps(model, structured_batch(), stage=1, steps=2)
    depth = tf.random.uniform([2, SIZE, SIZE, 1])
    expected = model.translate("depth", "segmentation", depth)
    directory = tempfile.mkdtemp()
    model.save_weights(os.path.join(directory, "w.weights.h5"))
    other = make_model()
    other.load_weights(os.path.join(directory, "w.weights.h5"))
    self.assertAllEqual(other.translate("depth", "segmentation", depth), expected)
    saving.save_model(model, os.path.join(directory, "run", "model"))
    loaded = mm_tf.load(os.path.join(directory, "run"))
    self.assertAllEqual(loaded.translate("depth", "segmentation", depth), expected)
    with self.assertRaisesRegex(FileNotFoundError, "No trained model"):
      mm_tf.load(os.path.join(directory, "nothing"))

  @parameterized.parameters("skip", "none")
  def test_side_information_ablations_get_gradients(self, side_information):
    model = make_model(side_information=side_information)
    model.set_stage(1)
    with tf.GradientTape() as tape:
      terms, _ = model.compute_loss_terms(structured_batch())
      loss = tf.reduce_mean(terms["depth_to_rgb"][0])
    gradients = tape.gradient(loss, model.encoders["depth"].trainable_variables)
    self.assertTrue(all(g is not None and bool(tf.reduce_all(tf.math.is_finite(g)))
                        for g in gradients))

  def test_mixed_bfloat16_policy_trains(self):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
      model = make_model()
      self.assertEqual(model.encoders["depth"].compute_dtype, "bfloat16")
      history = train_steps(model, structured_batch(), stage=2, steps=2)
      self.assertTrue(all(np.isfinite(v[0]) for v in history.history.values()))
      output = model.translate("depth", "segmentation", tf.zeros([1, SIZE, SIZE, 1]))
      self.assertEqual(output.dtype, tf.float32)
    finally:
      keras.mixed_precision.set_global_policy("float32")


DISTRIBUTED_SCRIPT = textwrap.dedent("""
    import numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tests.test_model import make_model, structured_batch
    batch = structured_batch()
    dataset = tf.data.Dataset.from_tensors(batch).repeat()

    def one_step(strategy, weights):
      with strategy.scope():
        model = make_model()
        if weights is not None:
          model.set_weights(weights)
        model.set_stage(1)
        model.compile(generator_optimizer=keras.optimizers.SGD(1e-3),
                      discriminator_optimizer=keras.optimizers.SGD(1e-3), run_eagerly=True)
      initial = [w.copy() for w in model.get_weights()]
      history = model.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0)
      return initial, model.get_weights(), history.history

    keras.utils.set_random_seed(0)
    initial, single, single_history = one_step(tf.distribute.get_strategy(), None)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    _, distributed, distributed_history = one_step(mirrored, initial)
    # Per variable: how far the two updates differ, relative to how far it moved. A loss
    # averaged per replica instead of over the global batch would make this ~1 (updates
    # off by the replica count); synchronized BN's one-pass variance leaves ~0.1 of
    # float32 noise in the deepest gradient sums.
    worst, moved = 0.0, 0.0
    for a, b, start in zip(single, distributed, initial):
      movement = float(np.max(np.abs(a - start)))
      moved = max(moved, movement)
      if movement > 1e-6:
        worst = max(worst, float(np.max(np.abs(a - b))) / movement)
    print("WORST", worst, "MOVED", moved)
    for key in single_history:
      print("METRIC", key, single_history[key][0], distributed_history[key][0])
""")


class DistributionTest(tf.test.TestCase):

  def test_mirrored_strategy_matches_one_device(self):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", DISTRIBUTED_SCRIPT], cwd=root,
                            capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    lines = result.stdout.splitlines()
    worst_line = [l for l in lines if l.startswith("WORST")][0].split()
    worst, moved = float(worst_line[1]), float(worst_line[3])
    self.assertGreater(moved, 1e-4)
    self.assertLess(worst, 0.3, result.stdout)
    for line in lines:
      if line.startswith("METRIC"):
        _, name, single, distributed = line.split()
        self.assertAllClose(float(single), float(distributed), rtol=1e-3, msg=name)



class PoolingLevelsTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(1, 3, 4, 5)
  def test_latent_resolution_and_translation_shapes(self, num_pools):
    model = make_model(num_pools=num_pools)
    latent, switches = model.encode("depth", tf.zeros([2, SIZE, SIZE, 1]))
    self.assertEqual(latent.shape[1:3], (SIZE // 2**num_pools,) * 2)
    self.assertLen(switches, num_pools)
    self.assertEqual(model.size_multiple, 2**num_pools)
    for target, channels in (("segmentation", 5), ("rgb", 3), ("depth", 1)):
      self.assertEqual(model.translate("depth", target, tf.zeros([2, SIZE, SIZE, 1])).shape,
                       (2, SIZE, SIZE, channels))

  def test_sizes_follow_num_pools(self):
    model = make_model(num_pools=3, image_size=None)
    # 40 is a multiple of 8 (three pools) but not of 32.
    self.assertEqual(model.translate("depth", "segmentation", tf.zeros([1, 40, 40, 1])).shape,
                     (1, 40, 40, 5))
    with self.assertRaisesRegex(ValueError, "multiples of 8"):
      model.translate("depth", "segmentation", tf.zeros([1, 36, 36, 1]))
    with self.assertRaisesRegex(ValueError, "num_pools must be between 1 and 5"):
      make_model(num_pools=6)

  def test_get_config_round_trip_keeps_num_pools(self):
    model = make_model(num_pools=4)
    clone = mm_model.MixAndMatchNetworks.from_config(model.get_config())
    self.assertEqual(clone.num_pools, 4)
    for network in [model.encoders["depth"], model.decoders["segmentation"],
                    model.decoders["rgb"]]:
      copy = type(network).from_config(network.get_config())
      self.assertEqual(copy.get_config(), network.get_config())
      self.assertEqual(copy.num_pools, 4)


class SideInformationLevelsTest(tf.test.TestCase, parameterized.TestCase):

  def _decoder_and_side(self, side_information, levels, num_pools=3):
    model = make_model(num_pools=num_pools, side_information=side_information,
                       side_information_levels=levels)
    depth = tf.random.uniform([2, SIZE, SIZE, 1], seed=1)
    rgb = tf.random.uniform([2, SIZE, SIZE, 3], -1, 1, seed=2)
    latent, side = model.encode("depth", depth)
    _, other_side = model.encode("rgb", rgb)
    return model.decoders["segmentation"], latent, side, other_side

  @parameterized.parameters("switches", "skip")
  def test_only_the_finest_levels_read_side_information(self, side_information):
    decoder, latent, side, other = self._decoder_and_side(side_information, 1)
    output = decoder(latent, side)
    # Another encoder's side information at the two deeper levels changes nothing ...
    self.assertAllEqual(decoder(latent, (side[0], other[1], other[2])), output)
    # ... at the finest level it does.
    self.assertGreater(float(tf.reduce_max(tf.abs(
        decoder(latent, (other[0], side[1], side[2])) - output))), 1e-4)

  def test_every_level_is_the_default_and_zero_levels_read_none(self):
    decoder, latent, side, other = self._decoder_and_side("switches", -1)
    self.assertEqual(decoder.side_information_levels, 3)
    self.assertGreater(float(tf.reduce_max(tf.abs(
        decoder(latent, (side[0], side[1], other[2])) - decoder(latent, side)))), 1e-4)
    decoder, latent, side, other = self._decoder_and_side("switches", 0)
    self.assertAllEqual(decoder(latent, other), decoder(latent, side))

  def test_skip_connections_at_fewer_levels_have_fewer_inputs(self):
    every, *_ = self._decoder_and_side("skip", -1)
    finest, *_ = self._decoder_and_side("skip", 1)
    self.assertLess(finest.count_params(), every.count_params())

  def test_config_round_trip_and_bad_values(self):
    model = make_model(num_pools=3, side_information_levels=1)
    clone = mm_model.MixAndMatchNetworks.from_config(model.get_config())
    self.assertEqual(clone.side_information_levels, 1)
    decoder = model.decoders["segmentation"]
    copy = type(decoder).from_config(decoder.get_config())
    self.assertEqual(copy.side_information_levels, 1)
    self.assertEqual(copy.get_config(), decoder.get_config())
    for bad in (4, -2):
      with self.assertRaisesRegex(ValueError, "side_information_levels must be -1"):
        make_model(num_pools=3, side_information_levels=bad)


class BatchNormRecalibrationTest(tf.test.TestCase):

  def test_inference_matches_training_mode_after_recalibration(self):
    keras.utils.set_random_seed(3)
    model = make_model()
    batch = structured_batch()
    train_steps(model, batch, stage=1, steps=3, learning_rate=1e-2)
    rgb = batch["rgb+segmentation"]["rgb"]
    both_rgb = tf.concat([rgb, batch["rgb+depth+nir"]["rgb"]], axis=0)
    encoder = model.encoders["rgb"]

    def latent_gap():
      training, _ = encoder(both_rgb, training=True)
      inference, _ = encoder(both_rgb, training=False)
      return float(tf.norm(training - inference) / tf.norm(training))

    # Calling in training mode moves the statistics a little: keep them as they are.
    saved = [v.numpy().copy() for v in encoder.non_trainable_variables]
    gap_before = latent_gap()
    for variable, value in zip(encoder.non_trainable_variables, saved):
      variable.assign(value)
    self.assertEqual(model.recalibrate_batch_norm([batch, batch]), 2)
    # The RGB encoder saw one batch of every stream's RGB images: its statistics are now
    # exactly that batch's, so inference mode reproduces training mode.
    self.assertLess(latent_gap(), 1e-3)
    self.assertGreater(gap_before, 1e-2)

  def test_statistics_are_those_without_latent_noise(self):
    batch = structured_batch()
    noisy, clean = make_model(noise_std=100.0), make_model(noise_std=0.0)
    clean.set_weights(noisy.get_weights())
    for model in (noisy, clean):
      model.set_stage(2)  # Latent noise on.
      model.recalibrate_batch_norm([batch])
    self.assertAllClose(noisy.decoders["segmentation"].get_weights(),
                        clean.decoders["segmentation"].get_weights())

  def test_stage3_statistics_are_those_of_the_paired_routes(self):
    # In stage 3 the decoders run a second time on pseudo-pair outputs; those must not
    # overwrite the statistics: stage 3 recalibrates exactly like stage 2 (same routes).
    batch = structured_batch()
    stage2, stage3 = make_model(), make_model()
    stage3.set_weights(stage2.get_weights())
    stage2.set_stage(2)
    stage3.set_stage(3)
    for model in (stage2, stage3):
      model.recalibrate_batch_norm([batch])
    for name in ("depth", "segmentation"):
      self.assertAllClose(stage2.decoders[name].non_trainable_weights,
                          stage3.decoders[name].non_trainable_weights)

  def test_frozen_modules_keep_their_statistics(self):
    model = make_model()
    batch = structured_batch()
    model.set_stage(2)  # Freezes the RGB encoder.
    frozen = snapshot(model.encoders["rgb"])
    trained = snapshot(model.decoders["segmentation"])
    model.recalibrate_batch_norm([batch])
    self.assertFalse(moved(frozen, model.encoders["rgb"]))
    self.assertTrue(moved(trained, model.decoders["segmentation"]))
    self.assertEqual([layer.momentum for layer in model.decoders["segmentation"]._flatten_layers()
                      if isinstance(layer, keras.layers.BatchNormalization)][:1], [0.99])


class LatentCalibrationTest(tf.test.TestCase):

  def _per_channel(self, latent):
    flat = tf.reshape(tf.cast(latent, tf.float64), [-1, latent.shape[-1]])
    return tf.reduce_mean(flat, 0), tf.math.reduce_std(flat, 0)

  def test_calibrated_latents_have_the_anchors_moments_in_inference_mode_only(self):
    keras.utils.set_random_seed(5)
    model = make_model(latent_calibration=True)
    batch = structured_batch()
    train_steps(model, batch, stage=1, steps=2, learning_rate=1e-2)
    nir = batch["rgb+depth+nir"]["nir"]
    raw_training, _ = model.encode("nir", nir, training=True)
    self.assertEqual(model.calibrate_latents([batch]), 1)
    rgb = tf.concat([batch[k]["rgb"] for k in batch], axis=0)
    anchor_mean, anchor_std = self._per_channel(model.encode("rgb", rgb)[0])
    mean, std = self._per_channel(model.encode("nir", nir)[0])
    # (NIR: the test batch's depth is piecewise constant, its channels all at the cap.)
    # Channels neither constant in the source nor at the scale cap match exactly.
    scale = model.encoders["nir"].latent_scale
    live = (scale > 0) & (scale < mm_model.MAX_LATENT_SCALE)
    self.assertGreater(int(tf.reduce_sum(tf.cast(live, tf.int32))), 0)
    self.assertAllClose(tf.boolean_mask(mean, live), tf.boolean_mask(anchor_mean, live),
                        atol=1e-4)
    self.assertAllClose(tf.boolean_mask(std, live), tf.boolean_mask(anchor_std, live),
                        atol=1e-4)
    # Training mode (and the latent-consistency loss) sees the encoder's own latent.
    self.assertAllClose(model.encode("nir", nir, training=True)[0], raw_training)
    self.assertGreater(float(tf.reduce_max(tf.abs(
        model.encode("nir", nir)[0] - raw_training))), 1e-3)
    # The anchor is the reference: it has no map at all.
    self.assertFalse(model.encoders["rgb"].latent_calibration)

  def test_calibration_moves_zero_pair_translations_and_not_the_anchors(self):
    keras.utils.set_random_seed(6)
    model = make_model(latent_calibration=True)
    batch = structured_batch()
    train_steps(model, batch, stage=1, steps=2, learning_rate=1e-2)
    rgb, depth = batch["rgb+depth+nir"]["rgb"], batch["rgb+depth+nir"]["depth"]
    before = [model.translate(s, "segmentation", x) for s, x in (("rgb", rgb), ("depth", depth))]
    model.calibrate_latents([batch])
    self.assertAllClose(model.translate("rgb", "segmentation", rgb), before[0])
    self.assertNotAllClose(model.translate("depth", "segmentation", depth), before[1])

  def test_saved_model_and_config_keep_the_calibration(self):
    model = make_model(latent_calibration=True)
    batch = structured_batch()
    model.calibrate_latents([batch])
    depth = batch["rgb+depth+nir"]["depth"]
    expected = model.translate("depth", "segmentation", depth)
    clone = mm_model.MixAndMatchNetworks.from_config(model.get_config())
    self.assertTrue(clone.latent_calibration)
    encoder = model.encoders["depth"]
    self.assertTrue(type(encoder).from_config(encoder.get_config()).latent_calibration)
    with tempfile.TemporaryDirectory() as directory:
      path = os.path.join(directory, "model")
      saving.save_model(model, path)
      loaded = saving.load_model(path)
    self.assertAllClose(loaded.translate("depth", "segmentation", depth), expected, atol=1e-5)

  def test_training_calibrates_only_after_stages_with_latent_consistency(self):
    from mm_tf import config as mm_config  # pylint: disable=g-import-not-at-top
    from mm_tf import training  # pylint: disable=g-import-not-at-top
    model = make_model(latent_calibration=True)
    dataset = tf.data.Dataset.from_tensors(structured_batch()).repeat()
    config = mm_config.ExperimentConfig(latent_calibration_batches=2)
    strategy = tf.distribute.get_strategy()
    encoder = model.encoders["depth"]
    training.calibrate_latents(model, config, strategy, 1, dataset)  # Translations only.
    self.assertAllEqual(encoder.latent_scale, tf.ones_like(encoder.latent_scale))
    training.calibrate_latents(model, config, strategy, 2, dataset)
    self.assertNotAllClose(encoder.latent_scale, tf.ones_like(encoder.latent_scale))
    scale = encoder.latent_scale.numpy()
    training.calibrate_latents(model, config.replace(latent_calibration_batches=0), strategy, 3,
                               dataset)  # Off.
    self.assertAllEqual(encoder.latent_scale, scale)

  def test_map_caps_the_scale_and_maps_constant_channels_to_the_anchor_mean(self):
    scale, shift = mm_model.latent_calibration_map(
        anchor_mean=[1.0, 1.0, 1.0], anchor_std=[2.0, 2.0, 2.0], mean=[0.5, 0.5, 0.5],
        std=[1.0, 1e-4, 0.0])
    self.assertAllClose(scale, [2.0, mm_model.MAX_LATENT_SCALE, 0.0])
    self.assertAllClose(shift, [0.0, 1.0 - 0.5 * mm_model.MAX_LATENT_SCALE, 1.0])

  def test_off_by_default_and_without_batches(self):
    model = make_model()
    self.assertFalse(any(e.latent_calibration for e in model.encoders.values()))
    self.assertEqual(model.calibrate_latents([structured_batch()]), 0)
    calibrated = make_model(latent_calibration=True)
    weights = snapshot(calibrated.encoders["depth"])
    self.assertEqual(calibrated.calibrate_latents([]), 0)
    self.assertFalse(moved(weights, calibrated.encoders["depth"]))
    with self.assertRaisesRegex(ValueError, "without latent_calibration"):
      model.encoders["depth"].set_latent_calibration([1.0], [0.0])


if __name__ == "__main__":
  tf.test.main()
