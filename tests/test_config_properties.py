"""Property-based: random keys, values and YAML through the config loader and the command
line. Every failure is an ``AlignfuseError`` whose message is one line; nothing else escapes."""

from __future__ import annotations

import tempfile
from dataclasses import fields, is_dataclass
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignfuse.cli import main
from alignfuse.config import ExperimentConfig, load_config
from alignfuse.engine.fit import check_settings
from alignfuse.errors import AlignfuseError


def _keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    for f in fields(cls):
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            out += _keys(type(default), f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


KEYS = _keys(ExperimentConfig)
key = st.one_of(
    st.sampled_from(KEYS),
    st.text(st.characters(codec="ascii", categories=["L", "N", "P"]), min_size=1, max_size=12),
)
scalar = st.one_of(
    st.integers(-10, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
)
value_text = st.one_of(
    scalar.map(lambda v: yaml.safe_dump(v).removesuffix("\n...\n").strip()),
    st.text(max_size=12),  # anything a person may type, broken YAML included
    st.lists(scalar, max_size=3).map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()),
)


def _one_line_or_ok(fn) -> None:
    try:
        fn()
    except AlignfuseError as err:
        assert "\n" not in str(err).strip(), str(err)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(key, value_text), min_size=1, max_size=4))
def test_overrides_load_or_fail_in_one_named_line(pairs) -> None:
    overrides = [f"{k}={v}" for k, v in pairs]

    def load() -> None:
        check_settings(load_config(None, overrides))

    _one_line_or_ok(load)


yaml_tree = st.recursive(
    scalar,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(key, st.text(max_size=6)), children, max_size=4),
    ),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(yaml_tree.map(lambda t: yaml.safe_dump(t)), st.text(max_size=60)))
def test_config_files_load_or_fail_in_one_named_line(text) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "cfg.yaml"
        path.write_text(text)
        _one_line_or_ok(lambda: check_settings(load_config(path)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(yaml_tree.map(lambda t: yaml.safe_dump(t)), st.text(max_size=60)),
    st.lists(st.tuples(key, value_text), max_size=2),
)
def test_the_cli_never_shows_a_traceback(text, pairs) -> None:
    import contextlib
    import io

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "cfg.yaml"
        path.write_text(text)
        # the dataset does not exist: whatever else passes, nothing trains
        args = [
            "train",
            str(path),
            *[f"{k}={v}" for k, v in pairs],
            "data.name=__none__",
            "--out",
            str(Path(d) / "run"),
        ]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(args)
            except SystemExit as exit_:  # argparse's own usage errors
                code = exit_.code
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        assert code == 2, err.getvalue()
        assert "Traceback" not in err.getvalue()
        assert lines and "error:" in lines[-1], err.getvalue()  # one line says what is wrong
