"""The predefined vocabularies are the published evaluation's class lists, whole and in order.

Source of the facts checked here: FC-CLIP's prompt-engineered class files,
github.com/bytedance/fc-clip at commit 2b0bbe213070d44da9182530fa2e826fef03f974, folder
``fcclip/data/datasets/`` (identical copies in github.com/hustvl/MaskAdapter,
``mask_adapter/data/datasets/``). Their lines are ``id:name,synonym,...``; "line N"
below is the N-th line of the file, so class id k of ours is source id k + 1 on line
k + 2, except COCO (source ids with gaps) and Pascal VOC (source id 0 is background).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from maskadapter.engine.vocabulary import (
    MAX_CLASSES,
    MAX_NAMES,
    PREDEFINED,
    VOCABULARY_DIR,
    build_vocabulary,
    load_predefined,
    predefined_key,
)
from maskadapter.errors import VocabularyError

SIZES = {
    "ade20k": 150,
    "ade20k_847": 847,
    "pascal_context": 59,
    "pascal_context_459": 459,
    "coco": 133,
    "pascal_voc": 20,
}
TITLES = {
    "ade20k": "ADE20K-150",
    "ade20k_847": "ADE20K-847",
    "pascal_context": "Pascal Context 59",
    "pascal_context_459": "Pascal Context 459",
    "coco": "COCO panoptic 133",
    "pascal_voc": "Pascal VOC 20",
}
FILES = Path(__file__).resolve().parent.parent / "maskadapter" / "vocabularies"


def published_classes(key: str) -> list[tuple[str, ...]]:
    """The classes of ``maskadapter/vocabularies/KEY.txt`` read here: one class a line,
    ``#`` lines and blank lines skipped, synonyms split at ``|``, spaces collapsed, a
    synonym repeated within its class (ignoring case) kept once."""
    classes = []
    for line in (FILES / f"{key}.txt").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        synonyms: list[str] = []
        for name in (" ".join(part.split()) for part in line.split("|")):
            if name and name.casefold() not in {s.casefold() for s in synonyms}:
                synonyms.append(name)
        classes.append(tuple(synonyms))
    return classes


def test_keys_titles_and_files():
    assert list(PREDEFINED) == list(SIZES)
    for key, (title, filename) in PREDEFINED.items():
        assert title == TITLES[key]
        header = (VOCABULARY_DIR / filename).read_text(encoding="utf-8").splitlines()[:8]
        assert any("github.com/bytedance/fc-clip" in line and "_with_prompt_eng.txt" in line for line in header)
        assert any(f"{SIZES[key]} classes" in line for line in header)


@pytest.mark.parametrize("key,count", SIZES.items())
def test_benchmark_class_counts(key, count):
    for name in (key, TITLES[key], TITLES[key].upper(), key.replace("_", "-")):
        voc = build_vocabulary("", [name])
        assert len(voc) == count
        assert list(voc.classes) == published_classes(key)
        assert predefined_key(name) == key
    assert load_predefined(key) == published_classes(key)
    assert not build_vocabulary("", [key]).notes


# (key, our class id, synonyms as loaded) -- source file and line in each comment
SYNONYMS = [
    # ade20k_150_with_prompt_eng.txt line 2: "1:wall,walls,brick wall,stone wall,interior wall"
    ("ade20k", 0, ("wall", "walls", "brick wall", "stone wall", "interior wall")),
    # ade20k_150_with_prompt_eng.txt line 14: "13:person,child,girl,boy,woman,man,people,children,girls,boys,women,men"
    (
        "ade20k",
        12,
        ("person", "child", "girl", "boy", "woman", "man", "people", "children", "girls", "boys", "women", "men"),
    ),
    # ade20k_150_with_prompt_eng.txt line 73: "72:stove,kitchen stove,kitchen range,kitchen range,cooking stove"
    # (the repeated synonym is kept once)
    ("ade20k", 71, ("stove", "kitchen stove", "kitchen range", "cooking stove")),
    # ade20k_847_with_prompt_eng.txt line 2: "1:wall,walls,interior wall,brick wall,stone wall" (order differs from 150)
    ("ade20k_847", 0, ("wall", "walls", "interior wall", "brick wall", "stone wall")),
    # ade20k_847_with_prompt_eng.txt line 848: "847:adding machine,totalizer,totaliser"
    ("ade20k_847", 846, ("adding machine", "totalizer", "totaliser")),
    # pascal_ctx_59_with_prompt_eng.txt line 2: "1:aeroplane,aeroplanes,airplanes,airplane"
    ("pascal_context", 0, ("aeroplane", "aeroplanes", "airplanes", "airplane")),
    # pascal_ctx_59_with_prompt_eng.txt line 11: "10:bottle,bottles,water bottle"
    ("pascal_context", 9, ("bottle", "bottles", "water bottle")),
    # pascal_ctx_459_with_prompt_eng.txt line 159: "158:floor,tile ground,carpet,rug,flooring"
    ("pascal_context_459", 157, ("floor", "tile ground", "carpet", "rug", "flooring")),
    # pascal_ctx_459_with_prompt_eng.txt line 327: "326:rock,rocks,stone,stones"
    ("pascal_context_459", 325, ("rock", "rocks", "stone", "stones")),
    # coco_panoptic_with_prompt_eng.txt line 2: "1:person,child,girl,boy,woman,man,people,children,girls,boys,
    # women,men,lady,guy,ladies,guys,clothes"
    (
        "coco",
        0,
        ("person", "child", "girl", "boy", "woman", "man", "people", "children", "girls", "boys", "women", "men")
        + ("lady", "guy", "ladies", "guys", "clothes"),
    ),
    # coco_panoptic_with_prompt_eng.txt line 200: "199:wall,walls" (class 131 of the 133 valid ids)
    ("coco", 131, ("wall", "walls")),
    # pascal_voc_21_with_prompt_eng.txt line 16: "15:person,child,girl,boy,woman,man,people,childeren,girls,boys,
    # women,men,lady,guy,ladies,guys,clothes" ("childeren" as published)
    (
        "pascal_voc",
        14,
        ("person", "child", "girl", "boy", "woman", "man", "people", "childeren", "girls", "boys", "women", "men")
        + ("lady", "guy", "ladies", "guys", "clothes"),
    ),
    # pascal_voc_21_with_prompt_eng.txt line 21: "20:tvmonitor,monitor,tv"
    ("pascal_voc", 19, ("tvmonitor", "monitor", "tv")),
]


@pytest.mark.parametrize("key,class_id,synonyms", SYNONYMS)
def test_synonym_sets_as_published(key, class_id, synonyms):
    assert load_predefined(key)[class_id] == synonyms


# first and last labels of each list: source lines 2-4 and the last three lines
ORDER = {
    "ade20k": (["wall", "building", "sky"], ["cup", "clock", "flag"]),
    "ade20k_847": (["wall", "building", "sky"], ["gear shift", "towel rail", "adding machine"]),
    "pascal_context": (["aeroplane", "bag", "bed"], ["water", "window", "wood piece"]),
    "pascal_context_459": (["accordion", "aeroplane", "air conditioner"], ["wire", "wood piece", "wool"]),
    # COCO: 80 things first (person ... toothbrush), then 53 stuff (banner ... rug)
    "coco": (["person", "bicycle", "car"], ["rock", "wall", "rug"]),
    # VOC: source line 1 (id 0, background) is not a class of Pascal VOC 20
    "pascal_voc": (["aeroplane", "bicycle", "bird"], ["sofa", "train", "tvmonitor"]),
}


@pytest.mark.parametrize("key", ORDER)
def test_class_order(key):
    labels = build_vocabulary("", [key]).labels
    first, last = ORDER[key]
    assert labels[:3] == first and labels[-3:] == last
    if key == "coco":
        assert labels[79] == "toothbrush" and labels[80] == "banner"
    if key == "pascal_voc":
        assert "background" not in labels


def test_repeated_labels_and_synonyms_are_kept():
    ade847 = build_vocabulary("", ["ade20k_847"])
    # ade20k_847_with_prompt_eng.txt lines 116, 193, 254: three classes labelled "bag"
    assert [i for i, label in enumerate(ade847.labels) if label == "bag"] == [114, 191, 252]
    assert ade847.classes[114] == ("bag", "bags", "gift bag", "paper bag")
    assert ade847.classes[191] == ("bag", "traveling bag", "travelling bag", "grip", "suitcase")
    assert ade847.classes[252] == ("bag", "handbag", "pocketbook", "purse")
    # lines 51 and 315: "50:pedestal" and "314:pedestal,plinth,footstall"
    assert ade847.classes[49] == ("pedestal",) and ade847.classes[313] == ("pedestal", "plinth", "footstall")
    assert len(set(ade847.labels)) == 847 - 10  # 9 labels repeat, "bag" three times
    pc459 = load_predefined("pascal_context_459")
    # pascal_ctx_459_with_prompt_eng.txt lines 331 and 383: "330:rug" and "382:stone", whose names are also
    # synonyms of classes 157 (floor) and 325 (rock)
    assert pc459[329] == ("rug",) and "rug" in pc459[157]
    assert pc459[381] == ("stone",) and "stone" in pc459[325]


def test_combined_vocabulary_counts():
    # typed classes first ("Wall" is dropped: it is ADE20K-150's first class), then each list whole
    voc = build_vocabulary("rocket, Wall | partition, moon", ["ade20k", "Pascal Context 59"])
    assert len(voc) == 2 + 150 + 59
    assert voc.labels[:3] == ["rocket", "moon", "wall"]
    assert voc.classes[2 : 2 + 150] == tuple(published_classes("ade20k"))
    assert voc.classes[2 + 150 :] == tuple(published_classes("pascal_context"))
    assert voc.labels.count("wall") == 2  # ADE20K-150's and Pascal Context's, each whole
    assert "'Wall' is a class of a chosen predefined vocabulary" in voc.notes[0]
    # the two largest lists together (and all six) fit the limits
    both = build_vocabulary("", ["ade20k_847", "pascal_context_459"])
    assert len(both) == 847 + 459
    everything = build_vocabulary("", list(SIZES))
    assert len(everything) == sum(SIZES.values()) <= MAX_CLASSES
    assert sum(len(synonyms) for synonyms in everything.classes) <= MAX_NAMES
    # a list named twice, by key and by title, is added once
    assert len(build_vocabulary("", ["coco", "COCO panoptic 133"])) == 133


def test_unknown_or_non_text_names_are_refused():
    with pytest.raises(VocabularyError, match="unknown predefined vocabulary 'ade20k_2000'"):
        build_vocabulary("", ["ade20k_2000"])
    with pytest.raises(VocabularyError, match="named by text"):
        load_predefined(847)  # type: ignore[arg-type]
