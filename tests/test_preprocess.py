"""Pixel preprocessing: 8-bit scaling rule, CLAHE, aspect-keeping resize, center crop."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pneumocxr.data.preprocess import (PreprocessConfig, apply_clahe, center_crop, make_variants,
                                       preprocess, resize_shorter, to_uint8)


def _image(h, w, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 60 + 40 * np.sin(x / 7.0) + 30 * np.cos(y / 11.0)
    return np.clip(base + rng.normal(0, 5, (h, w)), 0, 255).astype(np.uint8)


def test_uint8_passes_unchanged():
    img = _image(10, 12)
    assert to_uint8(img) is img


def test_16bit_is_scaled_linearly_from_its_own_range():
    a = np.array([[1000, 2000], [3000, 1500]], dtype=np.uint16)
    np.testing.assert_array_equal(to_uint8(a), [[0, 128], [255, 64]])


def test_16bit_full_range_is_not_clipped():
    a = np.array([[0, 65535, 32768]], dtype=np.uint16)
    np.testing.assert_array_equal(to_uint8(a), [[0, 255, 128]])


def test_constant_wide_image_becomes_zeros_and_nan_is_an_error():
    assert not to_uint8(np.full((4, 4), 7, np.uint16)).any()
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(np.array([[0.0, np.nan]]))


@pytest.mark.parametrize("shape, size, expected", [
    ((100, 200), 50, (50, 100)),      # landscape shrink
    ((300, 120), 60, (150, 60)),      # portrait shrink
    ((64, 80), 128, (128, 160)),      # enlarge
    ((224, 224), 256, (256, 256)),    # the Kaggle derivatives at resize 256
    ((101, 333), 73, (73, 241)),      # rounding of the long side
])
def test_resize_keeps_aspect_with_shorter_side_at_size(shape, size, expected):
    out = resize_shorter(_image(*shape), size)
    assert out.shape == expected and out.dtype == np.uint8


def test_shrinking_uses_inter_area_and_enlarging_inter_linear():
    img = _image(90, 120)
    np.testing.assert_array_equal(resize_shorter(img, 30),
                                  cv2.resize(img, (40, 30), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(resize_shorter(img, 180),
                                  cv2.resize(img, (240, 180), interpolation=cv2.INTER_LINEAR))


def test_resize_to_the_current_size_is_a_no_op():
    img = _image(50, 70)
    assert resize_shorter(img, 50) is img


def test_center_crop_takes_the_middle():
    img = np.arange(6 * 8, dtype=np.uint8).reshape(6, 8)
    np.testing.assert_array_equal(center_crop(img, 4), img[1:5, 2:6])
    with pytest.raises(ValueError, match="cannot center-crop 7x7 from a 6x8"):
        center_crop(img, 7)


def test_clahe_is_opencv_clahe_and_raises_local_contrast():
    img = (_image(64, 64) // 4 + 100).astype(np.uint8)    # low contrast
    out = apply_clahe(img, clip_limit=2.0, tile_grid=4)
    ref = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4)).apply(img)
    np.testing.assert_array_equal(out, ref)
    assert out.std() > img.std()
    with pytest.raises(ValueError, match="2-D uint8"):
        apply_clahe(img.astype(np.float32))


def test_preprocess_applies_clahe_before_resizing():
    img = _image(200, 260, seed=3)
    cfg = PreprocessConfig(resize=64, crop=48, clip_limit=3.0, tile_grid=8)
    out = preprocess(img, cfg, clahe=True)
    clahe_first = center_crop(resize_shorter(apply_clahe(img, 3.0, 8), 64), 48)
    resize_first = center_crop(apply_clahe(resize_shorter(img, 64), 3.0, 8), 48)
    np.testing.assert_array_equal(out, clahe_first)
    assert not np.array_equal(out, resize_first)
    assert out.shape == (48, 48) and out.dtype == np.uint8 and out.flags.c_contiguous


def test_preprocess_scales_16bit_input():
    wide = (_image(80, 80).astype(np.uint16) * 16)     # 12-bit range
    out = preprocess(wide, PreprocessConfig.from_params({"resize": 80, "crop": 80}))
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255


def test_make_variants_gives_plain_and_clahe_and_rejects_unknown_names():
    img = _image(100, 120)
    cfg = PreprocessConfig.from_params({"resize": 50, "crop": 40})
    out = make_variants(img, cfg, ["plain", "clahe"])
    assert set(out) == {"plain", "clahe"}
    np.testing.assert_array_equal(out["plain"], center_crop(resize_shorter(img, 50), 40))
    assert not np.array_equal(out["plain"], out["clahe"])
    with pytest.raises(ValueError, match="unknown variant 'sharp'"):
        make_variants(img, cfg, ["sharp"])


def test_config_refuses_a_crop_larger_than_the_resize():
    with pytest.raises(ValueError, match=r"prepare.crop \(80\) must not exceed prepare.resize"):
        PreprocessConfig.from_params({"resize": 64, "crop": 80})
