"""Open-vocabulary segmentation: SAM-2 masks named by Mask-Adapter (CVPR 2025).

The contract (names and signatures that stay fixed)::

    VILD_TEMPLATES, MaskAdapterHead, encode_vocabulary, mask_logits, mask_pooling_logits,
    semantic_map

``mask_pooling_logits`` is the plain baseline: CLIP features averaged inside each
mask, no adapter.

``MaskGenerator`` (SAM-2 automatic masks without sam2's per-mask overheads), and
the pieces built on it: ``Segmenter`` (models + session store; image -> segments),
``build_vocabulary``, ``Settings``, ``load_image``/``check_image`` (any image in ->
HWC uint8 RGB or ``InputError``), rendering and export helpers.
"""

from maskadapter.clip_features import (
    VILD_TEMPLATES,
    encode_vocabulary,
    mask_logits,
    mask_pooling_logits,
    pooled_embeddings_from_features,
)
from maskadapter.errors import (
    CheckpointError,
    InputError,
    MaskAdapterError,
    VocabularyError,
    WeightsNotFoundError,
)
from maskadapter.generator import MaskGenerator
from maskadapter.images import check_image, load_image
from maskadapter.masks import AutoMaskSettings
from maskadapter.modeling import MaskAdapterHead
from maskadapter.painting import semantic_map
from maskadapter.segmenter import Comparison, Segment, SegmentationResult, Segmenter
from maskadapter.session import ImageSession, SessionStore
from maskadapter.settings import Settings
from maskadapter.vocabulary import PREDEFINED, Vocabulary, build_vocabulary, parse_vocabulary

__all__ = [
    "PREDEFINED",
    "VILD_TEMPLATES",
    "AutoMaskSettings",
    "CheckpointError",
    "Comparison",
    "ImageSession",
    "InputError",
    "MaskAdapterError",
    "MaskAdapterHead",
    "MaskGenerator",
    "Segment",
    "SegmentationResult",
    "SessionStore",
    "Segmenter",
    "Settings",
    "Vocabulary",
    "VocabularyError",
    "WeightsNotFoundError",
    "build_vocabulary",
    "check_image",
    "encode_vocabulary",
    "load_image",
    "mask_logits",
    "mask_pooling_logits",
    "parse_vocabulary",
    "pooled_embeddings_from_features",
    "semantic_map",
]
