"""Caption metrics as the COCO caption evaluation server computes them (coco-caption /
``pycocoevalcap``, whose scores papers report; the tests compare with it):

* ``bleu``: corpus BLEU-1..4 (Papineni et al. 2002): clipped n-gram precisions summed over
  the corpus, geometric means, brevity penalty against the reference length closest to each
  candidate's (the shorter on a tie); counts smoothed by ``+1e-15 / +1e-9`` as there.
* ``rouge_l``: per candidate, the longest common subsequence with each reference; the best
  precision and the best recall over references combined as an F-measure with
  ``beta = 1.2``; the corpus mean.
* ``cider``: CIDEr-D (Vedantam et al. 2015): tf-idf vectors of 1- to 4-grams with document
  frequencies over the references of the evaluated set, candidate weights clipped by the
  reference's, a Gaussian length penalty (``sigma = 6``, on the number of bigrams, as the
  released code), the mean over n-gram sizes and references, times 10.

Inputs: ``candidates[i]`` a string and ``references[i]`` a non-empty list of strings.
Text is lowercased and split into words after punctuation is dropped: an approximation of
the Java PTB tokenizer the server runs first (identical for plain lowercase text).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from alignfuse.registry import METRICS

_PUNCT = re.compile(r"[^\w\s']|_|(?<!\w)'|'(?!\w)")


def tokenize(text: str) -> list[str]:
    """Lowercase words of ``text`` with punctuation dropped (apostrophes inside words kept)."""
    return _PUNCT.sub(" ", text.lower()).split()


def _check(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if isinstance(candidates, str) or not isinstance(candidates, Sequence):
        raise ValueError("candidates must be a list of strings (one caption per item)")
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise ValueError("references must be a list of lists of strings")
    if len(candidates) == 0:
        raise ValueError("candidates is empty")
    if len(candidates) != len(references):
        raise ValueError(
            f"candidates and references must pair items: {len(candidates)} vs {len(references)}"
        )
    for i, (c, refs) in enumerate(zip(candidates, references, strict=True)):
        if not isinstance(c, str):
            raise ValueError(f"candidates[{i}] must be a string, got {type(c).__name__}")
        if isinstance(refs, str) or not isinstance(refs, Sequence) or len(refs) == 0:
            raise ValueError(f"references[{i}] must be a non-empty list of strings")
        if not all(isinstance(r, str) for r in refs):
            raise ValueError(f"references[{i}] must hold strings only")


def _ngrams(words: list[str], n: int) -> Counter[tuple[str, ...]]:
    """Counts of every k-gram, k = 1 .. n."""
    return Counter(
        tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1)
    )


@METRICS.register("bleu")
def bleu(
    candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4
) -> dict[str, float]:
    """Corpus BLEU-1 .. BLEU-``n`` as ``bleu_1`` .. ``bleu_n`` (fractions in [0, 1]).

    Example:
        >>> bleu(["a cat on the mat"], [["a cat on the mat", "the cat sat"]])["bleu_4"]  # doctest: +ELLIPSIS
        0.99999...
    """
    _check(candidates, references)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    correct, guess = [0] * n, [0] * n
    test_len = ref_len = 0
    for cand, refs in zip(candidates, references, strict=True):
        words = tokenize(cand)
        ref_words = [tokenize(r) for r in refs]
        clip: Counter[tuple[str, ...]] = Counter()
        for r in ref_words:
            clip |= _ngrams(r, n)  # the maximum count of each n-gram over references
        counts = _ngrams(words, n)
        for gram, c in counts.items():
            correct[len(gram) - 1] += min(c, clip[gram])
        for k in range(n):
            guess[k] += max(len(words) - k, 0)
        test_len += len(words)
        ref_len += min((abs(len(r) - len(words)), len(r)) for r in ref_words)[1]
    out: dict[str, float] = {}
    product = 1.0
    for k in range(n):
        product *= (correct[k] + 1e-15) / (guess[k] + 1e-9)
        out[f"bleu_{k + 1}"] = product ** (1.0 / (k + 1))
    ratio = (test_len + 1e-15) / (ref_len + 1e-9)
    if ratio < 1:
        for key in out:
            out[key] *= math.exp(1 - 1 / ratio)
    return out


def _lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (O(len a * len b) dynamic programme)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


@METRICS.register("rouge_l")
def rouge_l(
    candidates: Sequence[str], references: Sequence[Sequence[str]], beta: float = 1.2
) -> float:
    """Mean ROUGE-L F-measure (in [0, 1]) of the candidates against their references.

    Example:
        >>> round(rouge_l(["the cat sat"], [["the cat sat down"]]), 4)
        0.8356
    """
    _check(candidates, references)
    scores = []
    for cand, refs in zip(candidates, references, strict=True):
        words = tokenize(cand)
        best_p = best_r = 0.0
        for ref in refs:
            r = tokenize(ref)
            common = _lcs(words, r)
            best_p = max(best_p, common / len(words) if words else 0.0)
            best_r = max(best_r, common / len(r) if r else 0.0)
        if best_p > 0 and best_r > 0:
            scores.append((1 + beta**2) * best_p * best_r / (best_r + beta**2 * best_p))
        else:
            scores.append(0.0)
    return sum(scores) / len(scores)


@METRICS.register("cider")
def cider(
    candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0
) -> float:
    """Corpus CIDEr-D (the mean of the per-item scores; ~0 to ~10, 1.0 is a typical good
    captioner on COCO). Document frequencies come from ``references`` themselves, so scores
    depend on the evaluated set (as on the COCO server).

    Example:
        >>> refs = [["a cat on a mat"], ["a dog in the park"]]
        >>> cider(["a cat on a mat", "a dog in the park"], refs) > cider(["a dog", "a cat"], refs)
        True
    """
    _check(candidates, references)
    if n < 1 or sigma <= 0:
        raise ValueError(f"n must be >= 1 and sigma > 0, got n={n}, sigma={sigma}")
    cand_counts = [_ngrams(tokenize(c), n) for c in candidates]
    ref_counts = [[_ngrams(tokenize(r), n) for r in refs] for refs in references]
    df: Counter[tuple[str, ...]] = Counter()
    for refs in ref_counts:
        df.update({g for r in refs for g in r})
    log_items = math.log(float(len(references)))

    def vector(
        counts: Counter[tuple[str, ...]],
    ) -> tuple[list[dict[tuple[str, ...], float]], list[float], int]:
        vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(n)]
        norm = [0.0] * n
        bigrams = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            w = float(tf) * (log_items - math.log(max(1.0, float(df[gram]))))
            vec[k][gram] = w
            norm[k] += w * w
            if k == 1:
                bigrams += tf
        return vec, [math.sqrt(v) for v in norm], bigrams

    total = 0.0
    for cand, refs in zip(cand_counts, ref_counts, strict=True):
        vc, nc, lc = vector(cand)
        score = [0.0] * n
        for ref in refs:
            vr, nr, lr = vector(ref)
            penalty = math.exp(-(float(lc - lr) ** 2) / (2 * sigma**2))
            for k in range(n):
                val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vc[k].items())
                if nc[k] != 0 and nr[k] != 0:
                    val /= nc[k] * nr[k]
                score[k] += val * penalty
        total += sum(score) / n / len(refs) * 10.0
    return total / len(candidates)
