"""CycleGAN (Zhu et al. 2017) adapted to unpaired cross-modal translation (paper 6.2.3).

For each pair of domains, e.g. (depth, segmentation) and (nir, segmentation), it trains
ResNet generators a->b and b->a from UNPAIRED samples: the depth images come from the
(RGB, depth, NIR) stream, the label maps from the (RGB, seg) stream, and RGB is ignored.
Losses: LSGAN per target domain (one patch discriminator per domain, shared by the
pairs that produce it) + cycle consistency measured with the source domain's own loss
(BerHu for depth, cross-entropy for labels: CycleGAN's L1 adapted to the modality).

Generated label maps are passed on (to the discriminator and the backward generator) as
softmax probabilities; real ones as one-hot maps.
"""

import tensorflow as tf

from mm_tf import losses as mm_losses
from mm_tf import modalities as mm_modalities
from mm_tf import networks
from mm_tf.baselines import common

DEFAULT_DOMAIN_PAIRS = (("depth", "segmentation"), ("nir", "segmentation"))
CYCLE_WEIGHT = 10.0  # CycleGAN's lambda.


class CycleGAN(common.BaselineTranslator):
  """Unpaired CycleGAN between pairs of non-anchor modalities.

  Args:
    modalities: `Modality` objects or names (must include every domain of `pairs`).
    pairs: Domain pairs (a, b); generators a->b and b->a are trained for each.
    width: Channel multiplier.
    residual_blocks: Residual blocks per generator (CycleGAN: 6 at 128px, 9 at 256px).
    cycle_weight: Weight of the cycle terms (CycleGAN: 10).
    image_size: Builds the networks right away if given.
  """

  def __init__(self, modalities, pairs=DEFAULT_DOMAIN_PAIRS, width=1.0, residual_blocks=6,
               cycle_weight=CYCLE_WEIGHT, image_size=None, **kwargs):
    kwargs.setdefault("name", "cyclegan")
    super().__init__(modalities, width, image_size, **kwargs)
    self.pairs = tuple(tuple(p) for p in pairs)
    for a, b in self.pairs:
      mm_modalities.check_name(a, self.modality_names, "CycleGAN domain")
      mm_modalities.check_name(b, self.modality_names, "CycleGAN domain")
    self.cycle_weight = float(cycle_weight)
    self.directions = tuple(dict.fromkeys(
        [(a, b) for a, b in self.pairs] + [(b, a) for a, b in self.pairs]))
    self.generators = {
        f"{s}_to_{t}": common.resnet_generator(self.modalities[s], self.modalities[t], width,
                                               residual_blocks)
        for s, t in self.directions}
    self.domains = tuple(dict.fromkeys(m for pair in self.pairs for m in pair))
    self.discriminators = {m: networks.PatchDiscriminator(width, name=f"discriminator_{m}")
                           for m in self.domains}
    self.term_names = ([f"{s}_to_{t}_gan" for s, t in self.directions]
                       + [f"cycle_{s}_{t}_{s}" for s, t in self.directions]
                       + [f"{m}_discriminator" for m in self.domains])
    self._make_trackers()
    if image_size is not None:
      self.build_networks(image_size)

  def build_networks(self, image_size):
    for s, t in self.directions:
      self.generators[f"{s}_to_{t}"](
          tf.zeros([1, image_size, image_size, self.modalities[s].encoder_channels]))
    for m in self.domains:
      self.discriminators[m](tf.zeros([1, image_size, image_size,
                                       self.modalities[m].encoder_channels]))
    self.image_size = image_size
    self.built = True

  def direct_translations(self):
    return self.directions

  def generator_variables(self):
    return [v for g in self.generators.values() for v in g.trainable_variables]

  def discriminator_variables(self):
    return [v for d in self.discriminators.values() for v in d.trainable_variables]

  def train_step(self, data):
    real = {m: common.unpaired_samples(data, m) for m in self.domains}
    real_input = {m: self.generator_input(m, x) for m, x in real.items()}
    values = {}
    fakes = {m: [] for m in self.domains}
    g_variables = self.generator_variables()
    with tf.GradientTape() as tape:
      total = 0.0
      for s, t in self.directions:
        fake = self.as_next_input(t, self.generators[f"{s}_to_{t}"](real_input[s], training=True))
        fakes[t].append(fake)
        values[f"{s}_to_{t}_gan"] = common.lsgan_generator_loss(self.discriminators[t], fake)
        back = self.generators[f"{t}_to_{s}"](fake, training=True)
        values[f"cycle_{s}_{t}_{s}"] = common.mean(
            mm_losses.reconstruction(self.modalities[s], back, real[s]))
        total += values[f"{s}_to_{t}_gan"] + self.cycle_weight * values[f"cycle_{s}_{t}_{s}"]
    self.apply_gradients(self.generator_optimizer, tape, total, g_variables)
    d_variables = self.discriminator_variables()
    with tf.GradientTape() as tape:
      d_total = 0.0
      for m in self.domains:
        fake = tf.stop_gradient(tf.concat(fakes[m], axis=0))
        values[f"{m}_discriminator"] = common.lsgan_discriminator_loss(
            self.discriminators[m], real_input[m], fake)
        d_total += values[f"{m}_discriminator"]
    self.apply_gradients(self.discriminator_optimizer, tape, d_total, d_variables)
    values["loss"] = total
    return self._report(values)

  def translate(self, source, target, x, training=False):
    key = f"{source}_to_{target}"
    if key not in self.generators:
      raise ValueError(f"{self.name} translates only {[f'{s}->{t}' for s, t in self.directions]}, "
                       f"not {source}->{target}.")
    return self.generators[key](self.generator_input(source, x), training=training)
