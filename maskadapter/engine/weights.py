"""Where model weights come from, and one builder per model.

Builders take a local checkpoint path and a device and return an eval-mode module,
loaded with ``torch.load(..., weights_only=True)`` and ``strict=True``:

    build_sam2_model(checkpoint, device, config)   SAM-2 image model (official sam2 package)
    build_clip(checkpoint, device, model_name)     open_clip ConvNeXt CLIP and its tokenizer
    build_adapter(checkpoint, device)              MaskAdapterHead (head-only or full-model file)

``resolve_model_files`` turns settings into local paths: a path given by flag or
environment variable wins; otherwise the file comes from the Hugging Face Hub cache,
downloading it when the hub is reachable. With no network and nothing cached it fails
within seconds, naming every missing file and the flags that point at local copies.

``build_tiny_random`` / ``save_tiny_random`` make small random-weight models of the same
architectures for tests and offline development.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import sam2
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from maskadapter.errors import CheckpointError, WeightsNotFoundError
from maskadapter.modeling import MaskAdapterHead
from maskadapter.progress import ProgressCallback, no_progress
from maskadapter.resources import package_path
from maskadapter.settings import Settings

log = logging.getLogger(__name__)

SAM2_CONFIG_DIR = Path(sam2.__file__).resolve().parent / "configs" / "sam2.1"
# size -> (hub repo, checkpoint file, config file in the sam2 package)
SAM2_HUB = {
    "tiny": ("facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt", "sam2.1_hiera_t.yaml"),
    "small": ("facebook/sam2.1-hiera-small", "sam2.1_hiera_small.pt", "sam2.1_hiera_s.yaml"),
    "base-plus": ("facebook/sam2.1-hiera-base-plus", "sam2.1_hiera_base_plus.pt", "sam2.1_hiera_b+.yaml"),
    "large": ("facebook/sam2.1-hiera-large", "sam2.1_hiera_large.pt", "sam2.1_hiera_l.yaml"),
}
CLIP_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
ADAPTER_PREFIX = "mask_adapter."

# shipped with the package (sam2_configs/ sits at the top of a checkout; see maskadapter.resources)
TINY_SAM2_CONFIG = package_path("sam2_configs", "sam2.1_hiera_tiny_random.yaml")
TINY_CLIP_CONFIG = package_path("clip_configs", "tiny-random-convnext.json")
TINY_CLIP_NAME = TINY_CLIP_CONFIG.stem
TINY_ADAPTER = dict(num_channels=32, mask_in_chans=16, num_output_maps=4)
HUB_PROBE_TIMEOUT_S = 3.0


# ---------------------------------------------------------------------------- builders


def _load_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors of many kinds; report them as one
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {err}") from err


def _name_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:12])
    return shown + (f" (+{len(keys) - 12} more)" if len(keys) > 12 else "")


def _load_strict(module: torch.nn.Module, state_dict: dict, what: str, path: str | os.PathLike) -> None:
    """``load_state_dict(strict=True)`` with a message that names the offending keys."""
    expected = set(module.state_dict())
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    problems = []
    if missing:
        problems.append(f"missing keys: {_name_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_name_keys(unexpected)}")
    if problems:
        raise CheckpointError(f"{path} is not a {what} checkpoint: " + "; ".join(problems))
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:  # shape mismatches
        raise CheckpointError(f"{path} does not fit the {what}: {str(err)[:600]}") from err


def build_sam2_model(
    checkpoint: str | os.PathLike | None, device: str | torch.device, config: str | os.PathLike
) -> torch.nn.Module:
    """SAM-2 image model from a sam2 YAML config and a checkpoint ``{"model": state_dict}``.

    ``checkpoint=None`` keeps the random initialisation (used by ``build_tiny_random``).
    The model is built like ``sam2.build_sam.build_sam2(..., apply_postprocessing=False)``
    (the demo's choice), from any config file path.
    """
    config = Path(config)
    if not config.is_file():
        raise WeightsNotFoundError(f"SAM-2 config not found: {config}")
    cfg = OmegaConf.load(config)
    OmegaConf.resolve(cfg)
    model = instantiate(cfg.model, _recursive_=True)
    if checkpoint is not None:
        data = _load_file(checkpoint)
        if not isinstance(data, dict) or "model" not in data:
            raise CheckpointError(f"{checkpoint} is not a SAM-2 checkpoint (no 'model' entry)")
        _load_strict(model, data["model"], "SAM-2 (config " + config.name + ")", checkpoint)
    return model.to(device).eval()


def _register_clip_config(model_name: str) -> None:
    if model_name == TINY_CLIP_NAME and model_name not in open_clip.list_models():
        open_clip.add_model_config(TINY_CLIP_CONFIG)


def build_clip(
    checkpoint: str | os.PathLike | None, device: str | torch.device, model_name: str
) -> tuple[torch.nn.Module, Callable]:
    """open_clip CLIP ``model_name`` with weights from a local file, and its tokenizer.

    ``checkpoint=None`` keeps the random initialisation. Loading goes through
    open_clip's own loader (strict, ``weights_only=True``).
    """
    _register_clip_config(model_name)
    if model_name not in open_clip.list_models():
        raise CheckpointError(f"unknown open_clip model {model_name!r}")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise WeightsNotFoundError(f"CLIP checkpoint not found: {checkpoint}")
    try:
        model = open_clip.create_model(
            model_name, pretrained=str(checkpoint) if checkpoint else None, weights_only=True
        )
    except RuntimeError as err:  # open_clip's strict load_state_dict
        raise CheckpointError(f"{checkpoint} does not fit open_clip {model_name}: {str(err)[:500]}") from err
    visual = model.visual
    if not (hasattr(visual, "trunk") and hasattr(visual.trunk, "stages")):
        raise CheckpointError(f"{model_name} is not a ConvNeXt CLIP; Mask-Adapter needs one")
    return model.to(device).eval(), open_clip.get_tokenizer(model_name)


def adapter_state_dict(data: object, path: str | os.PathLike = "checkpoint") -> dict:
    """The head's state dict from a head-only file or a full Mask-Adapter model file
    (optionally wrapped as ``{"model": ...}``, head entries prefixed ``mask_adapter.``)."""
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise CheckpointError(f"{path} holds no state dict")
    prefixed = {k[len(ADAPTER_PREFIX) :]: v for k, v in data.items() if k.startswith(ADAPTER_PREFIX)}
    return prefixed or data


def build_adapter(checkpoint: str | os.PathLike, device: str | torch.device) -> MaskAdapterHead:
    """``MaskAdapterHead`` loaded strictly from a head-only or full-model file.

    The head's sizes are read from the tensor shapes, so heads for other CLIP widths
    load too; anything that is not a complete head fails naming the missing keys.
    """
    sd = adapter_state_dict(_load_file(checkpoint), checkpoint)
    sizes = {}
    shape_of = {
        "clip_dim": ("mask_downscaling.6.weight", 0),
        "num_channels": ("fuse.weight", 0),
        "mask_in_chans": ("mask_downscaling.3.weight", 0),
        "num_output_maps": ("final.weight", 0),
    }
    for arg, (key, dim) in shape_of.items():
        if key in sd and hasattr(sd[key], "shape"):
            sizes[arg] = int(sd[key].shape[dim])
    head = MaskAdapterHead(**sizes)
    _load_strict(head, sd, "Mask-Adapter head", checkpoint)
    return head.to(device).eval()


# ---------------------------------------------------------------------------- sources


@dataclass
class Models:
    """The three models, ready on one device."""

    sam2: torch.nn.Module
    clip: torch.nn.Module
    tokenizer: Callable
    adapter: MaskAdapterHead
    clip_key: str
    real_weights: bool
    description: str
    sam2_config: Path | None = None  # the SAM-2 config file the model was built from


@dataclass
class ModelFiles:
    """Local files for the three models."""

    sam2_checkpoint: Path
    sam2_config: Path
    clip_model: str
    clip_checkpoint: Path
    adapter_checkpoint: Path


@dataclass
class _HubFile:
    what: str
    repo: str
    filenames: tuple[str, ...]
    flag: str

    def describe(self) -> str:
        files = " or ".join(self.filenames)
        env = Settings.env_name(self.flag.removeprefix("--").replace("-", "_"))
        return f"{self.what}: file {files} of hub repo {self.repo}; a local copy: {self.flag} PATH or {env}=PATH"


def _cached(entry: _HubFile) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for name in entry.filenames:
        hit = try_to_load_from_cache(entry.repo, name)
        if isinstance(hit, str):
            return Path(hit)
    return None


def _hub_reachable() -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _download(entry: _HubFile) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    for name in entry.filenames:
        try:
            return Path(hf_hub_download(entry.repo, name))
        except EntryNotFoundError:
            continue
    raise WeightsNotFoundError(f"{entry.what}: none of {entry.filenames} exists in hub repo {entry.repo}")


def _local(path: str | None, flag: str) -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsNotFoundError(f"{flag} {path}: no such file")
    return p


def _fetch(entries: dict[str, tuple[Path | None, _HubFile]], progress: ProgressCallback) -> dict[str, Path]:
    """Local path for each entry: the given local file, else the hub cache, else a
    download (``progress`` hears each, with the fraction of the downloads done). Fails
    at once, naming every missing file, when the hub is unreachable."""
    paths = {key: local or _cached(entry) for key, (local, entry) in entries.items()}
    missing = [key for key, path in paths.items() if path is None]
    if missing and not _hub_reachable():
        from huggingface_hub import constants

        raise WeightsNotFoundError.missing(
            f"Model weights missing: the Hugging Face Hub ({constants.ENDPOINT}) cannot be reached and "
            f"{'this file is' if len(missing) == 1 else f'these {len(missing)} files are'} not in its cache "
            f"({constants.HF_HUB_CACHE}).",
            tuple(entries[key][1].describe() for key in missing),
            "Download them where the hub is reachable (e.g. hf download REPO FILE) and give their paths with "
            f"{' / '.join(entries[key][1].flag for key in missing)} or the MASKADAPTER_* variables (from Python: "
            "Settings(sam_checkpoint=PATH, ...), or Settings.from_env() to read the variables), or run with "
            "--tiny-random (random weights, meaningless labels).",
        )
    for done, key in enumerate(missing):
        entry = entries[key][1]
        progress(done / len(missing), f"downloading {entry.what} from {entry.repo} (first run only)")
        paths[key] = _download(entry)
    return paths


def _sam2_entry(settings: Settings, size: str) -> tuple[Path | None, _HubFile]:
    repo, filename, _ = SAM2_HUB[size]
    local = _local(settings.sam_checkpoint, "--sam-checkpoint") if size == settings.sam_size else None
    return local, _HubFile(f"SAM-2.1 {size}", repo, (filename,), "--sam-checkpoint")


def sam2_config_for(settings: Settings, size: str) -> Path:
    """The config of SAM-2 ``size``: --sam-config for the configured size, else the sam2 package's."""
    if size == settings.sam_size and settings.sam_config:
        return _local(settings.sam_config, "--sam-config")
    return SAM2_CONFIG_DIR / SAM2_HUB[size][2]


def resolve_sam2_file(settings: Settings, size: str, progress: ProgressCallback = no_progress) -> Path:
    """Local checkpoint of SAM-2.1 ``size`` (the configured local file for the configured size)."""
    return _fetch({"sam2": _sam2_entry(settings, size)}, progress)["sam2"]


def resolve_model_files(settings: Settings, progress: ProgressCallback = no_progress) -> ModelFiles:
    """Local paths of the three checkpoints (downloading what is missing, if possible)."""
    clip_cfg = open_clip.get_pretrained_cfg(settings.clip_model, settings.clip_pretrained)
    clip_repo = (clip_cfg.get("hf_hub") or "").strip("/")
    if settings.clip_checkpoint is None and not clip_repo:
        raise WeightsNotFoundError(
            f"open_clip has no hub weights for {settings.clip_model} / {settings.clip_pretrained}; "
            "pass --clip-checkpoint PATH"
        )
    clip_what = f"CLIP {settings.clip_model} ({settings.clip_pretrained})"
    adapter_file = (settings.adapter_file,)
    paths = _fetch(
        {
            "sam2": _sam2_entry(settings, settings.sam_size),
            "clip": (
                _local(settings.clip_checkpoint, "--clip-checkpoint"),
                _HubFile(clip_what, clip_repo, CLIP_HUB_FILES, "--clip-checkpoint"),
            ),
            "adapter": (
                _local(settings.adapter_checkpoint, "--adapter-checkpoint"),
                _HubFile("Mask-Adapter head", settings.adapter_repo, adapter_file, "--adapter-checkpoint"),
            ),
        },
        progress,
    )
    return ModelFiles(
        sam2_checkpoint=paths["sam2"],
        sam2_config=sam2_config_for(settings, settings.sam_size),
        clip_model=settings.clip_model,
        clip_checkpoint=paths["clip"],
        adapter_checkpoint=paths["adapter"],
    )


def clip_fingerprint(model_name: str, checkpoint: str | os.PathLike | None) -> str:
    """Identifies CLIP weights for the text-embedding cache (name + file identity)."""
    if checkpoint is None:
        return f"{model_name}:random"
    st = Path(checkpoint).stat()
    return f"{model_name}:{Path(checkpoint).resolve()}:{st.st_size}:{st.st_mtime_ns}"


# ---------------------------------------------------------------------------- tiny random


def build_tiny_random(device: str | torch.device = "cpu", seed: int = 0) -> Models:
    """Small random-weight models of the real architectures, identical for a given seed
    (each model drawn from its own seed, so that a change to one leaves the others)."""
    torch.manual_seed(seed)
    sam = build_sam2_model(None, device, TINY_SAM2_CONFIG)
    torch.manual_seed(seed + 1)
    clip, tokenizer = build_clip(None, device, TINY_CLIP_NAME)
    embed_dim = open_clip.get_model_config(TINY_CLIP_NAME)["embed_dim"]
    torch.manual_seed(seed + 2)
    adapter = MaskAdapterHead(clip_dim=embed_dim, **TINY_ADAPTER)
    with torch.no_grad():  # layer scale 1e-6 would hide the blocks entirely
        for block in (adapter.cnext1, adapter.cnext2, adapter.cnext3):
            block.gamma.normal_(0, 0.5)
    return Models(
        sam2=sam,
        clip=clip,
        tokenizer=tokenizer,
        adapter=adapter.to(device).eval(),
        clip_key=f"{TINY_CLIP_NAME}:seed{seed}",
        real_weights=False,
        description=f"tiny random models (seed {seed})",
        sam2_config=TINY_SAM2_CONFIG,
    )


def build_real_size_random(
    device: str | torch.device = "cpu", sam_size: str = "large", clip_model: str = "convnext_large_d_320", seed: int = 0
) -> Models:
    """The real architectures (SAM-2.1 ``sam_size``, a ConvNeXt CLIP, the default-size
    head) with random weights: for timing and memory figures, never for labels."""
    torch.manual_seed(seed)
    sam = build_sam2_model(None, device, SAM2_CONFIG_DIR / SAM2_HUB[sam_size][2])
    clip, tokenizer = build_clip(None, device, clip_model)
    adapter = MaskAdapterHead(clip_dim=open_clip.get_model_config(clip_model)["embed_dim"])
    return Models(
        sam2=sam,
        clip=clip,
        tokenizer=tokenizer,
        adapter=adapter.to(device).eval(),
        clip_key=f"{clip_model}:random-seed{seed}",
        real_weights=False,
        description=f"real-size random models (SAM-2.1 {sam_size}, {clip_model}, head; seed {seed})",
        sam2_config=SAM2_CONFIG_DIR / SAM2_HUB[sam_size][2],
    )


def save_tiny_random(directory: str | os.PathLike, seed: int = 0) -> ModelFiles:
    """Write the tiny random models as checkpoint files in the official formats."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    models = build_tiny_random("cpu", seed)
    files = ModelFiles(
        sam2_checkpoint=directory / "sam2_tiny_random.pt",
        sam2_config=TINY_SAM2_CONFIG,
        clip_model=TINY_CLIP_NAME,
        clip_checkpoint=directory / "clip_tiny_random.pt",
        adapter_checkpoint=directory / "adapter_tiny_random.pth",
    )
    torch.save({"model": models.sam2.state_dict()}, files.sam2_checkpoint)
    torch.save(models.clip.state_dict(), files.clip_checkpoint)
    torch.save(models.adapter.state_dict(), files.adapter_checkpoint)
    return files


def build_models(files: ModelFiles, device: str | torch.device, progress: ProgressCallback = no_progress) -> Models:
    """Build the three models from local files (see ``resolve_model_files``);
    ``progress`` hears which one is loading."""
    progress(0.0, "loading SAM-2")
    sam = build_sam2_model(files.sam2_checkpoint, device, files.sam2_config)
    progress(1 / 3, "loading CLIP")
    clip, tokenizer = build_clip(files.clip_checkpoint, device, files.clip_model)
    progress(2 / 3, "loading Mask-Adapter")
    adapter = build_adapter(files.adapter_checkpoint, device)
    embed_dim = open_clip.get_model_config(files.clip_model)["embed_dim"]
    if adapter.clip_dim != embed_dim:
        raise CheckpointError(
            f"the Mask-Adapter head expects CLIP features of size {adapter.clip_dim}, "
            f"but {files.clip_model} has embedding size {embed_dim}"
        )
    return Models(
        sam2=sam,
        clip=clip,
        tokenizer=tokenizer,
        adapter=adapter,
        clip_key=clip_fingerprint(files.clip_model, files.clip_checkpoint),
        real_weights=files.sam2_config != TINY_SAM2_CONFIG and files.clip_model != TINY_CLIP_NAME,
        description=(
            f"SAM-2 {Path(files.sam2_checkpoint).name}, CLIP {files.clip_model}, "
            f"Mask-Adapter {Path(files.adapter_checkpoint).name}"
        ),
        sam2_config=Path(files.sam2_config),
    )
