"""Alignment objectives: each a pure function plus a registered ``nn.Module`` returning
:class:`~alignfuse.outputs.LossOutput`."""

from alignfuse.losses.contrastive import ContrastiveLoss, contrastive
from alignfuse.losses.focal import FocalLoss, candidate_focal, focal_loss
from alignfuse.losses.info_nce import InfoNCELoss, info_nce, info_nce_from_similarity
from alignfuse.losses.local import LocalContrastiveLoss, local_contrastive, local_similarity
from alignfuse.losses.matching import MatchingLoss, PairHead, matching, sample_hard_negatives
from alignfuse.losses.n_pair import NPairLoss, n_pair
from alignfuse.losses.quadruplet import StructurePreservingLoss, structure_preserving
from alignfuse.losses.ranking import RankingLoss, ranking, smooth_ap
from alignfuse.losses.sigmoid import SigmoidLoss, sigmoid_loss
from alignfuse.losses.token_wise import TokenWiseLoss, token_wise, token_wise_similarity
from alignfuse.losses.triplet import TripletLoss, triplet, triplet_from_similarity
from alignfuse.losses.triplet_center import TripletCenterLoss, triplet_center

__all__ = [
    "ContrastiveLoss",
    "FocalLoss",
    "InfoNCELoss",
    "LocalContrastiveLoss",
    "MatchingLoss",
    "NPairLoss",
    "PairHead",
    "RankingLoss",
    "SigmoidLoss",
    "StructurePreservingLoss",
    "TokenWiseLoss",
    "TripletCenterLoss",
    "TripletLoss",
    "candidate_focal",
    "contrastive",
    "focal_loss",
    "info_nce",
    "info_nce_from_similarity",
    "local_contrastive",
    "local_similarity",
    "matching",
    "n_pair",
    "ranking",
    "sample_hard_negatives",
    "sigmoid_loss",
    "smooth_ap",
    "structure_preserving",
    "token_wise",
    "token_wise_similarity",
    "triplet",
    "triplet_center",
    "triplet_from_similarity",
]
