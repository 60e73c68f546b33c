"""The mvae suite end to end on a small config: rows, report, plot, resume, bad keys."""

import json

from alignfuse.cli import main

SMALL = (
    "name: mvae_small\nkind: mvae\ndata: {name: digits_twoview, args: {pairs_per_image: 1}}\n"
    "model: {latent: 4, hidden: [32], weights: {label: 5.0}}\n"
    "train: {epochs: 3, batch_size: 128, anneal_epochs: 2}\neval: {samples: 5}\n"
    "experiments:\n  - {name: all, subsets: all}\n  - {name: joint, subsets: joint, epochs: 2}\n"
    "  - {name: moe, aggregation: moe, subsets: joint, epochs: 1}\n"
)


def test_mvae_suite(tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SMALL)
    out = tmp_path / "out"
    assert main(["bench", "--suite", str(suite), "--out", str(out)]) == 0
    board = capsys.readouterr().out
    assert "| all |" in board and "| pixel probe |" in board
    rows = [json.loads(r) for r in (out / "results.jsonl").read_text().splitlines()]
    assert [r["name"] for r in rows] == ["all", "joint", "moe"]
    assert rows[1]["train"]["epochs"] == 2 and rows[1]["model"]["subsets"] == "joint"
    for r in rows:
        m = r["metrics"]
        assert all(0 <= m[k] <= 1 for k in m if "_from_" in k and not k.startswith("nll"))
        assert m["nll_label_from_rotated"] > 0 and m["nll_joint"] > 0
    assert (out / "generated.png").stat().st_size > 5000
    report = (out / "report.md").read_text()
    assert "![generated](generated.png)" in report and "![cross-modal](cross_modal.png)" in report
    assert (out / "cross_modal.png").stat().st_size > 3000
    assert "CPU cores" in report.split("Machine: ")[1].splitlines()[0]
    # a re-run resumes from the final checkpoints: same weights, so the same metrics
    assert main(["bench", "--suite", str(suite), "--out", str(out)]) == 0
    again = [json.loads(r) for r in (out / "results.jsonl").read_text().splitlines()]
    assert [r["metrics"] for r in again] == [r["metrics"] for r in rows]
    assert [r["final_loss"] for r in again] == [r["final_loss"] for r in rows]
    assert [r["train_seconds"] for r in again] == [r["train_seconds"] for r in rows]


def test_mvae_suite_rejects_unknown_keys(tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    for text, msg in [
        (SMALL.replace("latent: 4", "latentt: 4"), "did you mean 'latent'"),
        (SMALL.replace("joint, epochs: 2", "joint, epochz: 2"), "unknown experiment key"),
        (SMALL.replace("eval: {samples: 5}", "eval: {sample: 5}"), "did you mean 'samples'"),
        (SMALL.split("experiments:")[0] + "experiments: []\n", "lists no experiments"),
    ]:
        suite.write_text(text)
        assert main(["bench", "--suite", str(suite), "--out", str(tmp_path / "o")]) == 2
        assert msg in capsys.readouterr().err
