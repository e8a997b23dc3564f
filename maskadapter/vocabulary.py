"""Vocabularies: user text -> classes with synonyms, predefined lists, embedding cache.

Text syntax (user input and the files in ``vocabularies/``): classes are separated by
commas or new lines, synonyms of one class by ``|``::

    tree | bush, sky
    person | people

Whitespace around names is trimmed, empty names are ignored, a repeated synonym in a
class and a class whose label (its first synonym) was already given are dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maskadapter.clip_features import VILD_TEMPLATES, encode_vocabulary
from maskadapter.errors import VocabularyError

log = logging.getLogger(__name__)

VOCABULARY_DIR = Path(__file__).parent / "vocabularies"
# name -> (title shown to users, file in VOCABULARY_DIR)
PREDEFINED: dict[str, tuple[str, str]] = {
    "ade20k": ("ADE20K-150", "ade20k.txt"),
    "coco": ("COCO panoptic 133", "coco.txt"),
    "pascal_context": ("Pascal Context 59", "pascal_context.txt"),
    "pascal_voc": ("Pascal VOC 20", "pascal_voc.txt"),
}
MAX_CLASSES = 1000
MAX_NAME_CHARS = 100


@dataclass(frozen=True)
class Vocabulary:
    """An ordered set of classes; each class is a tuple of synonyms, the first is its label."""

    classes: tuple[tuple[str, ...], ...]

    @property
    def labels(self) -> list[str]:
        return [synonyms[0] for synonyms in self.classes]

    def __len__(self) -> int:
        return len(self.classes)

    def to_text(self) -> str:
        """The vocabulary in the input syntax, one class per line."""
        return "\n".join(" | ".join(synonyms) for synonyms in self.classes)


def _split_classes(text: str) -> Iterable[list[str]]:
    for item in re.split(r"[,\n]", text):
        yield [name.strip() for name in item.split("|")]


def _dedupe(classes: Iterable[Sequence[str]]) -> list[tuple[str, ...]]:
    seen_labels: set[str] = set()
    result = []
    for names in classes:
        synonyms: list[str] = []
        seen: set[str] = set()
        for name in names:
            name = " ".join(name.split())
            if not name or name.casefold() in seen:
                continue
            if len(name) > MAX_NAME_CHARS:
                raise VocabularyError(f"class names are at most {MAX_NAME_CHARS} characters; got {name[:30]!r}...")
            seen.add(name.casefold())
            synonyms.append(name)
        if synonyms and synonyms[0].casefold() not in seen_labels:
            seen_labels.add(synonyms[0].casefold())
            result.append(tuple(synonyms))
    return result


def parse_vocabulary(text: str) -> list[tuple[str, ...]]:
    """Classes (tuples of synonyms) from text like ``"tree | bush, sky"``; may be empty."""
    if not isinstance(text, str):
        raise VocabularyError(f"vocabulary must be text, got {type(text).__name__}")
    return _dedupe(_split_classes(text))


def load_predefined(name: str) -> list[tuple[str, ...]]:
    """The classes of a predefined vocabulary by name (see ``PREDEFINED``)."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    titles = {title.lower(): k for k, (title, _) in PREDEFINED.items()}
    key = titles.get(name.strip().lower(), key)
    if key not in PREDEFINED:
        known = ", ".join(f"{k} ({title})" for k, (title, _) in PREDEFINED.items())
        raise VocabularyError(f"unknown predefined vocabulary {name!r}; choose from {known}")
    lines = (VOCABULARY_DIR / PREDEFINED[key][1]).read_text(encoding="utf-8").splitlines()
    return parse_vocabulary("\n".join(line for line in lines if not line.lstrip().startswith("#")))


def build_vocabulary(text: str = "", predefined: Sequence[str] = ()) -> Vocabulary:
    """Custom classes from ``text`` followed by the named predefined vocabularies.

    Raises ``VocabularyError`` when the result is empty or too large.
    """
    classes = parse_vocabulary(text or "")
    for name in predefined or ():
        classes.extend(load_predefined(name))
    classes = _dedupe(classes)
    if not classes:
        raise VocabularyError(
            "the vocabulary is empty: type class names separated by commas, "
            "e.g. 'car, road, tree | bush', or pick a predefined vocabulary"
        )
    if len(classes) > MAX_CLASSES:
        raise VocabularyError(f"at most {MAX_CLASSES} classes, got {len(classes)}")
    return Vocabulary(tuple(classes))


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class TextEmbeddingCache:
    """Text embeddings per synonym, in memory and on disk, for one CLIP model.

    Entries are keyed by the CLIP model (``model_key``, e.g. name and checkpoint), the
    template set and the synonym string, so a name is encoded once per machine. Disk
    layout: ``<cache_dir>/text_embeddings/<namespace>/<sha1(synonym)>.npy``, one (D,)
    float32 row per file. Both levels are bounded: at most ``memory_entries`` rows in
    memory (least recently used dropped first) and ``disk_bytes`` of ``.npy`` files on
    disk (oldest modification time removed first; a read refreshes it). Disk errors are
    logged once and otherwise ignored. ``encoder_calls`` counts calls into the text encoder.
    """

    def __init__(
        self,
        clip_model: torch.nn.Module,
        tokenizer,
        model_key: str,
        cache_dir: str | os.PathLike | None = None,
        templates: Sequence[str] = VILD_TEMPLATES,
        memory_entries: int = 20000,
        disk_bytes: int = 256 * 2**20,
    ) -> None:
        self.clip_model = clip_model
        self.tokenizer = tokenizer
        self.templates = tuple(templates)
        self.namespace = _sha1(model_key + "\n" + "\n".join(self.templates))[:20]
        self.directory = Path(cache_dir).expanduser() / "text_embeddings" / self.namespace if cache_dir else None
        self.memory_entries = max(0, int(memory_entries))
        self.disk_bytes = max(0, int(disk_bytes))
        self._model_key = model_key
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()  # name -> (D,), oldest first
        self._lock = threading.Lock()
        self._last_ns = 0
        self._warned = False
        self.encoder_calls = 0

    def _disk_error(self, err: OSError) -> None:
        if not self._warned:  # a read-only or full cache must not break segmentation
            self._warned = True
            log.warning("text-embedding cache %s not usable, going on without it: %s", self.directory, err)

    def _touch(self, path: Path) -> None:
        """Set ``path``'s times to now, strictly later than any set before by this cache."""
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        os.utime(path, ns=(self._last_ns, self._last_ns))

    def _load(self, name: str) -> torch.Tensor | None:
        if self.directory is None:
            return None
        path = self.directory / f"{_sha1(name)}.npy"
        try:
            row = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):  # absent, unreadable or truncated
            return None
        try:
            self._touch(path)
        except OSError as err:
            self._disk_error(err)
        return torch.from_numpy(row)

    def _store(self, names: list[str], rows: torch.Tensor) -> None:
        if self.directory is None:
            return
        tmp = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            info = self.directory / "KEY.txt"
            if not info.exists():
                info.write_text(self._model_key + "\n" + "\n".join(self.templates) + "\n", "utf-8")
            for name, row in zip(names, rows.cpu().numpy(), strict=True):
                with tempfile.NamedTemporaryFile(dir=self.directory, suffix=".tmp", delete=False) as f:
                    tmp = f.name
                    np.save(f, row.astype(np.float32))
                path = self.directory / f"{_sha1(name)}.npy"
                os.replace(tmp, path)
                tmp = None
                self._touch(path)
            self._trim_disk()
        except OSError as err:
            self._disk_error(err)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def _trim_disk(self) -> None:
        """Remove the oldest ``.npy`` files until their total size is at most ``disk_bytes``."""
        files = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.endswith(".npy"):
                    try:
                        st = entry.stat()
                    except FileNotFoundError:  # removed by another process
                        continue
                    files.append((st.st_mtime_ns, entry.name, st.st_size))
        total = sum(size for _, _, size in files)
        for _, filename, size in sorted(files):
            if total <= self.disk_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / filename)
            total -= size

    def embed(self, vocabulary: Vocabulary) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, D) float32 L2-normalised rows (one per synonym) and (K,) class index."""
        names = [name for synonyms in vocabulary.classes for name in synonyms]
        owners = [i for i, synonyms in enumerate(vocabulary.classes) for _ in synonyms]
        with self._lock:
            found: dict[str, torch.Tensor] = {}
            missing = []
            for name in dict.fromkeys(names):
                row = self._memory.get(name)
                if row is None:
                    row = self._load(name)
                if row is None:
                    missing.append(name)
                else:
                    found[name] = row
            if missing:
                self.encoder_calls += 1
                rows, _ = encode_vocabulary(self.clip_model, self.tokenizer, missing, self.templates)
                rows = rows.float().cpu()
                found.update(zip(missing, [row.clone() for row in rows], strict=True))  # own storage each
                self._store(missing, rows)
            embeddings = torch.stack([found[name] for name in names])
            # most recently used last; drop the oldest past the cap (this call's rows may go too)
            for name in dict.fromkeys(names):
                self._memory[name] = found[name]
                self._memory.move_to_end(name)
            while len(self._memory) > self.memory_entries:
                self._memory.popitem(last=False)
        device = self.clip_model.logit_scale.device
        return embeddings.to(device), torch.tensor(owners, dtype=torch.long, device=device)
