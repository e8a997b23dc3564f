"""nn.Modules of the project (no file, network or UI code here)."""

from maskadapter.modeling.adapter import ConvNextBlock, LayerNorm2d, MaskAdapterHead

__all__ = ["ConvNextBlock", "LayerNorm2d", "MaskAdapterHead"]
