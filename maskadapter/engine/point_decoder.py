"""SAM-2's mask decoder for many single-point prompts on one image, without the work
that does not depend on the prompt.

sam2's ``MaskDecoder`` with ``repeat_image=True`` copies the image embedding once per
prompt and runs everything on the copies. Here, for one image:

- once per image (``PointDecoder.__init__``): the image tokens plus the dense prompt
  embedding (no mask prompt: the same for every point), the positional encoding, the
  first layer's image-side projections (keys and values the tokens attend to, queries
  of the image attending to the tokens), and the high-resolution features laid out
  for the upscaling below;
- per prompt (``decode``): the first layer's token attention against those shared
  keys (all prompts in one product), then the rest of the two-way transformer, with
  each later layer's three image-side projections (and the final attention's two)
  in one product whose PE share is a per-image constant, and the image's tokens
  attending to a prompt's few tokens through two products and a softmax;
- the upscaling's transposed convolutions (kernel 2, stride 2) are matrix products
  over channels whose constant term holds the bias and the high-resolution feature;
  pixels stay in a "blocked" order (the 64x64 cell, then the sub-pixel offsets, then
  channels) through the norm and GELU, which are per pixel, and only the (b, masks,
  256, 256) logits are put in raster order at the end. sam2 instead works in
  channels-first order, whose LayerNorm2d makes five passes over the largest tensors.

Arithmetic: ``dtype`` None runs float32 (equal to sam2's decoder up to float
rounding: operations are regrouped, not changed); bf16 / fp16 run every product and
keep activations in that dtype between operators, from a copy of the decoder's
weights cast once per model (not by autocast on every call); norms and softmax
accumulate in float32 inside their kernels.

``prompts_per_call`` measures, once per device, dtype, thread count and decoder
width, how many prompts per call run fastest, on a stand-in image.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from maskadapter.engine.sam2_internals import dynamic_multimask_via_stability

log = logging.getLogger(__name__)

PROBE_SIZES = {"cpu": (1, 2, 4, 8, 16), "cuda": (8, 16, 32, 64, 128)}  # prompts per call tried
_casts: weakref.WeakKeyDictionary[nn.Module, dict[torch.dtype, nn.Module]] = weakref.WeakKeyDictionary()
_casts_lock = threading.Lock()
_chosen: dict[tuple, int] = {}
_chosen_lock = threading.Lock()


def _decoder_in(decoder: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """``decoder`` itself for float32, else a copy with its weights in ``dtype``, made
    once per decoder object and dtype."""
    if dtype is None or dtype == torch.float32:
        return decoder
    decoder = getattr(decoder, "_orig_mod", decoder)  # a torch.compile'd module: its weights
    with _casts_lock:
        per_model = _casts.setdefault(decoder, {})
        if dtype not in per_model:
            per_model[dtype] = copy.deepcopy(decoder).to(dtype).eval()
        return per_model[dtype]


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """(b, tokens, n * d) -> (b, n, tokens, d)"""
    b, t, c = x.shape
    return x.view(b, t, n, c // n).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(b, n, tokens, d) -> (b, tokens, n * d)"""
    b, n, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, n * d)


def _as_linear(deconv: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A kernel-2, stride-2 transposed convolution as a (C_in, 4 * C_out) matrix and
    bias, output columns ordered (row offset, column offset, channel)."""
    w = deconv.weight  # (C_in, C_out, 2, 2)
    c_in, c_out = w.shape[:2]
    return w.permute(0, 2, 3, 1).reshape(c_in, 4 * c_out), deconv.bias.repeat(4)


def _blocked(feature: torch.Tensor, levels: int) -> torch.Tensor:
    """(1, C, 64 * 2**levels, 64 * 2**levels) channels-first feature -> (1, 64 * 64 *
    4**levels, C) in blocked order: 64x64 cell, then per level the (row, column) offset."""
    c, h = feature.shape[1], feature.shape[2]
    cells = h >> levels
    x = feature.reshape(c, cells, *([2] * levels), cells, *([2] * levels))
    rows, cols = list(range(2, 2 + levels)), list(range(3 + levels, 3 + 2 * levels))
    offsets = [axis for pair in zip(rows, cols, strict=True) for axis in pair]
    return x.permute(1, 2 + levels, *offsets, 0).reshape(1, -1, c)


def _raster(masks: torch.Tensor, cells: int, levels: int) -> torch.Tensor:
    """(b, cells^2 * 4**levels, m) blocked -> (b, m, H, W) raster order (the inverse of
    ``_blocked`` for the last axis as channels)."""
    b, _, m = masks.shape
    x = masks.view(b, cells, cells, *([2, 2] * levels), m)
    rows = [3 + 2 * k for k in range(levels)]
    cols = [4 + 2 * k for k in range(levels)]
    side = cells << levels
    return x.permute(0, 3 + 2 * levels, 1, *rows, 2, *cols).reshape(b, m, side, side)


class PointDecoder:
    """SAM-2's mask decoder on one image's embedding, for batches of one-point prompts.

    Args:
        sam_model: a SAM-2 model (``sam_prompt_encoder``, ``sam_mask_decoder``).
        features: sam2's image-predictor features of one image: ``image_embed``
            (1, 256, 64, 64) and ``high_res_feats`` [(1, 32, 256, 256), (1, 64, 128, 128)].
        dtype: None for float32, else the low precision (bf16 / fp16) of the products.
    """

    def __init__(self, sam_model: nn.Module, features: dict, dtype: torch.dtype | None = None) -> None:
        self.model = sam_model
        self.dec = _decoder_in(sam_model.sam_mask_decoder, dtype)
        self.dtype = torch.float32 if dtype is None else dtype
        t = self.dec.transformer
        first = t.layers[0]
        if not first.skip_first_layer_pe or not self.dec.use_high_res_features:
            raise ValueError("PointDecoder needs SAM-2's decoder (first layer without PE, high-res features)")
        with torch.inference_mode(), torch.autocast(features["image_embed"].device.type, enabled=False):
            embed = features["image_embed"][-1:].to(self.dtype)  # (1, C, 64, 64)
            encoder = sam_model.sam_prompt_encoder
            dense = encoder.no_mask_embed.weight.to(self.dtype).reshape(1, -1, 1, 1)  # no mask prompt
            self.side = embed.shape[-1]
            self.keys = (embed + dense).flatten(2).transpose(1, 2)  # (1, N, C)
            pe = encoder.get_dense_pe().to(self.dtype).flatten(2).transpose(1, 2)[0]  # (N, C)
            with_pe = self.keys + pe
            to_image, to_token = first.cross_attn_token_to_image, first.cross_attn_image_to_token
            self.k0 = _heads(to_image.k_proj(with_pe), to_image.num_heads)  # (1, h, N, d)
            self.v0 = _heads(to_image.v_proj(self.keys), to_image.num_heads)
            self.q0 = _heads(to_token.q_proj(with_pe), to_token.num_heads)  # (1, h, N, d)
            # later layers and the final attention read the image keys through projections
            # only: one product per layer for all of them, the PE's share added as a constant
            self.later = [
                _ImageSide(pe, (layer.cross_attn_token_to_image, True), (layer.cross_attn_token_to_image, False),
                           (layer.cross_attn_image_to_token, None))
                for layer in t.layers[1:]
            ]  # fmt: skip
            final = t.final_attn_token_to_image
            self.final = _ImageSide(pe, (final, True), (final, False))
            # the upscaling's transposed convolutions as products whose constant term is
            # the convolution's bias plus the high-resolution feature (both per pixel)
            dc1, self.ln1, _, dc2, _ = self.dec.output_upscaling
            s0, s1 = (f[-1:].to(self.dtype) for f in features["high_res_feats"])
            (self.w1, b1), (self.w2, b2) = _as_linear(dc1), _as_linear(dc2)
            self.c1 = _blocked(s1, 1).reshape(-1, self.w1.shape[1]) + b1  # (N, 4 * C/4)
            self.c2 = _blocked(s0, 2).reshape(-1, self.w2.shape[1]) + b2  # (N * 4, 4 * C/8)
            d = self.dec
            self.tokens = torch.cat(
                ([d.obj_score_token.weight] if d.pred_obj_scores else []) + [d.iou_token.weight, d.mask_tokens.weight]
            )  # (T0, C) output tokens
            self.s = 1 if d.pred_obj_scores else 0

    def decode(self, coords: torch.Tensor, multimask: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, 2) XY prompt points in SAM-2's input frame (1024 px square) -> low-res mask
        logits (b, m, 256, 256) in ``dtype`` and predicted IoU (b, m) float32, with m = 3
        (``multimask``) or 1, as sam2's ``MaskDecoder.forward(..., repeat_image=True)``."""
        with torch.inference_mode(), torch.autocast(coords.device.type, enabled=False):
            labels = torch.ones(len(coords), 1, dtype=torch.int, device=coords.device)
            sparse, _ = self.model.sam_prompt_encoder(points=(coords[:, None, :], labels), boxes=None, masks=None)
            return self._run(sparse.to(self.dtype), multimask)

    def _run(self, sparse: torch.Tensor, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        d, t = self.dec, self.dec.transformer
        b = sparse.shape[0]
        prompt = torch.cat([self.tokens.expand(b, -1, -1), sparse], 1)  # (b, T, C) query tokens and their PE
        queries, keys = self._first_layer(prompt)  # (b, T, C), (b, N, C)
        for layer, image_side in zip(t.layers[1:], self.later, strict=True):
            queries, keys = self._later_layer(layer, image_side, queries, keys, prompt)
        final = t.final_attn_token_to_image
        k, v = self.final.project(keys)
        out = _attend(final.q_proj(queries + prompt), k, v, final.num_heads)
        queries = t.norm_final_attn(queries + final.out_proj(out))
        first = 1 if multimask else 0
        count = d.num_mask_tokens - first if multimask else d.num_mask_tokens
        mask_tokens = queries[:, self.s + 1 + first : self.s + 1 + first + count]  # (b, m, C)
        hyper = torch.stack(
            [d.output_hypernetworks_mlps[first + i](mask_tokens[:, i]) for i in range(count)], 1
        )  # (b, m, C / 8)
        masks = self._upscaled(keys) @ hyper.transpose(1, 2)  # (b, N * 16, m), blocked order
        masks = _raster(masks, self.side, 2)  # (b, m, 256, 256)
        iou = d.iou_prediction_head(queries[:, self.s]).float()  # (b, 4)
        if multimask:
            return masks, iou[:, 1:]
        if d.dynamic_multimask_via_stability and not d.training:
            return dynamic_multimask_via_stability(d, masks, iou)
        return masks[:, :1], iou[:, :1]

    def _first_layer(self, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sam2's first two-way block with the image side shared by all prompts:
        (b, T, C) prompt tokens -> (b, T, C) queries, (b, N, C) image keys."""
        layer = self.dec.transformer.layers[0]
        b, n_tok, _ = prompt.shape
        queries = layer.norm1(layer.self_attn(q=prompt, k=prompt, v=prompt))  # first layer: no PE, no residual
        # tokens attend to the image: every prompt's tokens against the one image
        attn = layer.cross_attn_token_to_image
        q = _heads(attn.q_proj(queries + prompt).reshape(1, b * n_tok, -1), attn.num_heads)  # (1, h, b*T, d)
        out = _merge(F.scaled_dot_product_attention(q, self.k0, self.v0)).view(b, n_tok, -1)
        queries = layer.norm2(queries + attn.out_proj(out))
        queries = layer.norm3(queries + layer.mlp(queries))
        # the image attends to each prompt's tokens: shared queries, per-prompt keys and values
        attn = layer.cross_attn_image_to_token
        k = _heads(attn.k_proj(queries + prompt), attn.num_heads)  # (b, h, T, d)
        v = _heads(attn.v_proj(queries), attn.num_heads)
        out = _to_few_tokens(self.q0, k, v)  # (b, h, N, d)
        keys = layer.norm4(self.keys + attn.out_proj(_merge(out)))  # (b, N, C)
        return queries, keys

    @staticmethod
    def _later_layer(
        layer: nn.Module, image_side: _ImageSide, queries: torch.Tensor, keys: torch.Tensor, prompt: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """sam2's ``TwoWayAttentionBlock`` (with PE) on (b, T, C) queries and (b, N, C)
        keys, its three image-side projections in one product."""
        q = queries + prompt
        queries = layer.norm1(queries + layer.self_attn(q=q, k=q, v=queries))
        k, v, q_image = image_side.project(keys)  # (b, N, C') each
        attn = layer.cross_attn_token_to_image
        out = _attend(attn.q_proj(queries + prompt), k, v, attn.num_heads)
        queries = layer.norm2(queries + attn.out_proj(out))
        queries = layer.norm3(queries + layer.mlp(queries))
        attn = layer.cross_attn_image_to_token
        k, v = attn.k_proj(queries + prompt), attn.v_proj(queries)  # (b, T, C')
        out = _to_few_tokens(*(_heads(x, attn.num_heads) for x in (q_image, k, v)))
        return queries, layer.norm4(keys + attn.out_proj(_merge(out)))

    def _upscaled(self, keys: torch.Tensor) -> torch.Tensor:
        """(b, N, C) image keys -> (b, N * 16, C / 8) upscaled embedding in blocked order
        (sam2: dc1, + feat_s1, LayerNorm2d, GELU, dc2, + feat_s0, GELU)."""
        b, n, _ = keys.shape
        x = torch.baddbmm(self.c1, keys, self.w1.expand(b, -1, -1)).view(b, n * 4, -1)  # (b, N*4, C/4)
        x = torch.ops.aten.gelu_(F.layer_norm(x, x.shape[-1:], self.ln1.weight, self.ln1.bias, self.ln1.eps))
        x = torch.baddbmm(self.c2, x.view(b, n * 4, -1), self.w2.expand(b, -1, -1))  # (b, N*4, 4 * C/8)
        return torch.ops.aten.gelu_(x.view(b, n * 16, -1))


class _ImageSide:
    """Projections of the image keys by several attentions at once: ``project(keys)``
    gives ``key_proj(keys + pe)`` (``with_pe`` True), ``key_proj(keys)`` (False) or
    ``q_proj(keys + pe)`` (None) for each (attention, which) given, as sam2 computes
    them, from one product; the PE's share is a per-image constant."""

    def __init__(self, pe: torch.Tensor, *parts: tuple[nn.Module, bool | None]) -> None:
        weights, constants = [], []
        for attn, with_pe in parts:
            proj = attn.q_proj if with_pe is None else attn.k_proj if with_pe else attn.v_proj
            weights.append(proj.weight)
            plain = proj.bias.expand(len(pe), -1)
            constants.append(plain if with_pe is False else F.linear(pe, proj.weight, proj.bias))
        self.weight = torch.cat(weights).t()  # (C, parts * C')
        self.constant = torch.cat(constants, -1)  # (N, parts * C')
        self.parts = len(parts)

    def project(self, keys: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(b, N, C) -> ``parts`` tensors (b, N, C')"""
        out = torch.baddbmm(self.constant, keys, self.weight.expand(len(keys), -1, -1))
        return out.chunk(self.parts, -1)


def _to_few_tokens(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention of the image's N tokens to a prompt's few (b, h, T, d) keys and values:
    (b or 1, h, N, d) queries -> (b, h, N, d). Two products and a softmax; for T of about
    8 this runs faster on a CPU than the fused kernel, which is made for long keys."""
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)  # (b, h, N, T)
    return torch.matmul(scores.softmax(-1), v)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """sam2's ``Attention`` after its input projections: (b, tq, C'), (b, tk, C') x2 ->
    (b, tq, C'), before ``out_proj``."""
    return _merge(F.scaled_dot_product_attention(_heads(q, heads), _heads(k, heads), _heads(v, heads)))


def prompts_per_call(sam_model: nn.Module, features: dict, dtype: torch.dtype | None, limit: int) -> int:
    """How many prompts per ``PointDecoder.decode`` call run fastest here: measured once
    per device, dtype, thread count and decoder width on a stand-in image of
    ``features``' shapes (timed after a warm-up call), then cached for the process.
    At most ``limit``."""
    device = features["image_embed"].device
    sizes = [s for s in PROBE_SIZES.get(device.type, (1, 4, 16)) if s <= max(1, limit)] or [1]
    key = (device.type, device.index, dtype, torch.get_num_threads(), sam_model.sam_mask_decoder.transformer_dim)
    with _chosen_lock:
        if key in _chosen:
            return min(_chosen[key], limit)
        if len(sizes) == 1:
            return sizes[0]
        stand_in = {
            "image_embed": torch.zeros_like(features["image_embed"][-1:]),
            "high_res_feats": [torch.zeros_like(f[-1:]) for f in features["high_res_feats"]],
        }
        decoder = PointDecoder(sam_model, stand_in, dtype)
        points = torch.linspace(8.0, 1000.0, max(sizes) * 2, device=device)[:, None].repeat(1, 2)
        decoder.decode(points[:1])  # warm-up: first-call costs stay out of the timings
        per_prompt = {}
        for size in sizes:
            _sync(device)
            start = time.perf_counter()
            decoder.decode(points[:size])
            _sync(device)
            per_prompt[size] = (time.perf_counter() - start) / size
        best = min(per_prompt, key=per_prompt.get)
        log.info("mask decoder: %d prompts per call (seconds per prompt: %s)", best, per_prompt)
        _chosen[key] = best
        return min(best, limit)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
