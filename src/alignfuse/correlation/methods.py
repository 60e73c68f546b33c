"""The correlation methods by name, for configs and the command line."""

from __future__ import annotations

from typing import Any

from alignfuse.correlation.cca import CCA
from alignfuse.correlation.deep import DCCA, DCCAE
from alignfuse.correlation.kcca import KCCA
from alignfuse.correlation.pls import PLS
from alignfuse.correlation.scm import SCM
from alignfuse.errors import ConfigError
from alignfuse.registry import suggest

METHODS: dict[str, type[Any]] = {
    "cca": CCA,
    "kcca": KCCA,
    "pls": PLS,
    "scm": SCM,
    "dcca": DCCA,
    "dccae": DCCAE,
}


def make_estimator(method: str, n_components: int, args: dict[str, Any]) -> Any:
    """Build a correlation estimator by method name; unknown names and arguments are
    :class:`ConfigError` naming the closest valid one."""
    if method not in METHODS:
        raise ConfigError(
            f"unknown method {method!r}{suggest(method, sorted(METHODS))} "
            f"(known: {', '.join(sorted(METHODS))})"
        )
    try:
        return METHODS[method](n_components=n_components, **args)
    except TypeError as err:
        raise ConfigError(f"method {method!r}: {err}") from None
