import pytest
import yaml

from alignfuse.config import ExperimentConfig, config_hash, load_config, save_config, to_dict
from alignfuse.errors import ConfigError


def test_defaults_and_overrides():
    cfg = load_config(None, ["model.embed_dim=64", "train.lr=0.01", "loss.args={margin: 0.1}"])
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.model.embed_dim == 64 and cfg.train.lr == 0.01
    assert cfg.loss.args == {"margin": 0.1}


def test_yaml_file_then_overrides(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_text("name: x\nmodel: {embed_dim: 32}\ntrain: {epochs: 5}\n")
    cfg = load_config(p, ["train.epochs=3"])
    assert (cfg.name, cfg.model.embed_dim, cfg.train.epochs) == ("x", 32, 3)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.embd_dim=3", "unknown config key 'model.embd_dim'; did you mean 'model.embed_dim'"),
        ("trian.epochs=3", "unknown config key 'trian.epochs'; did you mean 'train.epochs'"),
        ("train.epochs=three", "'train.epochs' expects an integer"),
        ("train.epochs", "must look like key.sub=value"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_unknown_key_in_yaml(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_text("model: {embed_dimm: 32}\n")
    with pytest.raises(ConfigError, match="did you mean 'model.embed_dim'"):
        load_config(p)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_saved_config_round_trips_and_hash_is_stable(tmp_path):
    cfg = load_config(None, ["name=abc", "model.embed_dim=48"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert to_dict(again) == to_dict(cfg)
    assert config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(None, ["model.embed_dim=49"])) != config_hash(cfg)
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["model"]["embed_dim"] == 48


@pytest.mark.parametrize(("raw", "want"), [("1e-3", 1e-3), ("3E+2", 300.0), ("-.5", -0.5)])
def test_numbers_yaml_reads_as_strings_are_numbers(raw, want):
    # YAML 1.1 reads 1e-3 (no dot) as a string; a person wrote a number
    assert load_config(None, [f"train.lr={raw}"]).train.lr == want
    with pytest.raises(ConfigError, match="expects a number, got 'fast'"):
        load_config(None, ["train.lr=fast"])
