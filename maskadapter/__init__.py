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
``maskadapter.output.render`` and ``maskadapter.output.export``. Collections: ``maskadapter.cli.batch``.
Video: ``maskadapter.engine.video`` (``track_clip``), ``maskadapter.engine.video_source``
(``open_clip_file``) and ``maskadapter.output.video_export``.
Benchmarks: ``maskadapter.cli.datasets`` (the prepared layouts), ``maskadapter.cli.metrics``
(the confusion matrix and mIoU) and ``maskadapter.cli.evaluate`` (the evaluation command).
"""

import importlib
from typing import TYPE_CHECKING

# Where each public name lives. They are imported on first use (PEP 562), so that
# ``import maskadapter.settings``, ``maskadapter.errors`` or `maskadapter --help` do not
# load torch, SAM-2 and CLIP (seconds of imports) before they are needed.
_WHERE = {
    "maskadapter.engine.clip_features": (
        "VILD_TEMPLATES", "encode_vocabulary", "mask_logits", "mask_pooling_logits", "pooled_embeddings_from_features",
    ),
    "maskadapter.engine.generator": ("MaskGenerator",),
    "maskadapter.engine.images": ("check_image", "load_image"),
    "maskadapter.engine.mask_settings": ("AutoMaskSettings",),
    "maskadapter.engine.painting": ("semantic_map",),
    "maskadapter.engine.results": ("Comparison", "Segment", "SegmentationResult"),
    "maskadapter.engine.segmenter": ("Segmenter",),
    "maskadapter.engine.session": ("ImageSession", "SessionStore"),
    "maskadapter.engine.vocabulary": ("PREDEFINED", "Vocabulary", "build_vocabulary", "parse_vocabulary"),
    "maskadapter.errors": (
        "CheckpointError", "InputError", "MaskAdapterError", "ResourceError", "VocabularyError", "WeightsNotFoundError",
    ),
    "maskadapter.modeling": ("MaskAdapterHead",),
    "maskadapter.settings": ("Settings",),
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}


def __getattr__(name: str) -> object:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'maskadapter' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what type checkers and editors see
    from maskadapter.engine.clip_features import (
        VILD_TEMPLATES,
        encode_vocabulary,
        mask_logits,
        mask_pooling_logits,
        pooled_embeddings_from_features,
    )
    from maskadapter.engine.generator import MaskGenerator
    from maskadapter.engine.images import check_image, load_image
    from maskadapter.engine.mask_settings import AutoMaskSettings
    from maskadapter.engine.painting import semantic_map
    from maskadapter.engine.results import Comparison, Segment, SegmentationResult
    from maskadapter.engine.segmenter import Segmenter
    from maskadapter.engine.session import ImageSession, SessionStore
    from maskadapter.engine.vocabulary import PREDEFINED, Vocabulary, build_vocabulary, parse_vocabulary
    from maskadapter.errors import (
        CheckpointError,
        InputError,
        MaskAdapterError,
        ResourceError,
        VocabularyError,
        WeightsNotFoundError,
    )
    from maskadapter.modeling import MaskAdapterHead
    from maskadapter.settings import Settings

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
