"""The ray batch engine (Ray Data actors) on a local one-CPU Ray instance (one actor): the same label
maps as the local engine, a corrupt image recorded as failed (exit 3). Ray is a dev
requirement (requirements-dev.txt): without it this test fails rather than skips."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image
from test_batch import _common, tree  # noqa: F401  (the fixture)

from maskadapter.cli import batch, common


@pytest.mark.slow
def test_ray_engine_matches_local(tree, tmp_path, monkeypatch, capsys):  # noqa: F811
    import ray

    monkeypatch.setenv("RAY_DISABLE_USAGE_STATS", "1")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    local_out, ray_out = tmp_path / "local", tmp_path / "ray"
    assert batch.main([str(tree), "--out", str(local_out), *_common(tmp_path)]) == 3
    capsys.readouterr()

    ray_args = ["--engine", "ray", "--ray-cpus", "1", "--ray-actors", "1", "--ray-batch-size", "1"]
    code = batch.main([str(tree), "--out", str(ray_out), *ray_args, *_common(tmp_path)])
    err = capsys.readouterr().err
    assert code == common.EXIT_PARTIAL == 3, err[-3000:]
    assert not ray.is_initialized()  # the engine started Ray, so it shut it down

    summary = json.loads((ray_out / "summary.json").read_text())
    assert summary["engine"] == "ray"
    assert summary["counts"] == {"images": 4, "labelled": 3, "skipped": 0, "failed": 1}
    assert [f["file"] for f in summary["failed"]] == ["broken.png"]
    reason = summary["failed"][0]["reason"]
    assert "cannot read image" in reason and "not an image file" in reason and "\n" not in reason
    local_summary = json.loads((local_out / "summary.json").read_text())
    assert summary["done"] == local_summary["done"]  # same order, same segment counts
    for stem in ("chelsea", "sub/coffee", "sub/deeper/cat2"):
        ours = np.asarray(Image.open(ray_out / f"{stem}_labels.png"))
        theirs = np.asarray(Image.open(local_out / f"{stem}_labels.png"))
        assert np.array_equal(ours, theirs), stem
        data = json.loads((ray_out / f"{stem}_segments.json").read_text())
        assert data["batch"]["fingerprint"] == summary["settings"]["fingerprint"]
    assert not list(ray_out.rglob("*.tmp"))

    # resume works across engines: the local engine finds the ray engine's outputs done
    assert batch.main([str(tree), "--out", str(ray_out), *_common(tmp_path)]) == 3
    assert json.loads((ray_out / "summary.json").read_text())["counts"]["skipped"] == 3


def test_ray_flags_are_checked(tmp_path, capsys):
    common = ["--vocab", "cat", "--out", str(tmp_path / "out"), "--engine", "ray", str(tmp_path)]
    assert batch.main([*common, "--ray-actors", "0"]) == 2
    assert "--ray-actors must be at least 1" in capsys.readouterr().err
    assert batch.main([*common, "--ray-gpus-per-actor", "-1"]) == 2
    assert "--ray-gpus-per-actor must be 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_ray_missing_is_a_clear_error(tree, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    out = tmp_path / "out"
    assert batch.main([str(tree), "--engine", "ray", "--out", str(out), *_common(tmp_path)]) == common.EXIT_ERROR == 2
    assert "the ray engine needs Ray Data: pip install 'ray[data]'" in capsys.readouterr().err
    assert not out.exists()  # nothing run, nothing written
