"""Where images enter the package: files, bytes, PIL images and arrays to HWC uint8 RGB.

Every image the package works on goes through ``load_image`` (files, bytes, file
objects, PIL images, arrays) or ``check_image`` (the same, for values already in
memory). Both return a contiguous (H, W, 3) uint8 RGB array or raise ``InputError``
with a short message that says what was expected; no other exception escapes.

Conventions, the same for files and arrays:

* EXIF orientation is applied to files, bytes and PIL images (what a viewer shows).
* Transparent pixels are composited over white (RGBA, LA, palette images with a
  transparent colour, RGBA arrays): the alpha channel never survives, and a fully
  transparent pixel is white whatever colour it stores.
* 16-bit samples (``I;16`` files, ``I`` files, uint16 arrays) map their full range
  0..65535 onto 0..255 (``round(v / 257)``); ``I`` values outside 0..65535 are clipped
  to it first.
* Floating-point samples (``F`` files, float arrays) are read as 0..1 when none
  exceeds 1 (scaled by 255), else as 0..255; the result is clipped and rounded.
  NaN and infinity are refused.
* Other integer arrays are clipped to 0..255. Boolean, complex, object and other
  non-numeric arrays are refused.

Limits (each refusal states it): both sides at least ``MIN_IMAGE_SIDE`` pixels, at
most ``MAX_IMAGE_PIXELS`` pixels, long side at most ``MAX_ASPECT_RATIO`` times the
short side. For files the size is checked from the header before any pixel is
decoded, so a huge image is refused without allocating it.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import warnings
from typing import IO

import numpy as np
from PIL import Image, ImageOps

from maskadapter.errors import InputError

MIN_IMAGE_SIDE = 8
MAX_IMAGE_PIXELS = 40_000_000
MAX_ASPECT_RATIO = 100
# formats read from files and bytes; PIL's other plugins (EPS runs Ghostscript, TGA
# and others have no signature) are not tried
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "GIF", "BMP", "TIFF", "PPM")

NO_IMAGE_MESSAGE = "no image: upload a photo (JPEG or PNG) first"
NOT_AN_IMAGE = "not an image file"  # every refusal of unreadable data starts with "not an image file ("
UNKNOWN_FORMAT = "unknown format, expected JPEG, PNG, WebP, AVIF, GIF, BMP, TIFF or PPM"
DAMAGED = "truncated or damaged"
EMPTY = "empty file"

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray

_OPEN_LOCK = threading.Lock()
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def check_image_size(width: int, height: int) -> None:
    """Raise ``InputError`` unless a ``width`` x ``height`` image is within the limits:
    both sides >= ``MIN_IMAGE_SIDE``, at most ``MAX_IMAGE_PIXELS`` pixels, long side at
    most ``MAX_ASPECT_RATIO`` times the short side."""
    w, h = int(width), int(height)
    if min(w, h) < MIN_IMAGE_SIDE:
        raise InputError(f"the image is too small ({w}x{h}); both sides need {MIN_IMAGE_SIDE}+ pixels")
    if w * h > MAX_IMAGE_PIXELS:
        raise InputError(f"the image is too large ({w}x{h}); at most {MAX_IMAGE_PIXELS // 1_000_000} MP")
    if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
        raise InputError(
            f"the image is too elongated ({w}x{h}); the long side may be at most "
            f"{MAX_ASPECT_RATIO} times the short side"
        )


def _too_large_unknown_size() -> InputError:
    return InputError(f"the image is too large; at most {MAX_IMAGE_PIXELS // 1_000_000} MP")


def _not_an_image(what: str, reason: str) -> InputError:
    return InputError(f"{NOT_AN_IMAGE} ({what}: {reason})")


def _composite_over_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 RGBA -> (H, W, 3) uint8 RGB over a white background (rounded)."""
    alpha = rgba[:, :, 3:4].astype(np.uint32)
    rgb = rgba[:, :, :3].astype(np.uint32)
    return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def _sixteen_bit_to_uint8(values: np.ndarray) -> np.ndarray:
    """Integer samples in 0..65535 (clipped there) -> uint8, ``round(v / 257)``."""
    v = np.clip(values, 0, 65535).astype(np.uint32)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    """Finite float samples, 0..1 when none exceeds 1 else 0..255 -> uint8 (clipped, rounded)."""
    if not np.isfinite(values).all():
        raise InputError("pixel values must be finite numbers (the image holds NaN or infinity)")
    values = values.astype(np.float32 if values.dtype.itemsize <= 4 else np.float64, copy=False)
    if values.size and values.max() <= 1.0:
        return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Numeric samples of any accepted dtype -> uint8 with the module's conventions."""
    kind = values.dtype.kind
    if values.dtype == np.uint8:
        return values
    if kind == "u" and values.dtype.itemsize == 2:
        return _sixteen_bit_to_uint8(values)
    if kind in "ui":
        info = np.iinfo(values.dtype)
        return np.clip(values, max(0, info.min), min(255, info.max)).astype(np.uint8)
    if kind == "f":
        return _float_to_uint8(values)
    raise InputError(f"expected uint8 pixel values, got dtype {values.dtype}")


def _array_to_rgb(image: np.ndarray) -> np.ndarray:
    """Any numpy array -> contiguous (H, W, 3) uint8 RGB, or ``InputError``."""
    image = np.asarray(image)  # subclasses (matrix, masked) as plain arrays
    if image.dtype.kind not in "uif":
        raise InputError(f"expected uint8 pixel values, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = image[:, :, None]
    elif image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InputError(f"expected an HxWx3 RGB image (or HxW grey, HxWx4 RGBA), got an array of shape {image.shape}")
    h, w = image.shape[:2]
    check_image_size(w, h)
    image = _to_uint8(image)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = _composite_over_white(image)
    return np.ascontiguousarray(image)


def _pil_pixels(im: Image.Image) -> np.ndarray:
    """A decoded PIL image -> (H, W, 3) or (H, W) array, transparency over white."""
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_uint8(np.asarray(im).astype(np.int64))
    if mode == "F":
        return _float_to_uint8(np.asarray(im))
    if mode in _ALPHA_MODES or "transparency" in im.info:
        return _composite_over_white(np.asarray(im.convert("RGBA")))
    return np.asarray(im.convert("RGB"))


def _decode(im: Image.Image, what: str) -> np.ndarray:
    """Check the size of a (possibly lazily opened) PIL image from its header, then
    decode it, apply its EXIF orientation and convert its mode; every failure of the
    data becomes ``InputError``."""
    check_image_size(*im.size)
    try:
        # no bomb warning here: PIL warns past 89 MP, refused above from the header
        im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large_unknown_size() from None
    except MemoryError:
        raise _not_an_image(what, "too large to decode") from None
    except Exception:  # decoders raise OSError, SyntaxError, struct.error, EOFError, ...
        raise _not_an_image(what, DAMAGED) from None
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # unreadable EXIF: the pixels as stored
        pass
    try:
        pixels = _pil_pixels(im)
    except InputError:
        raise
    except MemoryError:
        raise _not_an_image(what, "too large to decode") from None
    except Exception:
        raise _not_an_image(what, f"unsupported colour mode {im.mode}") from None
    return _array_to_rgb(pixels)


def _open_and_decode(fp: IO[bytes], what: str) -> np.ndarray:
    """Identify the format of a binary file object, check the size, decode."""
    try:
        # PIL's bomb warning (past 89 MP) raised as an error, caught below; the warning
        # filters are process-wide, so the header parse (no decoding) holds a lock
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fp, formats=IMAGE_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large_unknown_size() from None
    except Image.UnidentifiedImageError:
        raise _not_an_image(what, UNKNOWN_FORMAT) from None
    except Exception:  # a plugin's header parser may raise anything on bad data
        raise _not_an_image(what, DAMAGED) from None
    with im:
        return _decode(im, what)


def _is_empty(fp: IO[bytes]) -> bool:
    """Whether a seekable binary file object has no bytes left (position restored)."""
    start = fp.tell()
    first = fp.read(1)
    fp.seek(start)
    return not first


def _short_name(path: str | bytes) -> str:
    text = os.fsdecode(path)
    name = os.path.basename(text.rstrip("/\\")) or text
    return repr(name if len(name) <= 80 else name[:77] + "...")


def _load_path(path: str | bytes) -> np.ndarray:
    name = _short_name(path)
    try:
        fp = open(path, "rb")  # closed below
    except FileNotFoundError:
        raise _not_an_image(f"could not open {name}", "no such file") from None
    except IsADirectoryError:
        raise _not_an_image(f"could not open {name}", "it is a directory") from None
    except PermissionError:
        raise _not_an_image(f"could not open {name}", "permission denied") from None
    except (OSError, ValueError) as err:  # ValueError: embedded null byte
        reason = getattr(err, "strerror", None) or "cannot be opened"
        raise _not_an_image(f"could not open {name}", str(reason).lower()) from None
    with fp:
        try:
            if _is_empty(fp):
                raise _not_an_image(f"could not read {name}", EMPTY)
        except OSError:  # e.g. a FIFO or a device that cannot seek
            raise _not_an_image(f"could not read {name}", "not a regular file") from None
        return _open_and_decode(fp, f"could not read {name}")


def _load_file_object(fp: object) -> np.ndarray:
    name = getattr(fp, "name", None)
    named = isinstance(name, str | bytes) and bool(name)
    what = f"could not read {_short_name(name)}" if named else "could not read the file"
    try:
        seekable = bool(fp.seekable()) if hasattr(fp, "seekable") else hasattr(fp, "seek")
        if not seekable:
            fp = io.BytesIO(fp.read())
        if _is_empty(fp):
            raise _not_an_image(what, EMPTY)
    except InputError:
        raise
    except Exception:  # a closed, text-mode or broken file object
        raise _not_an_image(what, "not a readable binary file") from None
    return _open_and_decode(fp, what)


def load_image(source: ImageSource) -> np.ndarray:
    """Read an image from a file, bytes or memory as a contiguous (H, W, 3) uint8 RGB array.

    Args:
        source: a path (``str`` or ``os.PathLike``), the file's bytes (``bytes``,
            ``bytearray``, ``memoryview``), a binary file object (read from its current
            position), a PIL image, or a numpy array (validated by ``check_image``).

    Files, bytes and PIL images have their EXIF orientation applied and every common
    mode converted (1, L, LA, P, RGB, RGBA, CMYK, YCbCr, I;16*, I, F); see the module
    docstring for transparency (over white) and 16-bit/float conventions. Readable
    formats: ``IMAGE_FORMATS``. The size limits are checked from the header before
    decoding.

    Raises:
        InputError: for anything else. Unreadable data gives a message starting with
            ``"not an image file ("`` that says what was found, e.g. ``"not an image
            file (could not read 'x.txt': unknown format, expected JPEG, ...)"``; an
            image outside the limits a message that states the limit.
    """
    if source is None:
        raise InputError(NO_IMAGE_MESSAGE)
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    if isinstance(source, Image.Image):
        return _decode(source, "could not read the image")
    if isinstance(source, str | os.PathLike):
        try:
            path = os.fspath(source)
        except Exception:  # a broken __fspath__
            raise _not_an_image("could not open the path", "not a file path") from None
        if not isinstance(path, str | bytes):
            raise _not_an_image("could not open the path", "not a file path")
        return _load_path(path)
    if isinstance(source, bytes | bytearray | memoryview):
        if isinstance(source, memoryview):
            try:
                source = source.tobytes()
            except Exception:  # a released or odd buffer
                raise _not_an_image("could not read the data", DAMAGED) from None
        if not source:
            raise _not_an_image("could not read the data", "no bytes")
        return _open_and_decode(io.BytesIO(source), "could not read the data")
    if hasattr(source, "read"):
        return _load_file_object(source)
    raise InputError(
        "expected an image (an HxWx3 uint8 array, a PIL image, a file path or the file's bytes), "
        f"got {type(source).__name__}"
    )


def check_image(image: object) -> np.ndarray:
    """Validate an image and return it as a contiguous (H, W, 3) uint8 RGB array.

    Accepts HWC uint8 RGB arrays, grey (H, W) or (H, W, 1) arrays, RGBA (H, W, 4)
    arrays (composited over white), uint16/other integer/float arrays (see the
    module's conventions), PIL images, and files: a path, bytes or a binary file
    object (read by ``load_image``, EXIF orientation applied). Total: any other
    object, dtype, shape, NaN or size outside the limits raises ``InputError``; no
    other exception escapes. A uint8 RGB contiguous array comes back as is (no copy).
    """
    if isinstance(image, np.ndarray):
        try:
            return _array_to_rgb(image)
        except InputError:
            raise
        except MemoryError:
            raise InputError("the image is too large to convert; send it as HxWx3 uint8 RGB") from None
        except Exception as err:  # exotic array subclasses and dtypes
            raise InputError(f"expected an HxWx3 uint8 RGB array; this one cannot be read ({err})") from None
    return load_image(image)  # type: ignore[arg-type]


def image_key(image: np.ndarray) -> str:
    """Content hash of an image array (shape and pixels): the key of its session."""
    digest = hashlib.sha1(np.ascontiguousarray(image).data)
    digest.update(str(image.shape).encode())
    return digest.hexdigest()
