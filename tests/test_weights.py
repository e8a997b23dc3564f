"""Loading: tiny random models through the real builders, hub resolution offline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maskadapter.engine.weights import (
    build_clip,
    build_sam2_model,
    build_tiny_random,
    resolve_model_files,
)
from maskadapter.errors import CheckpointError, WeightsNotFoundError
from maskadapter.settings import Settings, add_arguments, settings_from_args

ROOT = Path(__file__).resolve().parent.parent


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_random_is_deterministic_and_round_trips(tiny_files, tiny_models):
    fresh = build_tiny_random("cpu", seed=0)
    assert _same_weights(fresh.sam2, tiny_models.sam2)
    assert _same_weights(fresh.clip, tiny_models.clip)
    assert _same_weights(fresh.adapter, tiny_models.adapter)
    assert not _same_weights(build_tiny_random("cpu", seed=1).adapter, fresh.adapter)
    for module in (tiny_models.sam2, tiny_models.clip, tiny_models.adapter):
        assert not module.training
    assert not tiny_models.real_weights
    assert tiny_files.sam2_checkpoint.is_file() and tiny_files.clip_checkpoint.is_file()


def test_sam2_checkpoint_must_fit_its_config(tiny_files, tmp_path):
    sd = torch.load(tiny_files.sam2_checkpoint, weights_only=True)["model"]
    del sd["no_mem_embed"]
    torch.save({"model": sd}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="missing keys: no_mem_embed"):
        build_sam2_model(tmp_path / "partial.pt", "cpu", tiny_files.sam2_config)
    torch.save(sd, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        build_sam2_model(tmp_path / "bare.pt", "cpu", tiny_files.sam2_config)


def test_clip_checkpoint_loads_strictly(tiny_files, tmp_path):
    sd = torch.load(tiny_files.clip_checkpoint, weights_only=True)
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match="extra.weight"):
        build_clip(tmp_path / "extra.pt", "cpu", tiny_files.clip_model)
    with pytest.raises(WeightsNotFoundError):
        build_clip(tmp_path / "absent.pt", "cpu", tiny_files.clip_model)


def _offline_env(tmp_path) -> dict:
    # an empty hub cache and an endpoint nobody listens on
    return {
        "HF_HOME": str(tmp_path / "hf"),
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def test_default_models_fail_fast_offline(tmp_path):
    """With no network and no local files the default path fails at once: one
    connection attempt (the hub probe, with a short timeout), no download, and a
    message naming the files to fetch and the flags for local copies."""
    code = (
        f"import json, socket, sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "import huggingface_hub\n"
        "connects, downloads = [], []\n"
        "connect = socket.socket.connect\n"
        "def counted(self, address):\n"
        "    connects.append([list(address)[:2], self.gettimeout()])\n"
        "    return connect(self, address)\n"
        "socket.socket.connect = counted\n"
        "def download(*args, **kwargs):\n"
        "    downloads.append([str(a) for a in args])\n"
        "    raise OSError('no network')\n"
        "huggingface_hub.hf_hub_download = download\n"
        "from maskadapter.engine.segmenter import Segmenter\n"
        "from maskadapter.settings import settings_from_args\n"
        "try:\n"
        "    Segmenter.from_settings(settings_from_args(env={}))\n"
        "except Exception as e:\n"
        "    print(type(e).__name__); print(e)\n"
        "print('CALLS', json.dumps({'connects': connects, 'downloads': downloads}))\n"
    )
    env = {**os.environ, **_offline_env(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    text = out.stdout
    assert text.startswith("WeightsNotFoundError"), out.stdout + out.stderr[-2000:]
    calls = json.loads(text.split("CALLS")[1])
    assert calls["downloads"] == []  # nothing tried file by file
    ((address, timeout),) = calls["connects"]  # one probe of the endpoint nobody listens on
    assert address == ["127.0.0.1", 9]
    assert timeout is not None and 0 < timeout <= 5  # a probe that cannot hang
    for needle in [
        "facebook/sam2.1-hiera-large",
        "sam2.1_hiera_large.pt",
        "--sam-checkpoint",
        "laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup",
        "--clip-checkpoint",
        "owl10/Mask-Adapter",
        "fcclip_convnext_large_maskadapter.pth",
        "--adapter-checkpoint",
        "MASKADAPTER_SAM_CHECKPOINT",
        "--tiny-random",
    ]:
        assert needle in text


def test_local_files_need_no_hub(tiny_files, tmp_path, monkeypatch):
    for key, value in _offline_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    settings = Settings(
        sam_checkpoint=str(tiny_files.sam2_checkpoint),
        sam_config=str(tiny_files.sam2_config),
        clip_model=tiny_files.clip_model,
        clip_checkpoint=str(tiny_files.clip_checkpoint),
        adapter_checkpoint=str(tiny_files.adapter_checkpoint),
    )
    import maskadapter.engine.weights as weights

    def no_hub():
        raise AssertionError("the hub was probed although every file is local")

    monkeypatch.setattr(weights, "_hub_reachable", no_hub)
    files = resolve_model_files(settings)
    assert files.adapter_checkpoint == tiny_files.adapter_checkpoint
    assert files.sam2_checkpoint == tiny_files.sam2_checkpoint


def test_only_missing_files_are_named(tiny_files, tmp_path, monkeypatch):
    for key, value in _offline_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    settings = Settings(adapter_checkpoint=str(tiny_files.adapter_checkpoint))
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_model_files(settings)
    assert "--sam-checkpoint" in str(err.value) and "--adapter-checkpoint" not in str(err.value)
    with pytest.raises(WeightsNotFoundError, match="no such file"):
        resolve_model_files(Settings(adapter_checkpoint=str(tmp_path / "nope.pth")))


def test_settings_flags_over_env_over_defaults():
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser, app=True)
    env = {
        "MASKADAPTER_DEVICE": "cpu",
        "MASKADAPTER_SHORT_SIDE": "512",
        "MASKADAPTER_TINY_RANDOM": "yes",
        "MASKADAPTER_PORT": "7999",
    }
    s = settings_from_args(parser.parse_args(["--short-side", "640", "--sam-size", "tiny"]), env)
    assert (s.device, s.short_side, s.tiny_random, s.sam_size, s.port) == ("cpu", 640, True, "tiny", 7999)
    assert settings_from_args(None, {}).sam_size == "large"
    from maskadapter.errors import InputError

    with pytest.raises(InputError, match="MASKADAPTER_TINY_RANDOM"):
        settings_from_args(None, {"MASKADAPTER_TINY_RANDOM": "maybe"})
    with pytest.raises(InputError, match="sam_size"):
        Settings(sam_size="huge")
