"""Typed exceptions raised where input enters the package.

Every message is short and says what was expected, so the app can show it as is.
"""

from __future__ import annotations


class MaskAdapterError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(MaskAdapterError, ValueError):
    """An image, point list, vocabulary or setting is not what was expected."""


class VocabularyError(InputError):
    """The vocabulary text or the predefined vocabulary names are unusable."""


class WeightsNotFoundError(MaskAdapterError, FileNotFoundError):
    """Model files are neither on disk nor downloadable."""


class CheckpointError(MaskAdapterError, RuntimeError):
    """A checkpoint file exists but does not fit the model (missing or extra keys, bad format)."""


class ResourceError(MaskAdapterError, RuntimeError):
    """The device ran out of memory even with the smallest batches."""
