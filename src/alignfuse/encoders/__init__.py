"""Encoders, one per modality: images (CNN, ViT, pretrained EfficientNet-Lite), text (BiGRU, Transformer, frozen MiniLM) and
audio (log-mel CNN)."""

from alignfuse.encoders.audio import AudioCNN
from alignfuse.encoders.efficientnet import EfficientNetLite
from alignfuse.encoders.hf import HFDualEncoder, HFTextTower, HFVisionTower
from alignfuse.encoders.image import SmallCNN, TinyViT
from alignfuse.encoders.precomputed import PrecomputedFeatures
from alignfuse.encoders.pretrained import FrozenSentenceEncoder, minilm_available
from alignfuse.encoders.text import BiGRUTextEncoder, TransformerTextEncoder
from alignfuse.encoders.tokenizer import Tokenizer

__all__ = [
    "AudioCNN",
    "BiGRUTextEncoder",
    "EfficientNetLite",
    "FrozenSentenceEncoder",
    "HFDualEncoder",
    "HFTextTower",
    "HFVisionTower",
    "PrecomputedFeatures",
    "SmallCNN",
    "TinyViT",
    "Tokenizer",
    "TransformerTextEncoder",
    "minilm_available",
]
