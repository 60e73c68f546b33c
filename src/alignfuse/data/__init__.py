"""Built-in datasets (generated locally) and loaders for the field's real formats."""

from alignfuse.data import clipart, clips, precomputed, twoview  # noqa: F401  (register their datasets)
from alignfuse.data.base import ImageTextData, ImageTextSplit, WinogroundSet
from alignfuse.data.captions import export_captions, load_captions
from alignfuse.data.shapes import ambiguity, load_shapes
from alignfuse.data.spider import LinkingData, LinkingExample, Schema, load_spider
from alignfuse.data.spoken import SpokenData, Utterance, load_spoken
from alignfuse.data.webdataset import export_webdataset, load_webdataset

__all__ = [
    "ImageTextData",
    "ImageTextSplit",
    "LinkingData",
    "LinkingExample",
    "Schema",
    "SpokenData",
    "Utterance",
    "WinogroundSet",
    "ambiguity",
    "export_captions",
    "export_webdataset",
    "load_captions",
    "load_shapes",
    "load_spider",
    "load_spoken",
    "load_webdataset",
]
