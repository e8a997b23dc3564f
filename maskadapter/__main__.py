"""``maskadapter`` (and ``python -m maskadapter``): dispatch to a command.

maskadapter IMAGE ... --vocab "car, road" --out DIR    label images (maskadapter.cli.label)
maskadapter batch ...                                  label a collection (maskadapter.cli.batch)
maskadapter evaluate ...                               the paper's benchmarks (maskadapter.cli.evaluate)
maskadapter benchmark ...                              speed (maskadapter.cli.benchmark)
maskadapter video CLIP ... --vocab "ball" --out DIR    track and name objects (maskadapter.cli.video)
"""

from __future__ import annotations

# isort: off
import maskadapter.startup  # noqa: F401  (first: tunes the allocator before torch is loaded)

# isort: on
import importlib
import sys

COMMANDS = {name: f"maskadapter.cli.{name}" for name in ("batch", "evaluate", "benchmark", "video")}


def main(argv: list[str] | None = None) -> int:
    """Run the command named by the first argument on the rest (no command name: label
    images); the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in COMMANDS:
        return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
    return importlib.import_module("maskadapter.cli.label").main(argv)


if __name__ == "__main__":
    sys.exit(main())
