"""Benchmark suites: YAML files naming experiments as overrides of a shared base config."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from alignfuse.config import ExperimentConfig, apply_overrides, deep_merge, from_dict, safe_yaml
from alignfuse.errors import ConfigError
from alignfuse.registry import suggest

SUITE_KEYS = {"name", "description", "base", "experiments"}
EXPERIMENT_EXTRA_KEYS = {"requires"}


@dataclass
class SuiteExperiment:
    """One experiment of a suite: its resolved config and the extras it needs."""

    config: ExperimentConfig
    requires: list[str] = field(default_factory=list)


@dataclass
class Suite:
    """A named list of experiments."""

    name: str
    description: str
    experiments: list[SuiteExperiment]


def builtin_suites() -> list[str]:
    """Names of the suites shipped with the package."""
    folder = resources.files("alignfuse.bench") / "suites"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_suite(name_or_path: str, overrides: list[str] | None = None) -> Suite:
    """Load a built-in suite by name, or a suite YAML file by path; apply overrides to
    every experiment."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"suite file {str(path)!r} does not exist")
        text = path.read_text()
    else:
        names = builtin_suites()
        if name_or_path not in names:
            raise ConfigError(
                f"unknown suite {name_or_path!r}{suggest(name_or_path, names)} (built-in: {', '.join(names)})"
            )
        text = (resources.files("alignfuse.bench") / "suites" / f"{name_or_path}.yaml").read_text()
    raw = safe_yaml(text, f"suite {name_or_path!r}")
    if not isinstance(raw, dict):
        raise ConfigError(f"suite {name_or_path!r} must be a mapping")
    # ``x-`` keys hold YAML anchors the experiments merge (as in docker-compose files)
    check_keys({k: v for k, v in raw.items() if not str(k).startswith("x-")}, SUITE_KEYS, "suite")
    base = raw.get("base") or {}
    experiments = []
    for i, exp in enumerate(raw.get("experiments") or []):
        if not isinstance(exp, dict) or "name" not in exp:
            raise ConfigError(
                f"suite {name_or_path!r}: experiment {i} must be a mapping with a name"
            )
        exp = dict(exp)
        requires = exp.pop("requires", [])
        requires = [requires] if isinstance(requires, str) else list(requires)
        merged = apply_overrides(deep_merge(base, exp), overrides or [])
        experiments.append(SuiteExperiment(from_dict(ExperimentConfig, merged), requires))
    if not experiments:
        raise ConfigError(f"suite {name_or_path!r} lists no experiments")
    return Suite(
        str(raw.get("name", path.stem)), str(raw.get("description", "")).strip(), experiments
    )


def check_keys(section: dict[str, Any], allowed: set[str], where: str) -> None:
    """Reject an unknown key of a suite section, naming the closest valid one."""
    for key in section:
        if key not in allowed:
            raise ConfigError(f"unknown {where} key {key!r}{suggest(key, sorted(allowed))}")
