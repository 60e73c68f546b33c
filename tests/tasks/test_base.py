"""The task layer: every registered task through the one loop (contract), the speech-text task
against plain re-computations, exact resume, and its errors."""

import json

import numpy as np
import pytest
import torch

import alignfuse
from alignfuse.bench import load_suite
from alignfuse.cli import main
from alignfuse.config import load_config
from alignfuse.data.espeak import espeak_available
from alignfuse.engine.fit import Fit
from alignfuse.errors import ConfigError
from alignfuse.tasks import create_task, task_type
from alignfuse.tasks.base import Task, TaskType

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")

SPEECH = [
    "task={name: speech_text, args: {test_sentences: 4}}",
    "data={name: spoken, args: {n_sentences: 12, renderings: 2, use_cache: false}}",
    "model={name: speech_text, embed_dim: 16, args: {text_args: {word_dim: 8, hidden: 8}, "
    "audio_args: {width: 8}}}",
    "train={epochs: 3, batch_size: 4, lr: 2.0e-3, schedule: constant, warmup_fraction: 0.0, "
    "grad_clip: 0.0, eval_every: 0, checkpoint_every: 0}",
]


@pytest.fixture(scope="module")
def spoken_tiny():
    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    cfg = load_config(None, SPEECH)
    return task_type(cfg).load_data(cfg)


def _quiet(task, run):
    return Fit(task, run, progress=False, log=lambda m: None)


def test_every_registered_task_is_a_task_class():
    assert {"image_text", "speech_text"} <= set(alignfuse.list_tasks())
    for name in alignfuse.list_tasks():
        cls = alignfuse.registry.TASKS.get(name).factory
        assert isinstance(cls, TaskType), name
        assert cls.name == name


def test_image_text_task_through_the_loop(tmp_path, tiny_overrides):
    cfg = load_config(None, [*tiny_overrides, "train.epochs=1"])
    task = create_task(cfg, run_dir=tmp_path)
    assert isinstance(task, Task)
    fit = _quiet(task, tmp_path)
    history = fit.fit()
    assert fit.step == fit.total_steps and len(history.epochs) == 1
    metrics, sims = task.evaluate(fit.model)
    assert "test/rsum" in metrics and sims["test"].shape[0] == len(task.data["test"])


@needs_espeak
def test_speech_text_trains_resumes_exactly_and_evaluates(tmp_path, spoken_tiny):
    cfg = load_config(None, SPEECH)
    full = _quiet(create_task(cfg, spoken_tiny, tmp_path / "full"), tmp_path / "full")
    full.fit()
    assert full.step == 3 * (8 // 4) and len(full.history.epochs) == 3
    part = _quiet(create_task(cfg, spoken_tiny, tmp_path / "part"), tmp_path / "part")
    part.fit(stop_after=3)  # killed mid-epoch after a checkpoint
    again = _quiet(create_task(cfg, spoken_tiny, tmp_path / "part"), tmp_path / "part")
    again.fit(resume=True)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
    assert again.history.epochs == full.history.epochs

    # the metrics against a plain loop over utterances and sentences
    task = full.task
    metrics, _ = task.evaluate(full.model)
    model = full.model.eval()
    with torch.no_grad():
        sentences = [spoken_tiny.sentences[s] for s in task.test_s]
        text = model.encode("text", model.prepare("text", sentences))
        hits, per_voice = [], {}
        for i, u in enumerate(spoken_tiny.utterances):
            if u.sentence not in task.test_s:
                continue
            from alignfuse.encoders.audio import pad_frames

            a = model.encode("audio", pad_frames([task.feats[i]]))[0]
            hit = task.test_s[int((text @ a).argmax())] == u.sentence
            hits.append(hit)
            per_voice.setdefault(u.voice, []).append(hit)
    assert metrics["s2t_r1"] == pytest.approx(np.mean(hits))
    for voice, h in per_voice.items():
        assert metrics[f"s2t_r1_{voice}"] == pytest.approx(np.mean(h))
    assert {"t2s_r1", "s2t_map", "t2s_map", "modality_gap", "rsum"} <= set(metrics)


@needs_espeak
def test_speech_text_batches_hold_distinct_sentences_and_skip_the_held_out_voice(spoken_tiny):
    voice = sorted({u.voice for u in spoken_tiny.utterances} - {"en-us"})[0]
    cfg = load_config(None, [*SPEECH, f"task.args.held_out_voice={voice}"])
    task = create_task(cfg, spoken_tiny)
    for epoch in range(3):
        for sents, utts in task.epoch_plan(epoch):
            assert len(set(sents)) == len(sents) == 4
            assert not set(sents) & set(task.test_s)
            for s, i in zip(sents, utts, strict=True):
                u = spoken_tiny.utterances[i]
                assert u.sentence == s and u.voice != voice
    assert task.epoch_plan(1) == task.epoch_plan(1) != task.epoch_plan(2)


@needs_espeak
@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "task.args.test_sentence=3",
            "unknown config key 'task.args.test_sentence'; did you mean 'task.args.test_sentences'",
        ),
        ("task.args.test_sentences=12", r"test_sentences must be in \[1, 11\]"),
        ("task.args.held_out_voice=klingon", "held_out_voice 'klingon' is not among"),
        ("train.batch_size=9", r"train.batch_size must be in \[2, 8\]"),
    ],
)
def test_speech_text_bad_settings_are_named(spoken_tiny, override, message):
    cfg = load_config(None, [*SPEECH, override])
    with pytest.raises(ConfigError, match=message):
        create_task(cfg, spoken_tiny)


def test_unknown_task_and_wrong_data_are_named():
    with pytest.raises(ConfigError, match="unknown task 'speech'; did you mean 'speech_text'"):
        task_type(load_config(None, ["task.name=speech"]))
    cfg = load_config(None, ["task.name=speech_text"])
    with pytest.raises(ConfigError, match="needs data.name: spoken, got 'shapes'"):
        task_type(cfg).load_data(cfg)
    with pytest.raises(ConfigError, match="takes no task.args"):
        create_task(load_config(None, ["task.args={x: 1}"]), data=object())


def test_every_builtin_suite_names_a_registered_task():
    from alignfuse.bench.suite import builtin_suites

    for name in builtin_suites():
        for exp in load_suite(name).experiments:
            task_type(exp.config)


@needs_espeak
@pytest.mark.slow
def test_spoken_suite_takes_dotted_overrides(tmp_path, capsys):
    out = tmp_path / "spoken"
    args = ["bench", "--suite", "spoken", "--out", str(out), "--no-progress"]
    overrides = [
        "data.args={n_sentences: 12, renderings: 2, use_cache: false}",
        "task.args.test_sentences=4",
        "model.embed_dim=16",
        "train.epochs=1",
        "train.batch_size=4",
    ]
    assert main([*args, *overrides]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["config"]["train"]["epochs"] for r in rows if r["status"] == "ok"] == [1] * len(
        [r for r in rows if r["status"] == "ok"]
    )
    assert "s2t R@1" in (out / "leaderboard.md").read_text()
    assert (out / "report.md").is_file() and (out / "curves.png").is_file()
