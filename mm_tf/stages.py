"""Training stages as data (paper 6.1 and 5.2).

A `StageSpec` says which loss terms are on, their weights, the learning rate and the
frozen modules. `MixAndMatchNetworks.train_step` reads the current one; there is no
stage-specific branch elsewhere.
"""

import dataclasses
from typing import Dict, Mapping, Sequence, Tuple

PAPER_STEPS = (200_000, 200_000, 100_000)
# lambda_R, lambda_S, lambda_D of the paper; NIR is not given a weight by the paper: it
# uses the same loss as depth (BerHu), so it gets lambda_D.
STAGE1_MODALITY_WEIGHTS = {"rgb": 1.0, "segmentation": 100.0, "depth": 10.0, "nir": 10.0}
STAGE2_MODALITY_WEIGHTS = {"rgb": 10.0, "segmentation": 100.0, "depth": 10.0, "nir": 10.0}
LEARNING_RATE_DECAYS = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One training stage.

  Args:
    number: 1, 2 or 3.
    steps: Optimizer steps in this stage.
    learning_rate: Adam learning rate (generator and discriminator).
    autoencoders: Add m->m reconstructions for every modality of each stream.
    latent_consistency: Add ||f_anchor(x) - f_m(y)||_2 for every pair in a stream.
    latent_noise: Add Gaussian noise (std `noise_std` of the model) to latents during
      training, before decoding.
    pseudo_pairs: Add the pseudo-pair losses (paper Eq. 12-13).
    frozen: Modules not updated (and run in inference mode), e.g. ("rgb_encoder",).
    modality_weights: lambda per target modality (lambda_R, lambda_S, lambda_D, ...).
    l2_weight: lambda_L2 inside the RGB loss: L_RGB = lambda_L2 * L2 + L_GAN.
    gan_weight: Weight of the LSGAN generator term inside the RGB loss (paper: 1).
    latent_weight: lambda_A.
    pseudo_pair_weight: lambda_PP.
    pseudo_pairs_train_decoders: The modalities whose decoders the pseudo-pair losses
      update (("all",): every target's; (): none). The paper (5.2) keeps "the translators
      involving RGB" out of these losses so that unreliable pseudo labels cannot harm the
      seen translations, but the segmentation, depth and NIR decoders are shared with
      those translators (R->S uses the segmentation decoder). A decoder not listed only
      passes the gradient on to the source encoder, and its batch-norm statistics are
      left alone. Measured in docs/training.md.
    learning_rate_decay: "constant" (the paper) or "cosine": the rate falls from
      `learning_rate` to 0 over the stage's steps along a half cosine.
    side_consistency: Not in the paper. In every stream that lacks a target modality
      (depth and NIR's stream for segmentation, segmentation's for depth and NIR), also
      decode the anchor's latent with the side information (switches or skips) of each
      other modality of the same example, against the anchor's own translation (no
      gradient; weighted like any translation into that target). Only the target decoder
      learns from it: it learns to read the switches of encoders it never gets pairs
      from, which zero-pair translations hand it (docs/training.md, "Where zero-pair
      loses to the oracle"). No depth/segmentation pair is used.
  """

  number: int
  steps: int
  learning_rate: float
  autoencoders: bool = False
  latent_consistency: bool = False
  latent_noise: bool = False
  pseudo_pairs: bool = False
  frozen: Tuple[str, ...] = ()
  modality_weights: Mapping[str, float] = dataclasses.field(
      default_factory=lambda: dict(STAGE1_MODALITY_WEIGHTS))
  l2_weight: float = 1.0
  gan_weight: float = 1.0
  latent_weight: float = 1.0
  pseudo_pair_weight: float = 0.0
  pseudo_pairs_train_decoders: Tuple[str, ...] = ("all",)
  learning_rate_decay: str = "constant"
  side_consistency: bool = False

  def __post_init__(self):
    if self.number not in (1, 2, 3):
      raise ValueError(f"Stage number must be 1, 2 or 3, got {self.number}.")
    if self.steps < 0 or self.learning_rate <= 0:
      raise ValueError(f"Stage {self.number}: steps must be >= 0 and learning_rate > 0, got "
                       f"{self.steps} and {self.learning_rate}.")
    if self.learning_rate_decay not in LEARNING_RATE_DECAYS:
      raise ValueError(f"Stage {self.number}: learning_rate_decay must be one of "
                       f"{', '.join(LEARNING_RATE_DECAYS)}, got {self.learning_rate_decay!r}.")
    object.__setattr__(self, "frozen", tuple(self.frozen))
    object.__setattr__(self, "modality_weights", dict(self.modality_weights))
    if isinstance(self.pseudo_pairs_train_decoders, str):
      raise ValueError("pseudo_pairs_train_decoders must be a sequence of modality names "
                       f"(or ('all',)), got the string {self.pseudo_pairs_train_decoders!r}.")
    object.__setattr__(self, "pseudo_pairs_train_decoders",
                       tuple(self.pseudo_pairs_train_decoders))

  def pseudo_pairs_train_decoder(self, modality_name: str) -> bool:
    """Whether the pseudo-pair losses update the decoder of `modality_name`."""
    return ("all" in self.pseudo_pairs_train_decoders
            or modality_name in self.pseudo_pairs_train_decoders)

  def modality_weight(self, modality_name: str) -> float:
    if modality_name not in self.modality_weights:
      raise ValueError(f"Stage {self.number} has no loss weight for modality "
                       f"{modality_name!r}; give one in modality_weights.")
    return float(self.modality_weights[modality_name])

  def to_config(self) -> dict:
    config = dataclasses.asdict(self)
    config["frozen"] = list(self.frozen)
    config["pseudo_pairs_train_decoders"] = list(self.pseudo_pairs_train_decoders)
    return config

  @classmethod
  def from_config(cls, config) -> "StageSpec":
    return cls(**config)

  def learning_rate_schedule(self):
    """The stage's Adam learning rate: a float, or a schedule over the stage's steps."""
    if self.learning_rate_decay == "cosine" and self.steps > 0:
      import keras  # pylint: disable=import-outside-toplevel  (keeps this module light)
      return keras.optimizers.schedules.CosineDecay(self.learning_rate, self.steps)
    return self.learning_rate

  def replace(self, **changes) -> "StageSpec":
    return dataclasses.replace(self, **changes)


def paper_stages(steps: Sequence[int] = PAPER_STEPS, learning_rate: float = 2e-4,
                 stage3_learning_rate: float = 2e-5) -> Dict[int, StageSpec]:
  """The paper's schedule (6.1): translations; +AE/latent/noise with RGB encoder frozen; +PP."""
  stage1 = StageSpec(number=1, steps=steps[0], learning_rate=learning_rate,
                     modality_weights=STAGE1_MODALITY_WEIGHTS, l2_weight=1.0, latent_weight=1.0)
  stage2 = StageSpec(number=2, steps=steps[1], learning_rate=learning_rate, autoencoders=True,
                     latent_consistency=True, latent_noise=True, frozen=("rgb_encoder",),
                     modality_weights=STAGE2_MODALITY_WEIGHTS, l2_weight=100.0,
                     latent_weight=10.0)
  stage3 = stage2.replace(number=3, steps=steps[2], learning_rate=stage3_learning_rate,
                          pseudo_pairs=True, pseudo_pair_weight=100.0)
  return {1: stage1, 2: stage2, 3: stage3}
