"""Data files shipped with the package, found the same way in a checkout and installed.

Installed (``pip install .``), every data file lies inside the package directory:
``maskadapter/vocabularies/*.txt``, ``maskadapter/clip_configs/*.json`` and
``maskadapter/sam2_configs/*.yaml``. In a checkout (and an editable install, whose
``maskadapter`` is the checkout's), ``sam2_configs/`` stays at the top of the repository;
pyproject.toml maps it into the package (``[tool.setuptools.package-dir]``), and
``CHECKOUT_DIRS`` below says the same, so ``package_path`` finds it in both places.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# directory inside the installed package -> its place in a checkout, relative to the repo
# root; keep in step with [tool.setuptools.package-dir] in pyproject.toml
CHECKOUT_DIRS = {"sam2_configs": "sam2_configs"}


def package_path(*parts: str) -> Path:
    """Path of a data file or directory shipped with the package, e.g.
    ``package_path("sam2_configs", "sam2.1_hiera_tiny_random.yaml")``.

    The installed location wins; for a directory of ``CHECKOUT_DIRS`` missing there, the
    checkout's copy is used. The path is returned even if it does not exist, so that the
    caller's own error (e.g. "SAM-2 config not found: PATH") names where it looked.
    """
    if not parts:
        raise ValueError("package_path needs at least one path component")
    installed = PACKAGE_DIR.joinpath(*parts)
    if installed.exists() or parts[0] not in CHECKOUT_DIRS:
        return installed
    checkout = PACKAGE_DIR.parent / CHECKOUT_DIRS[parts[0]]
    candidate = checkout.joinpath(*parts[1:])
    return candidate if candidate.exists() else installed
