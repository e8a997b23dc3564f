"""Open-vocabulary segmentation: SAM-2 masks named by Mask-Adapter (CVPR 2025).

docs/API.md documents everything below, with shapes and conventions (images are
(H, W, 3) uint8 RGB arrays; points are XY pixels of the original image; label maps are
(H, W) int32 with -1 for unlabelled pixels).

The contract (names and signatures that stay fixed): ``VILD_TEMPLATES``,
``MaskAdapterHead``, ``encode_vocabulary``, ``mask_logits``, ``mask_pooling_logits``
(the plain baseline), ``semantic_map``, ``MaskGenerator``, ``Segmenter``
(``from_settings``, ``session``, ``segment_automatic``, ``segment_points``),
``build_vocabulary``, ``AutoMaskSettings``, ``Settings`` (``Settings.from_env()``).

Also: ``Segmenter.compare`` and ``Comparison`` (Mask-Adapter vs plain mask pooling),
``SegmentationResult`` and ``Segment`` (results), ``ImageSession`` and ``SessionStore``
(what an image costs, kept once), ``Vocabulary``, ``parse_vocabulary`` and
``PREDEFINED`` (the benchmark class lists), ``load_image`` and ``check_image`` (any
image in -> HWC uint8 RGB or ``InputError``), ``pooled_embeddings_from_features``, and
the errors (``MaskAdapterError`` and its subclasses). Pictures and files:
``maskadapter.render`` and ``maskadapter.export``. Collections: ``maskadapter.batch``.
Benchmarks: ``maskadapter.datasets`` (the prepared layouts), ``maskadapter.metrics``
(the confusion matrix and mIoU) and ``maskadapter.evaluate`` (the evaluation command).
"""

# isort: off
import maskadapter.memory  # noqa: F401  (first: tunes the allocator before torch is imported)

# isort: on
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
    ResourceError,
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
    "ResourceError",
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
