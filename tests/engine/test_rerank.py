"""The one re-ranker (``engine.evaluate.rerank``) with an all-pairs interaction scorer,
against a plain loop: each caption's top-k images by the first stage re-scored one caption at
a time, and each image's top-k captions likewise."""

from __future__ import annotations

import torch

from alignfuse.engine.evaluate import InteractionPairs, rerank
from alignfuse.registry import INTERACTIONS


def test_interaction_rerank_equals_a_loop_over_queries():
    torch.manual_seed(0)
    n_img, n_txt, k = 7, 12, 3
    regions = torch.randn(n_img, 5, 8)
    words = torch.randn(n_txt, 4, 8)
    mask = torch.ones(n_txt, 4, dtype=torch.bool)
    mask[::3, 3] = False
    sims = torch.randn(n_img, n_txt)
    scorer = INTERACTIONS.create("scan")
    i2t, t2i = rerank(
        InteractionPairs(scorer), sims, regions, words, mask, k, batch_size=5, add_first_stage=False
    )
    for c in range(n_txt):  # text to image: the caption's top k by the scorer, then the rest
        cand = sims[:, c].topk(k).indices
        s = scorer(regions[cand], words[c : c + 1], None, mask[c : c + 1])[:, 0]
        want = cand[s.argsort(descending=True)].tolist()
        rest = [i for i in sims[:, c].argsort(descending=True).tolist() if i not in want]
        assert t2i[:, c].argsort(descending=True).tolist() == want + rest
        torch.testing.assert_close(t2i[cand, c], s)
    for i in range(n_img):  # image to text
        cand = sims[i].topk(k).indices
        s = scorer(regions[i : i + 1], words[cand], None, mask[cand])[0]
        torch.testing.assert_close(i2t[i, cand], s)
        assert (i2t[i, cand].min() > i2t[i][~torch.isin(torch.arange(n_txt), cand)]).all()
    # with the first stage added (ALBEF's protocol) the re-scored pairs are score + sims
    _, t2i_sum = rerank(InteractionPairs(scorer), sims, regions, words, mask, k)
    cand = sims[:, 0].topk(k).indices
    s = scorer(regions[cand], words[:1], None, mask[:1])[:, 0]
    torch.testing.assert_close(t2i_sum[cand, 0], s + sims[cand, 0])
