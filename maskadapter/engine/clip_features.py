"""The CLIP side of Mask-Adapter: dense features, mask pooling, text embeddings, logits.

Works for any open_clip CLIP whose image tower is a timm ConvNeXt (``model.visual``
is an ``open_clip.timm_model.TimmModel``): any trunk width, any embedding size.

Conventions: images are (B, 3, H, W) float tensors normalised with CLIP's mean and
std on the 0-255 scale (see ``maskadapter.engine.transforms``), H and W multiples of 32;
masks are (B, N, H, W) floats in [0, 1] at image resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from maskadapter.progress import ProgressCallback

VILD_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

# masks per adapter call: bounds memory at (chunk * num_output_maps) feature maps
MASK_CHUNK = 16
# prompts (class name in a template) per text-encoder call
TEXT_CHUNK = 256


def _visual(clip_model: nn.Module) -> nn.Module:
    visual = clip_model.visual
    if not (hasattr(visual, "trunk") and hasattr(visual.trunk, "stem") and hasattr(visual, "head")):
        raise TypeError("expected an open_clip CLIP with a timm ConvNeXt image tower (visual.trunk)")
    return visual


def clip_raw_features(clip_model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) CLIP-normalised image -> (B, C_trunk, H/32, W/32) raw features:
    trunk.stem, trunk.stages, trunk.norm_pre."""
    trunk = _visual(clip_model).trunk
    x = trunk.stem(image)
    for stage in trunk.stages:
        x = stage(x)
    return trunk.norm_pre(x)  # (B, C, h, w)


def clip_image_features(clip_model: nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw trunk features and dense projected features of a normalised image batch.

    Args:
        clip_model: open_clip ConvNeXt CLIP.
        image: (B, 3, H, W) float, CLIP-normalised, H and W multiples of 32.
    Returns:
        raw: (B, C_trunk, H/32, W/32), output of trunk.norm_pre.
        dense: (B, D, H/32, W/32), every position passed through the trunk head's
            norm and the CLIP projection head (D = CLIP embedding size).
    """
    visual = _visual(clip_model)
    trunk = visual.trunk
    raw = clip_raw_features(clip_model, image)  # (B, C, h, w)
    dense = trunk.head.norm(raw).permute(0, 2, 3, 1)  # (B, h, w, C)
    dense = visual.head(trunk.head.drop(dense)).permute(0, 3, 1, 2)  # (B, D, h, w)
    return raw, dense


def pool_mask_embeddings(
    clip_model: nn.Module, raw: torch.Tensor, maps: torch.Tensor, num_output_maps: int
) -> torch.Tensor:
    """Pool raw CLIP features with the adapter's maps into one embedding per mask.

    Args:
        raw: (B, C, h, w) raw trunk features.
        maps: (B, N * M, h', w') adapter output (M = num_output_maps, mask-major).
    Returns:
        (B, N, D) mask embeddings (not normalised): mean over the M pooled vectors.
    """
    visual = _visual(clip_model)
    B, C = raw.shape[:2]
    maps = F.interpolate(maps, size=raw.shape[-2:], mode="bilinear", align_corners=False)
    NM = maps.shape[1]
    # softmax accumulated in float32 whatever the autocast dtype
    weights = F.softmax(F.logsigmoid(maps.float()).reshape(B, NM, -1), dim=-1)  # (B, NM, h*w)
    pooled = torch.bmm(weights.to(raw.dtype), raw.reshape(B, C, -1).transpose(1, 2))  # (B, NM, C)
    pooled = visual.trunk.head(pooled.reshape(B * NM, C, 1, 1))  # (B*NM, C)
    pooled = visual.head(pooled)  # (B*NM, D)
    return pooled.reshape(B, NM // num_output_maps, num_output_maps, -1).mean(dim=2)


def mask_embeddings_from_features(
    clip_model: nn.Module,
    adapter: nn.Module,
    raw: torch.Tensor,
    dense: torch.Tensor,
    masks: torch.Tensor,
    chunk: int = MASK_CHUNK,
) -> torch.Tensor:
    """(B, N, D) mask embeddings from precomputed features; masks (B, N, H, W) in [0, 1].

    Masks are processed ``chunk`` at a time; each mask's result does not depend on
    the others, so chunking changes memory use only.
    """
    out = []
    for start in range(0, masks.shape[1], chunk):
        part = masks[:, start : start + chunk].to(device=dense.device, dtype=dense.dtype)
        maps = adapter(dense, part)  # (B, n*M, h, w)
        out.append(pool_mask_embeddings(clip_model, raw, maps, adapter.num_output_maps))
    if not out:
        return dense.new_zeros(masks.shape[0], 0, dense.shape[1])
    return torch.cat(out, dim=1)


def classify_embeddings(
    clip_model: nn.Module,
    mask_embeddings: torch.Tensor,
    embeddings: torch.Tensor,
    class_index: torch.Tensor,
) -> torch.Tensor:
    """Class logits of mask embeddings: scaled cosine similarity, maximum over each class's synonyms.

    Serves both ways of embedding masks (``mask_embeddings_from_features`` and
    ``pooled_embeddings_from_features``). Computed in float32, autocast or not.

    Args:
        mask_embeddings: (B, N, D) any float dtype, not necessarily normalised;
        embeddings: (K, D) L2-normalised text rows; class_index: (K,) long, class of
            each row, classes numbered 0..C-1.
    Returns:
        (B, N, C) float32 logits = min(exp(logit_scale), 100) * cos.
    """
    with torch.autocast(mask_embeddings.device.type, enabled=False):
        scale = clip_model.logit_scale.float().exp().clamp(max=100).to(mask_embeddings.device)
        emb = F.normalize(mask_embeddings.float(), dim=-1)  # (B, N, D)
        text = embeddings.to(device=emb.device, dtype=torch.float32)  # (K, D)
        sims = scale * emb @ text.T  # (B, N, K)
        index = class_index.to(sims.device).expand_as(sims)
        num_classes = int(class_index.max()) + 1 if class_index.numel() else 0
        out = sims.new_full((*sims.shape[:2], num_classes), float("-inf"))
        return out.scatter_reduce(-1, index, sims, reduce="amax", include_self=True)  # (B, N, C)


def _check_image_and_masks(image: torch.Tensor, masks: torch.Tensor) -> None:
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
    if image.shape[-1] % 32 or image.shape[-2] % 32:
        raise ValueError(f"image height and width must be multiples of 32, got {tuple(image.shape[-2:])}")
    if masks.ndim != 4 or masks.shape[0] != image.shape[0] or masks.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"masks must be (B, N, H, W) matching the image, got {tuple(masks.shape)}")


@torch.no_grad()
def mask_logits(
    clip_model: nn.Module,
    adapter: nn.Module,
    image: torch.Tensor,
    masks: torch.Tensor,
    embeddings: torch.Tensor,
    class_index: torch.Tensor,
) -> torch.Tensor:
    """Classify masks with Mask-Adapter.

    Args:
        clip_model: open_clip ConvNeXt CLIP.
        adapter: ``MaskAdapterHead`` whose clip_dim equals the CLIP embedding size.
        image: (B, 3, H, W) float, CLIP-normalised, H and W multiples of 32.
        masks: (B, N, H, W) float in [0, 1] at image resolution.
        embeddings: (K, D) float, L2-normalised text embeddings (``encode_vocabulary``).
        class_index: (K,) long, class of each embedding row.
    Returns:
        (B, N, C) float32 class logits (C = number of classes, max over synonyms, no void).
    """
    _check_image_and_masks(image, masks)
    raw, dense = clip_image_features(clip_model, image)
    emb = mask_embeddings_from_features(clip_model, adapter, raw, dense, masks)
    return classify_embeddings(clip_model, emb, embeddings, class_index)


# an empty mask (after binarisation) divides a zero sum by this: its pooled vector is zero
POOLING_EPS = 1e-8


def pooled_embeddings_from_features(
    clip_model: nn.Module,
    raw: torch.Tensor,
    masks: torch.Tensor,
    chunk: int = MASK_CHUNK,
) -> torch.Tensor:
    """Mask pooling (the plain baseline): (B, N, D) mask embeddings from raw features.

    Each mask is resized bilinearly (align_corners False) to the raw features' size
    and binarised (> 0.5); the raw features are averaged inside it, and the average
    goes through the trunk's head (as a 1x1 map) and the CLIP projection head.

    A mask that is empty after binarisation (e.g. smaller than one feature cell)
    pools a zero vector (the sum is divided by count + ``POOLING_EPS``), so every such
    mask gets the same embedding, the heads' response to zeros, which says nothing
    about the image (with a bias-free linear projection and a zero norm bias that is the
    zero vector, whose cosine with every class is taken as 0).

    Sums and averages are taken in float32 whatever the autocast dtype.

    Args:
        clip_model: open_clip ConvNeXt CLIP.
        raw: (B, C_trunk, h, w) raw trunk features (``clip_image_features``), any float dtype.
        masks: (B, N, H, W) float in [0, 1] at image resolution (or any resolution).
        chunk: masks per step; bounds memory only, the result does not depend on it.
    Returns:
        (B, N, D) mask embeddings, not normalised.
    """
    visual = _visual(clip_model)
    B, C, h, w = raw.shape
    head_param = next(visual.trunk.head.parameters(), None)
    head_dtype = raw.dtype if head_param is None else head_param.dtype
    out = []
    with torch.autocast(raw.device.type, enabled=False):
        flat = raw.float().reshape(B, C, h * w).transpose(1, 2)  # (B, h*w, C)
    for start in range(0, masks.shape[1], chunk):
        part = masks[:, start : start + chunk].to(device=raw.device, dtype=torch.float32)  # (B, n, H, W)
        n = part.shape[1]
        with torch.autocast(raw.device.type, enabled=False):
            small = F.interpolate(part, size=(h, w), mode="bilinear", align_corners=False)  # (B, n, h, w)
            binary = (small > 0.5).float().reshape(B, n, h * w)  # (B, n, h*w)
            sums = torch.bmm(binary, flat)  # (B, n, C)
            pooled = sums / (binary.sum(-1, keepdim=True) + POOLING_EPS)  # (B, n, C)
        pooled = visual.trunk.head(pooled.to(head_dtype).reshape(B * n, C, 1, 1))  # (B*n, C)
        out.append(visual.head(pooled).reshape(B, n, -1))  # (B, n, D)
    if not out:
        dim = visual.head(visual.trunk.head(raw.new_zeros(1, C, 1, 1).to(head_dtype))).shape[-1]
        return raw.new_zeros(B, 0, dim)
    return torch.cat(out, dim=1)


@torch.no_grad()
def mask_pooling_logits(
    clip_model: nn.Module,
    image: torch.Tensor,
    masks: torch.Tensor,
    embeddings: torch.Tensor,
    class_index: torch.Tensor,
) -> torch.Tensor:
    """Classify masks by plain mask pooling of CLIP's raw features (no adapter).

    The baseline Mask-Adapter improves on: see ``pooled_embeddings_from_features``
    (masks binarised at the features' resolution, features averaged inside them;
    an empty mask pools a zero vector).

    Args:
        clip_model: open_clip ConvNeXt CLIP.
        image: (B, 3, H, W) float, CLIP-normalised, H and W multiples of 32.
        masks: (B, N, H, W) float in [0, 1] at image resolution.
        embeddings: (K, D) float, L2-normalised text embeddings (``encode_vocabulary``).
        class_index: (K,) long, class of each embedding row.
    Returns:
        (B, N, C) float32 class logits (C = number of classes, max over synonyms, no void).
    """
    _check_image_and_masks(image, masks)
    raw = clip_raw_features(clip_model, image)  # (B, C, h, w)
    emb = pooled_embeddings_from_features(clip_model, raw, masks)
    return classify_embeddings(clip_model, emb, embeddings, class_index)


def _read_positions(clip_model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(n, L) token ids -> (n,) long: the position whose output open_clip's text tower
    returns (the end token for ``argmax`` / ``eos`` pooling), or L - 1 when the tower
    reads another way (then every position is needed)."""
    pool = getattr(clip_model, "text_pool_type", None)
    if pool == "argmax":  # the end token has the largest id
        return tokens.argmax(dim=-1)
    eos = getattr(clip_model, "text_eos_id", None)
    if pool == "eos" and eos is not None:
        return (tokens == eos).int().argmax(dim=-1)
    return torch.full(tokens.shape[:1], tokens.shape[1] - 1, dtype=torch.long, device=tokens.device)


def encode_text(clip_model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's ``CLIP.encode_text`` on the positions up to the last end token of the
    batch: (n, L) token ids -> (n, D) text features (not normalised).

    CLIP's text attention is causal and the feature is read at the end token, so the
    positions after the batch's last end token change nothing: the result equals the
    full-length computation up to float rounding, for a fraction of its work (a prompt
    of the templates has about 10 tokens of the 77). Towers without a causal mask or
    read elsewhere (and other text towers) run whole, through ``encode_text``."""
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
    mask = getattr(clip_model, "attn_mask", None)
    if not all(hasattr(clip_model, name) for name in needed) or not torch.is_tensor(mask):
        return clip_model.encode_text(tokens)
    read = _read_positions(clip_model, tokens)  # (n,)
    length = int(read.max()) + 1
    tokens = tokens[:, :length]
    cast = clip_model.transformer.get_cast_dtype()
    x = clip_model.token_embedding(tokens).to(cast) + clip_model.positional_embedding[:length].to(cast)  # (n, l, W)
    x = clip_model.transformer(x, attn_mask=mask[:length, :length])
    x = clip_model.ln_final(x)[torch.arange(len(x), device=x.device), read]  # (n, W) at the end tokens
    projection = clip_model.text_projection
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection


@torch.no_grad()
def encode_vocabulary(
    clip_model: nn.Module,
    tokenizer,
    classes: Sequence[str | Sequence[str]],
    templates: Sequence[str] = VILD_TEMPLATES,
    *,
    batch_size: int = TEXT_CHUNK,
    progress: ProgressCallback | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text embeddings of classes and their synonyms, averaged over prompt templates.

    Args:
        clip_model: open_clip CLIP (only ``encode_text`` is used).
        tokenizer: the model's open_clip tokenizer (list[str] -> (n, L) LongTensor).
        classes: each item a class name or a list of its synonyms.
        templates: format strings with one ``{}``.
        batch_size: prompts (name in a template) per text-encoder call; bounds memory,
            the result does not depend on it.
        progress: called after each call with (fraction of prompts done in (0, 1],
            "encoding class names: i of n"); None: nobody listens.
    Returns:
        embeddings: (K, D) float32, L2-normalised, one row per synonym in input order.
        class_index: (K,) long, the class (position in ``classes``) of each row.
    """
    if not classes:
        raise ValueError("classes is empty: give at least one class name")
    if not templates:
        raise ValueError("templates is empty: give at least one prompt template with '{}'")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    names: list[str] = []
    owners: list[int] = []
    for i, item in enumerate(classes):
        synonyms = [item] if isinstance(item, str) else list(item)
        if not synonyms:
            raise ValueError(f"class {i} has no name")
        names.extend(synonyms)
        owners.extend([i] * len(synonyms))
    device = clip_model.logit_scale.device
    texts = [t.format(name) for name in names for t in templates]
    tokens = tokenizer(texts).to(device)  # (n, 77)
    # prompts of similar length share a call, so each call reads few positions
    order = torch.argsort(_read_positions(clip_model, tokens), stable=True)
    rows = []
    for start in range(0, len(texts), batch_size):
        end = min(len(texts), start + batch_size)
        rows.append(F.normalize(encode_text(clip_model, tokens[order[start:end]]).float(), dim=-1))
        if progress is not None:
            progress(end / len(texts), f"encoding class names: {end // len(templates)} of {len(names)}")
    rows = torch.cat(rows)
    per_text = torch.empty_like(rows)
    per_text[order] = rows  # back in the prompts' order
    per_text = per_text.reshape(len(names), len(templates), -1)  # (K, T, D)
    embeddings = F.normalize(per_text.mean(dim=1), dim=-1)
    return embeddings, torch.tensor(owners, dtype=torch.long, device=device)
