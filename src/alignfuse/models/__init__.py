"""Reference models assembled from the library's blocks: the dual encoder (CLIP, VSE++),
SCAN (stacked cross attention, a pairwise matcher), ALBEF (align, then fuse: a dual
encoder, a multimodal encoder with ITM and MLM, retrieval re-ranked by ITM), a
LLaVA-style captioner (image tokens projected as the prefix of a causal language model),
BLIP-2's Q-Former (learned queries between the image and the text: ITC, ITM, ITG) and the
MVAE (a product-of-experts multimodal VAE: inference and generation from any subset of
modalities), a speech-text dual encoder, schema linkers, and frozen towers aligned by CCA
in closed form."""

from alignfuse.layers import QFormerLayer
from alignfuse.models.albef import ALBEF, FusionLayer, MergedLayer, build_albef, mask_words
from alignfuse.models.cca_dual import CCADualEncoder, build_cca_dual
from alignfuse.models.dual_encoder import DualEncoder, build_dual_encoder
from alignfuse.models.linkers import (
    BM25Linker,
    EmbeddingCosineLinker,
    SchemaDualEncoder,
    StringMatchLinker,
)
from alignfuse.models.mvae import MVAE, train_mvae
from alignfuse.models.prefix_lm import PrefixLM, build_prefix_lm
from alignfuse.models.qformer import QFormer, build_qformer
from alignfuse.models.scan import SCANModel, build_scan
from alignfuse.models.speech_text import build_speech_text

__all__ = [
    "ALBEF",
    "MVAE",
    "BM25Linker",
    "CCADualEncoder",
    "DualEncoder",
    "EmbeddingCosineLinker",
    "FusionLayer",
    "MergedLayer",
    "PrefixLM",
    "QFormer",
    "QFormerLayer",
    "SCANModel",
    "SchemaDualEncoder",
    "StringMatchLinker",
    "build_albef",
    "build_cca_dual",
    "build_dual_encoder",
    "build_prefix_lm",
    "build_qformer",
    "build_scan",
    "build_speech_text",
    "mask_words",
    "train_mvae",
]
