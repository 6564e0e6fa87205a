from pathlib import Path

import pytest

from wsloc.config import DEFAULTS, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_demo_config():
    assert load_config(ROOT / "configs" / "demo.yaml") == load_config(None) == DEFAULTS


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_loads(name):
    cfg = load_config(ROOT / "configs" / name)
    assert cfg["model"]["pooling"] in ("lse", "max", "avg", "softpool", "wildcat")


def test_overrides_are_yaml_values():
    cfg = load_config(None, ["train.lr=3e-4", "data.views=[PA]", "data.root=null",
                             "model.learn_r=true", "data.synthetic.n=50"])
    assert cfg["train"]["lr"] == 3e-4 and cfg["data"]["views"] == ["PA"]
    assert cfg["data"]["root"] is None and cfg["model"]["learn_r"] is True
    assert cfg["data"]["synthetic"]["n"] == 50
    assert DEFAULTS["train"]["lr"] == 1e-3  # the defaults are not mutated


def test_unknown_keys_are_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'train.lrr'; valid here: .*lr"):
        load_config(None, ["train.lrr=1"])
    with pytest.raises(ConfigError, match=r"'model' is a section"):
        load_config(None, ["model=resnet"])
    with pytest.raises(ConfigError, match=r"expected a number, got 'fast'"):
        load_config(None, ["train.lr=fast"])
    with pytest.raises(ConfigError, match=r"section.key=value"):
        load_config(None, ["epochs"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.train: unknown key 'epoch'"):
        load_config(bad)
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match=r"not valid YAML"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match=r"config not found"):
        load_config(tmp_path / "missing.yaml")
