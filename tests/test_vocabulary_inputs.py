"""Robust vocabulary input: separators only, Unicode, duplicates, markup, long names,
thousands of classes. Expected values are recomputed here with unicodedata, the
tokenizer and the text encoder directly, not with the package's helpers."""

import json
import re
import unicodedata

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_clip_features import reference_text_embeddings
from test_predefined import TITLES, published_classes

from maskadapter.engine.clip_features import VILD_TEMPLATES, encode_vocabulary
from maskadapter.engine.results import SegmentationResult
from maskadapter.engine.text_embeddings import TextEmbeddingCache, context_notes
from maskadapter.engine.vocabulary import (
    MAX_CLASSES,
    MAX_NAME_CHARS,
    PREDEFINED,
    Vocabulary,
    build_vocabulary,
    parse_vocabulary,
)
from maskadapter.errors import VocabularyError
from maskadapter.output.export import segments_json, segments_to_dict
from maskadapter.output.render import legend_panel, overlay
from maskadapter.ui.present import table_rows

MARKUP = ["<b>x</b>", "**bold**", "$x^2$", "[link](http://a)", "<script>alert(1)</script>", "{0} %s \\n"]


# ------------------------------------------------------------------ empty input


@pytest.mark.parametrize(
    "text",
    [
        "",
        None,
        ",,, | \n",
        " \t\r\n ,\u3000|\u2028",
        "\u200b, \u200d | \ufeff",  # zero-width only
        "\x00\x07, \x1b |\x7f",  # control characters only
        "\u3164 | \u115f",  # Hangul fillers: invisible letters
        "\uff0c\u3001|\uff5c",  # full-width and ideographic separators only
    ],
)
def test_nothing_to_name_is_a_vocabulary_error_saying_what_to_type(text):
    with pytest.raises(VocabularyError, match="empty: type class names separated by commas"):
        build_vocabulary(text)


def test_escape_sequence_leftovers_are_a_name():
    assert build_vocabulary("\x1b[0m").labels == ["[0m"]


@pytest.mark.parametrize("text", [b"cat", 3, ["cat"]])
def test_text_that_is_not_text(text):
    with pytest.raises(VocabularyError, match="must be text"):
        build_vocabulary(text)


@pytest.mark.parametrize("predefined", [[None], [3], [b"coco"]])
def test_predefined_names_that_are_not_text(predefined):
    with pytest.raises(VocabularyError, match="named by text"):
        build_vocabulary("cat", predefined)


def test_a_single_predefined_name_is_one_vocabulary():
    assert build_vocabulary("", "pascal_voc") == build_vocabulary("", ["pascal_voc"])


# ------------------------------------------------------------------ Unicode and duplicates


def test_composed_and_decomposed_are_one_class():
    composed = "Caf\u00e9"
    decomposed = "Cafe\u0301"
    assert composed != decomposed and unicodedata.normalize("NFC", decomposed) == composed
    voc = build_vocabulary(f"{decomposed}, {composed}, CAF\u00c9, cafe\u0301 | caf\u00e9 | kaffee")
    assert voc.classes == ((composed,),)
    assert build_vocabulary(f"caf\u00e9 | {decomposed.upper()} | kaffee").classes == (("caf\u00e9", "kaffee"),)


def test_zero_width_and_control_characters_removed_whitespace_collapsed():
    voc = build_vocabulary("ca\u200bt, c\u00adat, \u202ehello\u202c, traffic\t\u00a0 \u3000light, a\x00b\x7fc")
    assert voc.labels == ["cat", "hello", "traffic light", "abc"]


@pytest.mark.parametrize(
    "name",
    [
        "日本語",
        "猫の写真",
        "😀",
        "👩\u200d🔬",  # an emoji sequence with a zero-width joiner
        "❤\ufe0f",  # emoji presentation selector
        "👍🏽",  # skin-tone modifier
        "العربية",  # right to left
        "עברית",
        "Ωμέγα",
        "straße",
        "ﬁsh",  # a compatibility ligature (NFKC would change it; NFC does not)
        *MARKUP,
    ],
)
def test_unicode_and_markup_names_kept_as_typed(name):
    assert build_vocabulary(f"{name}, other").labels == [name, "other"]
    assert parse_vocabulary(name) == [(name,)]


def test_other_scripts_separators():
    assert parse_vocabulary("猫、犬，鳥｜とり, قطة، كلب") == [("猫",), ("犬",), ("鳥", "とり"), ("قطة",), ("كلب",)]
    assert parse_vocabulary("a\r\nb\u2028c\u2029d\x85e") == [("a",), ("b",), ("c",), ("d",), ("e",)]


def test_joiner_outside_an_emoji_removed():
    assert parse_vocabulary("a\u200db, 😀\u200d, \u200d😀") == [("ab",), ("😀",)]


# ------------------------------------------------------------------ long names


def test_long_names_are_cut_with_a_note():
    long_a = "a" * (MAX_NAME_CHARS + 50)
    long_b = "word " * 100
    voc = build_vocabulary(f"{long_a} | short, {long_b}, cat")
    assert voc.labels[0] == "a" * MAX_NAME_CHARS
    assert voc.classes[0] == ("a" * MAX_NAME_CHARS, "short")
    assert voc.labels[1] == ("word " * 100)[:MAX_NAME_CHARS].strip()
    assert voc.notes == (f"2 class names were cut to {MAX_NAME_CHARS} characters",)
    assert build_vocabulary(long_a).notes == (f"1 class name was cut to {MAX_NAME_CHARS} characters",)
    assert build_vocabulary("cat, dog").notes == ()


def test_names_equal_after_the_cut_are_duplicates():
    base = "x" * MAX_NAME_CHARS
    voc = build_vocabulary(f"{base}a, {base}b, {base}")
    assert voc.labels == [base]


def test_notes_are_not_part_of_equality_or_hash():
    classes = (("cat",), ("dog", "puppy"))
    a, b = Vocabulary(classes), Vocabulary(classes, ("a note",))
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1


def test_typical_long_names_fit():
    name = "a red double-decker bus parked next to a bicycle rack on a rainy street in the evening"
    assert build_vocabulary(name).labels == [name] and MAX_NAME_CHARS >= 150


def _prompt_tokens(tokenizer, text):
    return len(tokenizer.encode(text)) + 2  # start and end tokens


def test_names_too_long_for_the_clip_context_get_a_note(tiny_models, segmenter):
    tokenizer = tiny_models.tokenizer
    templates = segmenter.text_cache.templates
    too_long = "a " * 99  # 99 one-letter words: 99 tokens
    fits = "word " * 30
    voc = build_vocabulary(f"{too_long}, {fits}, cat, 日本語")
    expected = [
        name
        for name in (n for c in voc.classes for n in c)
        if max(_prompt_tokens(tokenizer, t.format(name)) for t in templates) > tokenizer.context_length
    ]
    assert expected == [voc.labels[0]]
    (note,) = context_notes(voc, tokenizer, templates)
    assert note.startswith("1 class name is longer than CLIP reads (77 tokens")
    assert context_notes(build_vocabulary(f"{fits}, cat"), tokenizer, templates) == ()
    # the segmenter gives both kinds of notes
    long_text = f"{'x' * (MAX_NAME_CHARS + 1)}, {too_long}"
    from_segmenter = segmenter.vocabulary(long_text)
    assert from_segmenter == build_vocabulary(long_text)
    assert from_segmenter.notes[0] == f"1 class name was cut to {MAX_NAME_CHARS} characters"
    assert from_segmenter.notes[1].startswith("1 class name is longer than CLIP reads")
    assert segmenter.vocabulary_notes(build_vocabulary(long_text)) == from_segmenter.notes
    assert segmenter.vocabulary_notes(from_segmenter) == from_segmenter.notes


def test_context_notes_with_a_tokenizer_that_cannot_count():
    assert context_notes(build_vocabulary("a " * 99), lambda texts: None) == ()


# ------------------------------------------------------------------ size


def test_class_limit():
    assert MAX_CLASSES >= 2500
    assert len(build_vocabulary(", ".join(f"c{i}" for i in range(MAX_CLASSES)))) == MAX_CLASSES
    with pytest.raises(VocabularyError, match=f"at most {MAX_CLASSES} classes, got {MAX_CLASSES + 1}"):
        build_vocabulary(", ".join(f"c{i}" for i in range(MAX_CLASSES + 1)))


def test_name_limit():
    with pytest.raises(VocabularyError, match="names, synonyms included"):
        build_vocabulary(", ".join(" | ".join(f"c{i}s{j}" for j in range(20)) for i in range(1000)))


def _reference_rows(model, tokenizer, names, template):
    """One template: each row is the normalised text embedding of its one prompt."""
    with torch.no_grad():
        rows = model.encode_text(tokenizer([template.format(name) for name in names]))
    return F.normalize(rows.float(), dim=-1)


def test_2500_classes_encoded_in_batches_with_progress(tiny_models):
    template = "a photo of a {}."
    names = [f"thing {i} {chr(0x4E00 + i)}" for i in range(2500)]
    voc = build_vocabulary(", ".join(names))
    assert voc.labels == names
    cache = TextEmbeddingCache(tiny_models.clip, tiny_models.tokenizer, "key", templates=(template,))
    calls = []
    rows, index = cache.embed(voc, lambda fraction, message: calls.append((fraction, message)))
    assert rows.shape == (2500, tiny_models.clip.text_projection.shape[1]) and rows.dtype == torch.float32
    assert index.tolist() == list(range(2500))
    torch.testing.assert_close(rows, _reference_rows(tiny_models.clip, tiny_models.tokenizer, names, template))
    assert len(calls) == -(-2500 // 256) > 1
    fractions = [f for f, _ in calls]
    assert all(a < b for a, b in zip(fractions, fractions[1:], strict=False)) and fractions[-1] == 1.0
    assert calls[0][1] == "encoding class names: 256 of 2500"
    assert calls[-1][1] == "encoding class names: 2500 of 2500"
    assert cache.encoder_calls == 1
    # cached names are not encoded again; new ones only
    calls.clear()
    again, _ = cache.embed(voc, lambda fraction, message: calls.append((fraction, message)))
    assert calls == [] and cache.encoder_calls == 1
    torch.testing.assert_close(again, rows)
    more = build_vocabulary(", ".join(names[:100] + ["lamp", "desk"]))
    mixed, _ = cache.embed(more, lambda fraction, message: calls.append((fraction, message)), batch_size=1)
    assert [m for _, m in calls] == ["encoding class names: 1 of 2", "encoding class names: 2 of 2"]
    torch.testing.assert_close(mixed[:100], rows[:100])


def test_batch_size_does_not_change_the_rows(tiny_models):
    classes = [["cat", "kitten"], "table", ["日本語", "$x^2$", "<b>x</b>"]]
    calls = []
    small, index = encode_vocabulary(
        tiny_models.clip, tiny_models.tokenizer, classes, batch_size=5, progress=lambda f, m: calls.append(f)
    )
    default, index2 = encode_vocabulary(tiny_models.clip, tiny_models.tokenizer, classes)
    with torch.no_grad():
        expected, owners = reference_text_embeddings(tiny_models.clip, tiny_models.tokenizer, classes, VILD_TEMPLATES)
    torch.testing.assert_close(small, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(default, expected, rtol=0, atol=1e-5)
    assert index.tolist() == index2.tolist() == owners == [0, 0, 1, 2, 2, 2]
    assert len(calls) == -(-6 * 14 // 5) and calls == sorted(calls) and calls[-1] == 1.0
    with pytest.raises(ValueError, match="batch_size"):
        encode_vocabulary(tiny_models.clip, tiny_models.tokenizer, classes, batch_size=0)


def test_segmenters_report_text_progress(segmenter, image):
    segmenter.text_cache.batch_size = 14  # one name per call
    voc = build_vocabulary("cat, dog, sofa")
    calls = []
    segmenter.segment_points(image, [[80, 50, 1]], voc, progress=lambda f, m: calls.append((f, m)))
    text = [(f, m) for f, m in calls if m.startswith("encoding class names")]
    assert [m for _, m in text] == [f"encoding class names: {i} of 3" for i in (1, 2, 3)]
    assert all(0 < f <= 0.05 for f, _ in text)
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions)


# ------------------------------------------------------------------ markup is plain text in the outputs


def test_markup_and_unicode_literal_in_json_and_table(segmenter, image):
    names = MARKUP + ["日本語", "😀", "العربية"]
    voc = build_vocabulary(", ".join(names))
    assert voc.labels == names
    result = segmenter.segment_points(image, [[80, 50, 1]], voc)
    assert result.segments
    data = segments_to_dict(result)
    assert data["labels"] == names
    for entry in data["segments"]:
        assert entry["label"] in names and all(t["label"] in names for t in entry["top5"])
    text = segments_json(result)
    assert json.loads(text)["labels"] == names
    for name in names:
        assert json.dumps(name, ensure_ascii=False) in text
    rows = table_rows(result)
    assert [row[0] for row in rows] == [seg.label for seg in result.segments]
    assert all(row[0] in names for row in rows)


# ------------------------------------------------------------------ drawing


def _result(labels, hw=(200, 300)):
    label_map = np.full(hw, -1, np.int32)
    label_map[20:180, 20:280] = 0
    return SegmentationResult(hw, list(labels), [], label_map, "per_mask")


@pytest.mark.parametrize("name", ["Ωμέγα", "日本語", "😀", "العربية", "$x^2$", "<b>x</b>", "x" * 200])
def test_overlay_draws_names(name):
    image = np.full((200, 300, 3), 90, np.uint8)
    plain = overlay(image, _result([name]), labels=False, legend=False)
    labelled = overlay(image, _result([name]), legend=False)
    if len(name) < 40:
        region = np.zeros((200, 300), bool)
        region[20:180, 20:280] = True
        assert (plain != labelled).any(axis=2)[region].any()  # the label is drawn in its region
        assert not (plain != labelled).any(axis=2)[~region].any()
    with_legend = overlay(image, _result([name]))
    assert with_legend.shape[0] > 200 and with_legend.shape[1] == 300


def test_non_ascii_is_not_drawn_as_question_marks():
    image = np.full((200, 300, 3), 90, np.uint8)
    greek = overlay(image, _result(["Ωμέγα"]), legend=False)
    marks = overlay(image, _result(["?????"]), legend=False)
    assert (greek != marks).any()
    assert (legend_panel(_result(["Ωμέγα"]), 300) != legend_panel(_result(["?????"]), 300)).any()


def _ink_columns(panel):
    dark = (panel < 128).all(axis=2)
    cols = np.nonzero(dark.any(axis=0))[0]
    return cols.max() - cols.min()


def test_dollar_signs_are_drawn_not_read_as_math():
    # math text would draw "$x$" as an italic x, no wider than "x"; literal text is wider
    assert _ink_columns(legend_panel(_result(["$x$"]), 300)) > _ink_columns(legend_panel(_result(["x"]), 300)) + 8


# ------------------------------------------------------------------ properties

SPECIAL = [",", "|", "\n", "\r", " ", "\t", "\u200b", "\u200d", "\ufeff", "\x00", "\x1b", "e", "\u0301", "\u00e9"]
SPECIAL += ["E", "\u00c9", "😀", "🏽", "\ufe0f", "日", "\uff0c", "\u3001", "\uff5c", "\u3164", "\u2028", "ß", "s"]
TEXT = st.text(
    alphabet=st.one_of(st.sampled_from(SPECIAL), st.characters(), st.characters(categories=["Cs", "Cc", "Cf"])),
    max_size=300,
)
PREDEFINED_NAMES = st.lists(
    st.one_of(st.sampled_from([*PREDEFINED, "Pascal VOC 20", "COCO panoptic 133"]), st.text(max_size=8)), max_size=3
)


def _label_key(label):
    return unicodedata.normalize("NFC", label.casefold())


def _list_key(name: str) -> str | None:
    """The key of a predefined list named by its key or title; case, surrounding
    spaces and "-" / "_" / " " do not matter."""

    def plain(text: str) -> str:
        return text.strip().lower().replace("-", "_").replace(" ", "_")

    found = [key for key, title in TITLES.items() if plain(name) in (plain(key), plain(title))]
    return found[0] if found else None


def _check_classes(classes, unique_labels=True):
    labels = [c[0] for c in classes]
    assert len({label.casefold() for label in labels}) == len(labels) or not unique_labels
    for synonyms in classes:
        assert synonyms and len({s.casefold() for s in synonyms}) == len(synonyms)
        for name in synonyms:
            assert name and name == name.strip() and "  " not in name
            assert len(name) <= MAX_NAME_CHARS
            assert unicodedata.is_normalized("NFC", name)
            assert not re.search(r"[,|\n\r\uff0c\u3001\uff5c]", name)
            assert not any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name)
            assert all(unicodedata.category(ch) != "Cf" or ch == "\u200d" for ch in name)
            name.encode("utf-8")  # no lone surrogates


@settings(max_examples=200, deadline=None)
@given(text=TEXT, predefined=PREDEFINED_NAMES)
def test_build_vocabulary_on_any_input(text, predefined):
    try:
        voc = build_vocabulary(text, predefined)
    except VocabularyError:
        return
    assert 1 <= len(voc) <= MAX_CLASSES
    # the typed classes (less those a chosen predefined list has), then each list whole
    keys = [_list_key(name) for name in predefined]
    assert None not in keys  # accepted: every name is a list's key or title
    lists = [published_classes(key) for key in dict.fromkeys(keys)]
    tail = [synonyms for classes in lists for synonyms in classes]
    taken = {_label_key(synonyms[0]) for synonyms in tail}
    typed = [c for c in parse_vocabulary(text) if _label_key(c[0]) not in taken]
    assert list(voc.classes) == typed + tail
    _check_classes(typed)
    _check_classes(tail, unique_labels=False)
    if not lists:
        assert parse_vocabulary(voc.to_text()) == list(voc.classes)
        assert build_vocabulary(voc.to_text()) == voc


@settings(max_examples=200, deadline=None)
@given(text=TEXT)
def test_parse_vocabulary_on_any_text(text):
    classes = parse_vocabulary(text)
    _check_classes(classes)
    again = parse_vocabulary(Vocabulary(tuple(classes)).to_text())
    assert again == classes
    if not classes:
        with pytest.raises(VocabularyError, match="empty"):
            build_vocabulary(text)
