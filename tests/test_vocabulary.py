"""Vocabulary parsing, predefined lists and the text-embedding cache."""

import hashlib
import io
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from maskadapter.engine.clip_features import VILD_TEMPLATES
from maskadapter.engine.text_embeddings import TextEmbeddingCache
from maskadapter.engine.vocabulary import (
    MAX_NAME_CHARS,
    PREDEFINED,
    build_vocabulary,
    load_predefined,
    parse_vocabulary,
)
from maskadapter.errors import VocabularyError

ROOT = Path(__file__).resolve().parent.parent


def test_parse_commas_newlines_synonyms_and_whitespace():
    text = " tree |  bush , sky\nperson | people,,\n  car  "
    assert parse_vocabulary(text) == [("tree", "bush"), ("sky",), ("person", "people"), ("car",)]


def test_duplicates_and_empty_names_dropped():
    text = "cat | kitty | Kitty | , Cat, dog,| , dog | puppy, | horse"
    assert parse_vocabulary(text) == [("cat", "kitty"), ("dog",), ("horse",)]


def test_inner_whitespace_collapsed():
    assert parse_vocabulary("traffic    light\t| stop  light") == [("traffic light", "stop light")]


@pytest.mark.parametrize("text", ["", "   ", ", ,\n |", "|||"])
def test_empty_vocabulary_is_an_error(text):
    with pytest.raises(VocabularyError, match="empty"):
        build_vocabulary(text)


def test_too_long_name_is_cut_with_a_note():
    voc = build_vocabulary("x" * 1000)
    assert voc.labels == ["x" * MAX_NAME_CHARS] and "cut to" in voc.notes[0]


@pytest.mark.parametrize(
    "name,count,unique_labels",
    [
        ("ade20k", 150, 150),
        ("ade20k_847", 847, 837),  # ADE20K-847 repeats 9 labels, "bag" three times
        ("pascal_context", 59, 59),
        ("pascal_context_459", 459, 459),
        ("coco", 133, 133),
        ("pascal_voc", 20, 20),
    ],
)
def test_predefined_sizes(name, count, unique_labels):
    classes = load_predefined(name)
    assert len(classes) == count
    assert len({c[0].casefold() for c in classes}) == unique_labels


def test_predefined_by_title_and_synonyms():
    voc = load_predefined("Pascal VOC 20")
    assert voc[0][0] == "aeroplane" and "airplane" in voc[0]
    assert load_predefined("ADE20K-150")[12][0] == "person"
    with pytest.raises(VocabularyError, match="unknown predefined vocabulary 'imagenet'"):
        load_predefined("imagenet")


def test_custom_and_predefined_combined_without_duplicates():
    voc = build_vocabulary("rocket, Person | astronaut", ["pascal_voc"])
    # the custom "Person" is dropped: VOC's person class stays whole at its position
    assert voc.labels[:2] == ["rocket", "aeroplane"]
    assert voc.labels[1 + 14] == "person" and "astronaut" not in voc.classes[1 + 14]
    assert len(voc) == 1 + 20
    assert "'Person' is a class of a chosen predefined vocabulary" in voc.notes[0]
    assert set(PREDEFINED) == {
        "ade20k",
        "ade20k_847",
        "pascal_context",
        "pascal_context_459",
        "coco",
        "pascal_voc",
    }


def test_to_text_round_trips():
    voc = build_vocabulary("tree | bush, sky")
    assert voc.to_text() == "tree | bush\nsky"
    assert build_vocabulary(voc.to_text()) == voc


def _counting(model):
    """Counts text-tower runs (its transformer's calls); returns the counter and the hook."""
    calls = {"n": 0}

    def count(module, args):
        calls["n"] += 1

    return calls, model.transformer.register_forward_pre_hook(count)


def _reference(model, tokenizer, names: list[str]) -> torch.Tensor:
    """One row per name, recomputed here with the text encoder: the name in each of the
    14 ViLD prompts, each prompt's embedding normalised, their mean normalised."""
    rows = []
    with torch.no_grad():
        for name in names:
            prompts = model.encode_text(tokenizer([template.format(name) for template in VILD_TEMPLATES])).float()
            mean = torch.nn.functional.normalize(prompts, dim=-1).mean(0)
            rows.append(mean / mean.norm())
    return torch.stack(rows)


def test_second_request_makes_no_text_encoder_call(tiny_models, tmp_path):
    expected = _reference(tiny_models.clip, tiny_models.tokenizer, ["cat", "kitten", "table"])
    calls, hook = _counting(tiny_models.clip)
    try:
        cache = TextEmbeddingCache(tiny_models.clip, tiny_models.tokenizer, "key", tmp_path)
        voc = build_vocabulary("cat | kitten, table")
        first, idx = cache.embed(voc)
        assert calls["n"] >= 1 and cache.encoder_calls == 1
        torch.testing.assert_close(first, expected, rtol=0, atol=1e-6)
        calls["n"] = 0
        second, idx2 = cache.embed(voc)
        assert calls["n"] == 0 and cache.encoder_calls == 1
        torch.testing.assert_close(first, second)
        assert idx.tolist() == idx2.tolist() == [0, 0, 1]
        # a new vocabulary encodes only the names not seen yet
        cache.embed(build_vocabulary("table, lamp"))
        assert cache.encoder_calls == 2
        # a second cache object on the same directory (same model key) reads the disk
        calls["n"] = 0
        again = TextEmbeddingCache(tiny_models.clip, tiny_models.tokenizer, "key", tmp_path)
        third, _ = again.embed(voc)
        assert calls["n"] == 0 and again.encoder_calls == 0
        torch.testing.assert_close(first, third)
        # another model key does not reuse them
        other = TextEmbeddingCache(tiny_models.clip, tiny_models.tokenizer, "other-key", tmp_path)
        other.embed(voc)
        assert other.encoder_calls == 1
    finally:
        hook.remove()


def test_new_process_reuses_disk_cache(tiny_files, tiny_models, tmp_path):
    """Embeddings computed here (same model files) are read back by a new process
    without running the text encoder."""
    from maskadapter.engine.segmenter import Segmenter

    vocabulary = "cat | kitten, table, sky"
    here = Segmenter(tiny_models, "cpu", cache_dir=str(tmp_path))
    written, _ = here.text_embeddings(build_vocabulary(vocabulary))
    assert list((tmp_path / "text_embeddings").glob("*/*.npy"))
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from maskadapter.engine.segmenter import Segmenter
        from maskadapter.engine.vocabulary import build_vocabulary
        from maskadapter.engine.weights import ModelFiles, build_models
        from pathlib import Path
        files = ModelFiles(Path({str(tiny_files.sam2_checkpoint)!r}), Path({str(tiny_files.sam2_config)!r}),
                           {tiny_files.clip_model!r}, Path({str(tiny_files.clip_checkpoint)!r}),
                           Path({str(tiny_files.adapter_checkpoint)!r}))
        seg = Segmenter(build_models(files, "cpu"), "cpu", cache_dir={str(tmp_path)!r})
        calls = []
        seg.models.clip.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
        emb, _ = seg.text_embeddings(build_vocabulary({vocabulary!r}))
        print("CALLS", len(calls), "SUM", repr(float(emb.sum())))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    words = out.stdout.split()
    assert int(words[words.index("CALLS") + 1]) == 0
    assert float(words[words.index("SUM") + 1]) == float(written.sum())


# ------------------------------------------------------------------ bounded text-embedding cache


def _file_name(name: str) -> str:
    return hashlib.sha1(name.encode("utf-8")).hexdigest() + ".npy"


def test_memory_cache_is_an_lru_with_a_cap(tiny_models):
    names = ["cat", "dog", "tree", "sky", "road"]
    voc = build_vocabulary(", ".join(names))
    reference = _reference(tiny_models.clip, tiny_models.tokenizer, names)

    cache = TextEmbeddingCache(tiny_models.clip, tiny_models.tokenizer, "key", None, memory_entries=3)
    rows, idx = cache.embed(voc)  # the vocabulary alone is larger than the cap: all rows still returned
    assert rows.shape == reference.shape == (5, reference.shape[1])
    assert torch.allclose(rows, reference, atol=1e-6) and idx.tolist() == [0, 1, 2, 3, 4]
    assert cache.encoder_calls == 1
    assert list(cache._memory) == ["tree", "sky", "road"]

    def one(name):
        row, _ = cache.embed(build_vocabulary(name))
        return row[0]

    assert torch.allclose(one("tree"), reference[2], atol=1e-6)  # cached: no call; becomes the newest
    assert cache.encoder_calls == 1
    assert torch.allclose(one("cat"), reference[0], atol=1e-6)  # evicted, no disk cache: one more call
    assert cache.encoder_calls == 2
    assert list(cache._memory) == ["road", "tree", "cat"]  # "sky" was the least recently used
    one("tree")
    assert cache.encoder_calls == 2
    assert torch.allclose(one("sky"), reference[3], atol=1e-6)
    assert cache.encoder_calls == 3 and len(cache._memory) == 3

    # one name per call: still at most 3 rows, and the same rows as an uncapped cache
    single = TextEmbeddingCache(tiny_models.clip, tiny_models.tokenizer, "key", None, memory_entries=3)
    for i, name in enumerate(names):
        row, _ = single.embed(build_vocabulary(name))
        assert torch.allclose(row[0], reference[i], atol=1e-6)
    assert single.encoder_calls == 5 and list(single._memory) == names[2:]


def test_a_vocabulary_asked_for_again_gives_its_kept_matrix(tiny_models, monkeypatch):
    """The stacked (K, D) rows and class index of a vocabulary are kept: asked for again,
    the same tensors come back (nothing stacked or copied); the oldest go past the
    entry cap, and nothing is kept past the byte cap."""
    from maskadapter.engine import text_embeddings

    cache = TextEmbeddingCache(tiny_models.clip, tiny_models.tokenizer, "key", None)
    first = cache.embed(build_vocabulary("cat | kitten, dog"))
    again = cache.embed(build_vocabulary("cat | kitten, dog"))  # equal vocabulary, new object
    assert again[0] is first[0] and again[1] is first[1]
    reference = _reference(tiny_models.clip, tiny_models.tokenizer, ["cat", "kitten", "dog"])
    assert torch.allclose(again[0], reference, atol=1e-6) and again[1].tolist() == [0, 0, 1]
    for i in range(text_embeddings.STACKED_ENTRIES):  # as many other vocabularies: the first goes
        cache.embed(build_vocabulary(f"thing {i}"))
    assert len(cache._stacked) == text_embeddings.STACKED_ENTRIES
    third = cache.embed(build_vocabulary("cat | kitten, dog"))
    assert third[0] is not first[0] and torch.equal(third[0], first[0]) and cache.encoder_calls == 1 + 8

    monkeypatch.setattr(text_embeddings, "STACKED_BYTES", 16)  # smaller than any matrix
    small = TextEmbeddingCache(tiny_models.clip, tiny_models.tokenizer, "key", None)
    one = small.embed(build_vocabulary("cat"))
    assert small.embed(build_vocabulary("cat"))[0] is not one[0] and not small._stacked


def test_disk_cache_removes_the_least_recently_used_files(tiny_models, tmp_path):
    names = ["cat", "dog", "tree", "sky", "road"]
    reference = _reference(tiny_models.clip, tiny_models.tokenizer, names + ["lamp"])
    dim = reference.shape[1]
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(dim, np.float32))
    file_size = len(buffer.getvalue())
    cap = 2 * file_size

    def files():
        (directory,) = (tmp_path / "text_embeddings").iterdir()
        return {p.name: p.stat().st_size for p in directory.glob("*.npy")}

    cache = TextEmbeddingCache(tiny_models.clip, tiny_models.tokenizer, "key", tmp_path, disk_bytes=cap)
    for name in names:
        cache.embed(build_vocabulary(name))
    assert sum(files().values()) <= cap
    assert set(files()) == {_file_name("sky"), _file_name("road")}  # the two written last

    # a new cache object (empty memory) reads "sky" from disk, which makes it the newest file
    again = TextEmbeddingCache(tiny_models.clip, tiny_models.tokenizer, "key", tmp_path, disk_bytes=cap)
    row, _ = again.embed(build_vocabulary("sky"))
    assert again.encoder_calls == 0 and torch.allclose(row[0], reference[3], atol=1e-6)
    row, _ = again.embed(build_vocabulary("lamp"))
    assert again.encoder_calls == 1 and torch.allclose(row[0], reference[5], atol=1e-6)
    assert set(files()) == {_file_name("sky"), _file_name("lamp")}  # "road" was the oldest
    assert sum(files().values()) <= cap

    # five names in one call with room for two: all five rows come back, two files stay
    fresh = tmp_path / "fresh"
    batch = TextEmbeddingCache(tiny_models.clip, tiny_models.tokenizer, "key", fresh, disk_bytes=cap)
    rows, _ = batch.embed(build_vocabulary(", ".join(names)))
    assert torch.allclose(rows, reference[:5], atol=1e-6)
    (directory,) = (fresh / "text_embeddings").iterdir()
    kept = {p.name for p in directory.glob("*.npy")}
    assert kept == {_file_name("sky"), _file_name("road")}


@pytest.mark.parametrize("how", ["read_only_dir", "under_a_file"])
def test_unusable_cache_directory_does_not_raise(tiny_models, tmp_path, caplog, how):
    if how == "read_only_dir":
        if os.geteuid() == 0:
            pytest.skip("root ignores directory permissions")
        cache_dir = tmp_path / "ro"
        cache_dir.mkdir()
        cache_dir.chmod(0o500)
    else:
        blocker = tmp_path / "a_file"
        blocker.write_text("not a directory")
        cache_dir = blocker / "cache"
    reference = _reference(tiny_models.clip, tiny_models.tokenizer, ["cat", "kitten", "table", "lamp"])
    try:
        cache = TextEmbeddingCache(tiny_models.clip, tiny_models.tokenizer, "key", cache_dir)
        with caplog.at_level(logging.WARNING, logger="maskadapter.engine.text_embeddings"):
            first, idx = cache.embed(build_vocabulary("cat | kitten, table"))
            second, _ = cache.embed(build_vocabulary("lamp"))
        assert torch.allclose(first, reference[:3], atol=1e-6) and idx.tolist() == [0, 0, 1]
        assert torch.allclose(second, reference[3:], atol=1e-6)
        assert cache.encoder_calls == 2
        name = "maskadapter.engine.text_embeddings"
        warnings = [r for r in caplog.records if r.name == name and r.levelno == logging.WARNING]
        assert len(warnings) == 1  # said once, not on every write
    finally:
        if how == "read_only_dir":
            cache_dir.chmod(0o700)
