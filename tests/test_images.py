"""datamodules.dataset.load_rgb: every image mode the datasets ship becomes uint8 (H, W, 3) RGB."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import dataset_writers as w
from datamodules.dataset import load_mask, load_rgb
from datamodules.records import DatasetError
from datamodules.sources import read_table


def check_rgb(array: np.ndarray, height: int, width: int) -> None:
    assert isinstance(array, np.ndarray)
    assert array.dtype == np.uint8
    assert array.shape == (height, width, 3)


def test_rgb_png_is_returned_unchanged(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    out = load_rgb(tmp_path / "a.png")
    check_rgb(out, 12, 20)
    np.testing.assert_array_equal(out, pixels)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((10, 16, 4), np.uint8)
    rgba[..., 0] = 200  # opaque-ish red-brown everywhere...
    rgba[..., 1] = 40
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # ...except a fully transparent pixel
    rgba[5, 5] = (0, 0, 0, 128)  # and a half-transparent black one
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_rgb(tmp_path / "a.png")
    check_rgb(out, 10, 16)
    assert tuple(out[0, 0]) == (255, 255, 255)  # transparent -> white, not black
    assert tuple(out[3, 3]) == (200, 40, 0)  # opaque pixels keep their colour
    assert all(abs(int(v) - 127) <= 1 for v in out[5, 5])  # 50 % black over white


def test_la_is_composited_on_white(tmp_path):
    la = np.zeros((6, 6, 2), np.uint8)
    la[..., 0] = 50
    la[..., 1] = 255
    la[2, 3, 1] = 0
    Image.fromarray(la, "LA").save(tmp_path / "a.png")
    out = load_rgb(tmp_path / "a.png")
    check_rgb(out, 6, 6)
    assert tuple(out[2, 3]) == (255, 255, 255) and tuple(out[0, 0]) == (50, 50, 50)


def test_pad_rgba_image_from_the_writer(tmp_path):
    ds = w.write_pad_ufes20(tmp_path, n=3, n_rgba=1)
    record = read_table("pad_ufes20", tmp_path).records[0]
    raw = np.asarray(Image.open(ds.images[ds.rows[0]["img_id"]]))
    out = load_rgb(record.image_path, "pad_ufes20", record.line)
    check_rgb(out, 32, 32)
    assert tuple(out[0, 0]) == (255, 255, 255)
    np.testing.assert_array_equal(out[1:, 1:], raw[1:, 1:, :3])


def test_palette_image(tmp_path):
    image = Image.new("P", (8, 5))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    image.putpixel((7, 4), 1)
    image.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    out = load_rgb(tmp_path / "p.png")
    check_rgb(out, 5, 8)
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[4, 7]) == (200, 100, 50)


def test_palette_image_with_transparency(tmp_path):
    image = Image.new("P", (4, 4))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    image.putpixel((0, 0), 1)
    image.save(tmp_path / "p.png", transparency=1)  # palette entry 1 is transparent
    out = load_rgb(tmp_path / "p.png")
    check_rgb(out, 4, 4)
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[1, 1]) == (255, 0, 0)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_grayscale_image(tmp_path, suffix):
    gray = np.tile(np.arange(0, 240, 16, dtype=np.uint8), (7, 1))  # 7 x 15
    Image.fromarray(gray, "L").save(tmp_path / f"g{suffix}", quality=100)
    out = load_rgb(tmp_path / f"g{suffix}")
    check_rgb(out, 7, 15)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    tolerance = 0 if suffix == ".png" else 3
    assert np.abs(out[..., 0].astype(int) - gray).max() <= tolerance


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grayscale(tmp_path, suffix):
    array = np.zeros((4, 9), np.uint16)
    array[:] = np.linspace(0, 65535, 9).astype(np.uint16)
    Image.fromarray(array).save(tmp_path / f"g{suffix}")
    assert Image.open(tmp_path / f"g{suffix}").mode.startswith("I")
    out = load_rgb(tmp_path / f"g{suffix}")
    check_rgb(out, 4, 9)
    expected = (np.linspace(0, 65535, 9) / 65535 * 255).astype(np.uint8)
    assert np.abs(out[0, :, 0].astype(int) - expected).max() <= 1
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255 and 120 <= out[0, 4, 0] <= 135  # not clipped to white
    assert np.array_equal(out[..., 0], out[..., 2])


def test_16_bit_brightness_does_not_depend_on_content(tmp_path):
    dim = np.full((3, 3), 1000, np.uint16)  # a dark 16-bit picture stays dark
    Image.fromarray(dim).save(tmp_path / "dim.png")
    assert load_rgb(tmp_path / "dim.png").max() == int(1000 / 257)


def _corner_image(width: int = 40, height: int = 20) -> np.ndarray:
    """Non-square, blue with a red block in the stored top-left corner."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[...] = (0, 0, 255)
    pixels[:8, :8] = (255, 0, 0)
    return pixels


def _is_red(pixel) -> bool:
    r, g, b = (int(v) for v in pixel)
    return r > 200 and g < 60 and b < 60


def _is_blue(pixel) -> bool:
    r, g, b = (int(v) for v in pixel)
    return b > 200 and r < 60 and g < 60


@pytest.mark.parametrize(
    "orientation, red_corner",
    [
        (6, (0, -1)),  # rotate 90 deg clockwise for display: stored top-left -> top-right
        (8, (-1, 0)),  # rotate 90 deg counter-clockwise: stored top-left -> bottom-left
        (3, (-1, -1)),  # rotate 180 deg: shape kept, top-left -> bottom-right
    ],
)
def test_exif_orientation_is_applied(tmp_path, orientation, red_corner):
    image = Image.fromarray(_corner_image())
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    image.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    assert Image.open(tmp_path / "r.jpg").getexif()[0x0112] == orientation
    out = load_rgb(tmp_path / "r.jpg")
    if orientation == 3:
        check_rgb(out, 20, 40)
    else:
        check_rgb(out, 40, 20)  # portrait now: (H, W) swapped
    y, x = red_corner
    assert _is_red(out[y, x]), out[y, x]
    corners = {(0, 0), (0, -1), (-1, 0), (-1, -1)} - {red_corner}
    for cy, cx in corners:
        assert _is_blue(out[cy, cx]), ((cy, cx), out[cy, cx])


def test_jpeg_without_exif_is_not_rotated(tmp_path):
    Image.fromarray(_corner_image()).save(tmp_path / "r.jpg", quality=95)
    out = load_rgb(tmp_path / "r.jpg")
    check_rgb(out, 20, 40)
    assert _is_red(out[0, 0]) and _is_blue(out[-1, -1])


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (6, 4), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    out = load_rgb(tmp_path / "c.jpg")
    check_rgb(out, 4, 6)
    assert out.min() >= 250  # no ink: white


def test_load_errors_name_path_and_line(tmp_path):
    with pytest.raises(DatasetError, match=r"ham10000: image file .*nope\.jpg does not exist \(listed on line 7\)"):
        load_rgb(tmp_path / "nope.jpg", "ham10000", 7)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DatasetError, match=r"ham10000: cannot read image .*bad\.png:"):
        load_rgb(tmp_path / "bad.png", "ham10000")


def test_load_mask_is_binary(tmp_path):
    mask = np.zeros((5, 7), np.uint8)
    mask[1:3, 2:6] = 255
    mask[4, 6] = 100  # below half: background
    Image.fromarray(mask).save(tmp_path / "m.png")
    out = load_mask(tmp_path / "m.png")
    assert out.dtype == np.uint8 and out.shape == (5, 7)
    np.testing.assert_array_equal(out, (mask > 127).astype(np.uint8))
