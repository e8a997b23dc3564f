"""Old import paths of modules that moved into ``engine/``, ``output/`` and ``cli/``.

``import maskadapter.segmenter`` (and ``python -m maskadapter.batch``) keep working: the
old name is the new module itself, so there is one module object either way. A module
that was split (``maskadapter.masks``) answers each old name from its new place, and an
unknown name fails with a message naming those places.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

MOVED = {
    **{f"maskadapter.{m}": f"maskadapter.engine.{m}" for m in (
        "clip_features", "generator", "images", "painting", "runtime", "segmenter", "session", "transforms",
        "vocabulary", "weights",
    )},
    **{f"maskadapter.{m}": f"maskadapter.output.{m}" for m in ("render", "export")},
    **{f"maskadapter.{m}": f"maskadapter.cli.{m}" for m in (
        "batch", "batch_ray", "benchmark", "datasets", "evaluate", "metrics",
    )},
}
SPLIT = {
    "maskadapter.masks": (
        "maskadapter.engine.mask_settings",
        "maskadapter.engine.predictor",
        "maskadapter.engine.images",
    ),
}


def _split_module(name: str) -> types.ModuleType:
    places = SPLIT[name]
    module = types.ModuleType(name, f"Moved: {name} is now {', '.join(places)}.")

    def __getattr__(attr: str) -> object:
        for place in places:
            found = importlib.import_module(place)
            if hasattr(found, attr):
                return getattr(found, attr)
        raise AttributeError(f"{name} was split into {', '.join(places)}; none of them has {attr!r}")

    module.__getattr__ = __getattr__
    return module


class _Loader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        if spec.name in SPLIT:
            return _split_module(spec.name)
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: types.ModuleType) -> None:
        pass  # the new module has run already

    def get_code(self, fullname: str) -> types.CodeType:
        # python -m maskadapter.batch (the old way to run a command): run the new module's main
        target = MOVED.get(fullname)
        if target is None:
            raise ImportError(f"{fullname} was split into {', '.join(SPLIT[fullname])}; it cannot be run")
        return compile(f"import sys\nfrom {target} import main\nsys.exit(main())\n", target, "exec")

    def is_package(self, fullname: str) -> bool:
        return False


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED or fullname in SPLIT:
            return importlib.machinery.ModuleSpec(fullname, _Loader())
        return None


def install() -> None:
    """Make the old names importable (once; done when ``maskadapter`` is imported)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


install()
