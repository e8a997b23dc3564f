"""The video tracker's defaults and the prompts format, without torch.

Kept apart from ``maskadapter.engine.video`` (which tracks, with torch) so that the
command line can offer these defaults and describe ``--prompts`` without loading torch.
"""

from __future__ import annotations

MAX_OBJECTS = 16  # tracks per clip (each costs one SAM-2 memory pass per frame)
REDETECT_EVERY = 20  # frames between looks for new objects (and between namings)

PROMPTS_FORMAT = (
    '[{"frame": 0, "object": 1, "points": [[x, y, 1], ...], "box": [x0, y0, x1, y1]}, ...] '
    "(points and box in XY pixels of the clip's frames; either may be left out)"
)
