"""All settings in one place: a dataclass filled from flags and environment variables.

Every field ``name`` has a command-line flag ``--name`` (underscores become dashes)
and an environment variable ``MASKADAPTER_NAME``. Precedence: flag, then environment
variable, then the default below. ``python app.py --help`` and
``maskadapter --help`` list them; docs/settings.md has the table. From Python,
``Settings(...)`` takes the defaults and the values given, and ``Settings.from_env(...)``
also reads the environment variables (values given win).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maskadapter.errors import InputError

ENV_PREFIX = "MASKADAPTER_"
SAM2_SIZES = ("tiny", "small", "base-plus", "large")
PRECISIONS = ("auto", "float32", "bf16")  # maskadapter.engine.runtime explains them
# CLIP input size presets: (short side, cap on the long side); both pad to a multiple of 32
INPUT_SIZES = {"detectron2": (800, 1333), "eval896": (896, 896)}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "maskadapter")


def _opt(default: Any, help: str, *, app_only: bool = False, choices: tuple | None = None) -> Any:
    meta = {"help": help, "app_only": app_only, "choices": choices}
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Settings:
    """Model sources, device, caches and (for the app) the server address."""

    # models
    sam_size: str = _opt("large", "SAM-2.1 size when loading from the hub", choices=SAM2_SIZES)
    sam_checkpoint: str | None = _opt(None, "local SAM-2 checkpoint (.pt with a 'model' entry)")
    sam_config: str | None = _opt(None, "SAM-2 config YAML (default: the sam2 package's sam2.1 config for --sam-size)")
    clip_model: str = _opt("convnext_large_d_320", "open_clip model name (a ConvNeXt CLIP)")
    clip_pretrained: str = _opt("laion2b_s29b_b131k_ft_soup", "open_clip pretrained tag")
    clip_checkpoint: str | None = _opt(None, "local open_clip checkpoint for --clip-model")
    adapter_repo: str = _opt("owl10/Mask-Adapter", "hub repo of the Mask-Adapter weights")
    adapter_file: str = _opt(
        "fcclip_convnext_large_maskadapter.pth", "file in --adapter-repo (head-only or full model)"
    )
    adapter_checkpoint: str | None = _opt(None, "local Mask-Adapter file (head-only or full model)")
    tiny_random: bool = _opt(False, "use small random-weight models (offline development; labels are meaningless)")
    # runtime
    device: str = _opt("auto", "torch device: auto, cpu, cuda, cuda:1, ...")
    cache_dir: str = _opt(_default_cache_dir, "directory for the text-embedding cache")
    text_cache_entries: int = _opt(20000, "text embeddings kept in memory (LRU)")
    text_cache_mb: int = _opt(256, "cap on the on-disk text-embedding cache, MB; oldest files removed")
    input_size: str = _opt(
        "detectron2",
        "CLIP input size preset: detectron2 (short side 800, long side at most 1333: the demo's config) or "
        "eval896 (long side 896: the published evaluation of the shipped weights)",
        choices=tuple(INPUT_SIZES),
    )
    short_side: int | None = _opt(None, "CLIP input: resize so the short side has this many pixels (default: preset)")
    max_size: int | None = _opt(None, "CLIP input: cap on the long side after resizing (default: preset)")
    mask_side: int = _opt(1024, "working resolution: long side of masks while they are made, classified and painted")
    session_cache_mb: int = _opt(2048, "byte budget of the image-session store (embeddings, features, masks; CPU+GPU)")
    precision: str = _opt(
        "auto",
        "arithmetic of the networks: auto (bf16 autocast on GPUs and on CPUs with AMX or AVX-512 BF16, fp16 on "
        "GPUs older than compute capability 8, float32 elsewhere), float32, or bf16 (forced)",
        choices=PRECISIONS,
    )
    video_side: int = _opt(640, "video: working resolution, the long side frames are shrunk to before tracking")
    video_max_seconds: int = _opt(300, "video: longest clip accepted, seconds")
    video_max_frames: int = _opt(3000, "video: most frames processed per clip (after --every)")
    video_max_side: int = _opt(3840, "video: largest frame accepted, pixels on the long side")
    compile: bool = _opt(False, "torch.compile SAM-2's image encoder and mask decoder (GPU; slow first call)")
    # app only
    sam_models: int = _opt(
        2, "SAM-2 sizes kept loaded at once; the least recently used other than --sam-size is unloaded", app_only=True
    )
    host: str | None = _opt(None, "address to serve on (default: Gradio's)", app_only=True)
    port: int | None = _opt(None, "port to serve on (default: Gradio's, 7860)", app_only=True)
    share: bool = _opt(False, "create a public Gradio share link", app_only=True)
    concurrency: int = _opt(
        2, "requests the app runs at once per event (model work itself takes turns on one lock)", app_only=True
    )
    queue_size: int = _opt(64, "requests that may wait in the app's queue; more are turned away", app_only=True)
    max_upload_mb: int = _opt(50, "largest file the app accepts as an upload, MB", app_only=True)
    verbose: bool = _opt(False, "show third-party warnings and debug-level detail in the app's log", app_only=True)
    mcp: bool = _opt(
        False,
        "also serve the API as an MCP server for AI assistants (streamable HTTP at /gradio_api/mcp/; needs `mcp`)",
        app_only=True,
    )

    def __post_init__(self) -> None:
        if self.input_size not in INPUT_SIZES:
            raise InputError(f"input_size must be one of {', '.join(INPUT_SIZES)}, got {self.input_size!r}")
        preset = INPUT_SIZES[self.input_size]
        self.short_side = preset[0] if self.short_side is None else self.short_side
        self.max_size = preset[1] if self.max_size is None else self.max_size
        check_precision(self.precision)
        if self.sam_size not in SAM2_SIZES:
            raise InputError(f"sam_size must be one of {', '.join(SAM2_SIZES)}, got {self.sam_size!r}")
        if self.mask_side < 64:
            raise InputError(f"mask_side must be at least 64, got {self.mask_side}")
        minimums = {"video_side": 64, "video_max_seconds": 1, "video_max_frames": 1, "video_max_side": 64}
        for name, least in minimums.items():
            if getattr(self, name) < least:
                raise InputError(f"{name} must be at least {least}, got {getattr(self, name)}")
        if self.session_cache_mb < 1:
            raise InputError(f"session_cache_mb must be at least 1, got {self.session_cache_mb}")
        if self.short_side < 32 or self.max_size < self.short_side:
            raise InputError(f"expected 32 <= short_side <= max_size, got {self.short_side} and {self.max_size}")
        for name in ("concurrency", "queue_size", "max_upload_mb", "sam_models"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.text_cache_entries < 0 or self.text_cache_mb < 0:
            got = f"{self.text_cache_entries} and {self.text_cache_mb}"
            raise InputError(f"text_cache_entries and text_cache_mb must be >= 0, got {got}")

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()

    @classmethod
    def env_name(cls, name: str) -> str:
        return ENV_PREFIX + name.upper()

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Settings for Python callers: keyword ``overrides`` over environment variables
        ``MASKADAPTER_<NAME>`` over the defaults (``Settings()`` alone reads no environment).

        Overrides are Python values, as for ``Settings(...)``; ``None`` is a value too (it
        clears an environment variable's path). An unknown name, or an environment value
        that does not parse, raises ``InputError`` naming it.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [name for name in overrides if name not in names]
        if unknown:
            hints = []
            for name in unknown:
                close = difflib.get_close_matches(name, names, n=1)
                hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            known = ", ".join(names)
            raise InputError(f"Settings.from_env: unknown setting {', '.join(hints)}; the settings are {known}")
        return _settings(overrides, os.environ)


def check_precision(precision: str) -> str:
    """``precision`` if it is one of ``PRECISIONS``, else ``InputError``."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def _field_type(f: dataclasses.Field) -> type:
    text = str(f.type)
    if "bool" in text:
        return bool
    if "int" in text:
        return int
    return str


def _parse_env(f: dataclasses.Field, raw: str) -> Any:
    kind = _field_type(f)
    if kind is bool:
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise InputError(f"{Settings.env_name(f.name)} must be true or false, got {raw!r}")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise InputError(f"{Settings.env_name(f.name)} must be an integer, got {raw!r}") from None
    return raw


def add_arguments(
    parser: argparse.ArgumentParser, *, app: bool = False, program_defaults: Mapping[str, Any] | None = None
) -> None:
    """Add one flag per setting (app-only ones when ``app``); defaults stay None so
    that ``settings_from_args`` can tell a given flag from an absent one.
    ``program_defaults``: defaults the program applies itself when a setting is not
    given (shown in the help instead of the dataclass's)."""
    group = parser.add_argument_group("settings (each also read from MASKADAPTER_<NAME>)")
    for f in dataclasses.fields(Settings):
        if f.metadata["app_only"] and not app:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        default = (program_defaults or {}).get(f.name, default)
        shown = "" if default in (None, False) else f" (default: {default})"
        help_text = f"{f.metadata['help']}{shown} [env {Settings.env_name(f.name)}]"
        if _field_type(f) is bool:
            group.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            group.add_argument(
                flag,
                type=_field_type(f),
                default=None,
                choices=f.metadata["choices"],
                metavar=None if f.metadata["choices"] else f.name.split("_")[-1].upper(),
                help=help_text,
            )


def _settings(given: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    """Settings from ``given`` values over environment variables over defaults; an
    environment variable is parsed only for a field not given."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        if f.name in given:
            values[f.name] = given[f.name]
        elif Settings.env_name(f.name) in env:
            values[f.name] = _parse_env(f, env[Settings.env_name(f.name)])
    return Settings(**values)


def settings_from_args(args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from parsed flags (may be None) over environment variables over defaults."""
    given: dict[str, Any] = {}
    if args is not None:
        for f in dataclasses.fields(Settings):
            if getattr(args, f.name, None) is not None:
                given[f.name] = getattr(args, f.name)
    return _settings(given, os.environ if env is None else env)
