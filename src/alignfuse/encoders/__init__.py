"""Encoders, one per modality: images (CNN, ViT) and text (BiGRU, Transformer, frozen MiniLM)."""

from alignfuse.encoders.image import SmallCNN, TinyViT
from alignfuse.encoders.pretrained import FrozenSentenceEncoder, minilm_available
from alignfuse.encoders.text import BiGRUTextEncoder, TransformerTextEncoder
from alignfuse.encoders.tokenizer import Tokenizer

__all__ = [
    "BiGRUTextEncoder",
    "FrozenSentenceEncoder",
    "SmallCNN",
    "TinyViT",
    "Tokenizer",
    "TransformerTextEncoder",
    "minilm_available",
]
