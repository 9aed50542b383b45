"""The cascade baseline with M&MNets' own networks (paper 6.2.3, "M&MNets D->R->S").

A `MixAndMatchNetworks` trained on the seen translations only (stage 1: D->R and R->S
are exactly what two separately trained translators would learn) is used through RGB:
D->S = g_S(f_R(g_R(f_D(x)))). With `side_information="switches"` the second step uses the
RGB encoder's switches of the GENERATED image; with "skip" it uses its skips, which works
because only seen encoder/decoder pairs meet (the paper's point about skip connections).
"""

from mm_tf import modalities as mm_modalities


class CascadeTranslator:
  """Routes every translation that is not seen through the anchor modality.

  Args:
    model: A `MixAndMatchNetworks` (usually after stage 1 only).
    via: The intermediate modality (default: the model's anchor).

  Example:
    >>> cascade = CascadeTranslator(stage1_model)
    >>> logits = cascade.translate("depth", "segmentation", depth)
  """

  def __init__(self, model, via=None):
    self.model = model
    self.via = via or model.anchor
    self.modalities = model.modalities

  def translate(self, source, target, x, training=False):
    model = self.model
    mm_modalities.check_name(source, model.modality_names, "source modality")
    mm_modalities.check_name(target, model.modality_names, "target modality")
    if (source, target) in model.seen_translations or self.via in (source, target):
      return model.translate(source, target, x, training=training)
    intermediate = model.modalities[self.via].activate(
        model.translate(source, self.via, x, training=training))
    return model.translate(self.via, target, intermediate, training=training)
