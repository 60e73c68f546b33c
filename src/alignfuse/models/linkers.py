"""Schema linkers: scorers of a question against the tables and columns of its database.

Two kinds, told apart by what they score (:class:`TextScorer`, :class:`EmbeddingScorer`):

- lexical, on the words of the question and of each item's name: ``string_match``
  (RAT-SQL's n-gram matching, Wang et al. 2020: an item whose whole name occurs in the
  question scores 1, one whose words occur in part scores half the share that occur) and
  ``bm25`` (Okapi BM25 of the question against each item's words, within its database);
- on sentence embeddings of the question and of each item's serialisation
  (:func:`item_texts`): ``embedding_cosine`` (the frozen encoder's cosine, zero-shot) and
  ``schema_dual_encoder`` (a trained linear head per side, initialised to the identity so
  training starts from the zero-shot linker; Karpukhin et al. 2020's dual encoder, here
  with several positives per question), and ``projection_linker`` (explicit alignment: CCA
  or Procrustes fitted in closed form on the training (question, gold item) pairs), and
  ``schema_graph_encoder`` (relation-aware: items exchange information along the schema
  graph before the heads, after RAT-SQL);
- on the words, with towers trained from scratch on the training vocabulary:
  ``vocab_dual_encoder`` (a BiGRU dual encoder); and with the sentence encoder itself
  fine-tuned: ``finetuned_dual_encoder`` (its top layers trained);
- on contextual token embeddings: ``token_scan`` (SCAN's stacked cross attention) and
  ``token_ot`` (optimal transport, UNITER's word-region alignment), zero-shot or with
  trained token maps, and ``cross_encoder`` (ITM-style: the question and one item in one
  stream through a trained single-stream Transformer, a match logit per item; trained with
  focal loss as RESDSQL's schema classifier).

Example:
    >>> from alignfuse.data.spider import Schema
    >>> linker = StringMatchLinker()
    >>> linker.score_items("How many singers are there?", ["singer", "concert", "stadium"])
    array([1., 0., 0.])
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.data.spider import Schema
from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.registry import MODELS

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-cased words with a crude plural folded (``singers`` -> ``singer``)."""
    out = []
    for w in _WORD.findall(text.lower()):
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.append(w)
    return out


def item_texts(schema: Schema) -> tuple[list[str], list[str]]:
    """Serialisations of each table (its name and its columns' names) and each column (its
    table, its name, its type and its keys), for sentence encoders."""
    tables = [
        f"{name}: {', '.join(schema.column_names[c] for c in schema.table_columns(t))}"
        for t, name in enumerate(schema.tables)
    ]
    refs = dict(schema.foreign_keys)
    columns = []
    for c, name in enumerate(schema.column_names):
        text = f"{schema.tables[schema.column_tables[c]]} {name} ({schema.column_types[c]}"
        if c in schema.primary_keys:
            text += ", primary key"
        if c in refs:
            other = refs[c]
            text += f", refers to {schema.tables[schema.column_tables[other]]} {schema.column_names[other]}"
        columns.append(text + ")")
    return tables, columns


@runtime_checkable
class TextScorer(Protocol):
    """Scores a question against item names, from their words."""

    def score_items(self, question: str, items: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class EmbeddingScorer(Protocol):
    """Scores questions against their candidate items, from sentence embeddings."""

    def score_embeddings(self, questions: torch.Tensor, items: torch.Tensor) -> torch.Tensor: ...


@MODELS.register("string_match")
class StringMatchLinker(nn.Module):
    """RAT-SQL's n-gram name matching: whole name in the question 1, else half the share of
    its words in the question."""

    def score_items(self, question: str, items: Sequence[str]) -> np.ndarray:
        q = words(question)
        joined = f" {' '.join(q)} "
        present = set(q)
        out = np.zeros(len(items))
        for i, item in enumerate(items):
            w = words(item)
            if not w:
                continue
            if f" {' '.join(w)} " in joined:
                out[i] = 1.0
            else:
                out[i] = 0.5 * sum(x in present for x in w) / len(w)
        return out


@MODELS.register("bm25")
class BM25Linker(nn.Module):
    """Okapi BM25 (Robertson et al. 1994) of the question's words against each item's words;
    the items of one database are the collection (its IDF), as ``rank_bm25.BM25Okapi``."""

    def __init__(self, k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25) -> None:
        super().__init__()
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b, self.epsilon = k1, b, epsilon

    def score_items(self, question: str, items: Sequence[str]) -> np.ndarray:
        docs = [words(item) for item in items]
        n = len(docs)
        avg = sum(len(d) for d in docs) / max(1, n)
        df = Counter(w for d in docs for w in set(d))
        idf = {w: math.log(n - f + 0.5) - math.log(f + 0.5) for w, f in df.items()}
        floor = self.epsilon * (sum(idf.values()) / len(idf)) if idf else 0.0
        idf = {w: (v if v >= 0 else floor) for w, v in idf.items()}
        out = np.zeros(n)
        for i, d in enumerate(docs):
            tf = Counter(d)
            norm = self.k1 * (1 - self.b + self.b * len(d) / avg) if avg else self.k1
            for w in words(question):
                f = tf.get(w, 0)
                out[i] += idf.get(w, 0.0) * f * (self.k1 + 1) / (f + norm)
        return out


@MODELS.register("embedding_cosine")
class EmbeddingCosineLinker(nn.Module):
    """The frozen sentence encoder's cosine between a question and each item (zero-shot)."""

    def score_embeddings(self, questions: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` questions against ``(B, M, D)`` candidates: ``(B, M)`` cosines."""
        return torch.einsum(
            "bd,bmd->bm", F.normalize(questions, dim=-1), F.normalize(items, dim=-1)
        )


@MODELS.register("schema_dual_encoder")
class SchemaDualEncoder(nn.Module):
    """A trained linear head on each side of a frozen sentence encoder, initialised to the
    identity (training starts from the zero-shot cosine); scores are cosines.

    Args:
        dim: the sentence encoder's width (384 for MiniLM).
    """

    def __init__(self, dim: int = 384) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.question_head = nn.Linear(dim, dim)
        self.item_head = nn.Linear(dim, dim)
        for head in (self.question_head, self.item_head):
            nn.init.eye_(head.weight)
            nn.init.zeros_(head.bias)

    def score_embeddings(self, questions: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` questions against ``(B, M, D)`` candidates: ``(B, M)`` cosines."""
        q = F.normalize(self.question_head(questions), dim=-1)
        i = F.normalize(self.item_head(items), dim=-1)
        return torch.einsum("bd,bmd->bm", q, i)


@runtime_checkable
class VocabScorer(Protocol):
    """Encodes raw text with its own word vocabulary (towers trained from scratch); the task
    builds it with ``tokenizer=`` the training vocabulary."""

    def encode_texts(self, texts: Sequence[str], side: str) -> torch.Tensor: ...


@MODELS.register("vocab_dual_encoder")
class VocabDualEncoder(nn.Module):
    """A dual encoder trained from scratch on the training vocabulary, as the default
    suite's text tower: word embeddings and a BiGRU, mean pooled
    (:class:`~alignfuse.encoders.text.BiGRUTextEncoder`), one tower shared by questions
    and schema-item serialisations (:func:`item_texts`), a linear head per side; scores are
    cosines. A word the training questions and schemas never use is ``<unk>``, so this is
    the linker that shows what pretraining brings to unseen synonyms.

    Args:
        tokenizer: the training vocabulary (the task passes it).
        word_dim, hidden: the BiGRU's word and hidden widths.
        dim: the shared embedding width.
        max_len: words read per text.
    """

    def __init__(
        self,
        tokenizer: Tokenizer | None = None,
        word_dim: int = 128,
        hidden: int = 128,
        dim: int = 256,
        max_len: int = 48,
    ) -> None:
        super().__init__()
        from alignfuse.encoders.text import BiGRUTextEncoder

        if tokenizer is None:
            raise ValueError("vocab_dual_encoder needs tokenizer= the training vocabulary")
        if min(word_dim, hidden, dim, max_len) < 1:
            raise ValueError(
                f"word_dim, hidden, dim and max_len must be >= 1, got {word_dim}, {hidden}, {dim}, {max_len}"
            )
        self.tower = BiGRUTextEncoder(tokenizer, word_dim, hidden)
        self.tower.max_len = max_len
        self.heads = nn.ModuleDict(
            {side: nn.Linear(self.tower.out_dim, dim) for side in ("question", "item")}
        )

    def encode_texts(self, texts: Sequence[str], side: str) -> torch.Tensor:
        """``(N, dim)`` unit embeddings of ``texts`` (``side``: ``question`` or ``item``)."""
        if side not in self.heads:
            raise ValueError(f"side must be 'question' or 'item', got {side!r}")
        batch = self.tower.prepare(texts)
        device = self.tower.embed.weight.device
        pooled = self.tower(batch["ids"].to(device), batch["lengths"])
        return F.normalize(self.heads[side](pooled), dim=-1)


@runtime_checkable
class HiddenScorer(Protocol):
    """Encodes texts from the frozen encoder's hidden states below its trained top layers;
    the task supplies the states that :meth:`hidden_input` names."""

    def hidden_input(self) -> tuple[int, str | None]: ...

    def encode_hidden(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...


@MODELS.register("finetuned_dual_encoder")
class FineTunedDualEncoder(nn.Module):
    """A dual encoder whose tower is the sentence encoder itself, fine-tuned: its top
    ``top_layers`` Transformer layers and its pooling
    (:class:`~alignfuse.encoders.pretrained.TopLayers`) are trained, the layers below stay
    frozen and are run once (their hidden states cached). One tower for questions and item
    serialisations; scores are cosines, so training starts exactly at ``embedding_cosine``.

    Args:
        top_layers: layers trained (1 of MiniLM's 6: 1.8M parameters).
        path: the sentence-transformers folder (the bundled MiniLM by default).
    """

    def __init__(self, top_layers: int = 1, path: str | None = None) -> None:
        super().__init__()
        from alignfuse.encoders.pretrained import TopLayers

        self.tower = TopLayers(top_layers, path)
        self.start_layer = self.tower.start_layer
        self.path = path

    def hidden_input(self) -> tuple[int, str | None]:
        """The layer whose hidden states the tower reads, and the encoder's folder."""
        return self.start_layer, self.path

    def encode_hidden(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(N, T, D)`` hidden states and ``(N, T)`` masks: ``(N, D)`` unit embeddings."""
        out: torch.Tensor = self.tower(hidden, mask)
        return out


@runtime_checkable
class PairFitScorer(Protocol):
    """An embedding scorer fitted in closed form on (question, gold item) pairs."""

    def fit_pairs(self, questions: torch.Tensor, items: torch.Tensor) -> None: ...

    def score_embeddings(self, questions: torch.Tensor, items: torch.Tensor) -> torch.Tensor: ...


@MODELS.register("projection_linker")
class ProjectionLinker(nn.Module):
    """Explicit alignment on frozen embeddings: CCA (Hotelling 1936; ``method="cca"``) or an
    orthogonal Procrustes map (``"procrustes"``) fitted on the training (question, gold item)
    pairs; scores are cosines of the aligned embeddings.

    Args:
        method: ``cca`` (both sides projected on the top ``n_components`` canonical pairs) or
            ``procrustes`` (questions rotated into the items' space).
        n_components: canonical pairs kept (CCA).
        reg: ridge on each view's covariance (CCA).
    """

    def __init__(self, method: str = "cca", n_components: int = 64, reg: float = 1e-2) -> None:
        super().__init__()
        if method not in ("cca", "procrustes"):
            raise ValueError(f"method must be 'cca' or 'procrustes', got {method!r}")
        if n_components < 1 or reg < 0:
            raise ValueError(f"n_components must be >= 1 and reg >= 0, got {n_components}, {reg}")
        self.method, self.n_components, self.reg = method, n_components, reg
        self.estimator: Any = None

    def fit_pairs(self, questions: torch.Tensor, items: torch.Tensor) -> None:
        """Fit on paired rows ``(N, D)`` of question and gold-item embeddings."""
        from alignfuse.correlation import CCA, Procrustes

        x, y = questions.double(), items.double()
        if self.method == "cca":
            self.estimator = CCA(self.n_components, reg_x=self.reg, reg_y=self.reg).fit(x, y)
        else:
            self.estimator = Procrustes().fit(x, y)
            self._means = (x.mean(0), y.mean(0))

    def score_embeddings(self, questions: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` questions against ``(B, M, D)`` candidates: ``(B, M)`` cosines."""
        if self.estimator is None:
            raise RuntimeError("ProjectionLinker is not fitted: call fit_pairs first")
        b, m, d = items.shape
        x, y = questions.double(), items.reshape(b * m, d).double()
        est = self.estimator
        if self.method == "cca":  # (v - mean) @ weights on each side, as CCA.transform
            zq = (x - est.mean_x_.to(x)) @ est.x_weights_.to(x)
            zi = ((y - est.mean_y_.to(x)) @ est.y_weights_.to(x)).reshape(b, m, -1)
        else:  # as Procrustes.transform: (x - mean_x) R + mean_y
            mx, my = (v.to(x) for v in self._means)
            zq = (x - mx) @ est.rotation_.to(x) + my
            zi = y.reshape(b, m, -1)
        out = torch.einsum("bd,bmd->bm", F.normalize(zq, dim=-1), F.normalize(zi, dim=-1))
        return out.to(questions.dtype)


@runtime_checkable
class TokenScorer(Protocol):
    """Scores a question against items from contextual token embeddings (fine-grained)."""

    def score_tokens(
        self, question: torch.Tensor, items: torch.Tensor, item_mask: torch.Tensor
    ) -> torch.Tensor: ...


class _TokenHeads(nn.Module):
    """Optional trained linear maps of question and item tokens (identity at the start)."""

    def __init__(self, dim: int, trainable: bool) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.heads = nn.ModuleList()
        if trainable:
            for _ in range(2):
                head = nn.Linear(dim, dim)
                nn.init.eye_(head.weight)
                nn.init.zeros_(head.bias)
                self.heads.append(head)

    def map(self, question: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not len(self.heads):
            return question, items
        return self.heads[0](question), self.heads[1](items)


@MODELS.register("token_scan")
class TokenSCANLinker(_TokenHeads):
    """SCAN (Lee et al. 2018) between a question's tokens and each item's tokens: every word
    of the item name attends to the question's tokens (text-to-image direction, the item as
    the "caption"), log-sum-exp pooled; ``trainable=True`` adds a linear map per side
    (identity at the start) trained with the configured candidate loss.

    Args:
        dim: token width (384 for MiniLM).
        trainable: learn the two token maps.
        lambda_softmax, lambda_lse: SCAN's attention and pooling temperatures.
    """

    def __init__(
        self,
        dim: int = 384,
        trainable: bool = False,
        lambda_softmax: float = 9.0,
        lambda_lse: float = 6.0,
    ) -> None:
        super().__init__(dim, trainable)
        from alignfuse.interaction.scan import SCAN

        self.scan = SCAN("t2i", "lse", lambda_softmax, lambda_lse)

    def score_tokens(
        self, question: torch.Tensor, items: torch.Tensor, item_mask: torch.Tensor
    ) -> torch.Tensor:
        """``(Lq, D)`` question tokens against ``(M, L, D)`` item tokens: ``(M,)`` scores."""
        q, i = self.map(question, items)
        out: torch.Tensor = self.scan(q[None], i, None, item_mask)[0]
        return out

    def attention_map(
        self, question: torch.Tensor, items: torch.Tensor, item_mask: torch.Tensor
    ) -> torch.Tensor:
        """``(M, Lq)``: SCAN's attention of each item's words over the question's tokens,
        averaged over the item's words (where in the question each item is found)."""
        from alignfuse.interaction.recurrent import attention_weights

        q, i = self.map(question, items)
        qm = torch.ones(1, q.shape[0], dtype=torch.bool, device=q.device)
        alpha = attention_weights(i, q[None], item_mask, qm, self.scan.lambda_softmax)[:, 0]
        weights = item_mask.to(alpha.dtype)
        return (alpha * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)


@runtime_checkable
class AttentionMapper(Protocol):
    """A token linker that shows where in the question it finds each item."""

    def attention_map(
        self, question: torch.Tensor, items: torch.Tensor, item_mask: torch.Tensor
    ) -> torch.Tensor: ...


@MODELS.register("token_ot")
class TokenOTLinker(_TokenHeads):
    """Optimal transport between a question's tokens and each item's tokens: the score is
    minus UNITER's word-region alignment distance (exact OT by IPOT under the cosine cost,
    uniform weights over real tokens; Chen et al. 2020)."""

    def __init__(self, dim: int = 384, trainable: bool = False, max_iter: int = 50) -> None:
        super().__init__(dim, trainable)
        self.max_iter = max_iter

    def score_tokens(
        self, question: torch.Tensor, items: torch.Tensor, item_mask: torch.Tensor
    ) -> torch.Tensor:
        """``(Lq, D)`` question tokens against ``(M, L, D)`` item tokens: ``(M,)`` scores."""
        from alignfuse.transport.ipot import word_region_distance

        q, i = self.map(question, items)
        qs = q[None].expand(i.shape[0], -1, -1)
        return -word_region_distance(i, qs, item_mask, None, max_iter=self.max_iter)


@MODELS.register("cross_encoder")
class CrossEncoderLinker(nn.Module):
    """A cross-encoder (image-text matching's single stream, as ViLT / UNITER and ALBEF's
    ITM head): the question's tokens and one item's tokens, each with a type embedding,
    behind a [CLS] token through a trained Transformer encoder
    (:class:`~alignfuse.fusion.attention.SingleStreamFusion`); a linear map of [CLS] is the
    item's match logit. Every item of the database is a separate stream, so each item's
    score sees the whole question and vice versa (a dual encoder sees neither). Its inputs
    are the frozen encoder's contextual tokens; RESDSQL trains its schema classifier with
    focal loss (``loss: focal`` with ``alpha: 0.75``).

    Args:
        dim: token width (384 for MiniLM).
        width, heads, layers: the Transformer's.
    """

    def __init__(self, dim: int = 384, width: int = 128, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        from alignfuse.fusion.attention import SingleStreamFusion

        self.fusion = SingleStreamFusion(
            {"question": dim, "item": dim}, 1, width=width, heads=heads, layers=layers
        )

    def score_tokens(
        self, question: torch.Tensor, items: torch.Tensor, item_mask: torch.Tensor
    ) -> torch.Tensor:
        """``(Lq, D)`` question tokens against ``(M, L, D)`` item tokens: ``(M,)`` logits."""
        if question.ndim != 2 or items.ndim != 3 or item_mask.shape != items.shape[:2]:
            raise ValueError(
                "score_tokens takes question (Lq, D), items (M, L, D) and item_mask (M, L), "
                f"got {tuple(question.shape)}, {tuple(items.shape)}, {tuple(item_mask.shape)}"
            )
        m = items.shape[0]
        q = question[None].expand(m, -1, -1)
        q_mask = torch.ones(q.shape[:2], dtype=torch.bool, device=q.device)
        out: torch.Tensor = self.fusion(
            {"question": q, "item": items}, {"question": q_mask, "item": item_mask}
        )
        return out[:, 0]


def schema_graph(schema: Schema) -> torch.Tensor:
    """The schema's item graph, ``(N, N)`` over its tables then its columns: each table
    joined to its columns, each foreign key to the column it refers to; rows normalised
    (a mean over neighbours), an item without neighbours its own."""
    n_t = schema.n_tables
    n = n_t + schema.n_columns
    adj = torch.zeros(n, n)
    for c, t in enumerate(schema.column_tables):
        adj[t, n_t + c] = adj[n_t + c, t] = 1.0
    for a, b in schema.foreign_keys:
        adj[n_t + a, n_t + b] = adj[n_t + b, n_t + a] = 1.0
    lonely = adj.sum(1) == 0
    adj[lonely, lonely] = 1.0
    return adj / adj.sum(1, keepdim=True)


@runtime_checkable
class GraphScorer(Protocol):
    """Scores a question against every item of its database at once, the items exchanging
    information along the schema graph (relation-aware)."""

    def score_graph(
        self, question: torch.Tensor, items: torch.Tensor, graph: torch.Tensor
    ) -> torch.Tensor: ...


@MODELS.register("schema_graph_encoder")
class SchemaGraphEncoder(nn.Module):
    """A relation-aware dual encoder (after RAT-SQL, Wang et al. 2020): the items of a
    database exchange information along its schema graph (:func:`schema_graph`: tables and
    their columns, foreign keys) for ``rounds`` rounds, ``h <- h + W mean_{j in N(i)} h_j``
    with ``W`` zero at the start, before the trained linear heads of
    :class:`SchemaDualEncoder` (so training starts from the zero-shot cosine).

    Args:
        dim: the sentence encoder's width.
        rounds: message-passing rounds.
    """

    def __init__(self, dim: int = 384, rounds: int = 2) -> None:
        super().__init__()
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        self.heads = SchemaDualEncoder(dim)
        messages = [nn.Linear(dim, dim) for _ in range(rounds)]
        for m in messages:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        self.messages = nn.ModuleList(messages)

    def score_graph(
        self, question: torch.Tensor, items: torch.Tensor, graph: torch.Tensor
    ) -> torch.Tensor:
        """``(D,)`` question against ``(N, D)`` items with their ``(N, N)`` graph: ``(N,)``."""
        h = items
        for message in self.messages:
            h = h + message(graph @ h)
        return self.heads.score_embeddings(question[None], h[None])[0]
