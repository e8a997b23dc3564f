"""Section 3 of the spec recomputed independently, step by step, against the contract API.

The reference below uses only the checkpoint tensors, torch.nn.functional and the
open_clip/timm modules themselves; it never calls maskadapter helpers.
"""

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

import maskadapter
from maskadapter.engine.clip_features import encode_text
from maskadapter.engine.weights import TINY_CLIP_NAME, build_clip

SYNONYM_CLASSES = [["cat", "kitten"], "table", ["cup", "mug", "coffee cup"], "wall"]


def _layernorm_channels(x, weight, bias, eps):
    # x (C, H, W): normalise over C at each pixel
    mean = x.mean(0, keepdim=True)
    var = ((x - mean) ** 2).mean(0, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight[:, None, None] + bias[:, None, None]


def reference_adapter(sd, dense, mask, num_maps):
    """One mask (H, W) and dense features (D, h, w) -> (num_maps, h, w), from the state dict."""
    D, h, w = dense.shape
    m = F.interpolate(mask[None, None], size=(4 * h, 4 * w), mode="bilinear", align_corners=False)[0]
    m = F.conv2d(m[None], sd["mask_downscaling.0.weight"], sd["mask_downscaling.0.bias"], stride=2, padding=1)[0]
    m = F.gelu(_layernorm_channels(m, sd["mask_downscaling.1.weight"], sd["mask_downscaling.1.bias"], 1e-6))
    m = F.conv2d(m[None], sd["mask_downscaling.3.weight"], sd["mask_downscaling.3.bias"], stride=2, padding=1)[0]
    m = F.gelu(_layernorm_channels(m, sd["mask_downscaling.4.weight"], sd["mask_downscaling.4.bias"], 1e-6))
    m = F.conv2d(m[None], sd["mask_downscaling.6.weight"], sd["mask_downscaling.6.bias"])[0]
    x = F.conv2d((dense + m)[None], sd["fuse.weight"], sd["fuse.bias"])[0]
    C = x.shape[0]
    for name in ("cnext1", "cnext2", "cnext3"):
        y = F.conv2d(x[None], sd[f"{name}.dwconv.weight"], sd[f"{name}.dwconv.bias"], padding=3, groups=C)[0]
        y = y.permute(1, 2, 0)
        y = F.layer_norm(y, (C,), sd[f"{name}.norm.weight"], sd[f"{name}.norm.bias"], eps=1e-6)
        y = F.linear(
            F.gelu(F.linear(y, sd[f"{name}.pwconv1.weight"], sd[f"{name}.pwconv1.bias"])),
            sd[f"{name}.pwconv2.weight"],
            sd[f"{name}.pwconv2.bias"],
        )
        x = x + (sd[f"{name}.gamma"] * y).permute(2, 0, 1)
    x = F.layer_norm(x.permute(1, 2, 0), (C,), sd["norm.weight"], sd["norm.bias"], eps=1e-5).permute(2, 0, 1)
    return F.conv2d(x[None], sd["final.weight"], sd["final.bias"])[0]


def reference_text_embeddings(model, tokenizer, classes, templates):
    rows, owners = [], []
    for c, item in enumerate(classes):
        for name in [item] if isinstance(item, str) else item:
            per_template = []
            for template in templates:
                e = model.encode_text(tokenizer([template.format(name)]))[0]
                per_template.append(e / e.norm())
            mean = torch.stack(per_template).mean(0)
            rows.append(mean / mean.norm())
            owners.append(c)
    return torch.stack(rows), owners


def reference_logits(model, adapter, image, masks, text, owners):
    """(N, C) logits for one image (3, H, W) and masks (N, H, W)."""
    visual = model.visual
    trunk = visual.trunk
    raw = trunk.forward_features(image[None])[0]  # (Ct, h, w): stem, stages, norm_pre
    Ct, h, w = raw.shape
    # dense features: every position through the head's norm and the projection
    dense = torch.zeros(text.shape[1], h, w)
    normed = _layernorm_channels(raw, trunk.head.norm.weight, trunk.head.norm.bias, trunk.head.norm.eps)
    for i in range(h):
        for j in range(w):
            dense[:, i, j] = visual.head(normed[:, i, j][None])[0]
    sd = adapter.state_dict()
    num_maps = sd["final.weight"].shape[0]
    scale = min(math.exp(model.logit_scale.item()), 100.0)
    num_classes = max(owners) + 1
    out = torch.empty(len(masks), num_classes)
    for n, mask in enumerate(masks):
        maps = reference_adapter(sd, dense, mask, num_maps)
        maps = F.interpolate(maps[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        vectors = []
        for k in range(num_maps):
            weights = torch.softmax(F.logsigmoid(maps[k]).flatten(), dim=0).reshape(h, w)
            pooled = (raw * weights).sum(dim=(1, 2))  # (Ct,)
            vectors.append(visual.head(trunk.forward_head(pooled[None, :, None, None]))[0])
        embedding = torch.stack(vectors).mean(0)
        cos = (embedding / embedding.norm()) @ text.T  # (K,)
        for c in range(num_classes):
            out[n, c] = scale * max(cos[k] for k in range(len(owners)) if owners[k] == c)
    return out


def _rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def clip_and_tokenizer():
    torch.manual_seed(3)
    return build_clip(None, "cpu", TINY_CLIP_NAME)


def _linear_proj_clip():
    """Another ConvNeXt CLIP: other trunk (convnext_femto), linear projection, D=48."""
    cfg = {
        "embed_dim": 48,
        "vision_cfg": {
            "timm_model_name": "convnext_femto",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 224,
        },
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    torch.manual_seed(4)
    model = open_clip.model.CLIP(**cfg).eval()
    return model, open_clip.get_tokenizer(TINY_CLIP_NAME)


@pytest.mark.parametrize("which", ["tiny_mlp", "linear_proj"])
def test_mask_logits_matches_independent_computation(which, clip_and_tokenizer):
    model, tokenizer = clip_and_tokenizer if which == "tiny_mlp" else _linear_proj_clip()
    dim = 64 if which == "tiny_mlp" else 48
    torch.manual_seed(5)
    adapter = maskadapter.MaskAdapterHead(clip_dim=dim, num_channels=24, mask_in_chans=16, num_output_maps=4)
    with torch.no_grad():
        for block in (adapter.cnext1, adapter.cnext2, adapter.cnext3):
            block.gamma.normal_(0, 0.5)
        adapter.final.weight.mul_(20)  # peaky maps, so that the pooling weights matter
    adapter.eval()
    image = torch.randn(1, 3, 128, 160)
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(160.0), indexing="ij")
    masks = torch.stack(
        [
            (torch.rand(128, 160) > 0.5).float(),
            ((xx - 40) ** 2 + (yy - 60) ** 2 < 30**2).float(),
            (xx > 100).float() * 0.7,  # soft values are allowed
        ]
    )
    text, class_index = maskadapter.encode_vocabulary(model, tokenizer, SYNONYM_CLASSES)
    with torch.no_grad():
        got = maskadapter.mask_logits(model, adapter, image, masks[None], text, class_index)
        ref_text, owners = reference_text_embeddings(model, tokenizer, SYNONYM_CLASSES, maskadapter.VILD_TEMPLATES)
        want = reference_logits(model, adapter, image[0], masks, ref_text, owners)
    assert got.shape == (1, 3, len(SYNONYM_CLASSES))
    assert _rel_err(got[0], want) < 1e-4
    # the masks are told apart: different masks get different logits
    assert (got[0, 0] - got[0, 1]).abs().max() > 1e-3


def test_encode_vocabulary_matches_independent_computation(clip_and_tokenizer):
    model, tokenizer = clip_and_tokenizer
    with torch.no_grad():
        emb, class_index = maskadapter.encode_vocabulary(model, tokenizer, SYNONYM_CLASSES)
        want, owners = reference_text_embeddings(model, tokenizer, SYNONYM_CLASSES, maskadapter.VILD_TEMPLATES)
    assert emb.dtype == torch.float32 and emb.shape == (7, 64)
    assert class_index.dtype == torch.long
    assert class_index.tolist() == owners == [0, 0, 1, 2, 2, 2, 3]
    assert _rel_err(emb, want) < 1e-4
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(7))
    # other templates give other embeddings
    one, _ = maskadapter.encode_vocabulary(model, tokenizer, ["cat"], templates=["{}"])
    assert _rel_err(one[0], emb[0]) > 1e-3


def test_text_is_encoded_on_the_positions_up_to_the_last_end_token(clip_and_tokenizer):
    """Float32: the text features equal open_clip's 77-position ``encode_text`` to 1e-5,
    and the tower reads only up to the batch's last end token; a vocabulary's rows
    equal the per-prompt 77-position recomputation to 1e-5."""
    model, tokenizer = clip_and_tokenizer
    texts = ["a", "a photo of a cat.", "There is a large traffic light in the scene.", "word " * 90]
    tokens = tokenizer(texts)
    ends = [int((row == row.max()).nonzero()[0]) for row in tokens]  # the end token has the largest id
    assert ends[-1] == 76 and ends[0] == 2  # one prompt cut at 77 tokens, one of 3 tokens
    lengths = []
    hook = model.transformer.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            want = model.encode_text(tokens)
            for batch in (tokens[:3], tokens):
                got = encode_text(model, batch)
                torch.testing.assert_close(got, want[: len(batch)], atol=1e-5, rtol=0)
    finally:
        hook.remove()
    assert lengths == [77, max(ends[:3]) + 1, 77]
    classes = ["cat", ["traffic light", "stop light"], "a very long name " * 3]
    with torch.no_grad():
        emb, _ = maskadapter.encode_vocabulary(model, tokenizer, classes, batch_size=5)
        want, _ = reference_text_embeddings(model, tokenizer, classes, maskadapter.VILD_TEMPLATES)
    torch.testing.assert_close(emb, want, atol=1e-5, rtol=0)


def test_vild_templates_are_the_fourteen_in_order():
    t = maskadapter.VILD_TEMPLATES
    assert len(t) == 14
    assert t[0] == "a photo of a {}." and t[1] == "This is a photo of a {}"
    assert t[-1] == "There is a large {} in the scene."
    assert all(s.count("{}") == 1 for s in t)


def test_mask_logits_rejects_bad_shapes(clip_and_tokenizer):
    model, tokenizer = clip_and_tokenizer
    adapter = maskadapter.MaskAdapterHead(clip_dim=64, num_channels=16, num_output_maps=2).eval()
    text, idx = maskadapter.encode_vocabulary(model, tokenizer, ["a"])
    with pytest.raises(ValueError, match="multiples of 32"):
        maskadapter.mask_logits(model, adapter, torch.zeros(1, 3, 100, 96), torch.zeros(1, 1, 100, 96), text, idx)
    with pytest.raises(ValueError, match="masks"):
        maskadapter.mask_logits(model, adapter, torch.zeros(1, 3, 96, 96), torch.zeros(1, 1, 64, 64), text, idx)


# ---------------------------------------------------------------------------- plain mask pooling


def reference_pooling_logits(model, image, masks, text, owners):
    """(N, C) mask-pooling logits for one image (3, H, W) and masks (N, H, W), step by step."""
    visual = model.visual
    trunk = visual.trunk
    x = trunk.stem(image[None])
    for stage in trunk.stages:
        x = stage(x)
    raw = trunk.norm_pre(x)[0]  # (Ct, h, w)
    Ct, h, w = raw.shape
    head = trunk.head
    assert isinstance(head.fc, torch.nn.Identity) and isinstance(head.pre_logits, torch.nn.Identity)
    scale = min(math.exp(model.logit_scale.item()), 100.0)
    num_classes = max(owners) + 1
    out = torch.empty(len(masks), num_classes)
    for n, mask in enumerate(masks):
        small = F.interpolate(mask[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        inside = small > 0.5
        count = int(inside.sum())
        pooled = torch.zeros(Ct)
        for i in range(h):
            for j in range(w):
                if inside[i, j]:
                    pooled += raw[:, i, j]
        if count:
            pooled /= count
        # trunk.head on a 1x1 map: average pool (a no-op), LayerNorm over channels, dropout (eval), no fc
        normed = _layernorm_channels(pooled[:, None, None], head.norm.weight, head.norm.bias, head.norm.eps)[:, 0, 0]
        embedding = visual.head(normed[None])[0]  # (D,)
        # a zero embedding (an empty mask through a bias-free linear projection) has cosine 0
        cos = (embedding / max(embedding.norm(), 1e-12)) @ text.T  # (K,)
        for c in range(num_classes):
            out[n, c] = scale * max(cos[k] for k in range(len(owners)) if owners[k] == c)
    return out


def _pooling_masks(H=128, W=160):
    torch.manual_seed(6)
    yy, xx = torch.meshgrid(torch.arange(float(H)), torch.arange(float(W)), indexing="ij")
    tiny = torch.zeros(H, W)
    tiny[2:7, 2:7] = 1.0  # 5x5 pixels between the sampling points of the 32-pixel cells: vanishes
    return torch.stack(
        [
            (torch.rand(H, W) > 0.5).float(),
            ((xx - 40) ** 2 + (yy - 60) ** 2 < 30**2).float(),
            (xx > 100).float() * 0.7,  # soft: above 0.5 where it is set
            (yy < 64).float() * 0.4,  # soft: below 0.5 everywhere, so empty once binarised
            tiny,
            torch.zeros(H, W),  # empty
            torch.ones(H, W),
        ]
    )


@pytest.mark.parametrize("which", ["tiny_models", "linear_proj"])
def test_mask_pooling_logits_matches_independent_computation(which, tiny_models):
    if which == "tiny_models":
        model, tokenizer = tiny_models.clip, tiny_models.tokenizer
    else:
        model, tokenizer = _linear_proj_clip()
    torch.manual_seed(7)
    image = torch.randn(1, 3, 128, 160)
    masks = _pooling_masks()
    text, class_index = maskadapter.encode_vocabulary(model, tokenizer, SYNONYM_CLASSES)
    with torch.no_grad():
        got = maskadapter.mask_pooling_logits(model, image, masks[None], text, class_index)
        ref_text, owners = reference_text_embeddings(model, tokenizer, SYNONYM_CLASSES, maskadapter.VILD_TEMPLATES)
        want = reference_pooling_logits(model, image[0], masks, ref_text, owners)
    assert got.shape == (1, len(masks), len(SYNONYM_CLASSES)) and got.dtype == torch.float32
    assert torch.isfinite(got).all()
    assert _rel_err(got[0], want) < 1e-4
    assert (got[0, 0] - got[0, 1]).abs().max() > 1e-3  # masks are told apart
    # masks empty after binarisation (soft below 0.5, vanishing, empty) share one embedding
    torch.testing.assert_close(got[0, 3], got[0, 5])
    torch.testing.assert_close(got[0, 4], got[0, 5])
    assert (got[0, 5] - got[0, 1]).abs().max() > 1e-3


def test_pooled_embeddings_are_chunk_independent_and_batched(tiny_models):
    model = tiny_models.clip
    torch.manual_seed(8)
    images = torch.randn(2, 3, 96, 128)
    masks = torch.stack([_pooling_masks(96, 128), _pooling_masks(96, 128).flip(-1)])  # (2, 7, 96, 128)
    with torch.no_grad():
        raw, _ = maskadapter.engine.clip_features.clip_image_features(model, images)
        whole = maskadapter.pooled_embeddings_from_features(model, raw, masks, chunk=100)
        parts = maskadapter.pooled_embeddings_from_features(model, raw, masks, chunk=3)
        single = maskadapter.pooled_embeddings_from_features(model, raw[1:], masks[1:, 2:3])
        none = maskadapter.pooled_embeddings_from_features(model, raw, masks[:, :0])
    assert whole.shape == (2, 7, 64)
    torch.testing.assert_close(parts, whole)
    torch.testing.assert_close(single[0, 0], whole[1, 2])
    assert none.shape == (2, 0, 64)


def test_mask_pooling_under_autocast_accumulates_in_float32(tiny_models):
    model, tokenizer = tiny_models.clip, tiny_models.tokenizer
    torch.manual_seed(9)
    image = torch.randn(1, 3, 128, 160)
    masks = _pooling_masks()[None]
    text, class_index = maskadapter.encode_vocabulary(model, tokenizer, SYNONYM_CLASSES)
    with torch.no_grad():
        full = maskadapter.mask_pooling_logits(model, image, masks, text, class_index)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = maskadapter.mask_pooling_logits(model, image, masks, text, class_index)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert _rel_err(half, full) < 0.05


def test_mask_pooling_logits_rejects_bad_shapes(tiny_models):
    model, tokenizer = tiny_models.clip, tiny_models.tokenizer
    text, idx = maskadapter.encode_vocabulary(model, tokenizer, ["a"])
    with pytest.raises(ValueError, match="multiples of 32"):
        maskadapter.mask_pooling_logits(model, torch.zeros(1, 3, 100, 96), torch.zeros(1, 1, 100, 96), text, idx)
    with pytest.raises(ValueError, match="masks"):
        maskadapter.mask_pooling_logits(model, torch.zeros(1, 3, 96, 96), torch.zeros(1, 1, 64, 64), text, idx)
