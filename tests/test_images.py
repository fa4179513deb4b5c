"""Decoding image files: every accepted mode, every rejection kind."""

from __future__ import annotations

import hashlib
import io

import cv2
import numpy as np
import pytest
from PIL import Image

from pneumocxr.data.images import (BadImageError, decode_image, pil_pixel_limit, read_image)


def _gradient(h=80, w=96) -> np.ndarray:
    """A smooth uint8 gradient (survives JPEG compression nearly unchanged)."""
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 2 + y) % 256).astype(np.uint8)


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rejected_kind(data: bytes, **kw) -> str:
    with pytest.raises(BadImageError) as err:
        decode_image(data, **kw)
    return err.value.kind


# -- accepted -----------------------------------------------------------------------------------

def test_grayscale_png_decodes_exactly():
    g = _gradient()
    dec = decode_image(_encode(Image.fromarray(g), "PNG"), min_side=16)
    assert dec.pixels.dtype == np.uint8 and dec.pixels.shape == (80, 96)
    assert (dec.width, dec.height, dec.mode) == (96, 80, "L")
    np.testing.assert_array_equal(dec.pixels, g)


def test_rgb_jpeg_of_a_grey_image_gives_the_grey_values():
    g = _gradient()
    data = _encode(Image.fromarray(np.stack([g] * 3, -1)), "JPEG", quality=95)
    dec = decode_image(data, min_side=16)
    assert dec.mode == "RGB" and dec.pixels.shape == (80, 96)
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=int)
    assert np.abs(dec.pixels.astype(int) - ref).max() <= 1


def test_rgb_png_uses_luma_weights():
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[...] = (200, 100, 50)
    dec = decode_image(_encode(Image.fromarray(rgb), "PNG"), min_side=16)
    expected = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
    assert np.all(np.abs(dec.pixels.astype(int) - expected) <= 1)


def test_cmyk_jpeg_is_accepted_and_converted_to_the_right_grey():
    rgb = np.zeros((40, 48, 3), np.uint8)
    rgb[...] = (200, 100, 50)
    data = _encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    dec = decode_image(data, min_side=16)
    assert dec.mode == "CMYK"
    assert abs(float(dec.pixels.mean()) - (0.299 * 200 + 0.587 * 100 + 0.114 * 50)) < 3


def test_rgba_png_drops_alpha():
    g = _gradient()
    rgba = np.stack([g, g, g, np.zeros_like(g)], -1)   # fully transparent
    dec = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"), min_side=16)
    assert dec.mode == "RGBA"
    np.testing.assert_array_equal(dec.pixels, g)


def test_grey_alpha_png_is_accepted():
    g = _gradient()
    la = Image.merge("LA", [Image.fromarray(g), Image.fromarray(np.full_like(g, 128))])
    dec = decode_image(_encode(la, "PNG"), min_side=16)
    assert dec.mode == "LA"
    np.testing.assert_array_equal(dec.pixels, g)


def test_palette_png_is_expanded_through_its_palette():
    g = _gradient()
    pal = Image.fromarray(np.stack([g] * 3, -1)).quantize(colors=16)
    assert pal.mode == "P"
    dec = decode_image(_encode(pal, "PNG"), min_side=16)
    np.testing.assert_array_equal(dec.pixels, np.asarray(pal.convert("L")))


def test_bilevel_png_becomes_0_and_255():
    im = Image.fromarray((_gradient() > 100).astype(np.uint8) * 255).convert("1")
    dec = decode_image(_encode(im, "PNG"), min_side=16)
    assert set(np.unique(dec.pixels)) <= {0, 255}


def test_16bit_grey_png_is_scaled_min_max_without_clipping():
    a = np.linspace(1000, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)   # 12-bit data
    ok, buf = cv2.imencode(".png", a)
    assert ok
    dec = decode_image(buf.tobytes(), min_side=16)
    assert dec.mode.startswith("I")
    assert dec.pixels.dtype == np.uint8
    assert dec.pixels.min() == 0 and dec.pixels.max() == 255
    expected = np.rint((a.astype(float) - 1000) * 255 / 3095).astype(np.uint8)
    np.testing.assert_array_equal(dec.pixels, expected)


def test_16bit_colour_png_keeps_the_low_byte():
    # two grey levels that share the high byte: PIL alone would merge them
    a = np.full((32, 32), 0x1200, np.uint16)
    a[:, 16:] = 0x12F0
    ok, buf = cv2.imencode(".png", np.stack([a] * 3, -1))
    assert ok
    dec = decode_image(buf.tobytes(), min_side=16)
    assert dec.mode == "RGB;16"
    assert dec.pixels[0, 0] == 0 and dec.pixels[0, -1] == 255


def test_very_large_image_is_accepted(tmp_path):
    big = cv2.resize(_gradient(), (3000, 2500), interpolation=cv2.INTER_LINEAR)
    path = tmp_path / "big.jpeg"
    Image.fromarray(big).save(path, quality=80)
    dec = read_image(path, min_side=64, max_pixels=100_000_000)
    assert dec.pixels.shape == (2500, 3000)


def test_sha256_is_of_the_file_bytes(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(_gradient()).save(path)
    assert read_image(path, min_side=16).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


# -- rejected -----------------------------------------------------------------------------------

def test_empty_file_is_rejected():
    assert _rejected_kind(b"") == "empty"


def test_text_file_is_not_an_image():
    assert _rejected_kind(b"patient list\nIM-0001\n" * 20) == "not_an_image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_rejected(fmt):
    noise = np.random.default_rng(0).integers(0, 256, (120, 120), dtype=np.uint8)
    data = _encode(Image.fromarray(noise), fmt)
    kind = _rejected_kind(data[: len(data) // 2], min_side=16)
    assert kind in ("truncated", "corrupt")
    if fmt == "JPEG":
        assert kind == "truncated"


def test_non_jpeg_png_image_is_unsupported():
    data = _encode(Image.fromarray(_gradient()), "BMP")
    assert _rejected_kind(data, min_side=16) == "unsupported_format"


def test_image_over_max_pixels_is_a_bomb_and_is_not_decoded():
    data = _encode(Image.fromarray(_gradient(200, 200)), "PNG")
    with pytest.raises(BadImageError, match="40000 pixels exceeds data.max_pixels") as err:
        decode_image(data, min_side=16, max_pixels=39_999)
    assert err.value.kind == "decompression_bomb"
    # fine at the limit
    assert decode_image(data, min_side=16, max_pixels=40_000).pixels.shape == (200, 200)


def test_pil_guard_agrees_with_max_pixels_inside_pil_pixel_limit():
    # over twice PIL's limit, PIL itself refuses to open: still reported as a bomb
    data = _encode(Image.fromarray(_gradient(200, 200)), "PNG")
    with pil_pixel_limit(10_000):
        with pytest.raises(BadImageError) as err:
            decode_image(data, min_side=16, max_pixels=10_000)
    assert err.value.kind == "decompression_bomb"
    # and a limit above PIL's default lets large images through PIL
    previous = Image.MAX_IMAGE_PIXELS
    with pil_pixel_limit(500_000_000):
        assert Image.MAX_IMAGE_PIXELS == 500_000_000
    assert Image.MAX_IMAGE_PIXELS == previous


def test_image_with_short_side_under_min_side_is_too_small():
    data = _encode(Image.fromarray(_gradient(40, 300)), "PNG")
    with pytest.raises(BadImageError, match="shorter side 40 px is under data.min_side") as err:
        decode_image(data, min_side=64)
    assert err.value.kind == "too_small"


def test_unreadable_path_is_rejected_not_raised(tmp_path):
    with pytest.raises(BadImageError) as err:
        read_image(tmp_path)          # a folder: the OS refuses to read it
    assert err.value.kind == "unreadable"


# -- DICOM --------------------------------------------------------------------------------------

from pneumocxr.data.dicom import encode_dicom, window_to_uint8  # noqa: E402


def _noise(h=70, w=90) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w)).astype(np.uint8)


def test_8bit_monochrome2_dicom_decodes_to_its_pixels():
    g = _noise()
    dec = decode_image(encode_dicom(g), min_side=16)
    assert dec.mode == "DICOM MONOCHROME2 8-bit" and (dec.width, dec.height) == (90, 70)
    np.testing.assert_array_equal(dec.pixels, g)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT"])
def test_16bit_monochrome1_dicom_is_windowed_and_inverted_back_to_the_picture(function):
    g = _noise()
    a, b = 16, 100                                   # stored = (255 - g) * a + b, bone = dark
    stored = ((255 - g.astype(np.uint16)) * a + b).astype(np.uint16)
    window = (b + 127.5 * a + 0.5, 255 * a + 1) if function == "LINEAR" else \
        (b + 127.5 * a, 255 * a)
    dec = decode_image(encode_dicom(stored, photometric="MONOCHROME1", window=window,
                                    voi_function=function), min_side=16)
    assert dec.mode == "DICOM MONOCHROME1 16-bit"
    np.testing.assert_array_equal(dec.pixels, g)


def test_dicom_rescale_is_applied_before_the_window():
    g = _noise()
    a, b = 16, 100                                   # real value = 2 * stored - 50
    stored = ((g.astype(np.uint16) * a + b + 50) // 2).astype(np.uint16)
    dec = decode_image(encode_dicom(stored, window=(b + 127.5 * a, 255 * a),
                                    voi_function="LINEAR_EXACT", rescale=(2, -50)), min_side=16)
    np.testing.assert_array_equal(dec.pixels, g)


def test_window_clips_outside_values_and_sigmoid_is_centred():
    v = np.array([0.0, 50.0, 100.0, 1000.0])
    out = window_to_uint8(v, center=50, width=100, function="LINEAR_EXACT")
    np.testing.assert_array_equal(out, [0, 128, 255, 255])
    assert window_to_uint8(np.array([50.0]), 50, 100, "SIGMOID")[0] == 128
    with pytest.raises(BadImageError, match="VOILUTFunction"):
        window_to_uint8(v, 50, 100, "LOG")


def test_16bit_dicom_without_window_is_scaled_like_a_16bit_png():
    g16 = (_noise().astype(np.uint16) * 4 + 1000).astype(np.uint16)
    png = cv2.imencode(".png", g16)[1].tobytes()
    np.testing.assert_array_equal(decode_image(encode_dicom(g16), min_side=16).pixels,
                                  decode_image(png, min_side=16).pixels)


def test_dcm_file_without_preamble_is_read_as_dicom(tmp_path):
    g = _noise()
    path = tmp_path / "raw.dcm"
    path.write_bytes(encode_dicom(g)[132:])           # strip preamble and DICM magic
    np.testing.assert_array_equal(read_image(path, min_side=16).pixels, g)


def test_bad_dicoms_are_rejected_with_a_reason(tmp_path):
    g = _noise()
    assert _rejected_kind(encode_dicom(g, frames=3), min_side=16) == "unsupported_format"
    assert _rejected_kind(encode_dicom(g), min_side=100) == "too_small"
    assert _rejected_kind(encode_dicom(g), min_side=16, max_pixels=1000) == "decompression_bomb"
    data = encode_dicom(g)
    assert _rejected_kind(data[:len(data) - 3000], min_side=16) in ("truncated", "corrupt")
    from pydicom import dcmread
    ds = dcmread(io.BytesIO(data))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf)
    assert _rejected_kind(buf.getvalue(), min_side=16) == "not_an_image"
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"definitely not a DICOM file" * 10)
    with pytest.raises(BadImageError) as err:
        read_image(junk, min_side=16)
    assert err.value.kind in ("not_an_image", "corrupt")
