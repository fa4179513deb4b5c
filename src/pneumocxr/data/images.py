"""Decoding one image file to a grayscale array, with a reason for every file that is refused.

Why PIL (and OpenCV for one case):

- ``PIL.Image.open`` is lazy: it reads the header only, so the size is known before any pixel
  is decoded. The decompression-bomb check (``max_pixels``) and the ``min_side`` check cost
  nothing and a bomb is never decoded.
- PIL converts every mode the data may come in to grayscale itself: ``L``, ``1``, ``LA``,
  ``P`` (palette), ``RGB``, ``RGBA``, ``CMYK`` (including Adobe-inverted CMYK JPEGs) and
  16-bit grayscale ``I;16``. Colour goes through ITU-R 601-2 luma
  (``L = 0.299 R + 0.587 G + 0.114 B``); an alpha channel is dropped (the colour values are
  used as stored).
- Colour JPEGs are decoded straight to their luma channel (PIL's ``draft("L")``: libjpeg
  skips chroma upsampling and colour conversion), about twice as fast as decoding RGB and
  converting; it agrees with ``convert("L")`` up to rounding (exactly, on grey images stored
  as RGB like the Kaggle files).
- PIL reports truncated files as errors (``LOAD_TRUNCATED_IMAGES`` stays off), so they are
  rejected rather than half grey.
- The exception: 16-bit *colour* PNGs, which PIL narrows to 8 bits by dropping the low byte.
  These are decoded by ``cv2.imdecode(..., IMREAD_UNCHANGED)`` (full 16 bits; luma with the
  same weights) after PIL has verified the file.

Wider-than-8-bit data is scaled to 8 bits by :func:`pneumocxr.data.preprocess.to_uint8`
(linear, per-image min-max; never clipped). EXIF orientation is ignored (chest X-ray exports
do not use it). JPEG (including MPO, a JPEG variant) and PNG files are accepted, and DICOM
files (``DICM`` magic, or any file named ``*.dcm``/``*.dicom`` given to :func:`read_image`),
which :mod:`pneumocxr.data.dicom` decodes (modality LUT, window, MONOCHROME1 inverted). The
``prepare`` stage only lists ``.jpeg``/``.jpg``/``.png`` files; ``pneumocxr predict`` takes
all three.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from .preprocess import to_uint8

ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG")
DICOM_SUFFIXES = (".dcm", ".dicom")

#: every reason a file can be rejected for (the prefix of ``reason`` in rejected.csv)
REJECT_KINDS = (
    "bad_name",            # file name fits no Kermany pattern
    "label_mismatch",      # the name says one class, the folder another
    "empty",               # zero bytes
    "not_an_image",        # PIL cannot identify it
    "unsupported_format",  # an image, but not JPEG, PNG or a decodable DICOM
    "truncated",           # the file ends before the image data does
    "corrupt",             # the image data cannot be decoded
    "decompression_bomb",  # width x height over data.max_pixels
    "too_small",           # shorter side under data.min_side
    "unreadable",          # the file system refused to read it (permissions, I/O error)
)

_GRAY16_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# what PIL/zlib raise on damaged data (UnidentifiedImageError is an OSError, handled first)
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class BadImageError(InputError):
    """A file that cannot be used; ``kind`` is one of :data:`REJECT_KINDS`."""

    def __init__(self, kind: str, detail: str):
        if kind not in REJECT_KINDS:
            raise InputError(f"unknown rejection kind {kind!r}")
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass
class DecodedImage:
    """A decoded image: ``pixels`` uint8 (H, W) grayscale; ``width``/``height`` as stored;
    ``sha256`` of the file bytes; ``mode`` the source pixel mode (``L``, ``RGB``, ``I;16``...)."""

    pixels: np.ndarray
    width: int
    height: int
    sha256: str
    mode: str


@contextlib.contextmanager
def pil_pixel_limit(max_pixels: int) -> Iterator[None]:
    """Make PIL's own bomb guard agree with ``max_pixels`` for the duration of a run.

    PIL warns above ``Image.MAX_IMAGE_PIXELS`` and refuses to open images over twice that.
    Inside this context its limit is ``max_pixels``: every image PIL would warn about is one
    :func:`decode_image` rejects anyway (so the warning is silenced), and no image under
    ``max_pixels`` is refused by PIL. Set once around a whole run (it changes a PIL global),
    not per thread.
    """
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = int(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def read_image(path: str | Path, *, min_side: int = 64,
               max_pixels: int = 100_000_000) -> DecodedImage:
    """Read and decode one image file (see :func:`decode_image`); a ``.dcm``/``.dicom`` file
    without the DICOM preamble is read as DICOM too."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BadImageError("unreadable", f"cannot read the file ({err.strerror or err})") from None
    if path.suffix.lower() in DICOM_SUFFIXES and data:
        from .dicom import decode_dicom

        return decode_dicom(data, min_side=min_side, max_pixels=max_pixels, force=True)
    return decode_image(data, min_side=min_side, max_pixels=max_pixels)


def check_size(width: int, height: int, *, min_side: int, max_pixels: int) -> None:
    """The size checks of every decoder, before the pixels are decoded: ``width * height <=
    max_pixels`` (decompression bombs) and ``min(width, height) >= min_side``."""
    if width * height > max_pixels:
        raise BadImageError(
            "decompression_bomb",
            f"{width}x{height} = {width * height} pixels exceeds data.max_pixels ({max_pixels})")
    if min(width, height) < min_side:
        raise BadImageError(
            "too_small", f"{width}x{height}: shorter side {min(width, height)} px is under "
            f"data.min_side ({min_side} px)")


def decode_image(data: bytes, *, min_side: int = 64,
                 max_pixels: int = 100_000_000) -> DecodedImage:
    """Decode JPEG/PNG (or DICOM) bytes to a uint8 grayscale image.

    Checks, in order: empty file, recognisable image, JPEG/PNG format, ``width * height <=
    max_pixels`` (before decoding), ``min(width, height) >= min_side``, complete image data.
    DICOM bytes go to :func:`pneumocxr.data.dicom.decode_dicom` (the same checks).

    Raises:
        BadImageError: with ``kind`` naming the failed check.
    """
    if len(data) == 0:
        raise BadImageError("empty", "file is empty (0 bytes)")
    # imported here: dicom.py builds on this module's BadImageError and DecodedImage
    from .dicom import decode_dicom, is_dicom

    if is_dicom(data):
        return decode_dicom(data, min_side=min_side, max_pixels=max_pixels)
    digest = hashlib.sha256(data).hexdigest()
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise BadImageError("decompression_bomb", str(err)) from None
    except UnidentifiedImageError:
        raise BadImageError("not_an_image", "not a recognisable image file") from None
    except _DECODE_ERRORS as err:
        raise _decode_failure(err) from None
    with im:
        if im.format not in ACCEPTED_FORMATS:
            raise BadImageError("unsupported_format", f"{im.format} image; expected JPEG or PNG")
        width, height = im.size
        check_size(width, height, min_side=min_side, max_pixels=max_pixels)
        source_mode = im.mode
        if im.format in ("JPEG", "MPO") and im.mode == "RGB":
            # libjpeg outputs the luma channel directly: no chroma upsampling or colour
            # conversion, about twice as fast; same 601 weights as convert("L").
            im.draft("L", im.size)
        try:
            im.load()
            gray, source_mode = _to_gray(im, data, source_mode)
        except _DECODE_ERRORS as err:
            raise _decode_failure(err) from None
    if gray.shape != (height, width):
        raise BadImageError("corrupt", f"decoded shape {gray.shape} differs from the header's "
                            f"{width}x{height}")
    return DecodedImage(gray, width, height, digest, source_mode)


def _decode_failure(err: Exception) -> BadImageError:
    msg = str(err) or type(err).__name__
    kind = "truncated" if "truncat" in msg.lower() else "corrupt"
    return BadImageError(kind, f"cannot decode ({msg})")


def _png_bit_depth(data: bytes) -> int | None:
    """Bit depth from the PNG IHDR chunk (byte 24), or None if ``data`` is not a PNG."""
    if len(data) > 25 and data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR":
        return data[24]
    return None


def _to_gray(im: Image.Image, data: bytes, source_mode: str) -> tuple[np.ndarray, str]:
    """The loaded image as uint8 grayscale, and the source mode (``RGB;16`` etc. for 16-bit
    colour PNGs)."""
    mode = im.mode
    if mode in _GRAY16_MODES:
        return to_uint8(np.asarray(im)), mode
    if im.format == "PNG" and _png_bit_depth(data) == 16:
        # 16-bit colour (or grey+alpha): PIL would keep only the high byte; use OpenCV.
        arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise InputError("OpenCV could not decode the 16-bit PNG")
        if arr.ndim == 3:
            code = {3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}.get(arr.shape[2])
            if code is None:
                raise InputError(f"unexpected {arr.shape[2]}-channel 16-bit PNG")
            arr = cv2.cvtColor(arr, code)
        return to_uint8(arr), f"{source_mode};16"
    if mode != "L":
        im = im.convert("L")
    return np.asarray(im, dtype=np.uint8), source_mode
