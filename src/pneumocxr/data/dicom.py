"""Decoding one DICOM file to the same uint8 grayscale image a JPEG/PNG export would give.

The display pipeline of DICOM PS3.4 (Grayscale Standard Display), in order:

1. stored values (``pixel_array``: sign and ``BitsStored`` handled by pydicom; compressed
   transfer syntaxes go through pydicom's decoders, e.g. Pillow for JPEG baseline);
2. modality LUT: ``RescaleSlope`` / ``RescaleIntercept`` or a Modality LUT Sequence, skipped
   when it is the identity (so 8-bit data stays 8-bit);
3. VOI: the first ``WindowCenter`` / ``WindowWidth`` with ``VOILUTFunction`` (``LINEAR``,
   ``LINEAR_EXACT``, ``SIGMOID``; PS3.3 C.11.2.1.2-3) maps onto [0, 255]; else the first VOI
   LUT Sequence table, scaled from its output bit depth; with neither, the image is scaled like
   a 16-bit PNG (:func:`pneumocxr.data.preprocess.to_uint8`: 8-bit data unchanged, wider data
   min-max);
4. ``MONOCHROME1`` (0 = white) is inverted (``255 - v``), as is ``PresentationLUTShape``
   ``INVERSE``, so bone is bright as in every JPEG of the set.

Colour DICOMs (``RGB``, ``YBR_*``, ``PALETTE COLOR``) become grey with the ITU-R 601 luma
weights PIL uses for JPEG/PNG. A DICOM whose pixels are those of a JPEG (8-bit
``MONOCHROME2``, or any bit depth with a window that maps it back) therefore decodes to the same
array, and gets the same prediction.

Refused, with the reasons of :data:`pneumocxr.data.images.REJECT_KINDS`: no pixel data
(``not_an_image``), multi-frame images and transfer syntaxes without an installed decoder
(``unsupported_format``), headers over ``max_pixels`` (``decompression_bomb``, checked before
decoding), sides under ``min_side`` (``too_small``) and pixel data that does not decode
(``corrupt`` / ``truncated``).
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np

from ..errors import InputError
from .images import BadImageError, DecodedImage, check_size
from .preprocess import to_uint8

#: byte offset and value of the DICOM Part 10 magic (after the 128-byte preamble)
_MAGIC_OFFSET, _MAGIC = 128, b"DICM"
_LUMA = np.array([0.299, 0.587, 0.114])


def is_dicom(data: bytes) -> bool:
    """True for a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    return data[_MAGIC_OFFSET:_MAGIC_OFFSET + 4] == _MAGIC


def _pydicom():
    try:
        import pydicom
        import pydicom.pixels
    except ImportError:  # pragma: no cover - pydicom is a pinned dependency
        raise BadImageError("unsupported_format", "DICOM file, but pydicom is not installed "
                            "(pip install pydicom==3.0.2)") from None
    return pydicom


def window_to_uint8(values: np.ndarray, center: float, width: float,
                    function: str = "LINEAR") -> np.ndarray:
    """Apply a VOI window (PS3.3 C.11.2.1.2) and return uint8 in [0, 255].

    ``LINEAR``: ``((x - (c - 0.5)) / (w - 1) + 0.5)``, clipped to [0, 1]; ``LINEAR_EXACT``:
    ``(x - c) / w + 0.5``; ``SIGMOID``: ``1 / (1 + exp(-4 (x - c) / w))``; then x 255, rounded.
    """
    x = np.asarray(values, dtype=np.float64)
    function = (function or "LINEAR").upper()
    if function == "LINEAR":
        if width < 1:
            raise BadImageError("corrupt", f"WindowWidth {width} < 1 (LINEAR needs >= 1)")
        y = (x - (center - 0.5)) / max(width - 1.0, 1e-12) + 0.5
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise BadImageError("corrupt", f"WindowWidth {width} must be > 0")
        y = (x - center) / width + 0.5
    elif function == "SIGMOID":
        if width <= 0:
            raise BadImageError("corrupt", f"WindowWidth {width} must be > 0")
        y = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    else:
        raise BadImageError("unsupported_format", f"VOILUTFunction {function!r}; expected "
                            "LINEAR, LINEAR_EXACT or SIGMOID")
    return np.rint(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8)


def _first(value: Any) -> float:
    """First value of a possibly multi-valued DICOM number."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _has_identity_modality_lut(ds: Any) -> bool:
    if "ModalityLUTSequence" in ds:
        return False
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return slope == 1.0 and intercept == 0.0


def _gray_from_color(arr: np.ndarray) -> np.ndarray:
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise BadImageError("corrupt", f"colour DICOM with pixel array of shape {arr.shape}")
    luma = arr[..., :3].astype(np.float64) @ _LUMA
    if arr.dtype == np.uint8:
        return np.rint(luma).clip(0, 255).astype(np.uint8)
    return to_uint8(luma)


def decode_dicom(data: bytes, *, min_side: int = 64, max_pixels: int = 100_000_000,
                 force: bool = False) -> DecodedImage:
    """Decode DICOM bytes to a uint8 grayscale :class:`DecodedImage` (see module doc).

    ``force`` reads a file without the ``DICM`` preamble (a ``.dcm`` name, raw data set).
    ``mode`` says ``DICOM <PhotometricInterpretation> <BitsStored>-bit``.

    Raises:
        BadImageError: with ``kind`` naming the failed check.
    """
    if len(data) == 0:
        raise BadImageError("empty", "file is empty (0 bytes)")
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    digest = hashlib.sha256(data).hexdigest()
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=force)
    except InvalidDicomError as err:
        raise BadImageError("not_an_image", f"not a DICOM file ({err})") from None
    except EOFError as err:
        raise BadImageError("truncated", f"DICOM header ends early ({err})") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise BadImageError("corrupt", f"unreadable DICOM header ({err})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise BadImageError("not_an_image", "DICOM file without pixel data "
                            f"(SOP class {ds.get('SOPClassUID', 'unknown')})")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    except (AttributeError, ValueError, TypeError) as err:
        raise BadImageError("corrupt", f"DICOM image header incomplete ({err})") from None
    if frames != 1:
        raise BadImageError("unsupported_format", f"multi-frame DICOM ({frames} frames); "
                            "export the frame to classify as a single-frame file")
    check_size(cols, rows, min_side=min_side, max_pixels=max_pixels)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as err:
        name = getattr(syntax, "name", str(syntax))
        raise BadImageError("unsupported_format", f"cannot decode DICOM transfer syntax "
                            f"{name} ({str(err).splitlines()[0]}); install a decoder plugin "
                            "(pylibjpeg, gdcm) or export as uncompressed DICOM") from None
    except EOFError as err:
        raise BadImageError("truncated", f"DICOM pixel data ends early ({err})") from None
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as err:
        kind = "truncated" if "length" in str(err).lower() or "truncat" in str(err).lower() \
            else "corrupt"
        raise BadImageError(kind, f"cannot decode DICOM pixel data ({err})") from None

    if photometric == "PALETTE COLOR":
        arr = pydicom.pixels.apply_color_lut(arr, ds)
    if photometric.startswith(("RGB", "YBR", "PALETTE")):
        gray = _gray_from_color(arr)  # pixel_array already converted YBR to RGB
    else:
        if arr.ndim != 2:
            raise BadImageError("corrupt", f"grayscale DICOM with pixel array of shape "
                                f"{arr.shape}")
        values = arr if _has_identity_modality_lut(ds) else \
            pydicom.pixels.apply_modality_lut(arr, ds)
        if "WindowCenter" in ds and "WindowWidth" in ds:
            gray = window_to_uint8(values, _first(ds.WindowCenter), _first(ds.WindowWidth),
                                   str(ds.get("VOILUTFunction", "LINEAR")))
        elif "VOILUTSequence" in ds:
            item = ds.VOILUTSequence[0]
            out_bits = int(item.LUTDescriptor[2])
            lut = pydicom.pixels.apply_voi(values, ds, index=0).astype(np.float64)
            gray = np.rint(np.clip(lut / (2.0 ** out_bits - 1.0), 0, 1) * 255).astype(np.uint8)
        else:
            try:
                gray = to_uint8(values)
            except ValueError as err:
                raise BadImageError("corrupt", str(err)) from None
        invert = photometric == "MONOCHROME1"
        if str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE":
            invert = not invert
        if invert:
            gray = 255 - gray
    gray = np.ascontiguousarray(gray, dtype=np.uint8)
    if gray.shape != (rows, cols):
        raise BadImageError("corrupt", f"decoded shape {gray.shape} differs from the header's "
                            f"{cols}x{rows}")
    return DecodedImage(gray, cols, rows, digest, f"DICOM {photometric} {bits}-bit")


def encode_dicom(pixels: np.ndarray, *, photometric: str = "MONOCHROME2",
                 window: tuple[float, float] | None = None, voi_function: str | None = None,
                 rescale: tuple[float, float] | None = None, frames: int = 1) -> bytes:
    """A grayscale uint8/uint16 array (H, W) as an uncompressed DICOM Part 10 file
    (Secondary Capture): for round trips and tests of :func:`decode_dicom`.

    ``window`` = (center, width) with ``voi_function``; ``rescale`` = (slope, intercept);
    ``frames`` > 1 repeats the image as a multi-frame file.
    """
    _pydicom()
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise InputError(f"expected a uint8/uint16 (H, W) array, got {pixels.dtype} "
                         f"{pixels.shape}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = float(window[0]), float(window[1])
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = float(rescale[0]), float(rescale[1])
    ds.PixelData = np.ascontiguousarray(np.tile(pixels, (frames, 1))).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
