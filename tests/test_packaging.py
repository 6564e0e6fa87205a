"""The wheel a user installs carries every subpackage and the shipped configs."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from wsloc.config import find_config, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def unpacked_wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                           str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = out.glob("wsloc-*.whl")
    site = out / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    return site


def test_wheel_holds_every_subpackage_and_config(unpacked_wheel):
    packages = {p.parent.relative_to(ROOT / "wsloc") for p in (ROOT / "wsloc").rglob(
        "__init__.py")}
    for package in packages:
        assert (unpacked_wheel / "wsloc" / package / "__init__.py").is_file(), package
    shipped = sorted(p.name for p in (unpacked_wheel / "wsloc" / "configs").glob("*.yaml"))
    assert shipped == sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))


def test_installed_wheel_finds_configs_by_name(unpacked_wheel, tmp_path):
    code = ("import wsloc, json; from wsloc.config import find_config, load_config;"
            "cfg = load_config('chestxray8_resnet50_lse', ['train.epochs=2']);"
            "print(json.dumps([wsloc.__file__, str(find_config('demo.yaml')), "
            "cfg['model']['backbone'], cfg['train']['epochs']]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, env={"PYTHONPATH": str(unpacked_wheel),
                                             "PATH": "/usr/bin:/bin"}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    module, demo, backbone, epochs = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(module).is_relative_to(unpacked_wheel)  # not the checkout
    assert Path(demo) == unpacked_wheel / "wsloc" / "configs" / "demo.yaml"
    assert (backbone, epochs) == ("resnet50", 2)


def test_config_by_name_in_a_checkout(tmp_path):
    assert find_config("chestxray8_resnet50_max") == ROOT / "configs" / (
        "chestxray8_resnet50_max.yaml")
    assert load_config("chestxray8_resnet50_max")["model"]["pooling"] == "max"
    own = tmp_path / "mine.yaml"
    own.write_text("train:\n  epochs: 3\n")
    assert load_config(own)["train"]["epochs"] == 3  # a path wins
    with pytest.raises(FileNotFoundError, match=r"config not found: nope .*shipped: .*demo"):
        load_config("nope")
