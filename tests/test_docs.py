"""README.md and docs/*.md: their marked examples run as written, offline, and their links resolve.

A code block is run when the line before its fence is the HTML comment
``<!-- test: NAME -->`` (GitHub and the Space page do not show it); NAME is unique within
its page. Blocks that need downloads, real weights, a GPU, datasets, a running app or a Ray
cluster stay unmarked. Each marked block runs as a newcomer would run it from a clone: in
a scratch directory that holds a link to the repository's ``examples/`` (so relative paths
work and what the block writes lands there, never in the repository), with ``python`` on
the PATH being this interpreter, the package importable from the repository, the
text-embedding cache in the scratch directory and ``HF_HUB_OFFLINE=1``. What it writes must
be ignored by the repository's ``.gitignore``.

Every Markdown link and image (``[text](target)``, ``![alt](target)``) outside code must
point to an outside URL (``http(s)://``, ``mailto:``), to a file or folder of the
repository, or to a heading (``#anchor``, GitHub's slugs) of the page it names.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from maskadapter.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!-- test: (\S+) -->\n```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
OUTSIDE = ("http://", "https://", "mailto:")
RUNNERS = {  # fence language -> (command, standard input) for a block's code
    "bash": lambda code: (["bash", "-e", "-c", code], None),
    "python": lambda code: ([sys.executable, "-"], code),
}


@dataclass(frozen=True)
class Block:
    """One marked code block: its page (relative to the repository), NAME, fence language and code."""

    page: str
    name: str
    language: str
    code: str


def marked_blocks() -> list[Block]:
    """Every block marked ``<!-- test: NAME -->`` in README.md and docs/*.md, page by page."""
    return [
        Block(page.relative_to(ROOT).as_posix(), name, language, code)
        for page in PAGES
        for name, language, code in MARKER.findall(page.read_text(encoding="utf-8"))
    ]


BLOCKS = marked_blocks()


def block(page: str, name: str) -> Block:
    """The block marked ``name`` in ``page`` (which must have it)."""
    found = [b for b in BLOCKS if (b.page, b.name) == (page, name)]
    assert found, f"{page} needs a block marked <!-- test: {name} -->"
    return found[0]


@pytest.fixture()
def clone(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A scratch working directory like a clone's root, and the environment to run in."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"  # the docs say `python`: this interpreter (a venv's stays one)
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "MASKADAPTER_CACHE_DIR": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",  # offline as promised: nothing may be downloaded
    }
    return work, env


def check_cli(code: str, work: Path, stdout: str, stderr: str) -> None:
    """README's label example: its outputs for every example image it names, one line each;
    on stderr one warning about the random weights and none of the third-party warnings
    a new process used to print."""
    assert "--tiny-random" in code
    images = re.findall(r"(examples/\S+)", code)
    assert images, "the example names no example image"
    for image in images:
        assert (ROOT / image).is_file(), f"the example names {image}, which does not exist"
        segments = json.loads((work / "out" / f"{Path(image).stem}_segments.json").read_text())
        assert len(segments["segments"]) >= 1
        assert (work / "out" / f"{Path(image).stem}_overlay.png").is_file()
    assert len(stdout.splitlines()) == len(images)
    warnings = [line for line in stderr.splitlines() if "random weights" in line]
    assert len(warnings) == 1 and "--pred-iou-thresh and --stability-score-thresh default to 0" in warnings[0]
    for noise in ("FutureWarning", "torch.jit.script", "not writable", "No pretrained weights", "Skipping the post"):
        assert noise not in stderr


def check_python(code: str, work: Path, stdout: str, stderr: str) -> None:
    """README's Python example: the overlay written and (label, score) pairs printed."""
    assert "Settings(tiny_random=True)" in code
    assert (work / "overlay.png").is_file()
    assert stdout.strip().startswith("[('")  # at least one (label, score)


def check_batch(code: str, work: Path, stdout: str, stderr: str) -> None:
    """docs/batch.md's example: every matched example labelled, in the summary and the COCO file."""
    assert "--tiny-random" in code
    expected = sorted(p.name for p in (ROOT / "examples").glob("c*.png"))
    summary = json.loads((work / "labels" / "summary.json").read_text())
    assert sorted(done["file"] for done in summary["done"]) == expected and not summary["failed"]
    coco = json.loads((work / "labels" / "results.json").read_text())
    assert len(coco["images"]) == len(expected) and coco["annotations"]


CHECKS: dict[tuple[str, str], Callable[[str, Path, str, str], None]] = {
    ("README.md", "cli"): check_cli,
    ("README.md", "python"): check_python,
    ("docs/batch.md", "batch"): check_batch,
}


def written_files(work: Path) -> list[str]:
    """Paths (relative, POSIX) of the files a block wrote in the scratch clone."""
    return sorted(
        p.relative_to(work).as_posix()
        for p in work.rglob("*")
        if p.is_file() and not p.relative_to(work).as_posix().startswith("examples/")
    )


def not_ignored(paths: list[str]) -> list[str]:
    """The paths the repository's .gitignore does not cover (``git check-ignore``)."""
    done = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "--no-index", "--stdin", "-v", "-n"],
        input="\n".join(paths) + "\n", capture_output=True, text=True, check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    return [line.split("\t", 1)[1] for line in done.stdout.splitlines() if line.startswith("::\t")]


def test_markers_mark_blocks():
    for page in PAGES:
        relative = page.relative_to(ROOT).as_posix()
        markers = re.findall(r"^<!-- test: ", page.read_text(encoding="utf-8"), flags=re.MULTILINE)
        names = [b.name for b in BLOCKS if b.page == relative]
        assert len(markers) == len(names), f"{relative}: a test marker not right before a ``` fence"
        assert len(names) == len(set(names)), f"{relative}: test block names repeat: {names}"
    for page, name in CHECKS:
        block(page, name)
    assert {b.language for b in BLOCKS} <= set(RUNNERS), "marked blocks must be bash or python"


@pytest.mark.slow
@pytest.mark.parametrize("example", BLOCKS, ids=[f"{b.page}:{b.name}" for b in BLOCKS])
def test_marked_example_runs(example: Block, clone):
    work, env = clone
    command, stdin = RUNNERS[example.language](example.code)
    done = subprocess.run(
        command, input=stdin, cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    check = CHECKS.get((example.page, example.name))
    if check is not None:
        check(example.code, work, done.stdout, done.stderr)
    if shutil.which("git") and (ROOT / ".git").exists():  # a checkout, as the examples assume
        missed = not_ignored(written_files(work))
        assert not missed, f".gitignore misses what {example.page}:{example.name} writes: {missed}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup and punctuation dropped, lower case, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings, with GitHub's ``-1``, ``-2`` for repeats."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", page.read_text(encoding="utf-8")), re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    """The targets of a page's Markdown links and images, code blocks and inline code left out."""
    text = INLINE_CODE.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    return LINK.findall(text)


def test_slug_follows_github():
    assert slug("MCP (AI assistants)") == "mcp-ai-assistants"
    assert slug("Deploy to a Space") == "deploy-to-a-space"
    assert slug("The `maskadapter` Python API") == "the-maskadapter-python-api"
    assert slug("Settings: memory & more") == "settings-memory--more"


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """The link targets of ``page`` that lead nowhere: not an outside URL, not a file or folder
    under ``root``, or a ``#anchor`` that is no heading of the Markdown page it names."""
    broken = []
    for target in links(page):
        if target.startswith(OUTSIDE):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or root not in [file, *file.parents]:
            broken.append(f"{target} (no such file in the repository)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading #{anchor} in {file.relative_to(root)})")
    return broken


def test_broken_links_are_found(tmp_path: Path):
    root = tmp_path / "repo"
    root.mkdir()
    (tmp_path / "outside.md").write_text("# Outside\n")
    (root / "other.md").write_text("# Other page\n\n## Part two\n")
    page = root / "page.md"
    page.write_text(
        "# Page\n[ok](other.md#part-two) [ok](#page) [ok](https://example.org/x) ![ok](other.md)\n"
        "[bad](missing.md) [bad](other.md#part-three) [bad](#nowhere) [bad](../outside.md)\n"
        "`[not a link](missing.md)`\n```\n[not a link](missing.md)\n```\n"
    )
    found = [entry.split(" ")[0] for entry in broken_links(page, root.resolve())]
    assert found == ["missing.md", "other.md#part-three", "#nowhere", "../outside.md"]


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_links_resolve(page: Path):
    broken = broken_links(page)
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_settings_page_lists_every_setting():
    text = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| `--")]
    for field in fields(Settings):
        flag, variable = f"--{field.name.replace('_', '-')}", f"MASKADAPTER_{field.name.upper()}"
        assert any(f"`{flag}`" in row and f"`{variable}`" in row for row in rows), f"docs/settings.md lacks {flag}"
