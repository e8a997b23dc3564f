"""Image input: files of every common mode, EXIF orientation, damaged data, limits,
and property-based totality of ``check_image`` and ``load_image``.

Expected pixels are recomputed here with plain numpy formulas, not with the
package's helpers."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image, ImageFile

from maskadapter.engine.images import (
    MAX_ASPECT_RATIO,
    MAX_IMAGE_PIXELS,
    MIN_IMAGE_SIDE,
    check_image,
    load_image,
)
from maskadapter.engine.mask_settings import AutoMaskSettings
from maskadapter.engine.vocabulary import build_vocabulary
from maskadapter.errors import InputError

RNG = np.random.default_rng(1234)
H, W = 24, 40


def _rgb(h: int = H, w: int = W) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255.0
    return np.rint(rgb.astype(np.float64) * a + 255.0 * (1.0 - a)).astype(np.uint8)


def _save(im: Image.Image, path: Path, **kwargs) -> Path:
    im.save(path, **kwargs)
    return path


def _check_out(out: np.ndarray, hw: tuple[int, int]) -> None:
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    assert out.shape == (*hw, 3) and out.flags.c_contiguous


# ------------------------------------------------------------------ modes


def test_rgb_png_and_every_source_kind(tmp_path):
    rgb = _rgb()
    path = _save(Image.fromarray(rgb), tmp_path / "rgb.png")
    data = path.read_bytes()
    for source in (path, str(path), data, bytearray(data), memoryview(data), io.BytesIO(data), Image.fromarray(rgb)):
        out = load_image(source)
        _check_out(out, (H, W))
        np.testing.assert_array_equal(out, rgb)
    with open(path, "rb") as fp:
        np.testing.assert_array_equal(load_image(fp), rgb)
        assert not fp.closed  # the caller's file stays open
    np.testing.assert_array_equal(check_image(path), rgb)  # check_image reads paths too
    np.testing.assert_array_equal(check_image(rgb), rgb)


def test_bilevel_and_grey(tmp_path):
    bits = RNG.random((H, W)) > 0.5
    out = load_image(_save(Image.fromarray(bits), tmp_path / "bits.png"))
    assert Image.open(tmp_path / "bits.png").mode == "1"
    np.testing.assert_array_equal(out, np.repeat(np.where(bits, 255, 0).astype(np.uint8)[..., None], 3, 2))
    grey = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    out = load_image(_save(Image.fromarray(grey), tmp_path / "grey.png"))
    np.testing.assert_array_equal(out, np.stack([grey] * 3, axis=2))


def test_grey_alpha_and_rgba_composite_over_white(tmp_path):
    grey = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    alpha = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    alpha[0, 0] = 0
    la = Image.fromarray(np.stack([grey, alpha], axis=2), mode="LA")
    out = load_image(_save(la, tmp_path / "la.png"))
    np.testing.assert_array_equal(out, _over_white(np.stack([grey] * 3, axis=2), alpha))

    rgba = np.concatenate([_rgb(), alpha[..., None]], axis=2)
    rgba[0, 0] = (255, 0, 0, 0)  # fully transparent red -> white
    rgba[0, 1] = (10, 20, 30, 255)  # opaque -> as stored
    out = load_image(_save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "rgba.png"))
    expected = _over_white(rgba[..., :3], rgba[..., 3])
    np.testing.assert_array_equal(out, expected)
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [10, 20, 30]
    # the array path agrees with the file path
    np.testing.assert_array_equal(check_image(rgba), expected)


def test_palette_with_and_without_transparency(tmp_path):
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    index = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    im = Image.fromarray(index, mode="L").convert("P")
    im.putpalette(palette.reshape(-1).tolist())
    out = load_image(_save(im, tmp_path / "p.png"))
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(out, palette[index])

    transparent = int(index[3, 5])
    out = load_image(_save(im, tmp_path / "pt.png", transparency=transparent))
    expected = palette[index].copy()
    expected[index == transparent] = 255
    np.testing.assert_array_equal(out, expected)
    out = load_image(_save(im, tmp_path / "pt.gif", transparency=transparent))
    np.testing.assert_array_equal(out[index == transparent], 255)


def test_sixteen_bit_maps_the_full_range(tmp_path):
    ramp = np.linspace(0, 65535, H * W).round().astype(np.uint16).reshape(H, W)
    ramp[0, 0], ramp[-1, -1] = 0, 65535
    expected = np.stack([np.rint(ramp / 257.0).astype(np.uint8)] * 3, axis=2)
    little = Image.fromarray(ramp)
    assert little.mode == "I;16"
    big = Image.frombytes("I;16B", (W, H), ramp.astype(">u2").tobytes())
    files = [
        _save(little, tmp_path / "g16.png"),
        _save(little, tmp_path / "g16.tif"),
        _save(big, tmp_path / "g16b.tif"),
        _save(little.convert("I"), tmp_path / "g32.tif"),
    ]
    assert [Image.open(f).mode for f in files] == ["I;16", "I;16", "I;16B", "I"]
    for f in files:
        out = load_image(f)
        np.testing.assert_array_equal(out, expected, err_msg=f.name)
        assert out.min() == 0 and out.max() == 255  # mapped, not clipped at 255
    np.testing.assert_array_equal(check_image(ramp), expected)  # uint16 arrays alike


def test_float_images(tmp_path):
    unit = RNG.random((H, W), dtype=np.float32)
    out = load_image(_save(Image.fromarray(unit), tmp_path / "f.tif"))
    assert Image.open(tmp_path / "f.tif").mode == "F"
    np.testing.assert_array_equal(out[..., 0], np.rint(unit.astype(np.float64) * 255).astype(np.uint8))
    wide = (unit * 300 - 20).astype(np.float32)
    out = load_image(_save(Image.fromarray(wide), tmp_path / "f2.tif"))
    np.testing.assert_array_equal(out[..., 1], np.rint(np.clip(wide.astype(np.float64), 0, 255)).astype(np.uint8))


def _blocks(colours: list[tuple[int, ...]], side: int = 32) -> np.ndarray:
    return np.concatenate([np.tile(np.array(c, np.uint8), (side, side, 1)) for c in colours], axis=1)


def test_cmyk_jpeg(tmp_path):
    cmyk = [(0, 0, 0, 0), (255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 255, 0), (0, 0, 0, 255), (0, 0, 0, 128), (60, 0, 0, 0)]
    im = Image.fromarray(_blocks(cmyk), mode="CMYK")
    path = _save(im, tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    out = load_image(path)
    _check_out(out, (32, 32 * len(cmyk)))
    for i, (c, m, y, k) in enumerate(cmyk):
        expected = [255 * (1 - v / 255) * (1 - k / 255) for v in (c, m, y)]
        centre = out[12:20, 32 * i + 12 : 32 * i + 20].reshape(-1, 3).mean(0)
        np.testing.assert_allclose(centre, expected, atol=8, err_msg=str((c, m, y, k)))


def test_ycbcr(tmp_path):
    ycc = [(128, 128, 128), (200, 100, 160), (60, 170, 90), (235, 128, 128)]
    im = Image.fromarray(_blocks(ycc), mode="YCbCr")

    def rgb(y, cb, cr):
        r = y + 1.402 * (cr - 128)
        g = y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128)
        b = y + 1.772 * (cb - 128)
        return np.clip([r, g, b], 0, 255)

    for out, tol in ((load_image(im), 2), (load_image(_save(im, tmp_path / "ycc.jpg", quality=95)), 6)):
        for i, colour in enumerate(ycc):
            centre = out[12:20, 32 * i + 12 : 32 * i + 20].reshape(-1, 3).mean(0)
            np.testing.assert_allclose(centre, rgb(*colour), atol=tol)


# ------------------------------------------------------------------ EXIF orientation


@pytest.mark.parametrize("orientation,quarter_turns", [(6, -1), (8, 1), (3, 2), (1, 0)])
def test_exif_orientation_is_applied(tmp_path, orientation, quarter_turns):
    # stored 64 wide, 32 high; quadrants red, green / blue, white
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:16, :32] = (255, 0, 0)
    stored[:16, 32:] = (0, 255, 0)
    stored[16:, :32] = (0, 0, 255)
    stored[16:, 32:] = (255, 255, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(Image.fromarray(stored), tmp_path / f"o{orientation}.jpg", exif=exif, quality=95)
    expected = np.rot90(stored, k=quarter_turns)  # k=-1: a quarter turn clockwise
    for out in (load_image(path), load_image(path.read_bytes()), load_image(Image.open(path))):
        assert out.shape == expected.shape
        for y, x in ((4, 4), (4, -5), (-5, 4), (-5, -5)):  # the four corners
            np.testing.assert_allclose(out[y, x], expected[y, x], atol=12)
    if orientation == 6:
        assert out.shape == (64, 32, 3)
        np.testing.assert_allclose(out[4, 4], (0, 0, 255), atol=12)  # bottom-left comes to top-left


# ------------------------------------------------------------------ not an image


def _png_bytes(h: int = 16, w: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_rgb(h, w)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg_bytes(h: int = 64, w: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_rgb(h, w)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _not_an_image(source, detail: str = "") -> str:
    with pytest.raises(InputError, match=r"^not an image file \(") as info:
        load_image(source)
    assert detail in str(info.value)
    with pytest.raises(InputError, match=r"^not an image file \("):
        check_image(source)
    return str(info.value)


def test_not_image_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a picture\n")
    assert _not_an_image(text).startswith("not an image file (could not read 'notes.txt': unknown format")
    _not_an_image(str(text), "unknown format")
    noise = tmp_path / "noise.png"
    noise.write_bytes(RNG.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    _not_an_image(noise, "'noise.png'")
    _not_an_image(RNG.integers(0, 256, 300, dtype=np.uint8).tobytes())
    png, jpeg = _png_bytes(), _jpeg_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    _not_an_image(tmp_path / "cut.png", "truncated or damaged")
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    _not_an_image(tmp_path / "cut.jpg", "truncated or damaged")
    _not_an_image(jpeg[: len(jpeg) // 2], "truncated or damaged")
    (tmp_path / "empty.png").write_bytes(b"")
    _not_an_image(tmp_path / "empty.png", "empty")
    _not_an_image(b"", "no bytes")
    _not_an_image(io.BytesIO(b""), "empty")
    _not_an_image(tmp_path, "directory")
    assert "no such file" in _not_an_image(tmp_path / "missing.png")
    _not_an_image(str(tmp_path / "a\0b.png"))
    _not_an_image(io.StringIO("text, not bytes"))


def test_other_objects_are_refused_with_what_is_expected():
    for bad in (3, 2.5, [1, 2, 3], {"image": 1}, object(), (np.zeros((9, 9, 3)),)):
        with pytest.raises(InputError, match="expected an image"):
            load_image(bad)
    with pytest.raises(InputError, match="no image"):
        check_image(None)


# ------------------------------------------------------------------ limits


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk (8-bit RGB) claiming ``width`` x ``height`` pixels,
    with no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk + end


@pytest.mark.parametrize("width,height", [(100_000, 100_000), (10_000, 10_000), (7_000, 7_000)])
def test_huge_header_is_refused_before_decoding(tmp_path, width, height, monkeypatch):
    # beyond PIL's bomb error, between its warning and error, and just past our limit
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header(width, height))
    small = _png_bytes(16, 12)  # made before the spy is in place (saving loads too)
    decoded = []  # every pixel decode goes through load(): record it and decode nothing

    def no_decoding(self, *args, **kwargs):
        decoded.append(self.size)
        raise OSError("decoding was attempted")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match=f"too large.*at most {MAX_IMAGE_PIXELS // 1_000_000} MP"):
            load_image(path)
    assert decoded == []  # refused from the header alone
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    # the spy sees decoding where there is some: a small PNG within the limits is decoded
    with pytest.raises(InputError, match="truncated or damaged"):
        load_image(small)
    assert decoded == [(12, 16)]


def test_size_limits():
    with pytest.raises(InputError, match=rf"too small \(1x1\); both sides need {MIN_IMAGE_SIDE}\+ pixels"):
        check_image(np.zeros((1, 1, 3), np.uint8))
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    with pytest.raises(InputError, match=r"too small \(1x1\)"):
        load_image(buf.getvalue())
    with pytest.raises(InputError, match=r"too small \(0x0\)"):
        check_image(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(InputError, match=rf"too elongated \(30000x8\).*at most {MAX_ASPECT_RATIO} times"):
        check_image(np.zeros((8, 30_000, 3), np.uint8))
    buf = io.BytesIO()
    Image.new("RGB", (8, 8 * MAX_ASPECT_RATIO + 1)).save(buf, "PNG")
    with pytest.raises(InputError, match="too elongated"):
        load_image(buf.getvalue())
    assert check_image(np.zeros((8, 8 * MAX_ASPECT_RATIO, 3), np.uint8)).shape == (8, 800, 3)


@pytest.mark.parametrize("hw", [(12, 1200), (1200, 12)])
def test_elongated_images_work_end_to_end(segmenter, hw):
    image = RNG.integers(0, 256, (*hw, 3), dtype=np.uint8)
    open_filters = AutoMaskSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    result = segmenter.segment_automatic(image, build_vocabulary("cat, dog"), open_filters)
    assert result.image_size == hw
    assert result.label_map.shape == hw
    for seg in result.segments:
        assert seg.mask.shape == hw


# ------------------------------------------------------------------ arrays


def test_array_conventions():
    grey = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    np.testing.assert_array_equal(check_image(grey[..., None]), np.stack([grey] * 3, axis=2))
    wide = grey.astype(np.int32) * 4 - 300
    np.testing.assert_array_equal(check_image(wide)[..., 0], np.clip(wide, 0, 255))
    rgb = _rgb()
    view = rgb[:, ::-1]
    out = check_image(view)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, view)
    assert check_image(rgb) is rgb  # already right: no copy
    for bad, match in [
        (np.full((H, W, 3), np.nan), "finite"),
        (np.full((H, W, 3), np.inf, np.float32), "finite"),
        (np.zeros((H, W, 3), complex), "dtype complex128"),
        (np.zeros((H, W, 3), object), "dtype object"),
        (np.zeros((2, H, W, 3), np.uint8), "shape"),
        (np.zeros((H, W, 2), np.uint8), "shape"),
        (np.zeros((H, W, 3), bool), "uint8"),
        (np.array(5), "shape"),
    ]:
        with pytest.raises(InputError, match=match):
            check_image(bad)
    huge = np.full((H, W, 3), 2**62, np.int64)
    assert (check_image(huge) == 255).all()
    assert (check_image(np.full((H, W, 3), -(2**62), np.int64)) == 0).all()


# ------------------------------------------------------------------ properties

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = [np.uint8, np.uint16, np.int32, np.float32, np.float64, bool, np.int8, ">u2", np.complex64]

shapes = st.one_of(
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=12),
    st.tuples(st.integers(8, 14), st.integers(8, 14)),
    st.tuples(st.integers(8, 14), st.integers(8, 14), st.sampled_from([1, 3, 4])),
)
arrays = st.sampled_from(DTYPES).flatmap(lambda dt: hnp.arrays(np.dtype(dt), shapes))


def _valid_or_input_error(fn, value) -> np.ndarray | None:
    try:
        out = fn(value)
    except InputError:
        return None
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.flags.c_contiguous and min(out.shape[:2]) >= MIN_IMAGE_SIDE
    return out


@FAST
@given(arrays)
def test_check_image_is_total_on_arrays(array):
    out = _valid_or_input_error(check_image, array)
    if out is None:
        return
    assert out.shape[:2] == array.shape[:2]
    if array.dtype == np.uint8 and array.shape[2:] == (3,):
        np.testing.assert_array_equal(out, array)
    if array.dtype.kind == "u" and array.dtype.itemsize == 2 and array.shape[2:] == (3,):
        np.testing.assert_array_equal(out, np.rint(array / 257.0).astype(np.uint8))


others = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.complex_numbers(),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=5),
    st.lists(st.lists(st.integers(0, 255), min_size=3, max_size=3), max_size=5),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
    st.builds(object),
    st.builds(np.array, st.lists(st.one_of(st.integers(), st.text(), st.none()), max_size=4), dtype=st.just(object)),
    st.sampled_from([np.float64(1.0), np.int64(3), slice(1), Ellipsis, type, memoryview(b"")]),
)


@FAST
@given(others)
def test_check_image_is_total_on_other_objects(value):
    _valid_or_input_error(check_image, value)


def _encoded(fmt: str, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_rgb(12, 16)).convert(mode).save(buf, fmt)
    return buf.getvalue()


ENCODED = [
    _encoded("PNG"),
    _encoded("PNG", "P"),
    _encoded("JPEG"),
    _encoded("GIF", "P"),
    _encoded("BMP"),
    _encoded("TIFF"),
    _encoded("WEBP"),
    _encoded("PPM"),
]


@st.composite
def damaged(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(ENCODED)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["cut", "flip", "insert"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "cut":
            del data[i:]
        elif kind == "flip" and data:
            data[i] = draw(st.integers(0, 255))
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL's notes on damaged TIFF and PNG data
@FAST
@given(st.one_of(st.binary(max_size=600), damaged()))
def test_load_image_is_total_on_bytes(data):
    _valid_or_input_error(load_image, data)


def test_every_encoded_sample_reads():
    for data in ENCODED:
        _check_out(load_image(data), (12, 16))
