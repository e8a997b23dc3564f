"""Vocabulary parsing, predefined lists and the text-embedding cache."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from maskadapter.errors import VocabularyError
from maskadapter.vocabulary import (
    PREDEFINED,
    TextEmbeddingCache,
    build_vocabulary,
    load_predefined,
    parse_vocabulary,
)

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


def test_too_long_name_is_an_error():
    with pytest.raises(VocabularyError, match="at most"):
        build_vocabulary("x" * 101)


@pytest.mark.parametrize("name,count", [("ade20k", 150), ("coco", 133), ("pascal_context", 59), ("pascal_voc", 20)])
def test_predefined_sizes(name, count):
    classes = load_predefined(name)
    assert len(classes) == count
    assert len({c[0].casefold() for c in classes}) == count


def test_predefined_by_title_and_synonyms():
    voc = load_predefined("Pascal VOC 20")
    assert voc[0][0] == "aeroplane" and "airplane" in voc[0]
    assert load_predefined("ADE20K-150")[12][0] == "person"
    with pytest.raises(VocabularyError, match="unknown predefined vocabulary 'imagenet'"):
        load_predefined("imagenet")


def test_custom_and_predefined_combined_without_duplicates():
    voc = build_vocabulary("rocket, Person | astronaut", ["pascal_voc"])
    assert voc.labels[:2] == ["rocket", "Person"]
    assert "person" not in voc.labels  # VOC's person dropped: same label as the custom class
    assert len(voc) == 2 + 19
    assert set(PREDEFINED) == {"ade20k", "coco", "pascal_context", "pascal_voc"}


def test_to_text_round_trips():
    voc = build_vocabulary("tree | bush, sky")
    assert build_vocabulary(voc.to_text()) == voc


def _counting(model):
    calls = {"n": 0}
    original = model.encode_text

    def encode_text(tokens, *args, **kwargs):
        calls["n"] += 1
        return original(tokens, *args, **kwargs)

    model.encode_text = encode_text
    return calls, original


def test_second_request_makes_no_text_encoder_call(tiny_models, tmp_path):
    calls, original = _counting(tiny_models.clip)
    try:
        cache = TextEmbeddingCache(tiny_models.clip, tiny_models.tokenizer, "key", tmp_path)
        voc = build_vocabulary("cat | kitten, table")
        first, idx = cache.embed(voc)
        assert calls["n"] >= 1 and cache.encoder_calls == 1
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
        tiny_models.clip.encode_text = original


def test_new_process_reuses_disk_cache(tiny_files, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from maskadapter.segmenter import Segmenter
        from maskadapter.vocabulary import build_vocabulary
        from maskadapter.weights import ModelFiles, build_models
        from pathlib import Path
        files = ModelFiles(Path({str(tiny_files.sam2_checkpoint)!r}), Path({str(tiny_files.sam2_config)!r}),
                           {tiny_files.clip_model!r}, Path({str(tiny_files.clip_checkpoint)!r}),
                           Path({str(tiny_files.adapter_checkpoint)!r}))
        seg = Segmenter(build_models(files, "cpu"), "cpu", cache_dir={str(tmp_path)!r})
        calls = []
        original = seg.models.clip.encode_text
        seg.models.clip.encode_text = lambda *a, **k: calls.append(1) or original(*a, **k)
        emb, _ = seg.text_embeddings(build_vocabulary("cat | kitten, table, sky"))
        print("CALLS", len(calls), "SUM", float(emb.sum()))
    """)
    outputs = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300) for _ in range(2)
    ]
    for out in outputs:
        assert out.returncode == 0, out.stderr[-2000:]
    first = outputs[0].stdout.split()
    second = outputs[1].stdout.split()
    assert int(first[first.index("CALLS") + 1]) >= 1
    assert int(second[second.index("CALLS") + 1]) == 0
    assert first[first.index("SUM") + 1] == second[second.index("SUM") + 1]
    assert list((tmp_path / "text_embeddings").glob("*/*.npy"))
