"""`MixAndMatchNetworks`: one encoder and one decoder per modality, trained by `fit()`.

A translation m->n is `decoder_n(encoder_m(x))` with the side information (pooling
switches) of the SOURCE encoder. Training only sees pairs through the anchor modality
(RGB) in disjoint streams; unseen translations such as depth->segmentation work because
every encoder is aligned to one latent space.

Batch contract (`train_step`): `{stream_name: {modality_name: tensor}}` with
`stream_name = "+".join(stream)`, e.g. `{"rgb+segmentation": {"rgb": ..., "segmentation":
...}, "rgb+depth+nir": {...}}`. Values in model space (see `mm_tf.modalities`).

What a step trains is data (`mm_tf.stages.StageSpec`), chosen with `set_stage(n)`:
  * stage 1: seen translations anchor<->m within each stream;
  * stage 2: + autoencoders m->m, latent consistency, Gaussian latent noise; the anchor
    encoder frozen (not updated, run in inference mode);
  * stage 3: + pseudo-pairs (paper 5.2). Pseudo targets come from the anchor translators
    under `stop_gradient`, and the predicted side only runs non-anchor modules, so no
    anchor variable gets a gradient from them.
  * optional in stages 2-3 (not in the paper, `StageSpec.side_consistency`): the anchor's
    latent decoded with another encoder's side information of the same example, against
    the anchor's own translation; only the decoder learns from it.

Loss terms are reported by name (unweighted) as metrics: `"{src}_to_{dst}"` for
translations and autoencoders, `"latent_{a}_{b}"`, `"pseudo_{src}_to_{dst}"`,
`"side_{src}_to_{dst}"` (side information of `src`), `"rgb_gan"`, `"discriminator"` and the
weighted total `"loss"`.
"""

import itertools
import zlib
from typing import Dict, Mapping, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from mm_tf import losses as mm_losses
from mm_tf import modalities as mm_modalities
from mm_tf import networks
from mm_tf import stages as mm_stages

# Multimodal fusion (paper 6.3): (1 - a) * h_R + a * h_D with a = 0.2. The paper gives no
# weights for 3+ inputs; our choice: every non-anchor input keeps a = 0.2 and the anchor
# gets the rest ((R, D, N): 0.6, 0.2, 0.2). Without the anchor: equal weights.
MULTIMODAL_NON_ANCHOR_WEIGHT = 0.2


def stream_name(stream: Sequence[str]) -> str:
  return "+".join(stream)


class MixAndMatchNetworks(keras.Model):
  """Mix and match networks (Wang et al., IJCV): zero-pair cross-modal translation.

  Args:
    modalities: `Modality` objects (or built-in names) of every modality.
    streams: The paired training sets, each a sequence of modality names with the anchor
      first, e.g. `[("rgb", "segmentation"), ("rgb", "depth", "nir")]`.
    anchor: The modality every stream shares (paper: "rgb").
    width: Channel multiplier of all networks (1.0 = paper).
    side_information: "switches" (paper), "skip" or "none" (paper Table 2 ablation).
    noise_std: Std of the Gaussian latent noise in stages that turn it on (paper: 0.5).
    stages: `{n: StageSpec}`; defaults to `mm_tf.stages.paper_stages()`.
    image_size: If given, builds every network for this square size right away (needed
      before `summary()`, `count_params()` or `load_weights()`).
    unpool_implementation: "fused" (default) or "scatter".
    encoder_batch_norm: `{modality: bool}`: BN in that encoder (default True). The paper's
      VGG16-initialised RGB encoder has no BN.
    num_pools: Argmax-pooling levels of every encoder/decoder (paper: 5). CPU-scale
      configs use fewer so a small image keeps a latent of useful resolution.
    side_information_levels: How many of the finest pooling levels pass side information
      to the decoders; the deeper ones upsample. None or -1: every level (the paper).
    latent_calibration: Give every non-anchor encoder an inference-mode map onto the
      anchor's per-channel latent mean and std, set by `calibrate_latents` (not in the
      paper; default off).

  Example:
    >>> model = MixAndMatchNetworks(
    ...     ["rgb", "depth", "segmentation"], [("rgb", "segmentation"), ("rgb", "depth")],
    ...     width=0.125, image_size=64)
    >>> model.translate("depth", "segmentation", tf.zeros([1, 64, 64, 1])).shape
    TensorShape([1, 64, 64, 5])
  """

  def __init__(self, modalities, streams, anchor=mm_modalities.ANCHOR, width=1.0,
               side_information="switches", noise_std=0.5, stages=None, image_size=None,
               unpool_implementation="fused", encoder_batch_norm=None,
               num_pools=networks.NUM_POOLS, side_information_levels=None,
               latent_calibration=False, **kwargs):
    kwargs.setdefault("name", "mix_and_match_networks")
    super().__init__(**kwargs)
    self.modalities = {}
    for modality in modalities:
      modality = (mm_modalities.Modality.from_config(modality) if isinstance(modality, dict)
                  else mm_modalities.get(modality))
      if modality.name in self.modalities:
        raise ValueError(f"Modality {modality.name!r} is given twice.")
      self.modalities[modality.name] = modality
    self.anchor = mm_modalities.check_name(anchor, list(self.modalities), "anchor modality")
    self.streams = tuple(tuple(stream) for stream in streams)
    self._check_streams()
    self.width = float(width)
    self.side_information = networks.check_side_information(side_information)
    self.noise_std = float(noise_std)
    self.unpool_implementation = unpool_implementation
    self.encoder_batch_norm = dict(encoder_batch_norm or {})
    self.num_pools = networks.check_num_pools(num_pools)
    self.side_information_levels = networks.check_side_information_levels(
        side_information_levels, self.num_pools)
    self.latent_calibration = bool(latent_calibration)
    stages = stages or mm_stages.paper_stages()
    self.stage_specs = {int(n): (s if isinstance(s, mm_stages.StageSpec)
                                 else mm_stages.StageSpec.from_config(s))
                        for n, s in stages.items()}
    for spec in self.stage_specs.values():
      unknown = set(spec.pseudo_pairs_train_decoders) - set(self.modalities) - {"all"}
      if unknown:
        raise ValueError(f"Stage {spec.number}: pseudo_pairs_train_decoders "
                         f"(--pseudo_pairs_train_decoders) names {sorted(unknown)}, not "
                         f"modalities of this model ({', '.join(self.modalities)}); use "
                         "'all', 'none' or some of those.")
    self.image_size = image_size
    self.encoders = {}
    self.decoders = {}
    for name, modality in self.modalities.items():
      self.encoders[name] = networks.SegNetEncoder(
          modality, width, side_information,
          batch_norm=self.encoder_batch_norm.get(name, True), num_pools=self.num_pools,
          latent_calibration=self.latent_calibration and name != self.anchor,
          name=f"{name}_encoder")
      self.decoders[name] = networks.build_decoder(
          modality, width, side_information, unpool_implementation, num_pools=self.num_pools,
          side_information_levels=self.side_information_levels, name=f"{name}_decoder")
    self.discriminator = networks.PatchDiscriminator(width, name="discriminator")
    self._stage = 1
    self._term_trackers = {}
    for term in self._all_term_names():
      self._term_trackers[term] = keras.metrics.Mean(name=term)
    self._loss_tracker = keras.metrics.Mean(name="loss")
    self.generator_optimizer = None
    self.discriminator_optimizer = None
    # Seed of the latent noise (training sets it from --seed); not part of the config.
    self.noise_seed = 0
    if image_size is not None:
      self.build_networks(image_size)

  # ------------------------------------------------------------------ structure
  def _check_streams(self):
    if not self.streams:
      raise ValueError("At least one training stream is needed.")
    for stream in self.streams:
      for name in stream:
        mm_modalities.check_name(name, list(self.modalities), f"modality in stream {stream}")
      if stream[0] != self.anchor:
        raise ValueError(f"Stream {stream} must start with the anchor modality {self.anchor!r}.")
      if len(set(stream)) != len(stream) or len(stream) < 2:
        raise ValueError(f"Stream {stream} needs the anchor and at least one other, distinct, "
                         "modality.")

  @property
  def size_multiple(self) -> int:
    """Image height and width must be multiples of this (2**num_pools)."""
    return networks.size_multiple(self.num_pools)

  @property
  def modality_names(self):
    return tuple(self.modalities)

  @property
  def seen_translations(self):
    """(source, target) pairs with paired training data: anchor<->m within each stream."""
    pairs = []
    for stream in self.streams:
      for other in stream[1:]:
        pairs += [(self.anchor, other), (other, self.anchor)]
    return tuple(dict.fromkeys(pairs))

  @property
  def unseen_translations(self):
    """(source, target) pairs never seen together: the zero-pair translations."""
    seen = set(self.seen_translations)
    return tuple((a, b) for a, b in itertools.permutations(self.modalities, 2)
                 if (a, b) not in seen)

  def _pseudo_pairs(self, stream):
    """(source, target) pseudo-pair translations trained from `stream` (paper 5.2).

    For every non-anchor source in the stream and every non-anchor target absent from
    it: the source's translation must match the anchor's seen translation.
    """
    return [(source, target) for source in stream[1:] for target in self.modalities
            if target not in stream and target != self.anchor]

  def _all_term_names(self):
    """Every term any stage can report: the terms of a stage with everything on."""
    every_term = mm_stages.StageSpec(number=3, steps=0, learning_rate=1.0, autoencoders=True,
                                     latent_consistency=True, pseudo_pairs=True, gan_weight=1.0,
                                     side_consistency=True)
    # The base method explicitly: subclasses add their own terms after __init__.
    return MixAndMatchNetworks.active_term_names(self, every_term)

  def _side_consistency(self, spec):
    """Whether `spec` trains the side-consistency terms (see `StageSpec`); without side
    information a decoder's output does not depend on the source, so there is none."""
    return spec.side_consistency and self.side_information != "none"

  def _adversarial_modalities(self, spec: Optional[mm_stages.StageSpec] = None):
    """Modalities with a GAN term: all adversarial ones, or (given a stage `spec`) those the
    stage generates and weighs adversarially."""
    names = [name for name, m in self.modalities.items() if m.adversarial]
    if spec is not None:
      names = [n for n in names if spec.gan_weight > 0 and spec.modality_weight(n) != 0]
    return names

  def build_networks(self, image_size):
    """Creates every variable by running each network once on a zero batch."""
    image_size = int(image_size)
    networks.check_image_size((None, image_size, image_size, None), self.name, self.num_pools)
    for name, modality in self.modalities.items():
      dummy = tf.zeros([1, image_size, image_size, modality.encoder_channels])
      latent, side = self.encoders[name](dummy, training=False)
      self.decoders[name](latent, side, training=False)
    self.discriminator(tf.zeros([1, image_size, image_size, 3]), training=False)
    self.image_size = image_size
    self.built = True

  def build(self, input_shape=None):
    if self.image_size is None:
      raise ValueError("MixAndMatchNetworks.build needs image_size; pass image_size=... "
                       "to the constructor or call build_networks(image_size).")
    self.build_networks(self.image_size)

  # ------------------------------------------------------------------ inference API
  def encode(self, modality, x, training=False):
    """Encodes model-space `x` of `modality`.

    Args:
      modality: Source modality name.
      x: [B, H, W, C] float image, or int labels [B, H, W] for segmentation.
      training: Batch-norm mode.

    Returns:
      (latent [B, H/2**num_pools, W/2**num_pools, C], side tuple of `num_pools` tensors
      or ()).
    """
    mm_modalities.check_name(modality, self.modality_names)
    return self.encoders[modality](self.modalities[modality].encoder_input(x),
                                   training=training)

  def decode(self, modality, latent, side=(), training=False):
    """Decodes a latent into `modality` (float32; logits for segmentation)."""
    mm_modalities.check_name(modality, self.modality_names)
    return self.decoders[modality](latent, tuple(side), training=training)

  def translate(self, source, target, x, training=False):
    """`target` decoder applied to the `source` encoding of `x` (source side information).

    Example:
      >>> logits = model.translate("depth", "segmentation", depth_batch)
      >>> labels = model.modalities["segmentation"].to_labels(logits)
    """
    mm_modalities.check_name(target, self.modality_names)
    latent, side = self.encode(source, x, training=training)
    return self.decode(target, latent, side, training=training)

  def translator(self, source, target):
    """A `keras.Model` for the translation source->target (shares this model's weights).

    Its `predict` takes numpy batches in model space (like `translate`) and returns the
    `translate` output (logits for segmentation). It is never XLA-compiled: argmax
    pooling has no XLA kernel.

    Example:
      >>> logits = model.translator("depth", "segmentation").predict(depth_batch)
    """
    mm_modalities.check_name(source, self.modality_names)
    mm_modalities.check_name(target, self.modality_names)
    return Translator(self, source, target)

  def multimodal_weights(self, sources: Sequence[str]) -> Dict[str, float]:
    """Default fusion weights (see MULTIMODAL_NON_ANCHOR_WEIGHT)."""
    sources = list(sources)
    if self.anchor in sources and len(sources) > 1:
      others = [s for s in sources if s != self.anchor]
      weights = {s: MULTIMODAL_NON_ANCHOR_WEIGHT for s in others}
      weights[self.anchor] = 1.0 - MULTIMODAL_NON_ANCHOR_WEIGHT * len(others)
      if weights[self.anchor] <= 0:
        return {s: 1.0 / len(sources) for s in sources}
      return weights
    return {s: 1.0 / len(sources) for s in sources}

  def translate_multimodal(self, inputs: Mapping[str, tf.Tensor], target: str,
                           weights: Optional[Mapping[str, float]] = None, training=False):
    """Decodes a weighted average of several encoders' latents (paper 6.3).

    Args:
      inputs: `{modality: x}` of two or more sources.
      target: Target modality.
      weights: `{modality: weight}`; normalised to sum to one. Default:
        `multimodal_weights(inputs)`.

    Returns:
      The decoded target. Side information is the anchor's if it is an input (the
      paper decodes with the RGB encoder's pooling indices), else the first input's.
    """
    if not inputs:
      raise ValueError("translate_multimodal needs at least one input modality.")
    for name in inputs:
      mm_modalities.check_name(name, self.modality_names)
    weights = self._fusion_weights(list(inputs), weights)  # Checked before encoding.
    encodings = {name: self.encode(name, x, training=training) for name, x in inputs.items()}
    fused, side = self.fuse(encodings, weights)
    return self.decode(target, fused, side, training=training)

  def _fusion_weights(self, names, weights=None) -> Dict[str, float]:
    """`weights` (default `multimodal_weights(names)`) checked and normalised to sum to 1."""
    weights = dict(weights or self.multimodal_weights(names))
    if set(weights) != set(names):
      raise ValueError(f"weights are given for {sorted(weights)} but inputs are {sorted(names)}.")
    total = sum(float(w) for w in weights.values())
    if total <= 0 or any(float(w) < 0 for w in weights.values()):
      raise ValueError(f"Multimodal weights must be >= 0 with a positive sum, got {weights}.")
    return {name: float(w) / total for name, w in weights.items()}

  def fuse(self, encodings: Mapping[str, Tuple[tf.Tensor, tuple]],
           weights: Optional[Mapping[str, float]] = None):
    """The fused latent and side information of `translate_multimodal`, from encodings.

    Args:
      encodings: `{modality: (latent, side)}` as returned by `encode`.
      weights: As in `translate_multimodal`; default `multimodal_weights`.

    Returns:
      (weighted mean latent, side of the anchor if it is an input, else of the first).
    """
    weights = self._fusion_weights(list(encodings), weights)
    fused, side_source, side = None, None, ()
    for name, (latent, this_side) in encodings.items():
      term = latent * tf.cast(weights[name], latent.dtype)
      fused = term if fused is None else fused + term
      if side_source is None or name == self.anchor:
        side_source, side = name, this_side
    return fused, side

  def alignment_factor(self, modality_a, x_a, modality_b, x_b):
    """Paper Eq. 16: mean cosine similarity of the two encoders' flattened latents."""
    return _alignment(self.encode(modality_a, x_a)[0], self.encode(modality_b, x_b)[0])

  def alignment_factors(self, batch: Mapping[str, tf.Tensor],
                        encodings: Optional[Mapping[str, Tuple[tf.Tensor, tuple]]] = None
                        ) -> Dict[str, tf.Tensor]:
    """Alignment factor of every pair of encoders on a batch with all modalities.

    Args:
      batch: `{modality: x}`.
      encodings: Optional `{modality: encode(modality, batch[modality])}` already computed
        for this batch (evaluation reuses its translations' encodings).
    """
    names = [m for m in self.modalities if m in batch]
    encodings = encodings or {}
    latents = {m: (encodings[m] if m in encodings else self.encode(m, batch[m]))[0]
               for m in names}  # Each encoder once.
    return {f"{a}_{b}": _alignment(latents[a], latents[b])
            for a, b in itertools.combinations(names, 2)}

  def call(self, inputs, training=False):
    """Translates every given modality into every modality.

    Args:
      inputs: `{modality: x}`.

    Returns:
      `{"{source}_to_{target}": output}` for every source in `inputs` and every target.
    """
    if any(isinstance(value, Mapping) for value in inputs.values()):
      # A training batch {stream: {modality: x}} (Keras traces `call` on one under a
      # distribution strategy): translate each modality's first occurrence.
      flat = {}
      for stream in inputs.values():
        for modality, x in stream.items():
          flat.setdefault(modality, x)
      inputs = flat
    outputs = {}
    for source, x in inputs.items():
      latent, side = self.encode(source, x, training=training)
      for target in self.modalities:
        outputs[f"{source}_to_{target}"] = self.decode(target, latent, side, training=training)
    return outputs

  # ------------------------------------------------------------------ training
  @property
  def stage(self) -> int:
    return self._stage

  @property
  def stage_spec(self) -> mm_stages.StageSpec:
    return self.stage_specs[self._stage]

  def set_stage(self, stage: int):
    """Selects the stage whose terms, weights and frozen modules `train_step` uses.

    Re-traces the train function. Call `compile()` after it to give the stage its own
    optimizers (the paper's stage 3 has its own learning rate).
    """
    if int(stage) not in self.stage_specs:
      raise ValueError(f"Unknown stage {stage}; this model has stages {sorted(self.stage_specs)}.")
    self._stage = int(stage)
    for frozen in self.stage_spec.frozen:
      self._module(frozen)  # Validates names early.
    self.train_function = None
    self.test_function = None
    self.predict_function = None

  def _module(self, module_name):
    for name in self.modalities:
      if module_name == f"{name}_encoder":
        return self.encoders[name]
      if module_name == f"{name}_decoder":
        return self.decoders[name]
    if module_name == "discriminator":
      return self.discriminator
    raise ValueError(f"Unknown module {module_name!r}; modules are <modality>_encoder, "
                     f"<modality>_decoder and discriminator for {', '.join(self.modalities)}.")

  def _is_frozen(self, module) -> bool:
    return module.name in self.stage_spec.frozen

  def compile(self, generator_optimizer=None, discriminator_optimizer=None, **kwargs):
    """Sets the two optimizers (defaults: Adam at the stage's learning rate, beta1 0.5).

    The rate follows the stage's `learning_rate_decay`; each stage's optimizer counts its
    own steps (saved in the stage's checkpoints), so a resumed stage continues its schedule.

    `jit_compile` defaults to False: `tf.nn.max_pool_with_argmax` has no XLA kernel.
    """
    kwargs.setdefault("jit_compile", False)
    learning_rate = self.stage_spec.learning_rate_schedule()
    self.generator_optimizer = generator_optimizer or keras.optimizers.Adam(
        learning_rate, beta_1=0.5, name="generator_adam")
    self.discriminator_optimizer = discriminator_optimizer or keras.optimizers.Adam(
        learning_rate, beta_1=0.5, name="discriminator_adam")
    super().compile(optimizer=self.generator_optimizer, **kwargs)
    if self.built:
      # Creating the slot variables here, not inside the first traced step, spares
      # tf.function a second trace of the whole train step (minutes on a CPU).
      self.generator_optimizer.build(self.generator_variables())
      self.discriminator_optimizer.build(self.discriminator.trainable_variables)

  @property
  def metrics(self):
    return [self._loss_tracker] + [self._term_trackers[t] for t in self.active_term_names()]

  def active_term_names(self, spec: Optional[mm_stages.StageSpec] = None):
    """Names of the loss terms that the stage `spec` (default: current) trains."""
    spec = spec or self.stage_spec
    names = []
    for stream in self.streams:
      for other in stream[1:]:
        names += [f"{s}_to_{t}" for s, t in ((self.anchor, other), (other, self.anchor))
                  if spec.modality_weight(t) != 0]
      if spec.autoencoders:
        names += [f"{m}_to_{m}" for m in stream if spec.modality_weight(m) != 0]
      if spec.latent_consistency:
        names += [f"latent_{self.anchor}_{m}" for m in stream[1:]]
      if spec.pseudo_pairs:
        names += [f"pseudo_{s}_to_{t}" for s, t in self._pseudo_pairs(stream)]
      if self._side_consistency(spec):
        names += [f"side_{s}_to_{t}" for s, t in self._pseudo_pairs(stream)]
    adversarial = self._adversarial_modalities(spec)
    if adversarial:
      names += [f"{m}_gan" for m in adversarial] + ["discriminator"]
    return list(dict.fromkeys(names))

  def generator_variables(self):
    """Trainable variables of the encoders/decoders that the current stage updates."""
    modules = [m for m in list(self.encoders.values()) + list(self.decoders.values())
               if not self._is_frozen(m)]
    return [v for module in modules for v in module.trainable_variables]

  def _encode_for_training(self, modality, x):
    encoder = self.encoders[modality]
    return encoder(self.modalities[modality].encoder_input(x),
                   training=not self._is_frozen(encoder))

  def _noisy(self, latent, key: str, spec: Optional[mm_stages.StageSpec] = None):
    """`latent` plus N(0, noise_std) noise when the stage `spec` (default: current) turns
    latent noise on.

    The noise is stateless, a function of (noise_seed, stage, `key`, step, replica): a run
    resumed from a checkpoint draws the same noise at a step as an uninterrupted run, and
    the replicas of a tf.distribute strategy draw different noise.
    """
    if not (spec or self.stage_spec).latent_noise or self.noise_std <= 0:
      return latent
    context = tf.distribute.get_replica_context()
    replica = context.replica_id_in_sync_group if context is not None else 0
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    optimizer = self.generator_optimizer  # None before compile (loss-only callers).
    step = tf.cast(optimizer.iterations if optimizer is not None else 0, tf.int64)
    call = zlib.crc32(f"{self._stage}/{key}".encode())
    seed = tf.stack([tf.constant(self.noise_seed * (1 << 32) + call, tf.int64),
                     step * replicas + tf.cast(replica, tf.int64)])
    noise = tf.random.stateless_normal(tf.shape(latent), seed, stddev=self.noise_std,
                                       dtype=tf.float32)
    return latent + tf.cast(noise, latent.dtype)

  def _decode_for_training(self, modality, latent, side, moving_statistics=False):
    """Decodes in training mode, or in inference mode when the decoder is frozen or
    `moving_statistics` asks for batch norm with the moving statistics (not updated)."""
    decoder = self.decoders[modality]
    return decoder(latent, side,
                   training=not (moving_statistics or self._is_frozen(decoder)))

  def compute_loss_terms(self, batch, spec: Optional[mm_stages.StageSpec] = None):
    """Per-example losses of every term the stage trains, and the generated images.

    Every network runs once per step on everything routed through it (inputs of all
    streams and routes concatenated along the batch, switches included: they index
    within one image), not once per route. That is 4 encoder and at most 10 decoder calls
    instead of 5 and 19 with four modalities: bigger, cheaper convolutions on a
    CPU, and batch norm in training mode normalises a decoder's inputs from every source
    together, as its moving statistics (used at test time, also for zero-pair
    translations) do. Pseudo-pair outputs are decoded in a call of their own so that, not
    even through batch-norm statistics, a pseudo-pair loss reaches an anchor module.

    Args:
      batch: `{stream_name: {modality: tensor}}` (see module docstring).
      spec: Stage (default: the current one).

    Returns:
      (terms, generated): `terms` maps a term name to a list of [B] per-example losses
      (one entry per stream that contributes it); `generated` maps each adversarial
      modality to the list of its generated images (for the GAN terms).
    """
    spec = spec or self.stage_spec
    data = {}
    for stream in self.streams:
      data[stream] = self._stream_batch(batch, stream)
      for modality in stream:
        if modality not in data[stream]:
          raise ValueError(f"Stream {stream_name(stream)!r} of the batch lacks modality "
                           f"{modality!r}.")

    # Routes (stream, source, target, term name); a translation whose target weighs 0 in
    # this stage is not computed (e.g. the oracle's reverse translations, see config).
    routes, pseudo_routes, side_routes = [], [], []
    for stream in self.streams:
      pairs = [(self.anchor, o) for o in stream[1:]] + [(o, self.anchor) for o in stream[1:]]
      if spec.autoencoders:
        pairs += [(m, m) for m in stream]
      routes += [(stream, s, t, f"{s}_to_{t}") for s, t in pairs
                 if spec.modality_weight(t) != 0]
      if spec.pseudo_pairs:
        pseudo_routes += [(stream, s, t, f"pseudo_{s}_to_{t}")
                          for s, t in self._pseudo_pairs(stream)]
      if self._side_consistency(spec):
        side_routes += [(stream, s, t, f"side_{s}_to_{t}")
                        for s, t in self._pseudo_pairs(stream)]
    # The latents some term needs.
    needed = {(r[0], r[1]) for r in routes + pseudo_routes + side_routes}
    needed |= {(r[0], self.anchor) for r in pseudo_routes + side_routes}
    if spec.latent_consistency:
      needed |= {(stream, m) for stream in self.streams for m in stream}

    # Encoders: one call per modality on its images from every stream that needs them.
    encoded, noisy = {}, {}
    for modality in self.modalities:
      streams = [s for s in self.streams if (s, modality) in needed]
      if not streams:
        continue
      inputs = [data[s][modality] for s in streams]
      latent, side = self._encode_for_training(modality, tf.concat(inputs, axis=0))
      sizes = _batch_sizes(inputs)
      latents = _split_batch(latent, sizes)
      noisy_latents = _split_batch(self._noisy(latent, modality, spec), sizes)
      sides = list(zip(*[_split_batch(t, sizes) for t in side])) or [()] * len(streams)
      for index, stream in enumerate(streams):
        encoded[stream, modality] = (latents[index], tuple(sides[index]))
        noisy[stream, modality] = noisy_latents[index]

    # Routes grouped into one decoder call per target.
    outputs = {}
    # Side-consistency routes decode the anchor's latent (no gradient: only the decoder
    # learns) with the side information of the route's source, in a call of their own.
    # Pseudo-pair outputs are decoded as at test time, with the decoder's batch-norm
    # moving statistics: a zero-pair translation is evaluated (and served) that way, and
    # those statistics come from the paired routes. In training mode the decoder learned
    # the pseudo-pairs under their own batch statistics, which the test never uses.
    # Measured (docs/training.md, three seeds): R->S +1.1 to +1.2 mIoU, N->S -0.2 to
    # +1.9, D->S -0.7 to 0.
    for group, kind in ((routes, "paired"), (pseudo_routes, "pseudo"), (side_routes, "side")):
      for target in self.modalities:
        members = [r for r in group if r[2] == target]
        if members:
          latents = [tf.stop_gradient(noisy[r[0], self.anchor]) if kind == "side"
                     else noisy[r[0], r[1]] for r in members]
          outputs.update(zip(members, self._decode_together(
              target, list(zip(latents, [encoded[r[0], r[1]][1] for r in members])),
              trainable=kind != "pseudo" or spec.pseudo_pairs_train_decoder(target),
              moving_statistics=kind == "pseudo")))

    terms = {}
    for route in routes:
      stream, _, target, name = route
      terms.setdefault(name, []).append(mm_losses.reconstruction(
          self.modalities[target], outputs[route], data[stream][target]))
    if spec.latent_consistency:
      for stream in self.streams:
        for other in stream[1:]:
          terms.setdefault(f"latent_{self.anchor}_{other}", []).append(
              mm_losses.latent_consistency(encoded[stream, self.anchor][0],
                                           encoded[stream, other][0]))
    # Pseudo targets: the seen translator anchor->target on the clean anchor latent, in
    # inference mode and without gradient (it is neither trained nor put in training mode
    # by this term); once per (stream, target), shared by every source of the stream.
    pseudo_targets = {}
    for stream, _, target, _ in pseudo_routes + side_routes:
      if (stream, target) not in pseudo_targets:
        latent, side = encoded[stream, self.anchor]
        pseudo_targets[stream, target] = tf.stop_gradient(self.decoders[target](
            tf.stop_gradient(latent), side, training=False))
    for route in pseudo_routes + side_routes:
      stream, _, target, name = route
      terms.setdefault(name, []).append(mm_losses.pseudo_pair(
          self.modalities[target], outputs[route], pseudo_targets[stream, target]))
    generated = {m: [outputs[r] for r in routes if r[2] == m]
                 for m in self._adversarial_modalities()}
    return terms, generated

  def _decode_together(self, target, inputs, trainable=True, moving_statistics=False):
    """Decodes [(latent, side), ...] into `target` in one call; returns the outputs in order.

    With `trainable` False the decoder's weights get no gradient from these outputs (it
    passes the gradient on to the latents only) and its batch-norm moving statistics are
    left as they are. With `moving_statistics` batch norm runs in inference mode: it
    normalises with the moving statistics and does not update them.
    """
    if len(inputs) == 1:
      latent, side = inputs[0]
    else:
      sizes = _batch_sizes([latent for latent, _ in inputs])
      latent = tf.concat([latent for latent, _ in inputs], axis=0)
      side = tuple(tf.concat(level, axis=0) for level in zip(*[s for _, s in inputs]))
    decoder = self.decoders[target]
    if trainable or self._is_frozen(decoder):
      output = self._decode_for_training(target, latent, side, moving_statistics)
    else:
      # Constant copies of the weights; any updated moving statistics are dropped.
      output, _ = decoder.stateless_call(
          [tf.stop_gradient(v.value) for v in decoder.trainable_variables],
          [v.value for v in decoder.non_trainable_variables], latent, side,
          training=not moving_statistics)
    return [output] if len(inputs) == 1 else _split_batch(output, sizes)

  def recalibrate_batch_norm(self, batches):
    """Sets the batch-norm moving statistics of the trained modules to population values.

    Keras' moving averages (momentum 0.99) lag the weights by a few hundred steps, and a
    short stage ends with statistics of earlier weights: in inference mode (evaluation,
    export, and the frozen anchor encoder of stages 2-3) every layer then sees shifted
    inputs (measured: the anchor latents of a 250-step stage 1 were 24 % off their
    training-mode values). Like "precise BN" (Wu & Johnson, 2021), this runs the stage's
    training forward pass of the current stage (no latent noise, the test condition; no
    pseudo-pair outputs, see below) on `batches` and sets every updated layer's statistics
    to the mean of its per-batch moments. Modules the stage freezes run in inference mode
    and keep theirs. The paper is silent on batch norm statistics; at its 200K steps per
    stage the lag does not matter.

    Args:
      batches: An iterable of training batches (see `train_step`); a few are enough (the
        moments are per channel, averaged over every pixel of every image).

    Returns:
      The number of batches used.
    """
    # Without side consistency: its routes run a decoder a second time in training mode,
    # and with momentum 0 that call's moments would overwrite the paired routes'. (Before
    # the pseudo-pair outputs were decoded with the moving statistics, their call did
    # that too: the depth decoder's statistics became those of segmentation latents
    # alone, R->D delta1 50 -> 19 over stage 3.) Without pseudo-pairs: their call reads
    # the statistics and adds nothing to them, so running it would only cost time. The
    # paired routes (translations, autoencoders) call every network once and give the
    # statistics of the seen translations' inputs, to which the aligned zero-pair inputs
    # are close.
    spec = self.stage_spec.replace(latent_noise=False, pseudo_pairs=False,
                                   side_consistency=False)
    trained = [m for m in list(self.encoders.values()) + list(self.decoders.values())
               if not self._is_frozen(m)]
    norms = [layer for module in trained for layer in module._flatten_layers()  # pylint: disable=protected-access
             if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    sums = [[tf.zeros_like(layer.moving_mean), tf.zeros_like(layer.moving_variance)]
            for layer in norms]
    count = 0
    try:
      for layer in norms:
        layer.momentum = 0.0  # Each call then stores exactly its batch's moments.
      for batch in batches:
        # Eager: a few forward passes cost less than tracing the whole loss graph again.
        self.compute_loss_terms(batch, spec)
        for total, layer in zip(sums, norms):
          total[0] += layer.moving_mean
          total[1] += layer.moving_variance
        count += 1
    finally:
      for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum
    if count:
      for layer, (mean, variance) in zip(norms, sums):
        layer.moving_mean.assign(mean / count)
        layer.moving_variance.assign(variance / count)
    return count

  def calibrate_latents(self, batches):
    """Maps each non-anchor encoder's latent onto the anchor's per-channel mean and std.

    Latent consistency is an L2 regression of every encoder's latent onto the anchor's,
    and a regression shrinks towards the conditional mean: on the synthetic forest the
    aligned depth and NIR latents have about 0.75x the anchor's per-channel spread. The
    decoders learned the anchor's latents, so a zero-pair translation feeds them a
    narrower distribution than they were trained on. This sets each calibrated encoder's
    inference-mode map `latent * scale + shift` so that its latents have, per channel, the
    mean and std of the anchor's (`latent_calibration_map`: scale = std_anchor /
    std_source, at most MAX_LATENT_SCALE, shift = mean_anchor - scale * mean_source; a
    channel constant in the source maps to the anchor's mean).
    Only moments over each encoder's own training images are used, never a pair of the
    source and a target: it adds no supervision. Training is unchanged (the map applies in
    inference mode only). Not in the paper, which is silent on latent statistics; the gain
    is measured in docs/training.md ("Latent calibration").

    Args:
      batches: An iterable of training batches (see `train_step`).

    Returns:
      The number of batches used (0 leaves the encoders as they were).
    """
    calibrated = [m for m, e in self.encoders.items() if e.latent_calibration]
    if not calibrated:
      return 0
    previous = {}
    for name in calibrated:  # Moments of the uncalibrated latents.
      encoder = self.encoders[name]
      previous[name] = (encoder.latent_scale.numpy(), encoder.latent_shift.numpy())
      encoder.set_latent_calibration(tf.ones([encoder.latent_channels]),
                                     tf.zeros([encoder.latent_channels]))
    # Per-channel sum, sum of squares and count, in float64 (millions of values).
    sums = {}
    count = 0
    for batch in batches:
      for stream in self.streams:
        data = self._stream_batch(batch, stream)
        for name in stream:
          if name != self.anchor and name not in calibrated:
            continue
          latent, _ = self.encode(name, data[name], training=False)
          latent = tf.reshape(tf.cast(latent, tf.float64), [-1, latent.shape[-1]])
          total = sums.setdefault(name, [0.0, 0.0, 0])
          total[0] += tf.reduce_sum(latent, axis=0)
          total[1] += tf.reduce_sum(tf.square(latent), axis=0)
          total[2] += int(latent.shape[0])
      count += 1
    if not count or self.anchor not in sums:
      for name, (scale, shift) in previous.items():
        self.encoders[name].set_latent_calibration(scale, shift)
      return 0

    def moments(name):
      total, squares, n = sums[name]
      mean = total / n
      return mean, tf.sqrt(tf.maximum(squares / n - tf.square(mean), 0.0))

    anchor_mean, anchor_std = moments(self.anchor)
    for name in calibrated:
      if name not in sums:
        continue  # No training images of this modality in the batches.
      self.encoders[name].set_latent_calibration(
          *latent_calibration_map(anchor_mean, anchor_std, *moments(name)))
    return count

  def _stream_batch(self, batch, stream):
    """The batch entry of `stream`; its key may list the modalities in any order."""
    for key, value in batch.items():
      if sorted(key.split("+")) == sorted(stream):
        return value
    raise ValueError(f"The batch has no stream {stream_name(stream)!r}; it has {sorted(batch)}. "
                     "Each batch must carry one entry per training stream.")

  def _average(self, per_example_list):
    """Global-batch mean of per-example losses, scaled for the replica count."""
    per_example = tf.concat([tf.reshape(v, [-1]) for v in per_example_list], axis=0)
    return tf.nn.compute_average_loss(per_example)

  def _term_weight(self, term, spec):
    if term.startswith("latent_"):
      return spec.latent_weight
    if term.startswith("pseudo_"):
      return spec.pseudo_pair_weight
    target = term.rsplit("_to_", 1)[1]
    weight = spec.modality_weight(target)
    if self.modalities[target].adversarial:
      weight *= spec.l2_weight  # L_RGB = lambda_L2 * L2 + L_GAN.
    return weight

  def train_step(self, data):
    spec = self.stage_spec
    adversarial = self._adversarial_modalities(spec)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    variables = self.generator_variables()
    with tf.GradientTape() as tape:
      terms, generated = self.compute_loss_terms(data, spec)
      # `_average` divides by the replica count (gradients are summed across replicas);
      # reported values are multiplied back.
      averaged = {name: self._average(values) for name, values in terms.items()}
      total = tf.add_n([self._term_weight(n, spec) * v for n, v in averaged.items()])
      for modality in adversarial:
        fake = tf.concat(generated[modality], axis=0)
        gan = self._average([mm_losses.lsgan_generator(self.discriminator(fake, training=True))])
        averaged[f"{modality}_gan"] = gan
        total += spec.modality_weight(modality) * spec.gan_weight * gan
    gradients = tape.gradient(total, variables)
    self.generator_optimizer.apply(gradients, variables)

    for modality in adversarial:
      real = tf.concat([batch[modality] for batch in data.values() if modality in batch], axis=0)
      fake = tf.stop_gradient(tf.concat(generated[modality], axis=0))
      with tf.GradientTape() as tape:
        real_loss, fake_loss = mm_losses.lsgan_discriminator(
            self.discriminator(real, training=True), self.discriminator(fake, training=True))
        discriminator_loss = self._average([real_loss]) + self._average([fake_loss])
      d_variables = self.discriminator.trainable_variables
      self.discriminator_optimizer.apply(tape.gradient(discriminator_loss, d_variables),
                                         d_variables)
      averaged["discriminator"] = discriminator_loss

    replicas = tf.cast(replicas, tf.float32)
    self._loss_tracker.update_state(total * replicas)
    for name, value in averaged.items():
      self._term_trackers[name].update_state(value * replicas)
    return {m.name: m.result() for m in self.metrics}

  def test_step(self, data):
    """Evaluates the current stage's (unweighted) terms without updating anything."""
    spec = self.stage_spec
    terms, _ = self.compute_loss_terms(data, spec)
    averaged = {name: self._average(values) for name, values in terms.items()}
    total = tf.add_n([self._term_weight(n, spec) * v for n, v in averaged.items()])
    replicas = tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, tf.float32)
    self._loss_tracker.update_state(total * replicas)
    for name, value in averaged.items():
      self._term_trackers[name].update_state(value * replicas)
    return {m.name: m.result() for m in [self._loss_tracker] +
            [self._term_trackers[n] for n in averaged]}

  # ------------------------------------------------------------------ config
  def get_config(self):
    return {
        "name": self.name,
        "modalities": [m.to_config() for m in self.modalities.values()],
        "streams": [list(s) for s in self.streams],
        "anchor": self.anchor,
        "width": self.width,
        "side_information": self.side_information,
        "noise_std": self.noise_std,
        "stages": {str(n): s.to_config() for n, s in self.stage_specs.items()},
        "image_size": self.image_size,
        "unpool_implementation": self.unpool_implementation,
        "encoder_batch_norm": self.encoder_batch_norm,
        "num_pools": self.num_pools,
        "side_information_levels": self.side_information_levels,
        "latent_calibration": self.latent_calibration,
    }

  @classmethod
  def from_config(cls, config):
    return cls(**config)


# Largest per-channel latent scale of the calibration. On the synthetic forest the scales
# are 0.9-2.3; a far larger one means a channel the source hardly uses, whose noise the
# map would otherwise blow up to the anchor's spread.
MAX_LATENT_SCALE = 10.0


def latent_calibration_map(anchor_mean, anchor_std, mean, std):
  """(scale, shift) per channel mapping moments (mean, std) onto (anchor_mean, anchor_std).

  scale = anchor_std / std, at most MAX_LATENT_SCALE; a channel constant in the source
  (std <= 1e-6) gets scale 0, i.e. the anchor's mean. shift = anchor_mean - scale * mean.
  """
  anchor_mean, anchor_std, mean, std = (tf.cast(t, tf.float64)
                                        for t in (anchor_mean, anchor_std, mean, std))
  scale = tf.where(std > 1e-6,
                   tf.minimum(anchor_std / tf.maximum(std, 1e-6), MAX_LATENT_SCALE),
                   tf.zeros_like(std))
  return scale, anchor_mean - scale * mean


def _alignment(latent_a, latent_b):
  """Mean over the batch of the cosine similarity of two flattened latents (Eq. 16)."""
  a = tf.reshape(tf.cast(latent_a, tf.float32), [tf.shape(latent_a)[0], -1])
  b = tf.reshape(tf.cast(latent_b, tf.float32), [tf.shape(latent_b)[0], -1])
  cosine = tf.reduce_sum(tf.math.l2_normalize(a, axis=1) * tf.math.l2_normalize(b, axis=1),
                         axis=1)
  return tf.reduce_mean(cosine)


def _batch_sizes(tensors):
  """Batch sizes of `tensors`: Python ints where static, else scalar tensors."""
  return [t.shape[0] if t.shape[0] is not None else tf.shape(t)[0] for t in tensors]


def _split_batch(tensor, sizes):
  """`tensor` cut along the batch into pieces of `sizes`.

  Plain slices rather than `tf.split`: grappler's function optimizer rejects graphs that
  split float latents and int64 switches with the same sizes ("Input 0 of node split_2
  was passed float ... expected int64") and then runs the train step unoptimized.
  """
  pieces, start = [], 0
  for size in sizes:
    pieces.append(tensor[start:start + size])
    start = start + size
  return pieces


class Translator(keras.Model):
  """One translation of a `MixAndMatchNetworks` as a plain Keras model (see `translator`)."""

  def __init__(self, networks_model, source, target, **kwargs):
    kwargs.setdefault("name", f"{source}_to_{target}")
    super().__init__(**kwargs)
    self.networks_model = networks_model
    self.source = source
    self.target = target
    # Keras would pick XLA on GPUs ("auto"); max_pool_with_argmax has no XLA kernel.
    self.jit_compile = False

  def call(self, inputs, training=False):
    return self.networks_model.translate(self.source, self.target, inputs, training=training)
