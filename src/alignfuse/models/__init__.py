"""Reference models assembled from the library's blocks: the dual encoder (CLIP, VSE++) and
SCAN (stacked cross attention, a pairwise matcher)."""

from alignfuse.models.dual_encoder import DualEncoder, build_dual_encoder
from alignfuse.models.scan import SCANModel, build_scan

__all__ = ["DualEncoder", "SCANModel", "build_dual_encoder", "build_scan"]
