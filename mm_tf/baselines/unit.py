"""UNIT (Liu et al. 2017, unit_paper.txt): shared-latent VAE-GANs, unpaired translation.

Each domain m has an encoder E_m and a generator G_m. The encoders' LAST residual block
and the generators' FIRST residual block are shared by all domains (the paper's weight
sharing that ties the domains to one latent space). A latent is z = E_m(x) + N(0, I)
(the paper's unit-variance posterior, so its KL term is 0.5 * mean(mu^2)). For each pair
(a, b) of domains, trained from UNPAIRED samples (depth from the RGB-depth stream, labels
from the RGB-seg stream, RGB ignored):

  VAE:   lambda_1 KL(E_a(x_a)) + lambda_2 loss_a(G_a(z_a), x_a)
  GAN:   lambda_0 LSGAN(D_b, G_b(z_a))
  cycle: lambda_3 KL(E_b(G_b(z_a))) + lambda_4 loss_a(G_a(E_b(G_b(z_a))), x_a)

and symmetrically; loss_m is the modality's own loss (BerHu, cross-entropy) where UNIT
uses L1. Weights follow the paper's ratios (lambda_0 = 10, lambda_1 = lambda_3 = 0.1,
lambda_2 = lambda_4 = 100), divided by 10.
"""

import keras
import tensorflow as tf

from mm_tf import losses as mm_losses
from mm_tf import modalities as mm_modalities
from mm_tf import networks
from mm_tf.baselines import common
from mm_tf.baselines.cyclegan import DEFAULT_DOMAIN_PAIRS

GAN_WEIGHT = 1.0
KL_WEIGHT = 0.01
RECONSTRUCTION_WEIGHT = 10.0


class UNIT(common.BaselineTranslator):
  """Shared-latent unpaired translation between pairs of non-anchor modalities.

  Args:
    modalities: `Modality` objects or names.
    pairs: Domain pairs trained (translations both ways).
    width: Channel multiplier (1.0: 64 base filters, 256-channel latent at 1/4 size).
    residual_blocks: Private residual blocks per encoder and per generator (one more of
      each is shared).
    image_size: Builds the networks right away if given.
  """

  def __init__(self, modalities, pairs=DEFAULT_DOMAIN_PAIRS, width=1.0, residual_blocks=2,
               image_size=None, **kwargs):
    kwargs.setdefault("name", "unit")
    super().__init__(modalities, width, image_size, **kwargs)
    self.pairs = tuple(tuple(p) for p in pairs)
    self.domains = tuple(dict.fromkeys(m for pair in self.pairs for m in pair))
    for m in self.domains:
      mm_modalities.check_name(m, self.modality_names, "UNIT domain")
    self.directions = tuple(dict.fromkeys(
        [(a, b) for a, b in self.pairs] + [(b, a) for a, b in self.pairs]))
    base = networks.scaled(64, width)
    self.latent_channels = 4 * base
    self.shared_encoder = self._shared_block("shared_encoder_block")
    self.shared_generator = self._shared_block("shared_generator_block")
    self.encoders = {m: self._private_encoder(self.modalities[m], base, residual_blocks)
                     for m in self.domains}
    self.generators = {m: self._private_generator(self.modalities[m], base, residual_blocks)
                       for m in self.domains}
    self.discriminators = {m: networks.PatchDiscriminator(width, name=f"discriminator_{m}")
                           for m in self.domains}
    self.term_names = ([f"{m}_to_{m}" for m in self.domains]
                       + [f"kl_{m}" for m in self.domains]
                       + [f"{s}_to_{t}_gan" for s, t in self.directions]
                       + [f"cycle_{s}_{t}_{s}" for s, t in self.directions]
                       + [f"{m}_discriminator" for m in self.domains])
    self._make_trackers()
    if image_size is not None:
      self.build_networks(image_size)

  def _shared_block(self, name):
    inputs = keras.Input((None, None, self.latent_channels))
    return keras.Model(inputs, common.residual_block(inputs, self.latent_channels, name),
                       name=name)

  def _private_encoder(self, modality, base, residual_blocks):
    inputs = keras.Input((None, None, modality.encoder_channels))
    x = common.conv_norm_act(inputs, base, 7, name="c7")
    x = common.conv_norm_act(x, 2 * base, 3, strides=2, name="d1")
    x = common.conv_norm_act(x, 4 * base, 3, strides=2, name="d2")
    for i in range(residual_blocks):
      x = common.residual_block(x, 4 * base, name=f"res{i + 1}")
    return keras.Model(inputs, x, name=f"{modality.name}_encoder")

  def _private_generator(self, modality, base, residual_blocks):
    inputs = keras.Input((None, None, self.latent_channels))
    x = inputs
    for i in range(residual_blocks):
      x = common.residual_block(x, 4 * base, name=f"res{i + 1}")
    x = common.conv_norm_act(x, 2 * base, 3, strides=2, transpose=True, name="u1")
    x = common.conv_norm_act(x, base, 3, strides=2, transpose=True, name="u2")
    return keras.Model(inputs, common.output_head(x, modality, kernel_size=7),
                       name=f"{modality.name}_generator")

  def build_networks(self, image_size):
    for m in self.domains:
      x = tf.zeros([1, image_size, image_size, self.modalities[m].encoder_channels])
      self.decode(m, self.encode(m, x))
      self.discriminators[m](x)
    self.image_size = image_size
    self.built = True

  def encode(self, modality, x_input, training=False):
    """Latent mean mu = E_m(x) (x already a generator input: one-hot/probabilities)."""
    return self.shared_encoder(self.encoders[modality](x_input, training=training),
                               training=training)

  def decode(self, modality, latent, training=False):
    return self.generators[modality](self.shared_generator(latent, training=training),
                                     training=training)

  def direct_translations(self):
    return self.directions

  @staticmethod
  def _sample(mu):
    return mu + tf.random.normal(tf.shape(mu), dtype=mu.dtype)

  @staticmethod
  def _kl(mu):
    return common.mean(0.5 * tf.reduce_mean(tf.square(tf.cast(mu, tf.float32)), axis=[1, 2, 3]))

  def generator_variables(self):
    modules = ([self.shared_encoder, self.shared_generator] + list(self.encoders.values())
               + list(self.generators.values()))
    return [v for module in modules for v in module.trainable_variables]

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
      mu = {m: self.encode(m, real_input[m], training=True) for m in self.domains}
      z = {m: self._sample(v) for m, v in mu.items()}
      for m in self.domains:
        values[f"kl_{m}"] = self._kl(mu[m])
        values[f"{m}_to_{m}"] = common.mean(mm_losses.reconstruction(
            self.modalities[m], self.decode(m, z[m], training=True), real[m]))
        total += KL_WEIGHT * values[f"kl_{m}"] + RECONSTRUCTION_WEIGHT * values[f"{m}_to_{m}"]
      for s, t in self.directions:
        fake = self.as_next_input(t, self.decode(t, z[s], training=True))
        fakes[t].append(fake)
        values[f"{s}_to_{t}_gan"] = common.lsgan_generator_loss(self.discriminators[t], fake)
        mu_back = self.encode(t, fake, training=True)
        back = self.decode(s, self._sample(mu_back), training=True)
        values[f"cycle_{s}_{t}_{s}"] = common.mean(
            mm_losses.reconstruction(self.modalities[s], back, real[s]))
        total += (GAN_WEIGHT * values[f"{s}_to_{t}_gan"] + KL_WEIGHT * self._kl(mu_back)
                  + RECONSTRUCTION_WEIGHT * values[f"cycle_{s}_{t}_{s}"])
    self.apply_gradients(self.generator_optimizer, tape, total, g_variables)
    d_variables = self.discriminator_variables()
    with tf.GradientTape() as tape:
      d_total = 0.0
      for m in self.domains:
        values[f"{m}_discriminator"] = common.lsgan_discriminator_loss(
            self.discriminators[m], real_input[m], tf.stop_gradient(tf.concat(fakes[m], 0)))
        d_total += values[f"{m}_discriminator"]
    self.apply_gradients(self.discriminator_optimizer, tape, d_total, d_variables)
    values["loss"] = total
    return self._report(values)

  def translate(self, source, target, x, training=False):
    """G_target(E_source(x)) with the posterior mean (no sampling at test time)."""
    if (source, target) not in self.directions and source != target:
      raise ValueError(f"{self.name} translates only {[f'{s}->{t}' for s, t in self.directions]}, "
                       f"not {source}->{target}.")
    return self.decode(target, self.encode(source, self.generator_input(source, x), training),
                       training)
