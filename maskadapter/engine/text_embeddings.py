"""Text embeddings of a vocabulary's names, cached per CLIP model, and the check that
names fit CLIP's text context.

``TextEmbeddingCache.embed(vocabulary)`` returns the rows ``encode_vocabulary`` would,
encoding only names it has not seen (kept in memory and on disk, both bounded);
``context_notes`` says when names are longer than CLIP reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from maskadapter.engine.clip_features import TEXT_CHUNK, VILD_TEMPLATES, encode_vocabulary
from maskadapter.engine.vocabulary import Vocabulary
from maskadapter.progress import ProgressCallback

log = logging.getLogger(__name__)


def _token_counter(tokenizer) -> Callable[[str], int] | None:
    """Tokens (special ones included) of one text for open_clip's tokenizers, else None."""
    encode = getattr(tokenizer, "encode", None)
    if callable(encode):  # open_clip.tokenizer.SimpleTokenizer: BPE ids without start/end
        return lambda text: len(encode(text)) + 2
    inner = getattr(tokenizer, "tokenizer", None)
    if callable(inner):  # open_clip.tokenizer.HFTokenizer: a Hugging Face tokenizer inside
        return lambda text: len(inner(text)["input_ids"])
    return None


def context_notes(vocabulary: Vocabulary, tokenizer, templates: Sequence[str] = VILD_TEMPLATES) -> tuple[str, ...]:
    """A note when names are too long for CLIP's text context once put in the templates.

    open_clip's tokenizer cuts such prompts silently (to ``tokenizer.context_length``
    tokens, 77 for CLIP), so only the start of those names is read. Returns () when all
    fit or when the tokenizer cannot count tokens.
    """
    context = getattr(tokenizer, "context_length", None)
    count = _token_counter(tokenizer)
    if not isinstance(context, int) or count is None or not templates:
        return ()
    template_tokens = max(count(t.format("")) for t in templates)
    too_long = []
    for name in dict.fromkeys(name for synonyms in vocabulary.classes for name in synonyms):
        # byte-level BPE makes at most one token per UTF-8 byte: most names need no count;
        # then the name alone (joins with a template's punctuation can change it by one)
        if template_tokens + len(name.encode("utf-8")) <= context:
            continue
        if template_tokens + count(name) - 2 <= context - 2:
            continue
        if max(count(t.format(name)) for t in templates) > context:
            too_long.append(name)
    if not too_long:
        return ()
    example = too_long[0] if len(too_long[0]) <= 40 else too_long[0][:39] + "…"
    are = "name is" if len(too_long) == 1 else "names are"
    return (
        f"{len(too_long)} class {are} longer than CLIP reads ({context} tokens with the prompt); "
        f"only the start is used, e.g. {example!r}",
    )


STACKED_ENTRIES = 8  # vocabularies whose stacked (K, D) rows stay on the device
STACKED_BYTES = 64 * 2**20  # and at most this many bytes of them


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
    logged once and otherwise ignored. ``encoder_calls`` counts ``embed`` calls that had
    names to encode (each encodes them ``batch_size`` prompts per text-encoder call).

    The (K, D) matrix ``embed`` returns is kept too, on the model's device, for the
    ``STACKED_ENTRIES`` most recently used vocabularies within ``STACKED_BYTES``: a
    vocabulary asked for again (every request of a session, every naming frame of a
    clip) is not stacked and copied again. The matrices returned are shared: read them,
    never write them.
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
        batch_size: int = TEXT_CHUNK,
    ) -> None:
        self.clip_model = clip_model
        self.tokenizer = tokenizer
        self.templates = tuple(templates)
        self.namespace = _sha1(model_key + "\n" + "\n".join(self.templates))[:20]
        self.directory = Path(cache_dir).expanduser() / "text_embeddings" / self.namespace if cache_dir else None
        self.memory_entries = max(0, int(memory_entries))
        self.disk_bytes = max(0, int(disk_bytes))
        self.batch_size = batch_size  # prompts per text-encoder call
        self._model_key = model_key
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()  # name -> (D,), oldest first
        self._stacked: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()  # classes -> embed()
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

    def embed(
        self,
        vocabulary: Vocabulary,
        progress: ProgressCallback | None = None,
        *,
        batch_size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Text rows of the vocabulary's names; only names not cached are encoded.

        Args:
            vocabulary: the classes; K = number of synonyms in all.
            progress: called with (fraction in (0, 1], "encoding class names: i of n")
                after each text-encoder call, n = names not cached; not called when
                every name is cached.
            batch_size: prompts per text-encoder call (default ``self.batch_size``).
        Returns:
            (K, D) float32 L2-normalised rows in the vocabulary's order, (K,) long class
            index, both on the CLIP model's device.
        """
        names = [name for synonyms in vocabulary.classes for name in synonyms]
        owners = [i for i, synonyms in enumerate(vocabulary.classes) for _ in synonyms]
        with self._lock:
            stacked = self._stacked.get(vocabulary.classes)
            if stacked is not None:
                self._stacked.move_to_end(vocabulary.classes)
                for name in dict.fromkeys(names):  # the rows count as used, as below
                    if name in self._memory:
                        self._memory.move_to_end(name)
                return stacked
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
                rows, _ = encode_vocabulary(
                    self.clip_model,
                    self.tokenizer,
                    missing,
                    self.templates,
                    batch_size=self.batch_size if batch_size is None else batch_size,
                    progress=progress,
                )
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
        stacked = (embeddings.to(device), torch.tensor(owners, dtype=torch.long, device=device))
        self._keep_stacked(vocabulary.classes, stacked)
        return stacked

    def _keep_stacked(self, classes: tuple, stacked: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Keep ``embed``'s result for ``classes``; the oldest go past the entry and byte caps."""
        with self._lock:
            self._stacked[classes] = stacked
            self._stacked.move_to_end(classes)
            sizes = {key: rows.nbytes + index.nbytes for key, (rows, index) in self._stacked.items()}
            while self._stacked and (len(self._stacked) > STACKED_ENTRIES or sum(sizes.values()) > STACKED_BYTES):
                key, _ = self._stacked.popitem(last=False)
                del sizes[key]
