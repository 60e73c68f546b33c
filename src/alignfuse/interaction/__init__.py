"""Implicit alignment: similarity by cross-modal attention between region (or patch) features
and word features, scored for every image against every caption in chunks.

Registered in the ``interaction`` family (``alignfuse.list_interactions()``).
"""

from alignfuse.interaction.recurrent import DIME, IMRAM, LateInteraction, attend, attention_weights
from alignfuse.interaction.scan import SCAN, scan_similarity

__all__ = [
    "DIME",
    "IMRAM",
    "SCAN",
    "LateInteraction",
    "attend",
    "attention_weights",
    "scan_similarity",
]
