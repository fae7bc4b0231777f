"""loom: Loom (arXiv 2512.18254) on a BAGEL-compatible Mixture-of-Transformers model."""

__version__ = "0.1.0"
