"""The Mask-Adapter head (CVPR 2025) in the official state-dict layout.

Given dense CLIP features and a set of binary masks, the head predicts, for every
mask, ``num_output_maps`` attention maps over the feature grid. Pooling CLIP
features with those maps (see ``maskadapter.engine.clip_features``) gives one embedding per
mask that is compared with text embeddings.

Parameter names and shapes follow the published checkpoint exactly, so that the
official head file loads with ``strict=True``:

    mask_downscaling.{0,1,3,4,6}.*   mask -> clip_dim features at the CLIP grid
    fuse.*                           1x1 conv clip_dim -> num_channels
    cnext{1,2,3}.*                   three ConvNeXt blocks
    norm.*                           LayerNorm over channels
    final.*                          1x1 conv num_channels -> num_output_maps
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of an NCHW tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W); statistics over C for every pixel
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNextBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7 -> LayerNorm -> MLP (4x) -> layer scale -> residual."""

    def __init__(self, dim: int, layer_scale_init: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x  # (B, C, H, W)
        x = self.dwconv(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        x = (self.gamma * x).permute(0, 3, 1, 2)  # (B, C, H, W)
        return shortcut + x


class MaskAdapterHead(nn.Module):
    """Turns (dense CLIP features, masks) into per-mask attention maps.

    Args:
        clip_dim: channels D of the dense CLIP features (the CLIP embedding size).
        num_channels: width of the ConvNeXt blocks.
        mask_in_chans: channels after the second mask downscaling conv (the first has
            ``mask_in_chans // 4``).
        num_output_maps: attention maps predicted per mask.

    ``forward(clip_dense, masks)``:
        clip_dense: (B, D, h, w) float, dense projected CLIP features.
        masks: (B, N, H, W) float in [0, 1] (any H, W; resized to (4h, 4w) inside).
        returns: (B, N * num_output_maps, h, w) logits, mask-major (the maps of mask 0
        first, then those of mask 1, ...).
    """

    def __init__(
        self,
        clip_dim: int = 768,
        num_channels: int = 768,
        mask_in_chans: int = 16,
        num_output_maps: int = 16,
    ) -> None:
        super().__init__()
        self.clip_dim = clip_dim
        self.num_output_maps = num_output_maps
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=3, stride=2, padding=1),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=3, stride=2, padding=1),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, clip_dim, kernel_size=1),
        )
        self.fuse = nn.Conv2d(clip_dim, num_channels, kernel_size=1)
        self.cnext1 = ConvNextBlock(num_channels)
        self.cnext2 = ConvNextBlock(num_channels)
        self.cnext3 = ConvNextBlock(num_channels)
        self.norm = nn.LayerNorm(num_channels)
        self.final = nn.Conv2d(num_channels, num_output_maps, kernel_size=1)

    def forward(self, clip_dense: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        B, N = masks.shape[:2]
        h, w = clip_dense.shape[-2:]
        # one copy of the features per mask: (B*N, D, h, w)
        feats = clip_dense.repeat_interleave(N, dim=0)
        m = masks.flatten(0, 1).unsqueeze(1).to(feats.dtype)  # (B*N, 1, H, W)
        m = F.interpolate(m, size=(4 * h, 4 * w), mode="bilinear", align_corners=False)
        x = feats + self.mask_downscaling(m)  # (B*N, D, h, w)
        x = self.cnext3(self.cnext2(self.cnext1(self.fuse(x))))  # (B*N, C, h, w)
        x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.final(x)  # (B*N, M, h, w)
        return x.reshape(B, N * self.num_output_maps, h, w)
