"""Open-vocabulary segmentation: SAM-2 masks named by Mask-Adapter (CVPR 2025).

The contract (``../shared/spec/MASK_ADAPTER.md`` section 5)::

    VILD_TEMPLATES, MaskAdapterHead, encode_vocabulary, mask_logits

and the pieces built on it: ``Segmenter`` (models + caches; image -> segments),
``build_vocabulary``, ``Settings``, rendering and export helpers.
"""

from maskadapter.clip_features import VILD_TEMPLATES, encode_vocabulary, mask_logits
from maskadapter.errors import (
    CheckpointError,
    InputError,
    MaskAdapterError,
    VocabularyError,
    WeightsNotFoundError,
)
from maskadapter.masks import AutoMaskSettings
from maskadapter.modeling import MaskAdapterHead
from maskadapter.segmenter import ImageSession, Segment, SegmentationResult, Segmenter
from maskadapter.settings import Settings
from maskadapter.vocabulary import PREDEFINED, Vocabulary, build_vocabulary, parse_vocabulary

__all__ = [
    "PREDEFINED",
    "VILD_TEMPLATES",
    "AutoMaskSettings",
    "CheckpointError",
    "ImageSession",
    "InputError",
    "MaskAdapterError",
    "MaskAdapterHead",
    "Segment",
    "SegmentationResult",
    "Segmenter",
    "Settings",
    "Vocabulary",
    "VocabularyError",
    "WeightsNotFoundError",
    "build_vocabulary",
    "encode_vocabulary",
    "mask_logits",
    "parse_vocabulary",
]
