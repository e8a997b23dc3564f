"""Typed exceptions raised where input enters the package.

Every message is short and says what was expected, so the app can show it as is.
"""

from __future__ import annotations


class MaskAdapterError(Exception):
    """Base class of every error this package raises on purpose."""

    @property
    def summary(self) -> str:
        """The message on one line, for a toast or an API answer."""
        return " ".join(str(self).split())


class InputError(MaskAdapterError, ValueError):
    """An image, point list, vocabulary or setting is not what was expected."""


class VocabularyError(InputError):
    """The vocabulary text or the predefined vocabulary names are unusable."""


class Cancelled(MaskAdapterError):
    """The person who asked for the work stopped it (raised by a progress callback, so
    the work ends at the engine's next progress report: within one SAM-2 point batch)."""


class WeightsNotFoundError(MaskAdapterError, FileNotFoundError):
    """Model files are neither on disk nor downloadable.

    One message in three parts, each written once: ``args[0]`` says what is wrong (one
    line), ``files`` names each missing file and how to give a local copy, ``advice``
    says what to do. ``str()`` joins them in lines (the command line, the log); the app
    shows ``summary`` in a toast and the parts as Markdown in its banner.
    """

    files: tuple[str, ...] = ()
    advice: str = ""

    @classmethod
    def missing(cls, message: str, files: tuple[str, ...], advice: str) -> WeightsNotFoundError:
        err = cls(message)
        err.files, err.advice = tuple(files), advice
        return err

    def __str__(self) -> str:
        advice = [self.advice] if self.advice else []
        return "\n".join([self.message, *(f"  - {f}" for f in self.files), *advice])

    @property
    def message(self) -> str:
        """What is wrong, one line."""
        return " ".join(str(self.args[0]).split()) if self.args else ""

    @property
    def summary(self) -> str:
        return " ".join(part for part in (self.message, self.advice) if part)


class CheckpointError(MaskAdapterError, RuntimeError):
    """A checkpoint file exists but does not fit the model (missing or extra keys, bad format)."""


class ResourceError(MaskAdapterError, RuntimeError):
    """The device ran out of memory even with the smallest batches."""
