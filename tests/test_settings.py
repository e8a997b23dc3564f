"""Settings.from_env (environment over defaults, keyword overrides over both) and the
package's data files found through maskadapter.resources in a checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from maskadapter.errors import InputError
from maskadapter.resources import CHECKOUT_DIRS, PACKAGE_DIR, package_path
from maskadapter.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _clear_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MASKADAPTER_"):
            monkeypatch.delenv(name)


def test_from_env_in_a_fresh_interpreter(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASKADAPTER_")}
    env.update(MASKADAPTER_TINY_RANDOM="1", MASKADAPTER_SAM_SIZE="small", PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", "from maskadapter import Settings; print(Settings.from_env())"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "tiny_random=True" in out.stdout and "sam_size='small'" in out.stdout


def test_from_env_precedence(monkeypatch):
    _clear_env(monkeypatch)
    assert Settings.from_env() == Settings()
    s = Settings.from_env()  # the documented defaults (docs/settings.md), the detectron2 input preset
    assert (s.sam_size, s.tiny_random, s.device, s.precision) == ("large", False, "auto", "auto")
    assert (s.input_size, s.short_side, s.max_size) == ("detectron2", 800, 1333)
    monkeypatch.setenv("MASKADAPTER_SAM_SIZE", "small")
    monkeypatch.setenv("MASKADAPTER_SHORT_SIDE", "512")
    monkeypatch.setenv("MASKADAPTER_SAM_CHECKPOINT", "/models/sam.pt")
    s = Settings.from_env()
    assert (s.sam_size, s.short_side, s.sam_checkpoint) == ("small", 512, "/models/sam.pt")
    assert s.max_size == 1333  # the preset fills what the environment leaves out
    s = Settings.from_env(sam_size="tiny", short_side=640, sam_checkpoint=None, input_size="eval896")
    assert (s.sam_size, s.short_side, s.sam_checkpoint, s.max_size) == ("tiny", 640, None, 896)


def test_from_env_errors(monkeypatch):
    _clear_env(monkeypatch)
    with pytest.raises(InputError, match=r"'sam_sise' \(did you mean 'sam_size'\?\)"):
        Settings.from_env(sam_sise="tiny")
    with pytest.raises(InputError, match="'nonsense'"):
        Settings.from_env(nonsense=1)
    monkeypatch.setenv("MASKADAPTER_TINY_RANDOM", "maybe")
    with pytest.raises(InputError, match="MASKADAPTER_TINY_RANDOM"):
        Settings.from_env()
    assert Settings.from_env(tiny_random=True).tiny_random  # an override skips the bad variable
    monkeypatch.setenv("MASKADAPTER_SHORT_SIDE", "big")
    with pytest.raises(InputError, match="MASKADAPTER_SHORT_SIDE must be an integer"):
        Settings.from_env(tiny_random=True)
    with pytest.raises(InputError, match="sam_size must be one of"):
        Settings.from_env(tiny_random=True, short_side=256, sam_size="huge")


def test_missing_weights_advice_names_from_env(tmp_path, monkeypatch):
    from maskadapter.engine.weights import _fetch, _HubFile
    from maskadapter.errors import WeightsNotFoundError

    monkeypatch.setattr("maskadapter.engine.weights._cached", lambda entry: None)
    monkeypatch.setattr("maskadapter.engine.weights._hub_reachable", lambda: False)
    entry = _HubFile("SAM-2.1 large", "facebook/sam2.1-hiera-large", ("sam2.1_hiera_large.pt",), "--sam-checkpoint")
    with pytest.raises(WeightsNotFoundError) as err:
        _fetch({"sam2": (None, entry)}, None)
    assert "MASKADAPTER_SAM_CHECKPOINT=PATH" in str(err.value) and "Settings.from_env()" in str(err.value)


def test_package_data_found_in_checkout():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    mapped = {name.removeprefix("maskadapter."): path for name, path in config["package-dir"].items()}
    assert mapped == CHECKOUT_DIRS  # the helper and the build agree on where each directory lives
    for package, patterns in config["package-data"].items():
        parts = package.split(".")[1:]
        for pattern in patterns:
            directory = package_path(*parts) if parts else PACKAGE_DIR
            assert list(directory.glob(pattern)), f"{package}: nothing matches {pattern} in {directory}"
    assert package_path("sam2_configs", "sam2.1_hiera_tiny_random.yaml") == (
        ROOT / "sam2_configs" / "sam2.1_hiera_tiny_random.yaml"
    )
    assert package_path("vocabularies").is_dir() and package_path("py.typed").is_file()
