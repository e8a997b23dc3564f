"""How long each command's ``--help`` takes in a new process: the benchmark's ``help_s``
figures (``maskadapter.cli.benchmark`` is the command).

Every command answers ``--help`` (and argument errors) before torch is imported; the
target is under ``TARGET_S`` (1.5 s) for each, the wall time of a new
``python -m maskadapter [COMMAND] --help`` as a user starts it. Each command runs
``RUNS`` times, its output captured, and the median is kept; ``python -c pass``, timed
the same way, is the interpreter's own start-up, which every figure includes. The
processes import the package this one runs (its directory leads ``PYTHONPATH``).
Torch-free: a few seconds in all.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from maskadapter.resources import PACKAGE_DIR

COMMANDS = ("label", "batch", "evaluate", "benchmark", "video")  # label: plain ``maskadapter --help``
RUNS = 3
TARGET_S = 1.5
TIMEOUT_S = 60.0  # one process; a help that hangs is recorded as failed


def help_args(command: str) -> list[str]:
    """The arguments after ``python`` that ask ``command`` for its help."""
    return ["-m", "maskadapter", "--help"] if command == "label" else ["-m", "maskadapter", command, "--help"]


def time_process(args: list[str], runs: int = RUNS) -> dict:
    """Wall seconds of ``runs`` new ``sys.executable *args`` processes, one after the
    other, output captured: ``{"command", "exit": 0, "runs_s", "seconds"}`` (the median).
    A run that fails (exit status other than 0, or no answer in ``TIMEOUT_S``) ends the
    repeats: ``exit`` is its status (None when it timed out), ``error`` the last line of
    its stderr, and there is no ``seconds``."""
    path = os.pathsep.join(filter(None, [str(PACKAGE_DIR.parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    record: dict = {"command": " ".join(["python", *args]), "exit": 0, "runs_s": []}
    for _ in range(runs):
        start = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return record | {"exit": None, "error": f"no answer in {TIMEOUT_S:.0f} s"}
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            return record | {"exit": done.returncode, "error": lines[-1] if lines else ""}
        record["runs_s"].append(round(seconds, 4))
    return record | {"seconds": round(statistics.median(record["runs_s"]), 4)}


def help_figures(runs: int = RUNS) -> dict:
    """The ``help_s`` figures: ``{"target_s", "runs", "python": the record of
    ``python -c pass``, "commands": {command: its help's record}}`` (``time_process``)."""
    python = time_process(["-c", "pass"], runs)
    commands = {command: time_process(help_args(command), runs) for command in COMMANDS}
    return {"target_s": TARGET_S, "runs": runs, "python": python, "commands": commands}


def _value(record: dict, target_s: float | None = None) -> str:
    if "seconds" not in record:
        return f"failed (exit {record['exit']}: {record.get('error', '')})"
    over = target_s is not None and record["seconds"] >= target_s
    return f"{record['seconds']:.2f} s" + (f" (not under {target_s:g} s)" if over else "")


def help_rows(figures: dict) -> list[tuple[str, str]]:
    """The ``help_s`` figures as (name, value) rows of the benchmark's table."""
    target = figures["target_s"]
    title = f"--help, new process (median of {figures['runs']}; target under {target:g} s)"
    rows = [(title, f"python itself {_value(figures['python'])}")]
    for command, record in figures["commands"].items():
        name = "maskadapter --help" if command == "label" else f"maskadapter {command} --help"
        rows.append((f"  {name}", _value(record, target)))
    return rows
