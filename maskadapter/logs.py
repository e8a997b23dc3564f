"""Quiet logs for the command line (and the app's start): log levels, and the known
third-party warnings that every run would otherwise repeat.

The known ones, none of which a user can act on:

- torch's ``FutureWarning`` "`torch.jit.script` is deprecated", raised each time
  sam2 builds its ``SAM2Transforms`` (inside ``SAM2ImagePredictor.__init__``);
- sam2's ``UserWarning`` "cannot import name '_C' ... Skipping the post-processing
  step", when its compiled extension is not installed (CPU installs) and sam2's own
  hole filling is asked for (sam2's ``SAM2AutomaticMaskGenerator``, which the benchmark
  runs; ``maskadapter.MaskGenerator`` removes small regions without it);
- open_clip's log line "No pretrained weights loaded for model ...", when CLIP is built
  without weights on purpose (``--tiny-random``, which says so itself).

NumPy's "The given NumPy array is not writable" warning does not happen any more:
``masks.CachingPredictor`` hands SAM-2 a writable array.

``setup_logging`` installs the filters (unless ``verbose``) and nothing else: importing
``maskadapter`` as a library silences nothing beyond sam2's post-processing warning,
which ``maskadapter.engine.predictor`` shows once.
"""

from __future__ import annotations

import logging
import warnings

# (category, regular expression matched at the start of the message)
KNOWN_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, r"`torch\.jit\.script` is deprecated"),
    (UserWarning, r"[\s\S]*Skipping the post-processing step"),
)
# log messages (their start) dropped unless verbose
KNOWN_LOGS: tuple[str, ...] = ("No pretrained weights loaded for model",)
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


class KnownLogFilter(logging.Filter):
    """Drops records whose message starts with one of ``KNOWN_LOGS``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(KNOWN_LOGS)


def quiet_known_warnings() -> None:
    """Ignore ``KNOWN_WARNINGS`` (each filter is added once, however often this is called)."""
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)  # replaces an equal filter


def setup_logging(verbose: bool = False) -> None:
    """Log levels for a program run: INFO logs with ``verbose``; otherwise warnings and
    errors only, with ``KNOWN_WARNINGS`` ignored and ``KNOWN_LOGS`` dropped.

    Messages go to stderr as "LEVEL logger: message". Safe to call more than once (the
    last call decides).
    """
    logging.basicConfig(format=LOG_FORMAT)
    root = logging.getLogger()
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    # open_clip logs through the root logger itself, so a filter on it sees those records
    for old in [f for f in root.filters if isinstance(f, KnownLogFilter)]:
        root.removeFilter(old)
    if verbose:
        for category, message in KNOWN_WARNINGS:
            warnings.filterwarnings("default", message=message, category=category)
    else:
        root.addFilter(KnownLogFilter())
        quiet_known_warnings()
