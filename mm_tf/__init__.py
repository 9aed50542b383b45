"""mm_tf: mix and match networks (M&MNets) for zero-pair cross-modal image translation."""

__version__ = "0.1.0"
