"""Question-to-schema linking on Spider, Spider-Syn and Spider-DK (task ``schema_linking``,
suite ``schema``).

Does the alignment toolbox of image-text work align a question with the tables and columns
its SQL needs, and does that carry over to synonyms (Spider-Syn) and to questions that need
domain knowledge (Spider-DK)? Every linker scores each question against the items of its
own database (:mod:`alignfuse.models.linkers`); trained linkers learn on Spider train with
the configured objective over each question's own candidates (``from_candidates``: InfoNCE
with several positives, SigLIP, VSE++), tables and columns together.

Protocol: a tenth of the training databases (``task.args.val_fraction``, by ``db_id``,
seeded) is held out as ``val``, which picks the F1 threshold of each item kind; the rest
trains. Reported per split (``val``, ``dev``, ``syn``: the dev questions with synonyms,
``dk``, and ``dk_t0`` ... ``dk_t5`` by knowledge type, a two-type question in both) and per
item kind (``table``, ``column``): ROC AUC over all pairs, recall@k and coverage@k, and F1,
precision and recall at the validated threshold.

Task arguments: ``val_fraction`` (0.1), ``batch_questions`` (questions per step; default
``train.batch_size``), ``ks`` (cut-offs, default ``[1, 3, 5, 10]``), ``cache_dir`` (sentence
embeddings; default the alignfuse cache), ``group_by_database`` (false: each epoch a random
order of the questions; true: the databases in a random order, each one's questions
together in a random order, so a step encodes the items of one or two databases: the same
objective, since a question is only scored against its own database, for a tower that
encodes the items itself at a fraction of the cost).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.config import ExperimentConfig
from alignfuse.data.spider import LinkingData, LinkingExample, Schema
from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.errors import ConfigError
from alignfuse.metrics.linking import best_threshold, linking_metrics
from alignfuse.models.linkers import (
    AttentionMapper,
    EmbeddingScorer,
    GraphScorer,
    HiddenScorer,
    PairFitScorer,
    TextScorer,
    TokenScorer,
    VocabScorer,
    item_texts,
    schema_graph,
)
from alignfuse.models.protocols import CandidateLoss
from alignfuse.outputs import LossOutput
from alignfuse.registry import DATASETS, LOSSES, MODELS, TASKS
from alignfuse.tasks.base import TaskDefaults, task_args


@dataclass
class SchemaLinkingArgs:
    """``task.args`` of ``schema_linking``."""

    val_fraction: float = 0.1  # share of the training databases held out for validation
    batch_questions: int | None = None  # questions per step (default: train.batch_size)
    ks: list[int] = field(default_factory=lambda: [1, 3, 5, 10])  # recall / coverage at k
    cache_dir: str | None = None  # where MiniLM embeddings are cached
    group_by_database: bool = False  # a step takes the questions of one or two databases


KINDS = ("table", "column")
EVAL_SPLITS = ("val", "dev", "syn", "dk")


def split_by_database(
    data: LinkingData, fraction: float, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Positions of the examples whose database is kept for training and of those held out
    (``fraction`` of the databases, at least one, drawn with ``seed``)."""
    if not 0 < fraction < 1:
        raise ConfigError(f"task.args.val_fraction must be in (0, 1), got {fraction}")
    dbs = sorted({e.db_id for e in data.examples})
    if len(dbs) < 2:
        raise ConfigError("schema linking needs at least two training databases to hold one out")
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(dbs)[: max(1, math.ceil(fraction * len(dbs)))].tolist())
    keep = [i for i, e in enumerate(data.examples) if e.db_id not in held]
    val = [i for i, e in enumerate(data.examples) if e.db_id in held]
    return keep, val


def _kind_names(schema: Schema) -> dict[str, list[str]]:
    """Item names as lexical linkers read them: table names; columns with their table."""
    return {
        "table": list(schema.tables),
        "column": [
            f"{schema.tables[schema.column_tables[c]]} {n}"
            for c, n in enumerate(schema.column_names)
        ],
    }


def pad_rows(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(T_i, D)`` rows zero-padded into ``(N, T, D)``, with the ``(N, T)`` mask of real
    positions."""
    width = max(len(r) for r in rows)
    padded = rows[0].new_zeros(len(rows), width, rows[0].shape[1])
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        padded[i, : len(r)] = r
        mask[i, : len(r)] = True
    return padded, mask


class _Embeddings:
    """Frozen-encoder features of every question and schema item of the splits, computed
    once per split and cached on disk: sentence embeddings of questions and item
    serialisations, and (``tokens=True``) contextual token embeddings of questions and item
    names."""

    def __init__(
        self,
        cache_dir: str | None,
        tokens: bool,
        hidden_layer: int | None = None,
        path: str | None = None,
    ) -> None:
        self.cache_dir, self.tokens = cache_dir, tokens
        self.hidden_layer, self.path = hidden_layer, path
        self.q_hidden: dict[str, torch.Tensor] = {}
        self.item_hidden: dict[tuple[str, str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self.q_vectors: dict[str, torch.Tensor] = {}
        self.q_token: dict[str, torch.Tensor] = {}
        self.vectors: dict[tuple[str, str, str], torch.Tensor] = {}
        self.name_token: dict[tuple[str, str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self.dim = 0

    def add(self, split: str, data: LinkingData) -> None:
        """Embed the questions and schemas of one split (from the disk cache if there)."""
        from alignfuse.encoders.pretrained import embed_sentences, embed_tokens

        questions = sorted({e.question for e in data.examples})
        vecs = embed_sentences(questions, None, self.cache_dir)
        self.q_vectors.update(zip(questions, vecs, strict=True))
        self.dim = int(vecs.shape[1])
        texts, names, keys = [], [], []
        for db in sorted(data.schemas):
            tables, columns = item_texts(data.schemas[db])
            kinds = _kind_names(data.schemas[db])
            for kind, t in (("table", tables), ("column", columns)):
                keys.append(((split, db, kind), len(t)))
                texts += t
                names += kinds[kind]
        item_vecs = embed_sentences(texts, None, self.cache_dir)
        start = 0
        for key, n in keys:
            self.vectors[key] = item_vecs[start : start + n]
            start += n
        if self.hidden_layer is not None:
            self._add_hidden(questions, texts, keys)
        if not self.tokens:
            return
        flat, off = embed_tokens(questions, None, self.cache_dir)
        for i, q in enumerate(questions):
            self.q_token[q] = flat[int(off[i]) : int(off[i + 1])]
        flat, off = embed_tokens(names, None, self.cache_dir)
        start = 0
        for key, n in keys:
            parts = [flat[int(off[j]) : int(off[j + 1])] for j in range(start, start + n)]
            start += n
            self.name_token[key] = pad_rows(parts)

    def _add_hidden(
        self, questions: list[str], texts: list[str], keys: list[tuple[tuple[str, str, str], int]]
    ) -> None:
        """Hidden states below a fine-tuned tower's trained layers, kept in float16 (as on
        disk): per question, and per database and item kind zero-padded with a mask."""
        from alignfuse.encoders.pretrained import embed_hidden

        assert self.hidden_layer is not None
        flat, off = embed_hidden(questions, self.hidden_layer, self.path, self.cache_dir)
        flat = flat.half()
        for i, q in enumerate(questions):
            self.q_hidden[q] = flat[int(off[i]) : int(off[i + 1])]
        flat, off = embed_hidden(texts, self.hidden_layer, self.path, self.cache_dir)
        flat = flat.half()
        start = 0
        for key, n in keys:
            rows = [flat[int(off[j]) : int(off[j + 1])] for j in range(start, start + n)]
            self.item_hidden[key] = pad_rows(rows)
            start += n

    def question(self, text: str) -> torch.Tensor:
        return self.q_vectors[text]

    def item(self, split: str, db: str, kind: str) -> torch.Tensor:
        return self.vectors[(split, db, kind)]

    def question_tokens(self, text: str) -> torch.Tensor:
        """``(L, D)`` tokens of a question."""
        return self.q_token[text]

    def item_tokens(self, split: str, db: str, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(M, L, D)`` tokens of the database's item names, zero-padded, and their mask;
        ``kind="all"``: its tables then its columns."""
        key = (split, db, kind)
        if kind == "all" and key not in self.name_token:
            parts = [self.name_token[(split, db, k)] for k in KINDS]
            width = max(t.shape[1] for t, _ in parts)
            self.name_token[key] = (
                torch.cat([F.pad(t, (0, 0, 0, width - t.shape[1])) for t, _ in parts]),
                torch.cat([F.pad(m, (0, width - m.shape[1])) for _, m in parts]),
            )
        return self.name_token[key]


@TASKS.register("schema_linking")
class SchemaLinkingTask(TaskDefaults):
    """Question-to-schema linking: Spider train, dev, Spider-Syn and Spider-DK."""

    name: ClassVar[str] = "schema_linking"
    arguments: ClassVar[type[Any] | None] = SchemaLinkingArgs

    def __init__(self, cfg: ExperimentConfig, data: dict[str, LinkingData], run_dir: str | Path):
        args = task_args(SchemaLinkingArgs, cfg)
        missing = [s for s in ("train", "dev", "syn", "dk") if s not in data]
        if missing:
            raise ConfigError(f"task 'schema_linking' needs the Spider splits {missing}")
        self.cfg = cfg
        keep, val = split_by_database(data["train"], args.val_fraction)
        self.train = data["train"].subset(keep)
        self.splits: dict[str, LinkingData] = {
            "val": data["train"].subset(val),
            "dev": data["dev"],
            "syn": data["syn"],
            "dk": data["dk"],
        }
        self.ks = tuple(args.ks)
        self.batch_questions = args.batch_questions or cfg.train.batch_size
        if self.batch_questions < 1:
            raise ConfigError(f"task.args.batch_questions must be >= 1, got {self.batch_questions}")
        self.cache_dir = args.cache_dir
        self.group_by_database = args.group_by_database
        self.device = torch.device("cpu")
        self.embeddings: _Embeddings | None = None
        self._order: tuple[int, np.ndarray] | None = None
        self._graphs: dict[tuple[str, str], torch.Tensor] = {}
        self._item_texts: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
        vocab = Path(run_dir) / "vocab.json"
        self.tokenizer: Tokenizer | None = Tokenizer.load(vocab) if vocab.is_file() else None

    def vocabulary(self) -> Tokenizer:
        """The words of the training questions and of the training schemas' item
        serialisations (read from the run folder when it has one): the vocabulary of the
        linkers trained from scratch."""
        if self.tokenizer is None:
            texts = [e.question for e in self.train.examples]
            for schema in self.train.schemas.values():
                tables, columns = item_texts(schema)
                texts += tables + columns
            self.tokenizer = Tokenizer.build(texts)
        return self.tokenizer

    def save(self, run_dir: Path) -> None:
        super().save(run_dir)  # config.yaml
        if self.tokenizer is not None:
            self.tokenizer.save(run_dir / "vocab.json")

    @staticmethod
    def load_data(cfg: ExperimentConfig) -> dict[str, LinkingData]:
        """The Spider splits the config's ``data`` section names (``spider_linking``)."""
        data = DATASETS.create(cfg.data.name, **cfg.data.args)
        if not isinstance(data, dict) or not all(isinstance(v, LinkingData) for v in data.values()):
            raise ConfigError(
                f"task 'schema_linking' needs data.name: spider_linking, got {cfg.data.name!r}"
            )
        return data

    # ------------------------------------------------------------------ training

    def build(self) -> tuple[nn.Module, nn.Module]:
        factory = MODELS.get(self.cfg.model.name).factory
        kinds = (TextScorer, EmbeddingScorer, TokenScorer, GraphScorer, VocabScorer, HiddenScorer)
        if not (isinstance(factory, type) and issubclass(factory, kinds)):
            linkers = [
                n
                for n in MODELS.names()
                if isinstance(f := MODELS.get(n).factory, type) and issubclass(f, kinds)
            ]
            raise ConfigError(
                f"model {self.cfg.model.name!r} is not a schema linker (linkers: {', '.join(linkers)})"
            )
        args = dict(self.cfg.model.args)
        if issubclass(factory, VocabScorer):
            args["tokenizer"] = self.vocabulary()
        model: nn.Module = MODELS.create(self.cfg.model.name, **args)
        loss: nn.Module = LOSSES.create(self.cfg.loss.name, **self.cfg.loss.args)
        return model, loss

    def setup(self, model: nn.Module, loss_fn: nn.Module, device: torch.device, world: int) -> None:
        if world > 1:
            raise ConfigError("task 'schema_linking' trains in one process")
        trainable = any(p.requires_grad for p in model.parameters())
        if trainable and not isinstance(loss_fn, CandidateLoss):
            raise ConfigError(
                f"loss {self.cfg.loss.name!r} has no from_candidates(): use info_nce, sigmoid "
                "or triplet"
            )
        self.device = device
        if isinstance(model, (EmbeddingScorer, TokenScorer, GraphScorer, HiddenScorer)):
            layer, path = model.hidden_input() if isinstance(model, HiddenScorer) else (None, None)
            self.embeddings = _Embeddings(
                self.cache_dir, tokens=isinstance(model, TokenScorer), hidden_layer=layer, path=path
            )
            for name, split in {"train": self.train, **self.splits}.items():
                self.embeddings.add(name, split)
        if isinstance(model, PairFitScorer):  # closed form, on (question, gold item) pairs
            model.fit_pairs(*self.gold_pairs())

    def gold_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of every (training question, gold table or column) pair."""
        emb = self.embeddings
        assert emb is not None
        qs, items = [], []
        for e in self.train.examples:
            q = emb.question(e.question)
            tables = emb.item("train", e.db_id, "table")
            columns = emb.item("train", e.db_id, "column")
            for vec in [
                *(tables[t] for t in sorted(e.tables)),
                *(columns[c] for c in sorted(e.columns)),
            ]:
                qs.append(q)
                items.append(vec)
        return torch.stack(qs), torch.stack(items)

    def steps_per_epoch(self) -> int:
        return max(1, len(self.train) // self.batch_questions)

    def batch(self, epoch: int, index: int, rank: int, world: int) -> dict[str, Any]:
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng([self.cfg.train.seed, epoch])
            order = rng.permutation(len(self.train))
            if self.group_by_database:
                dbs = sorted(self.train.schemas)
                place = dict(zip(dbs, rng.permutation(len(dbs)).tolist(), strict=True))
                every = self.train.examples
                order = np.array(sorted(order, key=lambda i: place[every[int(i)].db_id]))
            self._order = (epoch, order)
        b = self.batch_questions
        rows = self._order[1][index * b : (index + 1) * b]
        examples = [self.train.examples[int(i)] for i in rows]
        sizes = [self.train.schemas[e.db_id] for e in examples]
        width = max(s.n_tables + s.n_columns for s in sizes)
        valid = torch.zeros(len(examples), width, dtype=torch.bool)
        positive = torch.zeros_like(valid)
        for r, (e, schema) in enumerate(zip(examples, sizes, strict=True)):
            valid[r, : schema.n_tables + schema.n_columns] = True
            positive[r, list(e.tables)] = True
            positive[r, [schema.n_tables + j for j in e.columns]] = True
        return {
            "examples": examples,
            "valid": valid.to(self.device),
            "positive": positive.to(self.device),
        }

    def candidate_scores(
        self, model: nn.Module, split: str, examples: list[LinkingExample]
    ) -> dict[str, list[torch.Tensor]]:
        """Each question's scores over its database's tables and columns (with gradients)."""
        if isinstance(model, VocabScorer):
            return self._vocab_scores(model, split, examples)
        emb = self.embeddings
        assert emb is not None
        if isinstance(model, HiddenScorer):
            dev = self.device

            def encode(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                return model.encode_hidden(hidden.to(dev).float(), mask.to(dev))

            q = encode(*pad_rows([emb.q_hidden[e.question] for e in examples]))
            encoded = {
                db: (
                    encode(*emb.item_hidden[(split, db, "table")]),
                    encode(*emb.item_hidden[(split, db, "column")]),
                )
                for db in sorted({e.db_id for e in examples})
            }
            return self._cosines(examples, q, encoded)
        out: dict[str, list[torch.Tensor]] = {k: [] for k in KINDS}
        if isinstance(model, TokenScorer):  # one call per question: tables, then columns
            for e in examples:
                q = emb.question_tokens(e.question).to(self.device)
                tokens, mask = emb.item_tokens(split, e.db_id, "all")
                joint = model.score_tokens(q, tokens.to(self.device), mask.to(self.device))
                n_tables = len(emb.item(split, e.db_id, "table"))
                out["table"].append(joint[:n_tables])
                out["column"].append(joint[n_tables:])
            return out
        if isinstance(model, GraphScorer):  # every item of the database at once
            for e in examples:
                schema = self._schema(split, e.db_id)
                key = (split, e.db_id)
                if key not in self._graphs:
                    self._graphs[key] = schema_graph(schema).to(self.device)
                every = torch.cat([emb.item(split, e.db_id, k) for k in KINDS]).to(self.device)
                joint = model.score_graph(
                    emb.question(e.question).to(self.device), every, self._graphs[key]
                )
                out["table"].append(joint[: schema.n_tables])
                out["column"].append(joint[schema.n_tables :])
            return out
        assert isinstance(model, EmbeddingScorer)
        q = torch.stack([emb.question(e.question) for e in examples]).to(self.device)
        for kind in KINDS:
            items = [emb.item(split, e.db_id, kind) for e in examples]
            width = max(len(i) for i in items)
            padded = torch.zeros(len(items), width, emb.dim)
            for r, i in enumerate(items):
                padded[r, : len(i)] = i
            scores = model.score_embeddings(q, padded.to(self.device))
            out[kind] = [scores[r, : len(i)] for r, i in enumerate(items)]
        return out

    def _forget(self, split: str) -> None:
        """Drop what was derived from an earlier split of this name (a new question file)."""
        self._graphs = {k: v for k, v in self._graphs.items() if k[0] != split}
        self._item_texts = {k: v for k, v in self._item_texts.items() if k[0] != split}

    def _schema(self, split: str, db: str) -> Schema:
        return self.splits.get(split, self.train).schemas[db]

    def _vocab_scores(
        self, model: VocabScorer, split: str, examples: list[LinkingExample]
    ) -> dict[str, list[torch.Tensor]]:
        """Cosines of each question against its database's item serialisations, every text
        encoded by the model's own towers (each database's items once per call)."""
        q = model.encode_texts([e.question for e in examples], "question")
        items = {}
        for db in sorted({e.db_id for e in examples}):
            key = (split, db)
            if key not in self._item_texts:
                self._item_texts[key] = item_texts(self._schema(split, db))
            tables, columns = self._item_texts[key]
            every = model.encode_texts(tables + columns, "item")
            items[db] = (every[: len(tables)], every[len(tables) :])
        return self._cosines(examples, q, items)

    @staticmethod
    def _cosines(
        examples: list[LinkingExample],
        questions: torch.Tensor,
        items: dict[str, tuple[torch.Tensor, torch.Tensor]],
    ) -> dict[str, list[torch.Tensor]]:
        """Each question's (unit) embedding against its database's (tables, columns)."""
        return {
            kind: [items[e.db_id][k] @ questions[r] for r, e in enumerate(examples)]
            for k, kind in enumerate(KINDS)
        }

    def step(self, model: nn.Module, loss_fn: nn.Module, batch: dict[str, Any]) -> LossOutput:
        parts = self.candidate_scores(model, "train", batch["examples"])
        valid = batch["valid"]
        scores = torch.zeros(valid.shape, device=self.device)
        for r, (t, c) in enumerate(zip(parts["table"], parts["column"], strict=True)):
            row = torch.cat([t, c])
            scores[r, : len(row)] = row
        out: LossOutput = loss_fn.from_candidates(scores, batch["positive"], valid)  # type: ignore[operator]
        return out

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def scores(self, model: nn.Module, split: str) -> dict[str, list[np.ndarray]]:
        """Each question's scores over its database's tables and over its columns."""
        data = self.splits[split]
        out: dict[str, list[np.ndarray]] = {k: [] for k in KINDS}
        was_training = model.training
        model.eval()
        try:
            if isinstance(model, TextScorer):
                names = {db: _kind_names(s) for db, s in data.schemas.items()}
                for e in data.examples:
                    for kind in KINDS:
                        out[kind].append(model.score_items(e.question, names[e.db_id][kind]))
                return out
            for lo in range(0, len(data.examples), 256):
                chunk = self.candidate_scores(model, split, data.examples[lo : lo + 256])
                for kind in KINDS:
                    out[kind] += [v.cpu().numpy() for v in chunk[kind]]
            return out
        finally:
            model.train(was_training)

    @staticmethod
    def gold(examples: list[LinkingExample]) -> dict[str, list[frozenset[int]]]:
        return {"table": [e.tables for e in examples], "column": [e.columns for e in examples]}

    def validate(self, model: nn.Module) -> dict[str, float]:
        s = self.scores(model, "val")
        g = self.gold(self.splits["val"].examples)
        return {f"{kind}_auc": linking_metrics(s[kind], g[kind], ks=(1,))["auc"] for kind in KINDS}

    def describe(self, metrics: dict[str, float]) -> str:
        return f" val table AUC {metrics['table_auc']:.3f} column AUC {metrics['column_auc']:.3f}"

    def evaluate(self, model: nn.Module) -> tuple[dict[str, float], Any]:
        metrics: dict[str, float] = {}
        scores = {split: self.scores(model, split) for split in EVAL_SPLITS}
        gold = {split: self.gold(self.splits[split].examples) for split in EVAL_SPLITS}
        thresholds = {k: best_threshold(scores["val"][k], gold["val"][k]) for k in KINDS}
        groups: dict[str, list[int]] = {}
        for split in EVAL_SPLITS:
            groups[split] = list(range(len(self.splits[split])))
        for i, e in enumerate(self.splits["dk"].examples):
            for t in sorted(set(e.kind or "")):
                groups.setdefault(f"dk_t{t}", []).append(i)
        for group, rows in groups.items():
            split = group if group in scores else "dk"
            for kind in KINDS:
                m = linking_metrics(
                    [scores[split][kind][i] for i in rows],
                    [gold[split][kind][i] for i in rows],
                    ks=self.ks,
                    threshold=thresholds[kind],
                )
                metrics.update({f"{group}/{kind}_{k}": v for k, v in m.items()})
            metrics[f"{group}/questions"] = float(len(rows))
        for kind in KINDS:
            metrics[f"threshold/{kind}"] = thresholds[kind]
        maps = self.attention_maps(model, scores) if isinstance(model, AttentionMapper) else []
        return metrics, {"maps": maps}

    @torch.no_grad()
    def attention_maps(
        self,
        model: nn.Module,
        scores: dict[str, dict[str, list[np.ndarray]]],
        n: int = 3,
        top: int = 6,
    ) -> list[dict[str, Any]]:
        """For the first ``n`` dev questions with a gold column, and their Spider-Syn
        versions: the question's word pieces, its ``top`` columns by score and where in the
        question the linker attends for each."""
        from alignfuse.encoders.pretrained import FrozenSentenceEncoder

        assert isinstance(model, AttentionMapper) and self.embeddings is not None
        tokenizer = FrozenSentenceEncoder()._model.tokenizer
        picked = [i for i, e in enumerate(self.splits["dev"].examples) if e.columns][:n]
        out = []
        for i in picked:
            for split in ("dev", "syn"):
                e = self.splits[split].examples[i]
                schema = self.splits[split].schemas[e.db_id]
                order = np.argsort(-scores[split]["column"][i], kind="mergesort")[:top]
                tokens, mask = self.embeddings.item_tokens(split, e.db_id, "column")
                q = self.embeddings.question_tokens(e.question).to(self.device)
                sel = torch.as_tensor(order.copy())
                amap = model.attention_map(
                    q, tokens[sel].to(self.device), mask[sel].to(self.device)
                )
                out.append(
                    {
                        "split": split,
                        "question": e.question,
                        "tokens": tokenizer.tokenize(e.question)[: q.shape[0]],
                        "items": [
                            f"{schema.tables[schema.column_tables[c]]}.{schema.column_names[c]}"
                            for c in order
                        ],
                        "gold": [bool(c in e.columns) for c in order],
                        "map": amap.cpu().numpy(),
                    }
                )
        return out

    def evaluate_file(self, model: nn.Module, data: LinkingData) -> dict[str, float]:
        """Metrics of the linker on any Spider-format question file (at the thresholds
        chosen on ``val``), as ``file/<kind>_<metric>``."""
        if not len(data):
            raise ConfigError("the question file holds no usable question")
        self.splits["file"] = data
        self._forget("file")
        if self.embeddings is not None:
            self.embeddings.add("file", data)
        val = self.scores(model, "val")
        gold_val = self.gold(self.splits["val"].examples)
        scores = self.scores(model, "file")
        gold = self.gold(data.examples)
        out: dict[str, float] = {"file/questions": float(len(data))}
        for kind in KINDS:
            m = linking_metrics(
                scores[kind],
                gold[kind],
                ks=self.ks,
                threshold=best_threshold(val[kind], gold_val[kind]),
            )
            out.update({f"file/{kind}_{k}": v for k, v in m.items()})
        return out

    def rank(self, model: nn.Module, question: str, schema: Schema) -> list[tuple[str, str, float]]:
        """The schema's tables and columns for one question, best first, as ``(kind, name,
        score)`` (a column named ``table.column``): for a user's own text-to-SQL system."""
        one = LinkingData(
            [LinkingExample(0, schema.db_id, question, "", frozenset(), frozenset())],
            {schema.db_id: schema},
        )
        self.splits["query"] = one
        self._forget("query")
        if self.embeddings is not None:
            self.embeddings.add("query", one)
        scores = self.scores(model, "query")
        names = {
            "table": list(schema.tables),
            "column": [
                f"{schema.tables[schema.column_tables[c]]}.{n}"
                for c, n in enumerate(schema.column_names)
            ],
        }
        out = [
            (kind, names[kind][i], float(v))
            for kind in KINDS
            for i, v in enumerate(scores[kind][0])
        ]
        return sorted(out, key=lambda x: -x[2])

    def headline(self, metrics: dict[str, float]) -> str:
        return (
            f"dev table AUC {metrics['dev/table_auc']:.3f} column AUC "
            f"{metrics['dev/column_auc']:.3f}; syn {metrics['syn/column_auc']:.3f}; "
            f"dk {metrics['dk/column_auc']:.3f}"
        )

    # ------------------------------------------------------------------ report

    leaderboard_caption: ClassVar[str] = (
        "ROC AUC in %, the gap to dev in brackets; column coverage@5: questions whose every "
        "gold column is in the top 5"
    )

    @staticmethod
    def leaderboard(rows: list[dict[str, Any]]) -> str:
        from alignfuse.bench.report import markdown_table, skipped_cells

        head = ["linker", "objective"]
        cells = []
        for split in ("dev", "syn", "dk"):
            for kind in KINDS:
                head.append(f"{split} {kind} AUC")
        head += ["dev col cov@5", "syn col cov@5", "dk col cov@5", "dev col F1", "train s"]
        for r in rows:
            if r.get("status") != "ok":
                cells.append(skipped_cells(r, len(head)))
                continue
            m = r["metrics"]
            trained = bool(r.get("steps"))
            row = [r["name"], r["config"]["loss"]["name"] if trained else "none (not trained)"]
            for split in ("dev", "syn", "dk"):
                for kind in KINDS:
                    row.append(
                        _pct(
                            m, f"{split}/{kind}_auc", None if split == "dev" else f"dev/{kind}_auc"
                        )
                    )
            for split in ("dev", "syn", "dk"):
                row.append(_pct(m, f"{split}/column_coverage@5"))
            row += [_pct(m, "dev/column_f1"), f"{r['train_seconds']:.0f}"]
            cells.append(row)
        return markdown_table(head, cells)

    @staticmethod
    def report(
        rows: list[dict[str, Any]], out: Path, data: Any, artefacts: dict[str, Any]
    ) -> list[str]:
        from alignfuse.bench.report import markdown_table

        done = [r for r in rows if r.get("status") == "ok"]
        types = sorted(
            {k.split("/")[0] for r in done for k in r["metrics"] if k.startswith("dk_t")}
        )
        dk_rows = []
        for r in done:
            m = r["metrics"]
            dk_rows.append(
                [r["name"]]
                + [
                    f"{_pct(m, f'{t}/column_auc')} / {_pct(m, f'{t}/column_coverage@5')}"
                    for t in types
                ]
            )
        counts = [int(done[0]["metrics"][f"{t}/questions"]) for t in types] if done else []
        dk_head = ["linker", *(f"T{t[4:]} ({n} q)" for t, n in zip(types, counts, strict=True))]
        _plot_gaps(done, out / "gaps.png")
        sizes = ""
        if data is not None:
            sizes = ", ".join(f"{k} {len(v)} questions" for k, v in data.items())
        return [
            f"## Data\n\n{sizes}.\n",
            "## Spider-DK by knowledge type (column AUC / column coverage@5, %)\n\n"
            "T0: no domain knowledge; T1-T5: the paper's five types (Gan et al. 2021).\n\n"
            f"{markdown_table(dk_head, dk_rows)}",
            "## Column AUC per split\n\n![gaps](gaps.png)\n",
            _answers_section(done, types) + _maps_section(artefacts, out),
        ]


def _answers_section(done: list[dict[str, Any]], types: list[str]) -> str:
    """The source document's questions answered from this run's figures: does alignment
    carry over to schemas, and what do synonyms and domain knowledge cost."""
    col = "column_auc"
    rows = [r for r in done if all(f"{s}/{col}" in r["metrics"] for s in ("dev", "syn", "dk"))]
    if not rows:
        return ""

    def auc(r: dict[str, Any], split: str) -> float:
        return 100 * float(r["metrics"][f"{split}/{col}"])

    trained = [r for r in rows if r.get("steps")]
    untrained = [r for r in rows if not r.get("steps")]
    best = max(rows, key=lambda r: auc(r, "dev"))
    lines = ["\n## What this run answers\n"]
    if untrained:
        base = max(untrained, key=lambda r: auc(r, "dev"))
        lines.append(
            f"- **Does alignment carry over to schemas?** The best linker, `{best['name']}`, "
            f"reaches a dev column AUC of {auc(best, 'dev'):.1f} against {auc(base, 'dev'):.1f} "
            f"for the best linker without training (`{base['name']}`)."
        )
    if trained and untrained:
        drop_t = sum(auc(r, "dev") - auc(r, "syn") for r in trained) / len(trained)
        drop_u = sum(auc(r, "dev") - auc(r, "syn") for r in untrained) / len(untrained)
        lexical = [r for r in untrained if r["name"] == "string_match"]
        lex = (
            f" (string matching alone: {auc(lexical[0], 'dev') - auc(lexical[0], 'syn'):.1f})"
            if lexical
            else ""
        )
        lines.append(
            f"- **Synonyms (Spider-Syn)** cost the trained linkers {drop_t:.1f} points of column "
            f"AUC on average and the untrained ones {drop_u:.1f}{lex}."
        )
    dk_gaps = [auc(r, "dk") - auc(r, "dev") for r in rows]
    line = (
        f"- **Domain knowledge (Spider-DK)**: column AUC changes by {min(dk_gaps):+.1f} to "
        f"{max(dk_gaps):+.1f} points against dev across linkers"
    )
    mean = {
        t: sum(100 * float(r["metrics"].get(f"{t}/{col}", float("nan"))) for r in rows) / len(rows)
        for t in types
    }
    kinds = [t for t in mean if t != "dk_t0"]
    if kinds:
        hardest = min(kinds, key=lambda t: mean[t])
        line += (
            f"; the hardest knowledge type is T{hardest[4:]} (mean column AUC "
            f"{mean[hardest]:.1f} over linkers"
        )
        line += (
            f", against {mean['dk_t0']:.1f} on questions that need none)"
            if "dk_t0" in mean
            else ")"
        )
    lines.append(line + ".")
    lines += _closers(rows, auc)
    lines += _unsolved_types(rows, types)
    lines += _families(rows, auc)
    return "\n".join(lines) + "\n"


def _closers(rows: list[dict[str, Any]], auc: Callable[[dict[str, Any], str], float]) -> list[str]:
    """Which linker does best on Spider-Syn and on Spider-DK, and which loses least there."""
    out = []
    for split, what in (("syn", "the synonym gap"), ("dk", "the domain-knowledge gap")):
        best = max(rows, key=lambda r: auc(r, split))
        least = max(rows, key=lambda r: auc(r, split) - auc(r, "dev"))
        out.append(
            f"- **Which alignment closes {what}?** The best {split} column AUC is "
            f"`{best['name']}`'s ({auc(best, split):.1f}, {auc(best, split) - auc(best, 'dev'):+.1f} "
            f"against its dev); the smallest loss is `{least['name']}`'s "
            f"({auc(least, split) - auc(least, 'dev'):+.1f}, at {auc(least, split):.1f})."
        )
    return out


def _unsolved_types(rows: list[dict[str, Any]], types: list[str]) -> list[str]:
    """The Spider-DK types for which no linker keeps every gold column in the top 5 for
    half of the questions."""
    key = "column_coverage@5"
    best = {t: max(rows, key=lambda r: float(r["metrics"].get(f"{t}/{key}", -1.0))) for t in types}
    cover = {t: float(best[t]["metrics"].get(f"{t}/{key}", float("nan"))) for t in types}
    measured = [t for t in types if t != "dk_t0" and math.isfinite(cover[t])]
    if not measured:
        return []
    unsolved = [t for t in measured if cover[t] < 0.5]
    detail = ", ".join(
        f"T{t[4:]} {100 * cover[t]:.1f}% (`{best[t]['name']}`)" for t in (unsolved or measured)
    )
    if unsolved:
        return [
            "- **Which knowledge types does no linker solve?** Those where even the best "
            f"linker keeps every gold column in its top 5 for under half the questions: {detail}."
        ]
    return [f"- Every knowledge type has a linker covering half its questions at 5: {detail}."]


# model families compared in the report: (label, model names)
FAMILIES = {
    "fine-grained interaction": ("token_scan", "token_ot", "cross_encoder"),
    "dual encoder on the frozen encoder": ("schema_dual_encoder",),
    "dual encoder on the fine-tuned encoder": ("finetuned_dual_encoder",),
    "dual encoder trained from scratch": ("vocab_dual_encoder",),
}


def _families(rows: list[dict[str, Any]], auc: Callable[[dict[str, Any], str], float]) -> list[str]:
    """The best trained linker of each model family, side by side on dev and Spider-Syn."""
    best: dict[str, dict[str, Any]] = {}
    for label, names in FAMILIES.items():
        members = [
            r
            for r in rows
            if r.get("steps") and r.get("config", {}).get("model", {}).get("name") in names
        ]
        if members:
            best[label] = max(members, key=lambda r: auc(r, "dev"))
    if len(best) < 2:
        return []
    parts = [
        f"{label}: `{r['name']}` {auc(r, 'dev'):.1f} dev / {auc(r, 'syn'):.1f} syn / "
        f"{auc(r, 'dk'):.1f} dk"
        for label, r in best.items()
    ]
    return [
        "- **Fine-grained interaction, fine-tuning and pretraining** (column AUC of the best "
        "trained linker of each family): " + "; ".join(parts) + "."
    ]


def _maps_section(artefacts: dict[str, Any], out: Path) -> str:
    """Figures of where token linkers attend in a few questions (dev and Spider-Syn)."""
    from alignfuse.bench.report import pyplot

    parts = []
    for name, art in artefacts.items():
        maps = art[1]["maps"] if art is not None else []
        if not maps:
            continue
        plt = pyplot()
        fig, axes = plt.subplots(
            len(maps) // 2, 2, figsize=(13, 2.6 * (len(maps) // 2)), squeeze=False
        )
        for ax, m in zip(axes.ravel(), maps, strict=True):
            ax.imshow(m["map"], aspect="auto", cmap="viridis", vmin=0)
            ax.set_xticks(range(len(m["tokens"])), m["tokens"], rotation=60, fontsize=7)
            labels = [
                f"{'* ' if g else ''}{item}" for item, g in zip(m["items"], m["gold"], strict=True)
            ]
            ax.set_yticks(range(len(labels)), labels, fontsize=7)
            ax.set_title(f"{m['split']}: {m['question'][:70]}", fontsize=8)
        fig.tight_layout()
        fname = f"attention_{name}.png"
        fig.savefig(out / fname, dpi=100)
        plt.close(fig)
        parts.append(
            f"\n## Where {name} finds each column\n\nSCAN's attention of each column name's words "
            "over the question's word pieces (rows: the question's top columns by score, gold "
            f"ones starred), dev questions and their Spider-Syn versions.\n\n![{name}]({fname})\n"
        )
    return "".join(parts)


def _pct(metrics: dict[str, float], key: str, base: str | None = None) -> str:
    """A metric in percent (``-`` if not measured), with its gap to ``base`` in brackets."""
    v = metrics.get(key)
    if v is None or not math.isfinite(v):
        return "-"
    gap = f" ({100 * (v - metrics[base]):+.1f})" if base and base in metrics else ""
    return f"{100 * v:.1f}{gap}"


def _plot_gaps(rows: list[dict[str, Any]], path: Path) -> None:
    from alignfuse.bench.report import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    splits = ["dev", "syn", "dk"]
    width = 0.8 / max(1, len(rows))
    for ax, kind in zip(axes, KINDS, strict=True):
        for j, r in enumerate(rows):
            vals = [r["metrics"].get(f"{s}/{kind}_auc", float("nan")) for s in splits]
            ax.bar(np.arange(3) + j * width, vals, width, label=r["name"])
        ax.set_xticks(np.arange(3) + width * (len(rows) - 1) / 2, splits)
        ax.set(ylabel=f"{kind} ROC AUC", ylim=(0.5, 1.0), title=f"{kind}s")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
