"""Point and box prompts: parsing, validation and the point tab's undo history.

Conventions under test: XY pixels of the original image (0 <= x <= W, 0 <= y <= H),
XYXY boxes (corners in any order, normalised to x0 < x1, y0 < y1, refused when they
reach outside the image), labels 1 positive / 0 negative (1.0 and 0.0 accepted,
booleans refused), at most MAX_POINTS points.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maskadapter.engine.transforms import MAX_POINTS, check_box, check_points
from maskadapter.errors import InputError
from maskadapter.service import MAX_PROMPT_CHARS, MAX_UNDO_STEPS, PointState, parse_box, parse_points

HW = (100, 150)  # (H, W): x from 0 to 150, y from 0 to 100
PROPERTY = settings(max_examples=200, deadline=None)

# ---------------------------------------------------------------- explicit cases

BAD_POINTS = [
    ("[[1, 2", "must be JSON like"),
    ("[1, 2", "must be JSON like"),
    ("not json", "must be JSON like"),
    ("[1, 2]", "triples"),
    ("[[1, 2]]", "point 1 is \\[1, 2\\]"),
    ("[[1, 2, 3, 4]]", "point 1 is \\[1, 2, 3, 4\\]"),
    ("[[1, 2, 1], [3, 4]]", "point 2 is"),
    ('{"x": 1}', "must be a list of \\[x, y, label\\]"),
    ('[{"x": 1, "y": 2, "label": 1}]', "triples"),
    ("5", "must be a list"),
    ('"[[1, 2, 1]]"', "must be a list"),
    ("true", "must be a list"),
    ("[[1, [2], 1]]", "y of point 1 must be a number"),
    ("[[[1, 2, 1]]]", "triples"),
    ('[["1", 2, 1]]', "x of point 1 must be a number, got '1'"),
    ("[[null, 2, 1]]", "x of point 1 must be a number"),
    ("[[1, false, 1]]", "y of point 1 must be a number"),
    ("[[NaN, 2, 1]]", "x of point 1 must be a finite number"),
    ("[[1, Infinity, 1]]", "y of point 1 must be a finite number"),
    ("[[1, -Infinity, 1]]", "finite"),
    ("[[1e999, 2, 1]]", "finite"),
    ("[[1, 2, 0.5]]", "label of point 1 must be 1 \\(positive\\) or 0 \\(negative\\), got 0.5"),
    ("[[1, 2, 2]]", "1 \\(positive\\) or 0"),
    ("[[1, 2, -1]]", "1 \\(positive\\) or 0"),
    ("[[1, 2, true]]", "got True"),
    ("[[1, 2, false]]", "got False"),
    ('[[1, 2, "1"]]', "1 \\(positive\\) or 0"),
    ("[[1, 2, null]]", "1 \\(positive\\) or 0"),
    ("[[1, 2, NaN]]", "1 \\(positive\\) or 0"),
    (json.dumps([[1, 2, 1]] * (MAX_POINTS + 1)), f"too many points \\({MAX_POINTS + 1}\\): at most {MAX_POINTS}"),
    ("1" * 5000, "too long a number"),
    ("[" * 50_000, "nests too deeply"),
    ("[" + " " * MAX_PROMPT_CHARS + "]", f"too long \\({MAX_PROMPT_CHARS + 2:,} characters\\)"),
]


@pytest.mark.parametrize("text, match", BAD_POINTS)
def test_parse_points_refuses(text, match):
    with pytest.raises(InputError, match=match):
        parse_points(text)


@pytest.mark.parametrize(
    "value, match",
    [
        ([[10**400, 1, 1]], "finite"),
        ([[10**5000, 1, 1]], "finite"),
        ([(1, 2)], "triples"),
        ({"x": 1}, "must be a list"),
        (b"[[1, 2, 1]]", "must be a list"),
        ({(1, 2, 1)}, "must be a list"),
        (np.zeros((2, 2)), "shape \\(2, 2\\)"),
        ([[1, 2, np.bool_(True)]], "1 \\(positive\\) or 0"),
    ],
)
def test_parse_points_refuses_values(value, match):
    with pytest.raises(InputError, match=match):
        parse_points(value)


def test_parse_points_accepts():
    assert parse_points("[[1, 2, 1], [3.5, 4, 0]]") == [[1.0, 2.0, 1], [3.5, 4.0, 0]]
    assert parse_points("[[1, 2, 1.0], [3, 4, 0.0]]") == [[1.0, 2.0, 1], [3.0, 4.0, 0]]
    labels = [p[2] for p in parse_points("[[1, 2, 1.0], [3, 4, 0.0]]")]
    assert all(type(label) is int for label in labels)
    for empty in (None, "", "   \n", "[]", "null", [], ()):
        assert parse_points(empty) == []
    assert parse_points(((1, 2, 1),)) == [[1.0, 2.0, 1]]
    assert parse_points(np.array([[1, 2, 1]])) == [[1.0, 2.0, 1]]
    assert len(parse_points(json.dumps([[1, 2, 1]] * MAX_POINTS))) == MAX_POINTS
    # outside the image is not decided here (no image yet): check_points refuses it
    assert parse_points("[[-5, 1e6, 1]]") == [[-5.0, 1e6, 1]]


BAD_BOXES = [
    ("[1, 2", "must be JSON like"),
    ("[1, 2]", "four numbers"),
    ("[[1, 2], [3, 4]]", "four numbers"),
    ("[1, 2, 3, 4, 5]", "four numbers"),
    ('{"x0": 1}', "four numbers"),
    ("5", "four numbers"),
    ('"1, 2, 3, 4"', "four numbers"),
    ('[1, 2, "3", 4]', "x1 of the box must be a number"),
    ("[1, 2, 3, null]", "y1 of the box must be a number"),
    ("[true, 2, 30, 40]", "x0 of the box must be a number"),
    ("[1, NaN, 30, 40]", "y0 of the box must be a finite number"),
    ("[1, 2, Infinity, 40]", "finite"),
    ("[5, 5, 5, 40]", "is 0x35 pixels: it must be at least 1 pixel wide"),
    ("[5, 5, 40, 5.5]", "at least 1 pixel"),
    ("[7, 7, 7, 7]", "at least 1 pixel"),
    ("[" * 50_000, "nests too deeply"),
    ("[" + " " * MAX_PROMPT_CHARS + "]", "too long"),
]


@pytest.mark.parametrize("text, match", BAD_BOXES)
def test_parse_box_refuses(text, match):
    with pytest.raises(InputError, match=match):
        parse_box(text)


def test_parse_box_accepts_any_corner_order():
    assert parse_box("[1, 2, 3, 4]") == [1.0, 2.0, 3.0, 4.0]
    for corners in ([30, 40, 1, 2], [1, 40, 30, 2], [30, 2, 1, 40], (1, 2, 30, 40), np.array([30, 2, 1, 40])):
        assert parse_box(corners) == [1.0, 2.0, 30.0, 40.0]
        assert parse_box(json.dumps(np.asarray(corners).tolist())) == [1.0, 2.0, 30.0, 40.0]
    for empty in (None, "", " ", "null", "[]", []):
        assert parse_box(empty) is None


def test_check_points_messages():
    with pytest.raises(InputError, match="no points: give a non-empty list"):
        check_points([], HW)
    with pytest.raises(InputError, match="point 2 of 2 \\(151, 5\\) lies outside the 150x100 image"):
        check_points([[1, 1, 1], [151, 5, 1]], HW)
    with pytest.raises(InputError, match="point 1 of 1 \\(5, -0.5\\) lies outside the 150x100 image"):
        check_points([[5, -0.5, 1]], HW)
    with pytest.raises(InputError, match="at least one positive"):
        check_points([[5, 5, 0]], HW)
    with pytest.raises(InputError, match="too many points"):
        check_points([[5, 5, 1]] * (MAX_POINTS + 1), HW)
    xy, labels = check_points([[0, 0, 0], [150, 100, 1.0]], HW)  # the edges are inside
    assert xy.tolist() == [[0, 0], [150, 100]] and labels.tolist() == [0, 1] and labels.dtype == np.int32
    xy, labels = check_points([[5, 5, 0]], HW, require_positive=False)
    assert labels.tolist() == [0]


def test_check_box_messages():
    with pytest.raises(InputError, match="must lie inside the 150x100 image \\(x from 0 to 150, y from 0 to 100\\)"):
        check_box([10, 10, 151, 50], HW)
    with pytest.raises(InputError, match="inside the 150x100 image"):
        check_box([-1, 10, 50, 50], HW)
    with pytest.raises(InputError, match="at least 1 pixel"):
        check_box([10, 10, 10.5, 50], HW)
    assert check_box([150, 100, 0, 0], HW).tolist() == [0, 0, 150, 100]
    assert check_box(None, HW) is None


# ---------------------------------------------------------------- properties of parsing

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.sampled_from([0, 1, 0.0, 1.0, 0.5, -1, 150, 100, 1e308, -1e308, 10**400])
)
JSON_LIKE = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=5)
        | st.tuples(children, children, children)
        | st.tuples(children, children, children, children)
        | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=25,
)


def _to_text(value: object) -> str:
    try:
        return json.dumps(value)  # writes NaN and Infinity, which json.loads reads back
    except (ValueError, TypeError):  # ints beyond the int-to-text limit, tuple keys
        return "[]"


def _result_or_input_error(fn, *args):
    try:
        return fn(*args)
    except InputError as err:
        assert str(err)
        return err


@PROPERTY
@given(JSON_LIKE)
def test_parsing_any_value_gives_a_result_or_input_error(value):
    for fn in (parse_points, parse_box):
        for arg in (value, _to_text(value)):
            _result_or_input_error(fn, arg)
    for fn in (check_points, check_box):
        _result_or_input_error(fn, value, HW)


@PROPERTY
@given(st.text(max_size=200) | st.text(alphabet='[]{}, 0123456789.-eE"truefalsnNaInfiy', max_size=60))
def test_parsing_any_text_gives_a_result_or_input_error(text):
    points = _result_or_input_error(parse_points, text)
    box = _result_or_input_error(parse_box, text)
    if isinstance(points, list):
        assert all(
            len(p) == 3 and math.isfinite(p[0]) and math.isfinite(p[1]) and p[2] in (0, 1) and type(p[2]) is int
            for p in points
        )
    if isinstance(box, list):
        assert box[0] + 1 <= box[2] and box[1] + 1 <= box[3]


COORD_X = st.floats(0, HW[1], allow_nan=False)
COORD_Y = st.floats(0, HW[0], allow_nan=False)
POINT = st.tuples(COORD_X, COORD_Y, st.sampled_from([0, 1]))


@PROPERTY
@given(st.lists(POINT, max_size=MAX_POINTS))
def test_points_inside_the_image_round_trip(points):
    expected = [list(p) for p in points]
    assert parse_points(points) == expected
    assert parse_points(json.dumps(points)) == expected
    if points:
        xy, labels = check_points(points, HW, require_positive=False)
        assert xy.tolist() == np.array([p[:2] for p in points], dtype=np.float32).tolist()
        assert labels.tolist() == [p[2] for p in points]


@PROPERTY
@given(COORD_X, COORD_Y, COORD_X, COORD_Y, st.booleans(), st.booleans())
def test_box_corners_in_any_order_give_one_box(ax, ay, bx, by, swap_x, swap_y):
    x0, x1 = sorted((ax, bx))
    y0, y1 = sorted((ay, by))
    if x1 - x0 < 1 or y1 - y0 < 1:
        with pytest.raises(InputError, match="at least 1 pixel"):
            parse_box([ax, ay, bx, by])
        return
    xs = (x1, x0) if swap_x else (x0, x1)
    ys = (y1, y0) if swap_y else (y0, y1)
    given_box = [xs[0], ys[0], xs[1], ys[1]]
    assert parse_box(given_box) == [x0, y0, x1, y1]
    assert parse_box(json.dumps(given_box)) == [x0, y0, x1, y1]
    assert check_box(given_box, HW).tolist() == np.array([x0, y0, x1, y1], dtype=np.float32).tolist()


# ---------------------------------------------------------------- undo, against a model

Model = tuple[tuple[tuple[float, float, int], ...], tuple[float, ...] | None, tuple[float, ...] | None]
EMPTY: Model = ((), None, None)


def _seen(state: PointState) -> Model:
    """The state's prompts as plain tuples."""
    return (
        tuple((p[0], p[1], p[2]) for p in state.points),
        None if state.box is None else tuple(state.box),
        None if state.corner is None else tuple(state.corner),
    )


def _model_click(current: Model, kind: str, x: float, y: float) -> Model | None:
    """What a click should do, recomputed here; None when it must be refused."""
    points, box, corner = current
    h, w = HW
    if not (0 <= x <= w and 0 <= y <= h):
        return None
    if kind in ("positive", "negative"):
        if len(points) == MAX_POINTS:
            return None
        return (*points, (x, y, 1 if kind == "positive" else 0)), box, corner
    if corner is None:
        return points, box, (x, y)
    (x0, x1), (y0, y1) = sorted((corner[0], x)), sorted((corner[1], y))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return points, (x0, y0, x1, y1), None


# small integers make equal coordinates (refused boxes) likely; outside values too
COORD = st.integers(-3, 155).map(float) | st.floats(-20, 170, allow_nan=False)
ACTION = (
    st.tuples(st.sampled_from(["positive", "negative", "box", "box"]), COORD, COORD)
    | st.just(("undo",))
    | st.just(("clear",))
)


@PROPERTY
@given(st.lists(ACTION, max_size=60))
def test_undo_restores_exactly_the_state_before_each_action(actions):
    state = PointState(key="k", hw=HW)
    current, before = EMPTY, []  # the model: the prompts now, and before each change
    for action in actions:
        if action[0] == "undo":
            state.undo()
            if before:
                current = before.pop()
        elif action[0] == "clear":
            state.clear()
            if current != EMPTY:
                before.append(current)
                current = EMPTY
        else:
            kind, x, y = action
            expected = _model_click(current, kind, x, y)
            if expected is None:
                copy = state.copy()
                with pytest.raises(InputError):
                    state.add(x, y, kind)
                assert state == copy  # a refused click changes nothing, history included
            else:
                state.add(x, y, kind)
                before.append(current)
                current = expected
        assert _seen(state) == current
        assert len(state.history) == len(before)
        assert state.ready == (any(p[2] == 1 for p in current[0]) or current[1] is not None)
    while before:  # undo everything that is left, one change at a time
        state.undo()
        current = before.pop()
        assert _seen(state) == current
    state.undo()
    assert _seen(state) == EMPTY


def test_undo_corner_point_corner_regression():
    """Box mode: corner, point, corner, then undo used to lose the point's undo record."""
    state = PointState(key="k", hw=HW)
    state.add(10, 10, "box")
    state.add(50, 50, "positive")
    state.add(80, 70, "box")
    assert _seen(state) == (((50, 50, 1),), (10, 10, 80, 70), None)
    state.undo()  # the second corner: the first one is pending again
    assert _seen(state) == (((50, 50, 1),), None, (10, 10))
    state.undo()  # the point
    assert _seen(state) == ((), None, (10, 10))
    state.undo()  # the first corner
    assert _seen(state) == EMPTY and state.history == []


def test_a_new_box_replaces_the_old_and_undo_brings_it_back():
    state = PointState(key="k", hw=HW)
    for x, y in ((10, 10), (80, 70), (100, 90), (20, 30)):
        state.add(x, y, "box")
    assert state.box == [20, 30, 100, 90]
    state.undo()
    assert state.box == [10, 10, 80, 70] and state.corner == [100, 90]
    state.undo()
    assert state.box == [10, 10, 80, 70] and state.corner is None


@pytest.mark.parametrize(
    "x, y, kind, match",
    [
        (151, 5, "positive", "the click \\(151, 5\\) lies outside the 150x100 image"),
        (5, -1, "box", "outside the 150x100 image"),
        (float("nan"), 5, "positive", "x of the click must be a finite number"),
        (5, float("inf"), "negative", "y of the click must be a finite number"),
        (None, 5, "positive", "x of the click must be a number"),
        ("5", 5, "positive", "x of the click must be a number"),
        (True, 5, "positive", "x of the click must be a number"),
        (5, 5, "middle", "unknown click kind 'middle': expected one of positive, negative, box"),
        (5, 5, None, "unknown click kind"),
    ],
)
def test_refused_clicks_change_nothing(x, y, kind, match):
    state = PointState(key="k", hw=HW)
    state.add(10, 10, "positive")
    state.add(20, 20, "box")
    before = state.copy()
    with pytest.raises(InputError, match=match):
        state.add(x, y, kind)
    assert state == before


def test_too_small_box_and_too_many_points_are_refused():
    state = PointState(key="k", hw=HW)
    state.add(10, 10, "box")
    before = state.copy()
    with pytest.raises(InputError, match="at least 1 pixel"):
        state.add(10.5, 40, "box")
    assert state == before and state.corner == [10, 10]  # the first corner still waits
    for i in range(MAX_POINTS):
        state.add(i, i, "positive")
    before = state.copy()
    with pytest.raises(InputError, match=f"at most {MAX_POINTS}"):
        state.add(1, 1, "negative")
    assert state == before


def test_copy_is_independent():
    state = PointState(key="k", hw=HW)
    state.add(10, 10, "positive")
    state.add(20, 20, "box")
    state.add(40, 50, "box")
    state.add(60, 60, "box")
    copy = state.copy()
    copy.points[0][0] = 99.0
    copy.box[0] = 99.0
    copy.corner[0] = 99.0
    copy.add(5, 5, "negative")
    copy.undo()
    copy.undo()
    copy.clear()
    assert _seen(state) == (((10, 10, 1),), (20, 20, 40, 50), (60, 60)) and len(state.history) == 4


def test_undo_history_is_bounded():
    state = PointState(key="k", hw=HW)
    for i in range(MAX_UNDO_STEPS + 10):
        state.add(10 + i % 2, 10, "box")  # a corner, then a box: two undo records
        state.add(60, 60, "box")
    assert len(state.history) == MAX_UNDO_STEPS


def test_clear_and_undo_without_history():
    state = PointState(key="k", hw=HW)
    state.undo()
    state.clear()
    assert _seen(state) == EMPTY and state.history == []
    with pytest.raises(InputError, match="upload an image first"):
        PointState().add(1, 1, "positive")
