"""sam2's private members are reached from ``maskadapter.engine.sam2_internals`` alone, and
importing it checks the installed sam2 against the supported version (a warning, never
an error)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from maskadapter.engine import sam2_internals
from maskadapter.engine.sam2_internals import PRIVATE_NAMES, SUPPORTED_SAM2, check_sam2_version

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "maskadapter"
OWNER = PACKAGE / "engine" / "sam2_internals.py"

# ``x._features``, ``x . _orig_hw``, ... and the class swap ``x.__class__ = ...``
PRIVATE_USE = re.compile(r"\.\s*(?:" + "|".join(map(re.escape, PRIVATE_NAMES)) + r")\b|\.\s*__class__\s*=(?!=)")


def private_uses(package: Path) -> list[str]:
    """``path:line: code`` of each use of a name of ``PRIVATE_NAMES`` as an attribute (or
    of a ``__class__`` assignment) in the modules under ``package``, but sam2_internals.py."""
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.name == OWNER.name and path.parent.name == "engine":
            continue
        text = path.read_text()
        for match in PRIVATE_USE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(f"{path.relative_to(package.parent)}:{line}: {text.splitlines()[line - 1].strip()}")
    return found


# --------------------------------------------------------------------- the version check


def test_the_supported_version_passes_quietly():
    assert check_sam2_version(SUPPORTED_SAM2) is None


@pytest.mark.parametrize("installed", ["1.2.0", "1.0", "2.0.0"])
def test_another_version_is_named_with_the_supported_one(installed):
    message = check_sam2_version(installed)
    assert message is not None
    assert f"sam2 {installed} is installed" in message and f"sam2 {SUPPORTED_SAM2}" in message


def test_missing_metadata_is_said():
    message = check_sam2_version(None)
    assert message is not None and "no version of sam2" in message and SUPPORTED_SAM2 in message


def test_the_pinned_sam2_is_the_supported_one():
    """requirements.txt pins the release this module supports; pyproject.toml allows it."""
    pins = re.findall(r"^sam2==(\S+)", (ROOT / "requirements.txt").read_text(), re.M)
    assert pins == [SUPPORTED_SAM2]
    assert f'"sam2>={SUPPORTED_SAM2},' in (ROOT / "pyproject.toml").read_text()


def _import_warnings(patch: str = "") -> list[list[str]]:
    """[category, message] of the warnings that importing sam2_internals gives in a fresh
    process, after ``patch`` (Python run first, e.g. to fake the installed version)."""
    code = (
        "import importlib.metadata, json, warnings\n"
        f"{patch}\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    import maskadapter.engine.sam2_internals\n"
        "print(json.dumps([[w.category.__name__, str(w.message)] for w in seen]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_with_the_installed_sam2_warns_only_if_it_is_not_the_supported_one():
    expected = check_sam2_version(sam2_internals.installed_sam2())
    assert _import_warnings() == ([] if expected is None else [["UserWarning", expected]])


def test_importing_with_the_supported_sam2_gives_no_warning():
    assert _import_warnings("importlib.metadata.version = lambda name: " + repr(SUPPORTED_SAM2)) == []


def test_importing_with_another_sam2_warns_once_and_goes_on():
    seen = _import_warnings("importlib.metadata.version = lambda name: '1.2.0'")
    assert seen == [["UserWarning", check_sam2_version("1.2.0")]]


def test_importing_without_sam2_metadata_warns_once_and_goes_on():
    patch = (
        "def version(name):\n"
        "    raise importlib.metadata.PackageNotFoundError(name)\n"
        "importlib.metadata.version = version"
    )
    assert _import_warnings(patch) == [["UserWarning", check_sam2_version(None)]]


# ------------------------------------------------------------------ one owner of sam2's privates


def test_no_other_module_touches_sam2_private_members():
    assert private_uses(PACKAGE) == []


def test_the_owned_names_are_the_private_attributes_the_module_uses():
    """``PRIVATE_NAMES`` lists exactly the private attributes sam2_internals reads, writes
    or calls (dunders and torch's ``nn.Module._modules`` apart), so that the check above
    covers all of them."""
    used = {
        node.attr
        for node in ast.walk(ast.parse(OWNER.read_text()))
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
    }
    assert used - {"_modules"} == set(PRIVATE_NAMES)
    assert "__class__ =" in OWNER.read_text()


def test_the_check_finds_a_private_use(tmp_path):
    """The scan can fail: uses planted in a package copy are found, lookalikes are not."""
    package = tmp_path / "maskadapter"
    (package / "engine").mkdir(parents=True)
    (package / "engine" / "sam2_internals.py").write_text("predictor._features = None\n")  # the owner: allowed
    (package / "engine" / "other.py").write_text(
        "a = predictor._features\n"
        "predictor._orig_hw = [(1, 2)]\n"
        "b = predictor . _transforms.resolution\n"
        "c = clip_features(x)._features_more\n"  # another name
        "d = obj.__class__ == int\n"  # a comparison, not a swap
        "out = p._run_single_frame_inference(\n"
        "model.__class__ = Other\n"
    )
    lines = [use.split(":")[1] for use in private_uses(package)]
    assert lines == ["1", "2", "3", "6", "7"]
