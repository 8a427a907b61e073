"""Decoding every kind of image safely, and mapping maps back onto the original geometry."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import vtviz
from vtviz.image import fit_image, iter_image_files, maps_to_original
from vtviz.preprocess import Fit, Preprocess


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def huge_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG file whose header declares an enormous image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def test_rgb_round_trip(rgb, tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(rgb).save(path)
    out = vtviz.load_image(path)
    assert out.dtype == np.uint8 and out.shape == (48, 80, 3)
    np.testing.assert_array_equal(out, rgb)
    np.testing.assert_array_equal(vtviz.load_image(path.read_bytes()), rgb)
    np.testing.assert_array_equal(vtviz.load_image(Image.fromarray(rgb)), rgb)
    np.testing.assert_array_equal(vtviz.load_image(rgb), rgb)
    assert tuple(vtviz.load_image(path)[15, 35]) == (255, 0, 0)  # RGB order kept


def test_conversions(rgb):
    grey = vtviz.load_image(_encode(Image.fromarray(rgb).convert("L")))
    assert grey.shape == (48, 80, 3) and (grey[..., 0] == grey[..., 2]).all()
    rgba = np.zeros((4, 4, 4), np.uint8)  # RGBA
    rgba[..., 0] = 255
    rgba[:2, ..., 3] = 255  # top half opaque red, bottom half transparent
    out = vtviz.load_image(_encode(Image.fromarray(rgba)))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[3, 3]) == (255, 255, 255)
    pal = vtviz.load_image(_encode(Image.fromarray(rgb).convert("P")))
    assert pal.shape == (48, 80, 3)
    sixteen = Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    assert sixteen.mode.startswith("I;16")
    out16 = vtviz.load_image(_encode(sixteen))
    assert out16.dtype == np.uint8 and out16[7, 7, 0] == round(63000 / 65535 * 255)
    cmyk = vtviz.load_image(_encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95))
    assert cmyk.shape == (48, 80, 3)
    assert abs(int(cmyk[15, 35, 0]) - 255) < 30 and cmyk[15, 35, 1] < 40
    floats = vtviz.load_image(np.ones((3, 5), np.float32))
    assert (floats == 255).all() and floats.shape == (3, 5, 3)


def test_exif_orientation_applied(rgb):
    img = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = vtviz.load_image(_encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.shape == (80, 48, 3)


@pytest.mark.parametrize("name, data, reason", [
    ("empty.jpg", b"", "empty file"),
    ("text.png", b"hello, I am text pretending to be a PNG\n" * 5, "not an image"),
    ("huge.png", huge_png(), "too large"),
])
def test_bad_files_have_specific_errors(tmp_path, name, data, reason):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(vtviz.ImageError, match=reason) as info:
        vtviz.load_image(path)
    assert name in str(info.value)


def test_truncated_jpeg(tmp_path, rgb):
    data = _encode(Image.fromarray(np.tile(rgb, (4, 4, 1))), "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(vtviz.ImageError, match="cut.jpg: corrupt or truncated"):
        vtviz.load_image(path)


def test_missing_and_odd_inputs(tmp_path):
    with pytest.raises(vtviz.ImageError, match="no such file"):
        vtviz.load_image(tmp_path / "nope.jpg")
    with pytest.raises(vtviz.ImageError, match="not a file"):
        vtviz.load_image(tmp_path)
    with pytest.raises(vtviz.ImageError, match="shape"):
        vtviz.load_image(np.zeros((2, 3, 4, 5), np.uint8))
    with pytest.raises(vtviz.ImageError, match="too large"):
        vtviz.load_image(np.zeros((100, 100, 3), np.uint8), max_pixels=5000)


@pytest.mark.parametrize("fit", list(Fit))
def test_maps_land_where_the_model_looked(fit):
    """A hot map cell must be drawn over the original pixels that fed that cell."""
    h, w = 120, 200
    img = np.zeros((h, w, 3), np.uint8)
    pre = Preprocess(size=64, fit=fit)
    fitted, geo = fit_image(img, pre)
    assert fitted.shape == (64, 64, 3)
    cell = torch.zeros(4, 4)
    cell[1, 2] = 1.0  # input pixels y 16..32, x 32..48
    out, mask = maps_to_original(cell, geo)
    assert out.shape == (h, w) and mask.shape == (h, w)
    y, x = np.unravel_index(out.numpy().argmax(), out.shape)
    (sy, sx), (oy, ox) = geo.scale, geo.offset
    yin, xin = (y + 0.5) * sy + oy, (x + 0.5) * sx + ox
    assert 16 <= yin <= 32 and 32 <= xin <= 48
    if fit is Fit.CROP:  # the sides were cut away: no map there
        assert not mask[:, 0].any() and mask[:, w // 2].all()
        y0, x0, y1, x1 = geo.visible_box()
        assert (y0, y1) == (0, h) and x0 == pytest.approx(40, abs=1.5) and x1 == pytest.approx(160, abs=1.5)
    else:
        assert mask.all()


def test_maps_to_original_smaller_output():
    geo = fit_image(np.zeros((100, 100, 3), np.uint8), Preprocess(size=32))[1]
    out, mask = maps_to_original(torch.ones(3, 2, 2), geo, size=(10, 10))
    assert out.shape == (3, 10, 10)
    torch.testing.assert_close(out, torch.ones(3, 10, 10))


@pytest.mark.parametrize("fit", list(Fit))
@pytest.mark.parametrize("shape", [(224, 300), (97, 1000), (500, 333)])
def test_maps_to_original_equals_grid_sample(fit, shape):
    """The separable resampling is bilinear interpolation with grid_sample's conventions
    (align_corners=False, border padding, 0 outside what the network saw)."""
    import torch.nn.functional as F

    geo = fit_image(np.zeros((*shape, 3), np.uint8), Preprocess(size=224, fit=fit))[1]
    maps = torch.rand(2, 5, 14, 14, generator=torch.Generator().manual_seed(0))
    for size in (None, (50, 70)):
        th, tw = size or shape
        (ih, iw), (sy, sx), (oy, ox) = geo.input_size, geo.scale, geo.offset
        ys = ((torch.arange(th) + 0.5) * (shape[0] / th)) * sy + oy
        xs = ((torch.arange(tw) + 0.5) * (shape[1] / tw)) * sx + ox
        grid = torch.stack(torch.meshgrid(ys / ih * 2 - 1, xs / iw * 2 - 1, indexing="ij")[::-1], -1).float()
        seen = (grid.abs() <= 1).all(-1)
        want = F.grid_sample(maps.reshape(1, -1, 14, 14), grid[None], padding_mode="border",
                             align_corners=False).reshape(2, 5, th, tw) * seen
        got, mask = maps_to_original(maps, geo, size)
        assert torch.equal(mask, seen)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_iter_image_files(tmp_path, rgb):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for p in ["a/1.png", "a/b/2.JPG", "a/notes.txt", "3.png"]:
        (tmp_path / p).write_bytes(b"x")
    files = iter_image_files([tmp_path / "a", str(tmp_path / "*.png"), tmp_path / "a" / "1.png"])
    assert [f.name for f in files] == ["1.png", "2.JPG", "3.png"]
    from vtviz.image import scan_inputs

    assert iter_image_files([tmp_path / "zzz*.png", tmp_path / "3.png"]) == [tmp_path / "3.png"]
    assert scan_inputs([tmp_path / "zzz*.png"]).rejected == [(tmp_path / "zzz*.png",
                                                               "no such file, folder or matching pattern")]


@pytest.mark.parametrize("fit", ["crop", "letterbox", "stretch"])
def test_cell_to_original_inverts_the_geometry(fit):
    from vtviz.image import fit_image
    from vtviz.preprocess import Fit, Preprocess

    img = np.zeros((120, 200, 3), np.uint8)
    _, geo = fit_image(img, Preprocess(size=64, fit=Fit(fit)))
    # the centre cell of a 4x4 map is the centre of the input; it maps to the photo's centre
    # for every fit (all three are centred, up to the half input pixel of an integer crop)
    x, y = geo.cell_to_original(1, 1, (4, 4))
    cx, cy = geo.cell_to_original(2, 2, (4, 4))
    tol = 0.51 / min(geo.scale)
    assert (x + cx) / 2 == pytest.approx(100, abs=tol) and (y + cy) / 2 == pytest.approx(60, abs=tol)
    # one cell is input_size / 4 input pixels, i.e. that over the scale in photo pixels
    assert cx - x == pytest.approx(16 / geo.scale[1]) and cy - y == pytest.approx(16 / geo.scale[0])


def test_any_decoder_failure_is_the_files_error(tmp_path):
    """A PNG whose text chunk inflates past Pillow's limit raises ValueError inside the decoder:
    it must become an ImageError naming the file (predict and export then go on)."""
    import io

    from PIL import Image, PngImagePlugin

    from vtviz.errors import ImageError
    from vtviz.image import load_image

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (8 * 2**20), zip=True)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, "PNG", pnginfo=info)
    path = tmp_path / "ztxt.png"
    path.write_bytes(buf.getvalue())
    with pytest.raises(ImageError, match="ztxt.png"):
        load_image(path)


def test_crop_of_a_very_long_image_allocates_little():
    """A 1 x 60000 strip under 'crop' must not be resized whole (224 x 13 million pixels)."""
    import tracemalloc

    from vtviz.image import fit_image
    from vtviz.preprocess import Fit, Preprocess

    strip = np.zeros((1, 60000, 3), np.uint8)
    strip[0, 29990:30010] = 255  # a bright dash at the centre
    tracemalloc.start()
    out, geo = fit_image(strip, Preprocess(size=224, fit=Fit.CROP))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.shape == (224, 224, 3) and peak < 50e6
    assert out[:, 112].mean() > 200  # the dash is in the middle of the crop
    # the same pixels as resizing the whole image, for a long image past the threshold
    import cv2

    wide = cv2.resize(np.random.default_rng(0).integers(0, 255, (6, 120, 3), dtype=np.uint8), (2400, 60))
    got, geo = fit_image(wide, Preprocess(size=64, fit=Fit.CROP))
    rh, rw = round(geo.scale[0] * 60), round(geo.scale[1] * 2400)
    whole = cv2.resize(wide, (rw, rh), interpolation=cv2.INTER_LINEAR)
    y0, x0 = int(-geo.offset[0]), int(-geo.offset[1])
    assert np.abs(got.astype(int) - whole[y0:y0 + 64, x0:x0 + 64]).mean() < 3


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_jpeg_is_decoded_no_larger_than_needed(orientation):
    """A 1200x800 JPEG asked for at least 300 px on its longer side and 64 on its shorter is
    decoded at 1/4 by the decoder: the same picture as the full decode shrunk (within JPEG
    noise), its full size reported after EXIF orientation; a PNG, or no ``least``, stays whole."""
    from vtviz.image import load_image_reduced

    y, x = np.mgrid[0:800, 0:1200]
    rgb = np.stack([x * 255 // 1199, y * 255 // 799, (x // 100 + y // 100) % 2 * 200], -1).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(Image.fromarray(rgb), "JPEG", exif=exif.tobytes(), quality=95)
    small, factor, full = load_image_reduced(data, (300, 64))
    whole = vtviz.load_image(data)
    turned = orientation == 6
    assert factor == 4 and full == ((1200, 800) if turned else (800, 1200)) == whole.shape[:2]
    assert small.shape == ((300, 200, 3) if turned else (200, 300, 3))
    shrunk = whole.reshape(whole.shape[0] // 4, 4, whole.shape[1] // 4, 4, 3).mean((1, 3))
    assert np.abs(small.astype(float) - shrunk).mean() < 4
    assert load_image_reduced(data, (700, 64)).factor == 1  # 1/2 would be 600 px: too small
    assert load_image_reduced(data, None).factor == 1
    png = load_image_reduced(_encode(Image.fromarray(rgb)), (300, 64))
    assert png.factor == 1 and png.image.shape == (800, 1200, 3)


def test_geometry_of_a_reduced_decode_restated_for_the_full_image():
    """Fitting an image decoded at 1/4 and restating its geometry for the full image gives the
    geometry of fitting the full image (crop and letterbox alike)."""
    for fit in Fit:
        pre = Preprocess(size=64, fit=fit)
        _, whole = fit_image(np.zeros((800, 1200, 3), np.uint8), pre)
        _, small = fit_image(np.zeros((200, 300, 3), np.uint8), pre)
        restated = small.of_full_image(4, (800, 1200))
        assert restated.original_size == whole.original_size and restated.offset == whole.offset
        assert restated.scale == pytest.approx(whole.scale)
