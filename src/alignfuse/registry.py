"""One registry class, one instance per pluggable family.

Every family has a ``create_*`` and a ``list_*`` verb (``create_loss``, ``list_losses``, ...).
Entries register themselves when :mod:`alignfuse` is imported, so a user never has to import a
module for its side effect.

Example:
    >>> import alignfuse
    >>> "info_nce" in alignfuse.list_losses()
    True
    >>> loss = alignfuse.create_loss("triplet", margin=0.2, mining="hardest")
    >>> type(loss).__name__
    'TripletLoss'
"""

from __future__ import annotations

import difflib
import functools
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from alignfuse.errors import AlignfuseError, ConfigError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered factory: its name, the callable and its one-line summary."""

    name: str
    factory: Callable[..., T]
    summary: str


_SENTENCE_END = re.compile(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)\.\s+(?=[A-Z`(])")


def _first_line(obj: Any) -> str:
    """The first sentence of a docstring's first paragraph (it may wrap over lines)."""
    doc = (inspect.getdoc(obj) or "").strip()
    paragraph = " ".join(line.strip() for line in doc.split("\n\n")[0].splitlines())
    end = _SENTENCE_END.search(paragraph)
    return paragraph[: end.start() + 1] if end else paragraph


def suggest(name: str, choices: list[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest choice, or ``""`` if none is close."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_arguments(
    family: str, name: str, kwargs: Mapping[str, Any], valid: Sequence[str]
) -> None:
    """Raise a ``ConfigError`` naming the first key of ``kwargs`` not in ``valid`` (with the
    closest valid name); what ``Registry.create`` checks, for builders that forward their
    extra keyword arguments to a class (``valid`` then comes from that class)."""
    valid = [p for p in valid if p != "self"]
    for key in kwargs:
        if key not in valid:
            raise ConfigError(
                f"{family} {name!r} has no argument {key!r}{suggest(key, valid)}"
                f" (valid: {', '.join(valid)})"
            )


class Registry(Generic[T]):
    """A named family of factories (classes or functions returning ``T``)."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str | None = None, *, summary: str | None = None) -> Callable[[F], F]:
        """Decorator registering a factory under ``name`` (default: its ``__name__``)."""

        def deco(factory: F) -> F:
            key = name or factory.__name__
            if key in self._entries:
                raise ValueError(f"{self.family} {key!r} is registered twice")
            self._entries[key] = Entry(key, factory, summary or _first_line(factory))
            return factory

        return deco

    def get(self, name: str) -> Entry[T]:
        """Return the entry called ``name``; an unknown name names the closest valid one."""
        if not isinstance(name, str):
            raise ConfigError(f"{self.family} name must be a string, got {type(name).__name__}")
        try:
            return self._entries[name]
        except KeyError:
            names = sorted(self._entries)
            raise ConfigError(
                f"unknown {self.family} {name!r}{suggest(name, names)} (known: {', '.join(names)})"
            ) from None

    def create(self, name: str, **kwargs: Any) -> T:
        """Build entry ``name``. Keyword arguments that are ``None`` are dropped so a caller's
        unset options never override a component's own defaults."""
        entry = self.get(name)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        try:
            sig = inspect.signature(entry.factory)
        except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
            sig = None
        if sig is not None and not any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()
        ):
            check_arguments(self.family, name, kwargs, list(sig.parameters))
        try:
            return entry.factory(**kwargs)
        except ValueError as err:
            if isinstance(err, AlignfuseError):
                raise
            # a component refusing an argument's value: the config named it, say which one
            raise ConfigError(f"{self.family} {name!r}: {err}") from err

    def names(self) -> list[str]:
        """Sorted names of every entry."""
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        """Every entry, sorted by name."""
        return [self._entries[k] for k in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


LOSSES: Registry[Any] = Registry("loss")
FUSION: Registry[Any] = Registry("fusion")
INTERACTIONS: Registry[Any] = Registry("interaction")
ENCODERS: Registry[Any] = Registry("encoder")
MODELS: Registry[Any] = Registry("model")
DATASETS: Registry[Any] = Registry("dataset")
METRICS: Registry[Any] = Registry("metric")
TASKS: Registry[Any] = Registry("task")

FAMILIES: dict[str, Registry[Any]] = {
    "losses": LOSSES,
    "fusion": FUSION,
    "interactions": INTERACTIONS,
    "encoders": ENCODERS,
    "models": MODELS,
    "datasets": DATASETS,
    "metrics": METRICS,
    "tasks": TASKS,
}


def create_loss(name: str, **kwargs: Any) -> Any:
    """Build the registered loss ``name``."""
    return LOSSES.create(name, **kwargs)


def list_losses() -> list[str]:
    """Names of the registered losses."""
    return LOSSES.names()


def create_fusion(name: str, **kwargs: Any) -> Any:
    """Build the registered fusion module ``name``."""
    return FUSION.create(name, **kwargs)


def list_fusion() -> list[str]:
    """Names of the registered fusion modules."""
    return FUSION.names()


def create_interaction(name: str, **kwargs: Any) -> Any:
    """Build the registered interaction scorer ``name`` (SCAN, IMRAM, ...)."""
    return INTERACTIONS.create(name, **kwargs)


def list_interactions() -> list[str]:
    """Names of the registered interaction scorers."""
    return INTERACTIONS.names()


def create_encoder(name: str, **kwargs: Any) -> Any:
    """Build the registered encoder ``name``."""
    return ENCODERS.create(name, **kwargs)


def list_encoders() -> list[str]:
    """Names of the registered encoders."""
    return ENCODERS.names()


def create_model(name: str, **kwargs: Any) -> Any:
    """Build the registered model ``name``."""
    return MODELS.create(name, **kwargs)


def list_models() -> list[str]:
    """Names of the registered models."""
    return MODELS.names()


def create_dataset(name: str, **kwargs: Any) -> Any:
    """Build (load or generate) the registered dataset ``name``."""
    return DATASETS.create(name, **kwargs)


def list_datasets() -> list[str]:
    """Names of the registered datasets."""
    return DATASETS.names()


def create_metric(name: str, **kwargs: Any) -> Any:
    """Return the registered metric ``name``: a function of scores and ground truth, with
    ``kwargs`` bound (``create_metric("retrieval", ks=(1, 5))``)."""
    entry = METRICS.get(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return functools.partial(entry.factory, **kwargs) if kwargs else entry.factory


def list_metrics() -> list[str]:
    """Names of the registered metrics."""
    return METRICS.names()


def list_tasks() -> list[str]:
    """Names of the registered tasks (what the one training loop can train)."""
    return TASKS.names()
