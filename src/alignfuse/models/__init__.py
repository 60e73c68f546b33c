"""Reference models assembled from the library's blocks."""

from alignfuse.models.dual_encoder import DualEncoder, build_dual_encoder

__all__ = ["DualEncoder", "build_dual_encoder"]
