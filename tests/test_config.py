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


@pytest.mark.parametrize("override,message", [
    ("train.epochs=-1", r"train.epochs must be an int >= 1, got -1"),
    ("train.epochs=0", r"train.epochs must be an int >= 1, got 0"),
    ("train.batch_size=0", r"train.batch_size must be an int >= 1"),
    ("train.lr=0", r"train.lr must be a number > 0, got 0.0"),
    ("data.image_size=abc", r"data.image_size must be an int >= 32, got 'abc'"),
    ("data.num_workers=-2", r"data.num_workers must be an int >= 0"),
    ("data.val_fraction=0.9", r"data.val_fraction must be a number in \[0, 0.8\)"),
    ("model.r=-1", r"model.r must be a number > 0 or a list of them"),
    ("model.r=[10, 0]", r"model.r must be a number > 0 or a list of them"),
    ("model.r=[]", r"model.r must be a number > 0 or a list of them"),
    ("train.background_weight=-0.5", r"train.background_weight must be a number >= 0"),
])
def test_impossible_values_are_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_r_may_be_a_list_of_sharpnesses():
    assert load_config(None, ["model.r=[10, 4]"])["model"]["r"] == [10, 4]
