"""Reference models assembled from the library's blocks: the dual encoder (CLIP, VSE++),
SCAN (stacked cross attention, a pairwise matcher) and ALBEF (align, then fuse: a dual
encoder, a multimodal encoder with ITM and MLM, retrieval re-ranked by ITM)."""

from alignfuse.models.albef import ALBEF, build_albef, mask_words
from alignfuse.models.dual_encoder import DualEncoder, build_dual_encoder
from alignfuse.models.scan import SCANModel, build_scan

__all__ = [
    "ALBEF",
    "DualEncoder",
    "SCANModel",
    "build_albef",
    "build_dual_encoder",
    "build_scan",
    "mask_words",
]
