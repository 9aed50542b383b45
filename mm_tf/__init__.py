"""mm_tf: mix and match networks (M&MNets) for zero-pair cross-modal image translation.

Example:
  >>> import mm_tf
  >>> model = mm_tf.load("runs/synthetic_forest")          # a training model_dir
  >>> logits = model.translate("depth", "segmentation", depth_batch)
"""

__version__ = "0.1.0"


def load(model_dir):
  """Loads the trained `MixAndMatchNetworks` of a training `model_dir` (or saved dir)."""
  from mm_tf import saving  # Imported lazily: `import mm_tf` stays cheap.
  return saving.load_model(model_dir)
