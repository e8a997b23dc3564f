"""PointDecoder (the automatic generator's mask decoder) against sam2's own
``MaskDecoder.forward(..., repeat_image=True)`` on the same weights and image.

Precision: float32 for the equivalence (the regrouped arithmetic agrees to float
rounding); bf16 forced for the low-precision path, checked with margins."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskadapter.engine import point_decoder
from maskadapter.engine.point_decoder import PointDecoder, prompts_per_call
from maskadapter.engine.predictor import CachingPredictor
from maskadapter.engine.sam2_internals import image_features


@pytest.fixture(scope="module")
def features(tiny_models):
    rng = np.random.default_rng(3)
    image = (rng.random((120, 170, 3)) * 255).astype(np.uint8)
    predictor = CachingPredictor(tiny_models.sam2, {})
    predictor.set_image(image)
    return image_features(predictor)


def _sam2s(sam, features, coords: torch.Tensor, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """sam2's prompt encoder and mask decoder, as its predictor calls them for a batch of
    one-point prompts on one image."""
    labels = torch.ones(len(coords), 1, dtype=torch.int)
    sparse, dense = sam.sam_prompt_encoder(points=(coords[:, None], labels), boxes=None, masks=None)
    low_res, iou, _, _ = sam.sam_mask_decoder(
        image_embeddings=features["image_embed"][-1:],
        image_pe=sam.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
        repeat_image=True,
        high_res_features=[level[-1:] for level in features["high_res_feats"]],
    )
    return low_res, iou


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("count", [1, 5])
@torch.inference_mode()
def test_float32_equals_sam2s_decoder(tiny_models, features, multimask, count):
    sam = tiny_models.sam2
    coords = torch.tensor([[100.0, 900.0], [512.0, 512.0], [3.0, 7.0], [1000.0, 20.0], [640.0, 300.0]])[:count]
    want, want_iou = _sam2s(sam, features, coords, multimask)
    got, got_iou = PointDecoder(sam, features).decode(coords, multimask)
    assert got.shape == want.shape == (count, 3 if multimask else 1, 256, 256)
    assert got.dtype == torch.float32 and got_iou.dtype == torch.float32
    scale = float(want.abs().max())
    assert scale > 0.01  # the masks are not trivially zero
    torch.testing.assert_close(got, want, atol=1e-5 * scale, rtol=0)
    torch.testing.assert_close(got_iou, want_iou, atol=1e-5, rtol=0)
    # pixels whose sign differs sit within rounding of 0
    differs = (got > 0) != (want > 0)
    assert bool((want[differs].abs() <= 1e-5 * scale).all())


@torch.inference_mode()
def test_bf16_stays_close_to_float32(tiny_models, features):
    """bf16 weights (cast once) and activations: logits within a few bf16 steps of the
    float32 decoder's, and the same sign wherever float32's is clear."""
    sam = tiny_models.sam2
    coords = torch.tensor([[100.0, 900.0], [512.0, 512.0], [640.0, 300.0]])
    want, want_iou = _sam2s(sam, features, coords, True)
    decoder = PointDecoder(sam, features, torch.bfloat16)
    got, got_iou = decoder.decode(coords)
    assert got.dtype == torch.bfloat16
    scale = float(want.abs().max())
    assert float((got.float() - want).abs().max()) < 0.05 * scale
    assert float((got_iou - want_iou).abs().max()) < 0.02
    clear = want.abs() > 0.05 * scale
    assert bool(((got.float() > 0) == (want > 0))[clear].all())
    # the cast copy is made once per decoder and dtype, and the model's weights stay float32
    assert PointDecoder(sam, features, torch.bfloat16).dec is decoder.dec
    assert decoder.dec is not sam.sam_mask_decoder
    assert all(p.dtype == torch.float32 for p in sam.sam_mask_decoder.parameters())


def test_prompts_per_call_is_measured_once_and_bounded(tiny_models, features, monkeypatch):
    calls = []
    decode = PointDecoder.decode

    def counted(self, coords, multimask=True):
        calls.append(len(coords))
        return decode(self, coords, multimask)

    monkeypatch.setattr(PointDecoder, "decode", counted)
    monkeypatch.setattr(point_decoder, "_chosen", {})
    chosen = prompts_per_call(tiny_models.sam2, features, None, 64)
    assert chosen in point_decoder.PROBE_SIZES["cpu"]
    assert calls == [1, *point_decoder.PROBE_SIZES["cpu"]]  # a warm-up, then each size once
    calls.clear()
    assert prompts_per_call(tiny_models.sam2, features, None, 64) == chosen
    assert prompts_per_call(tiny_models.sam2, features, None, 1) == 1  # never above the limit
    assert calls == []  # cached for the device, dtype and thread count


def test_the_first_layers_image_side_is_not_computed_per_prompt(tiny_models, features):
    """Per prompt, PointDecoder counts fewer FLOPs than sam2's decoder by at least the
    first layer's three image-side projections (computed once per image here). Its
    image-to-token attention runs as two products, which the counter sees (sam2's fused
    kernel it does not see on a CPU): those are added to sam2's count."""
    from torch.utils.flop_counter import FlopCounterMode

    from maskadapter.cli.benchmark_rate import decoder_flops_per_prompt

    sam = tiny_models.sam2
    coords = torch.tensor([[100.0, 200.0], [300.0, 700.0], [900.0, 50.0], [512.0, 512.0]])
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        _sam2s(sam, features, coords, True)
    theirs = counter.get_total_flops() // len(coords)
    first = sam.sam_mask_decoder.transformer.layers[0].cross_attn_token_to_image
    tokens = features["image_embed"].shape[-1] ** 2
    projection = 2 * tokens * first.embedding_dim * first.internal_dim  # one (N, C) @ (C, C') product
    decoder = sam.sam_mask_decoder
    n_tokens = 1 + decoder.num_mask_tokens + int(decoder.pred_obj_scores) + 2  # output tokens, a point, a pad
    layers = len(decoder.transformer.layers)
    attention = layers * 2 * (2 * tokens * n_tokens * first.internal_dim)  # scores and weighted sum, per layer
    ours = decoder_flops_per_prompt(sam, features, None)
    assert 0 < ours <= theirs + attention - 3 * projection
