"""Alignment objectives: each a pure function plus a registered ``nn.Module``."""

from alignfuse.losses.info_nce import InfoNCELoss, info_nce
from alignfuse.losses.triplet import TripletLoss, triplet

__all__ = ["InfoNCELoss", "TripletLoss", "info_nce", "triplet"]
