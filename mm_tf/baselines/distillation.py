"""Cross-modal distillation: unseen translations learn from the anchor's teachers' outputs.

The zero-pair alternative that needs no shared latent space (supervision transfer, Gupta,
Hoffman and Malik, CVPR 2016, here at the level of outputs as in Hinton et al.'s
distillation). For every stream `(anchor, m, ...)` a teacher U-Net anchor->m learns from
that stream's pairs. A translation that no stream pairs, e.g. depth->segmentation, gets
a student U-Net trained on the stream that has its source: its targets are the teacher
anchor->target applied to the same examples' anchor images (the RGB of the (RGB, depth)
set, labelled by RGB->segmentation). This is M&MNets' pseudo-pair term (paper 5.2,
Eq. 12-13, `mm_tf.losses.pseudo_pair`: argmax labels for segmentation, every finite
pixel for depth) with free networks and nothing else: no aligned encoders, no
autoencoders, no switches. So the comparison with M&MNets+PP asks what the alignment adds
to the pseudo-pairs.

Our choice where the method leaves it open: teachers and students train together from the
first step (online distillation), each student on its teacher's current outputs, so every
network gets the whole step budget; a two-phase schedule (teachers, then students) would
give each half of it. Networks are pix2pix's U-Net generators (as in `TwoPix2Pix`, whose
anchor->m translators are the same networks trained the same way), without GAN terms: no
teacher or student has an adversarial (RGB) target.

Example:
  >>> model = CrossModalDistillation(["rgb", "depth", "segmentation"],
  ...                                [("rgb", "segmentation"), ("rgb", "depth")], width=1 / 16)
  >>> model.compile()
  >>> model.fit(zero_pair_batches, steps_per_epoch=100)
  >>> model.translate("depth", "segmentation", depth).shape  # the student's logits
"""

import tensorflow as tf

from mm_tf import losses as mm_losses
from mm_tf import modalities as mm_modalities
from mm_tf.baselines import common


class CrossModalDistillation(common.BaselineTranslator):
  """Teachers anchor->m on the seen pairs; students for every unseen pair on their outputs.

  Args:
    modalities: `Modality` objects or names.
    streams: Zero-pair training streams, anchor first, e.g.
      `[("rgb", "segmentation"), ("rgb", "depth", "nir")]`.
    anchor: The shared modality (RGB): the teachers' source.
    width: Channel multiplier of the U-Net generators.
    image_size: Builds the networks for this size right away if given.
  """

  def __init__(self, modalities, streams, anchor=mm_modalities.ANCHOR, width=1.0,
               image_size=None, **kwargs):
    kwargs.setdefault("name", "cross_modal_distillation")
    super().__init__(modalities, width, image_size, **kwargs)
    self.streams = tuple(tuple(s) for s in streams)
    self.anchor = anchor
    for stream in self.streams:
      if not stream or stream[0] != anchor:
        raise ValueError(f"Every stream must start with the anchor {anchor!r}; got {stream}.")
      for name in stream:
        mm_modalities.check_name(name, self.modality_names, "stream modality")
    # Teachers: anchor -> every other modality of its stream(s).
    self.teacher_pairs = tuple(dict.fromkeys(
        (anchor, m) for stream in self.streams for m in stream[1:]))
    # Students: source -> target for modalities that never share a stream. Each learns on
    # the first stream that holds its source (the examples whose anchor the teacher reads).
    paired = {(a, b) for stream in self.streams for a in stream for b in stream}
    others = [t for _, t in self.teacher_pairs]
    self.student_pairs = tuple((source, target) for source in others for target in others
                               if (source, target) not in paired)
    if not self.student_pairs:
      raise ValueError(f"The streams {self.streams} leave no translation unpaired: there is "
                       "nothing to distil.")
    self.generators = {
        f"{s}_to_{t}": common.unet_generator(self.modalities[s], self.modalities[t], width)
        for s, t in self.direct_translations()}
    self.term_names = [f"{s}_to_{t}" for s, t in self.teacher_pairs]
    self.term_names += [f"{s}_to_{t}_distilled" for s, t in self.student_pairs]
    self._make_trackers()
    if image_size is not None:
      self.build_networks(image_size)

  def build_networks(self, image_size):
    for s, t in self.direct_translations():
      self.generators[f"{s}_to_{t}"](
          tf.zeros([1, image_size, image_size, self.modalities[s].encoder_channels]))
    self.image_size = image_size
    self.built = True

  def direct_translations(self):
    return self.teacher_pairs + self.student_pairs

  def generator_variables(self):
    return [v for g in self.generators.values() for v in g.trainable_variables]

  def discriminator_variables(self):
    return []  # No adversarial target: the second optimizer stays unused.

  def train_step(self, data):
    values = {}
    with tf.GradientTape() as tape:
      total = 0.0
      for s, t in self.teacher_pairs:
        key = f"{s}_to_{t}"
        _, _, values[key] = self.paired_term(data, s, t)
        total += common.reconstruction_weight(t) * values[key]
      for s, t in self.student_pairs:
        stream = common.find_stream(data, (self.anchor, s))
        # The teacher labels the student's examples as it would at test time (inference
        # mode, no gradient: `pseudo_pair` stops it too).
        teacher = self.generators[f"{self.anchor}_to_{t}"](
            self.generator_input(self.anchor, stream[self.anchor]), training=False)
        output = self.generators[f"{s}_to_{t}"](self.generator_input(s, stream[s]),
                                                training=True)
        key = f"{s}_to_{t}_distilled"
        values[key] = common.mean(mm_losses.pseudo_pair(self.modalities[t], output, teacher))
        total += common.reconstruction_weight(t) * values[key]
    self.apply_gradients(self.generator_optimizer, tape, total, self.generator_variables())
    values["loss"] = total
    return self._report(values)

  def translate(self, source, target, x, training=False):
    """The teacher (anchor -> m) or the student (unpaired source -> target)."""
    self.check_translation(source, target)
    key = f"{source}_to_{target}"
    if key not in self.generators:
      raise ValueError(
          f"{self.name} translates only {', '.join(sorted(self.generators))}; "
          f"{source}->{target} is neither a teacher nor a student.")
    return self.generators[key](self.generator_input(source, x), training=training)
