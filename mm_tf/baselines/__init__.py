"""Baselines of the paper's comparison (6.2.3), each trained on the zero-pair streams.

Every baseline consumes the M&MNets batch contract and exposes
`translate(source, target, x)` in model space, so one evaluation scores them all:

  * `TwoPix2Pix` (pix2pix.py): paired U-Net translators through RGB, unseen = cascade.
  * `CycleGAN` (cyclegan.py): unpaired D<->S, N<->S with cycle consistency (ignores RGB).
  * `StarGAN` (stargan.py): one conditional encoder-decoder for all modalities, paired or
    unpaired losses.
  * `UNIT` (unit.py): shared-latent VAE-GANs, unpaired D<->S, N<->S.
  * `CrossModalDistillation` (distillation.py): teachers RGB->m on the seen pairs, students
    for the unseen translations on the teachers' outputs (pseudo-pairs without alignment).
  * `CascadeTranslator` (cascade.py): a trained M&MNets used only through RGB (D->R->S).
  * `few_pairs.py`: k-medoids / random selection of K (depth, seg) pairs and M&MNets with
    their supervised loss added.
"""

from mm_tf.baselines.cyclegan import CycleGAN
from mm_tf.baselines.distillation import CrossModalDistillation
from mm_tf.baselines.pix2pix import TwoPix2Pix
from mm_tf.baselines.stargan import StarGAN
from mm_tf.baselines.unit import UNIT
