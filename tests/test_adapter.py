"""The adapter head: official layout, strict loading of head-only and full-model files."""

import json
from pathlib import Path

import pytest
import torch

import maskadapter
from maskadapter.engine.weights import build_adapter
from maskadapter.errors import CheckpointError
from maskadapter.modeling import MaskAdapterHead

SPEC = Path(__file__).resolve().parent.parent.parent / "shared" / "spec" / "adapter_state_dict.json"
OFFICIAL_SHAPES = {
    # the 43 tensors of the official head (copy of ../shared/spec/adapter_state_dict.json,
    # so the test also runs where shared/ is absent)
    **{
        f"cnext{i}.{k}": s
        for i in (1, 2, 3)
        for k, s in {
            "gamma": [768],
            "dwconv.weight": [768, 1, 7, 7],
            "dwconv.bias": [768],
            "norm.weight": [768],
            "norm.bias": [768],
            "pwconv1.weight": [3072, 768],
            "pwconv1.bias": [3072],
            "pwconv2.weight": [768, 3072],
            "pwconv2.bias": [768],
        }.items()
    },
    "fuse.weight": [768, 768, 1, 1],
    "fuse.bias": [768],
    "norm.weight": [768],
    "norm.bias": [768],
    "final.weight": [16, 768, 1, 1],
    "final.bias": [16],
    "mask_downscaling.0.weight": [4, 1, 3, 3],
    "mask_downscaling.0.bias": [4],
    "mask_downscaling.1.weight": [4],
    "mask_downscaling.1.bias": [4],
    "mask_downscaling.3.weight": [16, 4, 3, 3],
    "mask_downscaling.3.bias": [16],
    "mask_downscaling.4.weight": [16],
    "mask_downscaling.4.bias": [16],
    "mask_downscaling.6.weight": [768, 16, 1, 1],
    "mask_downscaling.6.bias": [768],
}


def test_default_head_has_the_official_keys_and_shapes():
    head = maskadapter.MaskAdapterHead()
    shapes = {k: list(v.shape) for k, v in head.state_dict().items()}
    assert 14.85e6 < sum(p.numel() for p in head.parameters()) < 14.95e6  # "about 14.9 M"
    assert len(OFFICIAL_SHAPES) == 43
    assert shapes == OFFICIAL_SHAPES
    if SPEC.exists():
        assert shapes == json.loads(SPEC.read_text())


def test_forward_shape_and_mask_major_order():
    torch.manual_seed(0)
    head = MaskAdapterHead(clip_dim=24, num_channels=16, mask_in_chans=8, num_output_maps=3).eval()
    dense = torch.randn(2, 24, 5, 7)
    masks = (torch.rand(2, 4, 160, 224) > 0.5).float()
    out = head(dense, masks)
    assert out.shape == (2, 4 * 3, 5, 7)
    # the maps of mask j are channels 3j..3j+2 and depend on mask j only
    alone = head(dense[1:], masks[1:, 2:3])
    torch.testing.assert_close(out[1:, 6:9], alone, rtol=1e-5, atol=1e-5)


def _small_head() -> MaskAdapterHead:
    torch.manual_seed(1)
    return MaskAdapterHead(clip_dim=32, num_channels=16, mask_in_chans=8, num_output_maps=2)


def _assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0)


def test_head_only_file_loads_strictly(tmp_path):
    head = _small_head()
    torch.save(head.state_dict(), tmp_path / "head.pth")
    loaded = build_adapter(tmp_path / "head.pth", "cpu")
    assert not loaded.training
    assert (loaded.clip_dim, loaded.num_output_maps) == (32, 2)
    _assert_same(head, loaded)


def test_full_model_file_wrapped_and_prefixed_loads(tmp_path):
    head = _small_head()
    full = {f"mask_adapter.{k}": v for k, v in head.state_dict().items()}
    full["backbone.clip_model.logit_scale"] = torch.tensor(4.6)  # other parts of the full model
    full["void_embedding.weight"] = torch.randn(1, 32)
    torch.save({"model": full, "iteration": 5}, tmp_path / "full.pth")
    _assert_same(head, build_adapter(tmp_path / "full.pth", "cpu"))
    torch.save(full, tmp_path / "full_unwrapped.pth")
    _assert_same(head, build_adapter(tmp_path / "full_unwrapped.pth", "cpu"))


def test_default_size_head_file_loads(tmp_path):
    head = MaskAdapterHead()
    torch.save(head.state_dict(), tmp_path / "official_layout.pth")
    loaded = build_adapter(tmp_path / "official_layout.pth", "cpu")
    assert (loaded.clip_dim, loaded.num_output_maps) == (768, 16)
    _assert_same(head, loaded)


def test_missing_keys_are_named(tmp_path):
    sd = _small_head().state_dict()
    del sd["cnext2.gamma"], sd["final.bias"]
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as err:
        build_adapter(tmp_path / "broken.pth", "cpu")
    assert "missing keys" in str(err.value)
    assert "cnext2.gamma" in str(err.value) and "final.bias" in str(err.value)


def test_unrelated_file_fails_clearly(tmp_path):
    torch.save({"model": {"encoder.weight": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: cnext1.*\(\+31 more\); unexpected keys: encoder.weight"):
        build_adapter(tmp_path / "other.pth", "cpu")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        build_adapter(tmp_path / "garbage.pth", "cpu")
