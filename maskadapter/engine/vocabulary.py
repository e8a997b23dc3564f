"""Vocabularies: user text -> classes with synonyms, and the predefined lists.

Their text embeddings (cached per CLIP model) are in ``maskadapter.engine.text_embeddings``.

Text syntax (user input and the files in ``vocabularies/``): classes are separated by
commas or new lines, synonyms of one class by ``|``::

    tree | bush, sky
    person | people

The full-width and ideographic commas (``，`` ``、``), the Arabic comma (``،``) and
Unicode line breaks separate classes too; the full-width bar (``｜``) separates synonyms.

Every name is cleaned (``normalize_name``): Unicode NFC, control, format and zero-width
characters removed (a zero-width joiner inside an emoji sequence is kept), whitespace
collapsed to single spaces and trimmed. Names are otherwise kept as typed: markup such
as ``<b>x</b>`` or ``$x^2$`` is plain text. A name longer than ``MAX_NAME_CHARS`` is cut
to that length (the vocabulary's ``notes`` say so). Empty names are ignored; a repeated
synonym in a class and a class whose label (its first synonym) was already given are
dropped, comparing names case-insensitively (``casefold``) after cleaning.

Predefined vocabularies (``PREDEFINED``) are the class lists of the published
open-vocabulary evaluation (FC-CLIP's and Mask-Adapter's ``*_with_prompt_eng.txt``
files, with their synonyms), one class per line in benchmark order. They are loaded
whole: every class stays at its benchmark position, even where the benchmark repeats a
label (ADE20K-847 has several "bag" classes, for instance); only repeated synonyms
within one class are dropped. So ``build_vocabulary("", [key])`` has the benchmark's
classes, and class id i is the benchmark's class id i.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from maskadapter.errors import VocabularyError
from maskadapter.resources import package_path

log = logging.getLogger(__name__)

VOCABULARY_DIR = package_path("vocabularies")
# name -> (title shown to users, file in VOCABULARY_DIR); each file says its source
PREDEFINED: dict[str, tuple[str, str]] = {
    "ade20k": ("ADE20K-150", "ade20k.txt"),
    "ade20k_847": ("ADE20K-847", "ade20k_847.txt"),
    "pascal_context": ("Pascal Context 59", "pascal_context.txt"),
    "pascal_context_459": ("Pascal Context 459", "pascal_context_459.txt"),
    "coco": ("COCO panoptic 133", "coco.txt"),
    "pascal_voc": ("Pascal VOC 20", "pascal_voc.txt"),
}
# at most this many classes, synonyms in all, and characters per name (longer names are
# cut): 200 characters of English are about 45 CLIP tokens, which with a prompt
# template's ~10 still fit CLIP's 77-token context. All six predefined lists together
# have 1,668 classes and 2,795 names.
MAX_CLASSES = 3000
MAX_NAMES = 4 * MAX_CLASSES
MAX_NAME_CHARS = 200

_CLASS_SEPARATORS = re.compile("[,\n\r\v\f\x1c-\x1e\x85\u2028\u2029\u060c\u3001\uff0c]")
_SYNONYM_SEPARATORS = re.compile("[|\uff5c]")
_ZWJ = "\u200d"
# invisible letters that render as blank space
_FILLERS = frozenset("\u115f\u1160\u3164\uffa0")


@dataclass(frozen=True)
class Vocabulary:
    """An ordered set of classes; each class is a tuple of synonyms, the first is its label.

    ``notes`` are short sentences for the user about what was changed in the input (names
    cut to ``MAX_NAME_CHARS``, see also ``context_notes``). They are not part of equality
    or the hash: vocabularies are cache keys.
    """

    classes: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def labels(self) -> list[str]:
        return [synonyms[0] for synonyms in self.classes]

    def __len__(self) -> int:
        return len(self.classes)

    def to_text(self) -> str:
        """The vocabulary in the input syntax, one class per line.

        Parsing it back gives the same classes unless labels repeat (possible with
        predefined lists): text input keeps only the first class of a label.
        """
        return "\n".join(" | ".join(synonyms) for synonyms in self.classes)


def _keep_joiner(text: str, i: int) -> bool:
    """Whether the zero-width joiner at ``text[i]`` joins two emoji: after a symbol, a
    skin-tone modifier or emoji presentation selector, and before a symbol."""
    if i == 0 or i + 1 == len(text):
        return False
    before, after = text[i - 1], text[i + 1]
    return (unicodedata.category(before) in ("So", "Sk") or before == "\ufe0f") and unicodedata.category(after) == "So"


def _clean_once(name: str) -> str:
    name = unicodedata.normalize("NFC", name)
    kept = []
    for i, ch in enumerate(name):
        category = unicodedata.category(ch)
        if category == "Cc":
            kept.append(" " if ch.isspace() else "")
        elif category == "Cs" or ch in _FILLERS or (category == "Cf" and not (ch == _ZWJ and _keep_joiner(name, i))):
            continue  # lone surrogates, invisible fillers, format and zero-width characters
        else:
            kept.append(ch)
    return " ".join(unicodedata.normalize("NFC", "".join(kept)).split())


def normalize_name(name: str) -> str:
    """A class name cleaned as the module docstring says (not cut to length); may be empty.

    Idempotent: ``normalize_name(normalize_name(x)) == normalize_name(x)``.
    """
    if name.isascii() and name.isprintable():  # the common case: only spaces to collapse
        return " ".join(name.split())
    for _ in range(8):  # removing a character can let NFC compose its neighbours: repeat
        cleaned = _clean_once(name)
        if cleaned == name:
            break
        name = cleaned
    return name


def _name_key(name: str) -> str:
    """What duplicates are compared by."""
    return unicodedata.normalize("NFC", name.casefold())


def _cut(name: str) -> str:
    """A clean name cut to at most ``MAX_NAME_CHARS`` characters, still clean."""
    cut = MAX_NAME_CHARS
    short = normalize_name(name[:cut])
    while len(short) > MAX_NAME_CHARS and cut > 0:  # NFC can lengthen a few characters
        cut -= 1
        short = normalize_name(name[:cut])
    return short


def _split_classes(text: str) -> Iterable[list[str]]:
    for item in _CLASS_SEPARATORS.split(text):
        yield _SYNONYM_SEPARATORS.split(item)


def _clean_class(names: Iterable[str]) -> tuple[tuple[str, ...], int]:
    """One class's names cleaned, cut and without repeats (may be empty), and how many
    of the kept names were cut."""
    synonyms: list[str] = []
    seen: set[str] = set()
    cut_names = 0
    for name in names:
        name = normalize_name(name)
        was_cut = len(name) > MAX_NAME_CHARS
        if was_cut:
            name = _cut(name)
        key = _name_key(name)
        if not name or key in seen:
            continue
        seen.add(key)
        synonyms.append(name)
        cut_names += was_cut
    return tuple(synonyms), cut_names


def _dedupe(
    classes: Iterable[Sequence[str]], taken: Iterable[str] = ()
) -> tuple[list[tuple[str, ...]], int, list[str]]:
    """Cleaned, cut and deduplicated classes, how many kept names were cut, and the
    labels of the classes dropped because ``taken`` (label keys, ``_name_key``) has them."""
    taken = set(taken)
    seen_labels: set[str] = set()
    result = []
    cut_names = 0
    dropped: list[str] = []
    for names in classes:
        synonyms, cut_here = _clean_class(names)
        if not synonyms:
            continue
        label = _name_key(synonyms[0])
        if label in taken:
            if label not in seen_labels:
                dropped.append(synonyms[0])
            seen_labels.add(label)
        elif label not in seen_labels:
            seen_labels.add(label)
            result.append(synonyms)
            cut_names += cut_here
    return result, cut_names, dropped


def parse_vocabulary(text: str) -> list[tuple[str, ...]]:
    """Classes (tuples of synonyms) from text like ``"tree | bush, sky"``; may be empty.

    Names are cleaned and cut to ``MAX_NAME_CHARS`` (see the module docstring).
    """
    if not isinstance(text, str):
        raise VocabularyError(f"vocabulary must be text, got {type(text).__name__}")
    return _dedupe(_split_classes(text))[0]


def predefined_key(name: str) -> str:
    """The ``PREDEFINED`` key for a key or title, e.g. ``"ADE20K-847"`` -> ``"ade20k_847"``.

    Case, surrounding spaces and ``-`` versus ``_`` versus a space do not matter.

    Raises:
        VocabularyError: ``name`` is not text or names no predefined vocabulary.
    """
    if not isinstance(name, str):
        raise VocabularyError(f"a predefined vocabulary is named by text, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    titles = {title.lower(): k for k, (title, _) in PREDEFINED.items()}
    key = titles.get(name.strip().lower(), key)
    if key not in PREDEFINED:
        known = ", ".join(f"{k} ({title})" for k, (title, _) in PREDEFINED.items())
        raise VocabularyError(f"unknown predefined vocabulary {name!r}; choose from {known}")
    return key


@functools.cache
def _read_predefined(key: str) -> tuple[tuple[tuple[str, ...], ...], int]:
    """The classes of the file of ``PREDEFINED[key]`` and how many names were cut.

    One class per line, synonyms separated by ``|``; lines starting with ``#`` and
    blank lines are skipped. A line with a class separator (e.g. a comma) is refused
    rather than split, so that a line is always exactly one benchmark class.
    """
    path = VOCABULARY_DIR / PREDEFINED[key][1]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise VocabularyError(f"predefined vocabulary {key!r} cannot be read from {path.name}: {err}") from err
    classes = []
    cut_names = 0
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        separator = _CLASS_SEPARATORS.search(line.rstrip("\r"))
        synonyms, cut_here = _clean_class(_SYNONYM_SEPARATORS.split(line))
        if separator or not synonyms:
            raise VocabularyError(
                f"{path.name} line {number}: a predefined vocabulary has one class per line, "
                f"synonyms separated by '|', got {line[:80]!r}"
            )
        classes.append(synonyms)
        cut_names += cut_here
    return tuple(classes), cut_names


def load_predefined(name: str) -> list[tuple[str, ...]]:
    """Every class of a predefined vocabulary, in benchmark order.

    Args:
        name: a key or title of ``PREDEFINED`` (see ``predefined_key``).
    Returns:
        one tuple of synonyms per benchmark class (the first is the label): class i is the
        benchmark's class id i. Classes sharing a label or synonym are all kept; a synonym
        repeated within one class is kept once.
    Raises:
        VocabularyError: an unknown name.
    """
    return list(_read_predefined(predefined_key(name))[0])


def build_vocabulary(text: str = "", predefined: Sequence[str] = ()) -> Vocabulary:
    """Custom classes from ``text`` followed by the named predefined vocabularies, whole.

    The vocabulary is: the classes of ``text`` (in order, repeated labels dropped as in
    ``parse_vocabulary``), then each predefined list in the order given, with all its
    classes in benchmark order. A predefined list named twice (by key or title) is added
    once. Predefined lists are never shortened, so with no text and one list class id i is
    the benchmark's class id i; with text, that list's ids are shifted by the number of
    custom classes. A custom class whose label equals (case-insensitively) the label of a
    class in a chosen predefined list is dropped from the custom part, and a note says so:
    the predefined class, with its benchmark synonyms, is used instead. Labels may repeat
    across predefined lists (e.g. "wall" in ADE20K-150 and Pascal Context 59) and within
    one (ADE20K-847); each is a class of its own.

    Args:
        text: classes in the syntax of the module docstring (None counts as empty).
        predefined: names or titles of ``PREDEFINED`` vocabularies (a single name is
            accepted as well).
    Returns:
        the vocabulary; its ``notes`` say how many names were cut to ``MAX_NAME_CHARS``
        and which custom classes were dropped for a predefined class.
    Raises:
        VocabularyError: text that is not text, an unknown predefined name, no class
            name at all, more than ``MAX_CLASSES`` classes or ``MAX_NAMES`` names.
    """
    if text is not None and not isinstance(text, str):
        raise VocabularyError(f"vocabulary must be text, got {type(text).__name__}")
    if isinstance(predefined, str):
        predefined = [predefined]
    keys = list(dict.fromkeys(predefined_key(name) for name in predefined or ()))
    lists = [_read_predefined(key) for key in keys]
    taken = {_name_key(synonyms[0]) for classes, _ in lists for synonyms in classes}
    kept, cut_names, dropped = _dedupe(_split_classes(text or ""), taken)
    for classes, cut_here in lists:
        kept.extend(classes)
        cut_names += cut_here
    if not kept:
        raise VocabularyError(
            "the vocabulary is empty: type class names separated by commas, "
            "e.g. 'car, road, tree | bush', or pick a predefined vocabulary"
        )
    if len(kept) > MAX_CLASSES:
        raise VocabularyError(
            f"a vocabulary has at most {MAX_CLASSES} classes, got {len(kept)}: "
            "remove some class names or pick fewer predefined vocabularies"
        )
    names = sum(len(synonyms) for synonyms in kept)
    if names > MAX_NAMES:
        raise VocabularyError(
            f"a vocabulary has at most {MAX_NAMES} names, synonyms included, got {names}: remove some synonyms"
        )
    notes = []
    if cut_names:
        were = "name was" if cut_names == 1 else "names were"
        notes.append(f"{cut_names} class {were} cut to {MAX_NAME_CHARS} characters")
    if dropped:
        example = dropped[0] if len(dropped[0]) <= 40 else dropped[0][:39] + "…"
        if len(dropped) == 1:
            notes.append(f"{example!r} is a class of a chosen predefined vocabulary; its predefined class is used")
        else:
            notes.append(
                f"{len(dropped)} typed classes are classes of a chosen predefined vocabulary, e.g. {example!r}; "
                "their predefined classes are used"
            )
    return Vocabulary(tuple(kept), tuple(notes))


def __getattr__(name: str) -> object:
    if name in ("TextEmbeddingCache", "context_notes"):  # here until the package was split into folders
        raise AttributeError(f"{name} moved to maskadapter.engine.text_embeddings; import it from there")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
