"""Built-in datasets (generated locally) and loaders for the field's real formats."""

from alignfuse.data.base import ImageTextData, ImageTextSplit, WinogroundSet
from alignfuse.data.captions import export_captions, load_captions
from alignfuse.data.shapes import ambiguity, load_shapes

__all__ = [
    "ImageTextData",
    "ImageTextSplit",
    "WinogroundSet",
    "ambiguity",
    "export_captions",
    "load_captions",
    "load_shapes",
]
