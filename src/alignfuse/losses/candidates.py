"""The pairwise objectives for one query against its own candidate set, with several
positives: a question against the tables and columns of its database (schema linking), a
caption against the regions of its image, ...

Each query ``i`` has scores ``s_ij`` (cosine similarities, say) over a candidate set
``C(i)`` (``valid``) holding its positives ``P(i)`` (``positive``); candidates outside
``C(i)`` never count. Queries without a positive are left out. These are the one-to-many
forms of the batch objectives (the square, one-positive case is theirs: see the tests):

- InfoNCE (multi-positive, Khosla et al. 2020), per query:
  ``-1/|P| sum_{p in P} log softmax_{j in C}(t s_ij)[p]``, the mean over queries;
- SigLIP (Zhai et al. 2023), per query: ``sum_{j in C} -log sigmoid(z_ij (t s_ij + b))``
  with ``z = +1`` for positives and ``-1`` otherwise, the mean over queries;
- triplet (Faghri et al. 2018), per positive ``p``: ``[alpha - s_ip + s_in]_+`` summed over
  the negatives ``n in C \\ P`` (``mining="sum"``) or for the hardest one (``hardest``:
  VSE++), summed (or averaged) over positives and queries.

Example:
    >>> s = torch.tensor([[0.9, 0.1, 0.2], [0.3, 0.8, 0.0]])
    >>> pos = torch.tensor([[True, False, False], [False, True, False]])
    >>> valid = torch.tensor([[True, True, True], [True, True, False]])  # 3rd: not a candidate
    >>> round(float(candidate_triplet(s, pos, valid, margin=0.2, mining="hardest")), 4)
    0.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_candidates(
    scores: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checked ``(scores, positive, valid)``, ``positive`` within ``valid``; the rows that
    hold a positive."""
    if scores.ndim != 2:
        raise ValueError(f"scores must be (queries, candidates), got {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be floating point, got {scores.dtype}")
    if positive.shape != scores.shape:
        raise ValueError(
            f"positive must have shape {tuple(scores.shape)}, got {tuple(positive.shape)}"
        )
    positive = positive.to(device=scores.device, dtype=torch.bool)
    if valid is None:
        valid = torch.ones_like(positive)
    elif valid.shape != scores.shape:
        raise ValueError(f"valid must have shape {tuple(scores.shape)}, got {tuple(valid.shape)}")
    valid = valid.to(device=scores.device, dtype=torch.bool)
    if (positive & ~valid).any():
        raise ValueError("every positive must be a valid candidate")
    rows = positive.any(1)
    if not rows.any():
        raise ValueError("no query has a positive candidate")
    return positive[rows], valid[rows], rows


def candidate_info_nce(
    scores: torch.Tensor,
    positive: torch.Tensor,
    valid: torch.Tensor | None = None,
    logit_scale: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """Multi-positive InfoNCE of each query over its candidates; ``logit_scale`` is the log
    of the scale ``t``."""
    positive, valid, rows = check_candidates(scores, positive, valid)
    scale = (
        logit_scale.exp()
        if isinstance(logit_scale, torch.Tensor)
        else torch.tensor(logit_scale).exp()
    )
    logits = (scores[rows] * scale).masked_fill(~valid, float("-inf"))
    logp = logits.log_softmax(1).masked_fill(~positive, 0.0)
    return (-(logp.sum(1) / positive.sum(1))).mean()


def candidate_sigmoid(
    scores: torch.Tensor,
    positive: torch.Tensor,
    valid: torch.Tensor | None = None,
    logit_scale: torch.Tensor | float = 2.302585092994046,
    logit_bias: torch.Tensor | float = -10.0,
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss of each query over its candidates."""
    positive, valid, rows = check_candidates(scores, positive, valid)
    scale = (
        logit_scale.exp()
        if isinstance(logit_scale, torch.Tensor)
        else torch.tensor(logit_scale).exp()
    )
    z = positive.to(scores.dtype) * 2 - 1
    per = -F.logsigmoid(z * (scores[rows] * scale + logit_bias))
    return per.masked_fill(~valid, 0.0).sum(1).mean()


def candidate_triplet(
    scores: torch.Tensor,
    positive: torch.Tensor,
    valid: torch.Tensor | None = None,
    margin: float = 0.2,
    mining: str = "hardest",
    reduction: str = "sum",
) -> torch.Tensor:
    """Hinge triplet loss of each positive against the query's negatives (sum or hardest),
    summed (``reduction="sum"``, as VSE++) or averaged over the positives of all queries
    (``"mean"``)."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if not margin > 0:  # NaN too
        raise ValueError(f"margin must be > 0, got {margin}")
    if mining not in ("sum", "hardest"):
        raise ValueError(f"mining must be 'sum' or 'hardest', got {mining!r}")
    positive, valid, rows = check_candidates(scores, positive, valid)
    s = scores[rows]
    negative = valid & ~positive
    # cost[i, p, n] = [margin - s_ip + s_in]_+ for positive p and negative n of query i
    cost = (margin - s[:, :, None] + s[:, None, :]).clamp_min(0)
    cost = cost.masked_fill(~(positive[:, :, None] & negative[:, None, :]), 0.0)
    per_positive = cost.amax(2) if mining == "hardest" else cost.sum(2)
    total = per_positive.sum()
    return total if reduction == "sum" else total / positive.sum()
