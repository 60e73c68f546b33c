import pytest

import alignfuse
from alignfuse.errors import ConfigError
from alignfuse.registry import FAMILIES, Registry


def test_every_family_listed_and_documented():
    assert set(FAMILIES) == {
        "losses",
        "fusion",
        "interactions",
        "encoders",
        "models",
        "datasets",
        "metrics",
        "tasks",
    }
    for reg in FAMILIES.values():
        for entry in reg.entries():
            assert entry.summary, f"{reg.family} {entry.name} has no docstring"


def test_create_and_list():
    assert {"info_nce", "triplet"} <= set(alignfuse.list_losses())
    assert {"cnn", "vit", "bigru", "transformer", "minilm"} <= set(alignfuse.list_encoders())
    assert "shapes" in alignfuse.list_datasets() and "captions" in alignfuse.list_datasets()
    loss = alignfuse.create_loss("triplet", margin=0.3, mining="hardest")
    assert loss.margin == 0.3 and loss.mining == "hardest"


def test_none_kwargs_fall_back_to_component_defaults():
    loss = alignfuse.create_loss("triplet", margin=None)
    assert loss.margin == 0.2


def test_unknown_name_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean 'info_nce'"):
        alignfuse.create_loss("info_nc")


def test_unknown_argument_names_valid_ones():
    with pytest.raises(ConfigError, match="has no argument 'marginn'; did you mean 'margin'"):
        alignfuse.create_loss("triplet", marginn=0.1)


def test_double_registration_is_an_error():
    reg: Registry[object] = Registry("thing")
    reg.register("x")(object)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("x")(object)


def test_every_registered_dataset_is_listed_after_a_plain_import():
    import subprocess
    import sys

    code = "import alignfuse; print(alignfuse.list_datasets())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    for name in ("digits_twoview", "twoview_files", "clips", "spider", "spider_linking"):
        assert name in out.stdout


def test_list_summaries_are_whole_sentences():
    from alignfuse.registry import _first_line

    def f():
        """Noisy two-view digits (Wang et al. 2015 protocol on
        8x8 digits). More text."""

    assert _first_line(f) == "Noisy two-view digits (Wang et al. 2015 protocol on 8x8 digits)."
