"""load_image: right 8-bit RGB pixels for every odd-but-valid file, ImageLoadError naming the
file and the reason for everything else. All files are generated in tmp_path."""
from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from contentiqa.data import ImageLoadError, load_image

from conftest import png_chunk, png_header_only, random_rgb

# Distinct, JPEG-friendly corner colours.
RED, GREEN, BLUE, YELLOW = (230, 20, 20), (20, 200, 20), (20, 20, 230), (240, 230, 20)


def _expect_error(path, *words, **kw) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_image(path, **kw)
    err = info.value
    assert err.path == str(path)
    assert str(path) in str(err)
    low = str(err).lower()
    for w in words:
        assert w.lower() in low, f"{w!r} not in {str(err)!r}"
    return err


def _close(a, b, tol):
    return np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= tol


# ---------------------------------------------------------------------------- plain RGB


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".ppm"])
def test_lossless_rgb_round_trip(tmp_path, ext):
    arr = random_rgb(37, 45, seed=3)
    path = tmp_path / f"img{ext}"
    Image.fromarray(arr).save(path)
    out = load_image(path)
    assert out.image.mode == "RGB"
    assert out.size == (45, 37)
    np.testing.assert_array_equal(np.asarray(out.image), arr)
    assert out.notes == []
    assert out.path == str(path)


def test_jpeg_rgb(tmp_path):
    arr = np.zeros((40, 48, 3), np.uint8)
    arr[:] = (100, 150, 200)
    path = tmp_path / "img.jpg"
    Image.fromarray(arr).save(path, quality=95)
    out = load_image(path)
    assert out.image.mode == "RGB" and out.size == (48, 40)
    assert _close(np.asarray(out.image), arr, 3)


# ---------------------------------------------------------------------------- broken files


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope.jpg", "does not exist")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a photo\n" * 20)
    _expect_error(path, "not an image")


def test_heic_without_its_plugin_names_the_extra_to_install(tmp_path, monkeypatch):
    """A phone photo on an install without pillow-heif: the row says what reads it, and a
    folder scan takes the file (so that it gets that row) rather than passing it over."""
    import contentiqa.data.imageio as imageio
    from contentiqa.data.inputs import list_folder

    Image.init()
    monkeypatch.setattr(Image, "OPEN", {k: v for k, v in Image.OPEN.items() if k not in ("HEIF", "AVIF")})
    monkeypatch.setattr(Image, "registered_extensions", lambda: {".png": "PNG", ".jpg": "JPEG"})
    imageio.decodable_formats.cache_clear()
    imageio.image_extensions.cache_clear()
    try:
        path = tmp_path / "IMG_0001.HEIC"
        path.write_bytes(struct.pack(">I", 24) + b"ftypheic" + b"\0\0\0\0mif1heic" + b"\0" * 200)
        _expect_error(path, "HEIC/HEIF photo", "contentiqa[heif]")
        assert list_folder(str(tmp_path), recursive=False).files == [str(path)]
        other = tmp_path / "clip.mp4"  # an ISO media file of another brand: no such advice
        other.write_bytes(struct.pack(">I", 24) + b"ftypisom" + b"\0" * 200)
        err = _expect_error(other, "not an image")
        assert "heif" not in str(err).lower()
    finally:
        imageio.decodable_formats.cache_clear()
        imageio.image_extensions.cache_clear()


@pytest.mark.parametrize("fmt,ext", [("JPEG", ".jpg"), ("PNG", ".png")])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated(tmp_path, fmt, ext, keep):
    good = tmp_path / f"good{ext}"
    Image.fromarray(random_rgb(64, 80, seed=1)).save(good, format=fmt)
    data = good.read_bytes()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[: int(len(data) * keep)])
    _expect_error(cut, "truncated")
    # The loader never leaves PIL in "pad truncated files with grey" mode.
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_a_damaged_header_names_the_format_the_file_starts_as(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(random_rgb(64, 80, seed=1)).save(good)
    data = good.read_bytes()
    (tmp_path / "chunk.png").write_bytes(data[:12] + b"IHDX" + data[16:])  # the header chunk's type damaged
    _expect_error(tmp_path / "chunk.png", "damaged PNG file")
    Image.fromarray(random_rgb(64, 80, seed=1)).save(tmp_path / "whole.webp", quality=80)
    webp = (tmp_path / "whole.webp").read_bytes()
    (tmp_path / "cut.webp").write_bytes(webp[: len(webp) // 2])
    _expect_error(tmp_path / "cut.webp", "damaged or truncated WebP file")
    (tmp_path / "notes.png").write_bytes(b"just some text, not a photo")
    _expect_error(tmp_path / "notes.png", "not an image")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    _expect_error(path, "empty")


def test_unreadable_permissions(tmp_path):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading")
    path = tmp_path / "locked.png"
    Image.fromarray(random_rgb(40, 40)).save(path)
    path.chmod(0)
    try:
        _expect_error(path, "permission")
    finally:
        path.chmod(0o644)


def test_directory(tmp_path):
    d = tmp_path / "folder.jpg"
    d.mkdir()
    _expect_error(d, "directory")


# ---------------------------------------------------------------------------- modes


def test_grayscale_l(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (40, 50), dtype=np.uint8)
    path = tmp_path / "gray.png"
    Image.fromarray(arr, "L").save(path)
    out = np.asarray(load_image(path).image)
    assert out.shape == (40, 50, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], arr)


def _palette_image() -> Image.Image:
    p = Image.new("P", (40, 40), 0)
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    for x in range(20):
        p.putpixel((x, 5), 1)
    return p


def test_palette_without_transparency(tmp_path):
    path = tmp_path / "pal.png"
    _palette_image().save(path)
    out = np.asarray(load_image(path).image)
    assert tuple(out[0, 0]) == (10, 20, 30)
    assert tuple(out[5, 3]) == (200, 100, 50)


def test_palette_with_transparency(tmp_path):
    path = tmp_path / "pal_t.png"
    _palette_image().save(path, transparency=0)  # index 0 transparent
    res = load_image(path)
    out = np.asarray(res.image)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[5, 3]) == (200, 100, 50)
    assert any("white" in n for n in res.notes)


def test_rgba_composited_on_white(tmp_path):
    arr = np.zeros((40, 40, 4), np.uint8)
    arr[..., :3] = (10, 200, 30)
    arr[..., 3] = 255
    arr[0, 0] = (10, 200, 30, 0)  # fully transparent -> white
    arr[1, 1] = (0, 0, 0, 128)  # half-transparent black over white -> mid grey
    path = tmp_path / "rgba.png"
    Image.fromarray(arr, "RGBA").save(path)
    res = load_image(path)
    out = np.asarray(res.image)
    assert res.image.mode == "RGB"
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[5, 5]) == (10, 200, 30)
    assert _close(out[1, 1], (127, 127, 127), 1)
    assert any("transparent" in n for n in res.notes)


def test_opaque_rgba_has_no_transparency_note(tmp_path):
    arr = np.full((40, 40, 4), 255, np.uint8)
    arr[..., 0] = 7
    path = tmp_path / "opaque.png"
    Image.fromarray(arr, "RGBA").save(path)
    res = load_image(path)
    assert tuple(np.asarray(res.image)[3, 3]) == (7, 255, 255)
    assert not any("transparent" in n for n in res.notes)


def test_la(tmp_path):
    arr = np.zeros((40, 40, 2), np.uint8)
    arr[..., 0] = 90
    arr[..., 1] = 255
    arr[0, 0] = (90, 0)
    path = tmp_path / "la.png"
    Image.fromarray(arr, "LA").save(path)
    out = np.asarray(load_image(path).image)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[10, 10]) == (90, 90, 90)


def test_premultiplied_grey_la_is_read(tmp_path):
    """A TIFF with associated alpha opens as 'La', which Pillow converts to LA only: it failed
    with "conversion from La to L not supported"."""
    from contentiqa.data.imageio import pil_to_rgb

    notes: list[str] = []
    la = Image.new("LA", (40, 40), (90, 255))
    la.putpixel((0, 0), (90, 0))
    out = np.asarray(pil_to_rgb(la.convert("La"), notes))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[10, 10]) == (90, 90, 90)
    assert "transparent pixels composited on white" in notes


def test_16bit_grayscale_png(tmp_path):
    arr = np.zeros((40, 40), np.uint16)
    arr[:20, :20] = 65535
    arr[:20, 20:] = 32768
    arr[20:, :20] = 0
    arr[20:, 20:] = 257 * 100  # 8-bit 100 stored as 16-bit
    path = tmp_path / "g16.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    res = load_image(path)
    out = np.asarray(res.image)
    assert res.image.mode == "RGB"
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 30]) == (128, 128, 128)
    assert tuple(out[30, 0]) == (0, 0, 0)
    assert tuple(out[30, 30]) == (100, 100, 100)
    assert any("16-bit" in n for n in res.notes)


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (40, 40), (220, 30, 40)).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    res = load_image(path)
    px = np.asarray(res.image)[20, 20]
    assert res.image.mode == "RGB"
    assert _close(px, (220, 30, 40), 25), px
    assert any("CMYK" in n for n in res.notes)


# ---------------------------------------------------------------------------- EXIF orientation


def _corners_image(w=64, h=48) -> np.ndarray:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[: h // 2, : w // 2] = RED  # top-left
    arr[: h // 2, w // 2:] = GREEN  # top-right
    arr[h // 2:, : w // 2] = BLUE  # bottom-left
    arr[h // 2:, w // 2:] = YELLOW  # bottom-right
    return arr


def _save_with_orientation(path, arr, orientation):
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, quality=95, exif=exif.tobytes())


def _corners(out: np.ndarray) -> tuple:
    h, w = out.shape[:2]
    pts = [(4, 4), (4, w - 5), (h - 5, 4), (h - 5, w - 5)]  # TL, TR, BL, BR
    return tuple(out[y, x] for y, x in pts)


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_exif_orientation_6(tmp_path, suffix):
    """6 = stored image must be rotated 90 deg clockwise for display (a TIFF's note was lost:
    transposing removes the tag from the original's EXIF too)."""
    path = tmp_path / f"o6{suffix}"
    _save_with_orientation(path, _corners_image(64, 48), 6)
    res = load_image(path)
    out = np.asarray(res.image)
    assert res.size == (48, 64)  # width and height swapped
    tl, tr, bl, br = _corners(out)
    # Rotating clockwise: stored bottom-left -> top-left, top-left -> top-right, ...
    for got, want in ((tl, BLUE), (tr, RED), (bl, YELLOW), (br, GREEN)):
        assert _close(got, want, 30), (got, want)
    assert any("orientation 6" in n for n in res.notes)
    from contentiqa.data.imageio import header_size
    from contentiqa.models.scoring import to_pil

    assert header_size(path) == res.size  # what training groups photos by before decoding: turned once
    with Image.open(path) as im:  # an opened image, not decoded yet: its note as its file's
        assert to_pil(im)[2] == res.notes


def test_exif_orientation_3(tmp_path):
    path = tmp_path / "o3.jpg"
    _save_with_orientation(path, _corners_image(64, 48), 3)
    res = load_image(path)
    out = np.asarray(res.image)
    assert res.size == (64, 48)
    tl, tr, bl, br = _corners(out)
    for got, want in ((tl, YELLOW), (tr, BLUE), (bl, GREEN), (br, RED)):
        assert _close(got, want, 30), (got, want)


def test_exif_orientation_1_unchanged(tmp_path):
    path = tmp_path / "o1.jpg"
    _save_with_orientation(path, _corners_image(64, 48), 1)
    res = load_image(path)
    tl, tr, bl, br = _corners(np.asarray(res.image))
    for got, want in ((tl, RED), (tr, GREEN), (bl, BLUE), (br, YELLOW)):
        assert _close(got, want, 30)
    assert not any("orientation" in n for n in res.notes)


# ---------------------------------------------------------------------------- animations


def _frames():
    return [Image.new("RGB", (40, 36), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]


def test_animated_gif_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    f = _frames()
    f[0].save(path, save_all=True, append_images=f[1:], duration=100, loop=0)
    res = load_image(path)
    assert res.size == (40, 36)
    assert tuple(np.asarray(res.image)[10, 10]) == (255, 0, 0)
    assert any("first frame" in n and "3 frames" in n for n in res.notes)


def test_animated_webp_first_frame(tmp_path):
    if not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    path = tmp_path / "anim.webp"
    f = _frames()
    f[0].save(path, save_all=True, append_images=f[1:], duration=100, loop=0, lossless=True)
    if getattr(Image.open(path), "n_frames", 1) < 2:
        pytest.skip("Pillow's WebP has no animation support")
    res = load_image(path)
    assert _close(np.asarray(res.image)[10, 10], (255, 0, 0), 2)
    assert any("first frame" in n for n in res.notes)


# ---------------------------------------------------------------------------- size limits


def test_tiny_image(tmp_path):
    path = tmp_path / "tiny.png"
    Image.fromarray(random_rgb(50, 20)).save(path)
    err = _expect_error(path, "20x50", "32")
    assert "smaller" in err.reason or "minimum" in err.reason
    assert load_image(path, min_size=16).size == (20, 50)


def test_min_size_is_checked_after_orientation(tmp_path):
    path = tmp_path / "o6_tiny.jpg"
    _save_with_orientation(path, _corners_image(64, 24), 6)  # displayed 24 wide, 64 high
    _expect_error(path, "24x64")


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail loudly if any pixel data is decoded (i.e. allocated)."""
    def refuse(self, *a, **k):
        raise RuntimeError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.parametrize("w,h", [(100_000, 100_000), (12_000, 10_000)])
def test_decompression_bomb_header(tmp_path, no_decoding, w, h):
    """10 GP (over PIL's own hard limit) and 120 MP (over its warning limit) headers are both
    refused by our limit, named in MP, before any pixel is decoded."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(w, h))
    err = _expect_error(path, f"{w}x{h}", "100 MP", "max_pixels")
    assert "limit" in err.reason
    assert Image.MAX_IMAGE_PIXELS is not None  # PIL's global guard restored


def test_max_pixels_on_real_image(tmp_path, no_decoding):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200), (1, 2, 3)).save(path)
    _expect_error(path, "300x200", "0.01 MP", max_pixels=10_000)


def test_max_pixels_raised_above_pil_limit_is_honoured(tmp_path, no_decoding):
    """A caller who raises max_pixels past PIL's ~179 MP refusal gets to decoding (here the
    patched load stops it, and its error names the file), instead of PIL's own bomb error."""
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(20_000, 10_000))
    _expect_error(path, "pixels were decoded", max_pixels=300_000_000)
    _expect_error(path, "pixels were decoded", max_pixels=None)


def test_max_pixels_allows_image_under_limit(tmp_path):
    path = tmp_path / "ok.png"
    Image.new("RGB", (300, 200), (1, 2, 3)).save(path)
    assert load_image(path, max_pixels=60_000).size == (300, 200)


def test_pil_global_limit_restored_after_threaded_loads(tmp_path):
    """load_image lifts PIL's global bomb limit while decoding; concurrent loads in threads
    must leave it as it was."""
    from concurrent.futures import ThreadPoolExecutor

    paths = []
    for i in range(8):
        p = tmp_path / f"{i}.png"
        Image.fromarray(random_rgb(64, 64, seed=i)).save(p)
        paths.append(p)
    before = Image.MAX_IMAGE_PIXELS
    with ThreadPoolExecutor(4) as pool:
        sizes = list(pool.map(lambda p: load_image(p).size, paths * 8))
    assert sizes == [(64, 64)] * 64
    assert Image.MAX_IMAGE_PIXELS == before is not None


@pytest.mark.parametrize("tail", [b"!", b","])
def test_gif_cut_inside_its_block_structure_is_an_error_not_a_crash(tmp_path, tail):
    """Pillow's GIF parser meets such a file with IndexError or struct.error, not OSError."""
    import io

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), RED).save(buf, "GIF")
    path = tmp_path / "cut.gif"
    path.write_bytes(buf.getvalue()[:-1] + tail)
    _expect_error(path, "corrupt", "GIF")


def test_fifo_is_not_read(tmp_path):
    path = tmp_path / "x.jpg"
    os.mkfifo(path)
    _expect_error(path, "not a regular file")


def test_32bit_integer_image_past_16_bits_has_no_display_range(tmp_path):
    arr = np.full((40, 40), 70_000, np.int32)
    arr[:, :20] = -5
    path = tmp_path / "i32.tif"
    Image.fromarray(arr, "I").save(path)
    _expect_error(path, "no defined display range")


def test_float_image_with_nan_pixels(tmp_path):
    arr = np.full((40, 40), 0.5, np.float32)
    arr[:, :10] = np.nan
    path = tmp_path / "nan.tif"
    Image.fromarray(arr, "F").save(path)
    _expect_error(path, "nan")


@pytest.mark.parametrize("mode", ["I", "F"])
def test_one_brighter_pixel_never_changes_how_a_32bit_or_float_image_is_read(tmp_path, mode):
    """The range used to be guessed from the maximum: 0-241 read as 8-bit, the same photo with one
    pixel at 256 (or 1.01) as 16-bit (or 0-255), near black: about 50 points lower."""
    g = np.tile(np.arange(0, 241, 4), (40, 1))[:, :40]
    arr = g.astype(np.int32) if mode == "I" else (g / 255.0).astype(np.float32)
    path = tmp_path / f"{mode}.tif"
    Image.fromarray(arr, mode).save(path)
    loaded = load_image(path)
    assert np.array_equal(np.asarray(loaded.image)[..., 0], g.astype(np.uint8)) and loaded.notes
    arr[0, 0] = 256 if mode == "I" else 1.01
    Image.fromarray(arr, mode).save(path)
    _expect_error(path, "display range" if mode == "I" else "must be in [0, 1]")


def test_a_16bit_png_opened_as_32bit_integers_is_read_on_the_16bit_range(tmp_path):
    """Pillow versions differ: some open a 16-bit grayscale PNG as I;16, some as 32-bit I."""
    from contentiqa.data.imageio import _sixteen_bit

    path = tmp_path / "g16.png"
    Image.fromarray(np.full((40, 40), 32896, np.uint16)).save(path)  # 0x8080: 128 on 8 bits
    with Image.open(path) as im:
        as_i = im.convert("I")
    as_i.format = "PNG"  # as such a Pillow hands it over
    wide = _sixteen_bit(as_i)
    assert wide.mode == "I;16" and np.asarray(wide).max() == 32896
    assert np.asarray(load_image(path).image).max() == 128
    as_i.format = "TIFF"  # a 32-bit TIFF is what its mode says
    assert _sixteen_bit(as_i) is as_i


def test_pixel_rules_read_uint16_in_either_byte_order_and_never_guess_a_range():
    from contentiqa.data.imageio import pixels_to_uint8

    a = (np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)
    assert np.array_equal(pixels_to_uint8(a.astype(">u2")), pixels_to_uint8(a))  # a big-endian array was refused
    assert pixels_to_uint8(a).max() == round(55000 * 255 / 65535)
    assert np.array_equal(pixels_to_uint8(np.array([[0, 255]], np.int64)), [[0, 255]])
    with pytest.raises(ValueError, match="0-255"):
        pixels_to_uint8(np.array([[0, 256]], np.int32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pixels_to_uint8(np.array([[0.0, 1.5]]))


def test_invalid_exif_orientation_is_not_said_to_be_applied(tmp_path):
    im = Image.new("RGB", (48, 40), RED)
    exif = im.getexif()
    exif[0x0112] = 9
    path = tmp_path / "o9.jpg"
    im.save(path, exif=exif)
    loaded = load_image(path)
    assert loaded.image.size == (48, 40)
    assert not any("orientation" in n for n in loaded.notes)


def test_a_pil_image_opened_from_a_file_is_turned_upright_as_the_file_is(tmp_path):
    """Only a path had its EXIF orientation applied: the same JPEG as Image.open(path) scored
    sideways (another score and category)."""
    from contentiqa.models.scoring import to_pil

    im = Image.fromarray(random_rgb(40, 64, seed=3))
    exif = im.getexif()
    exif[0x0112] = 6
    path = tmp_path / "rot.jpg"
    im.save(path, exif=exif)
    from_path, _, notes = to_pil(path)
    with Image.open(path) as opened:
        from_pil, _, pil_notes = to_pil(opened)
    assert from_path.size == from_pil.size == (40, 64)  # rotated a quarter turn
    assert np.array_equal(np.asarray(from_path), np.asarray(from_pil))
    assert notes == pil_notes == ["EXIF orientation 6 applied"]
    upright, _, none = to_pil(Image.fromarray(random_rgb(40, 64, seed=3)))  # no EXIF: as it is
    assert upright.size == (64, 40) and none == []


def test_postscript_is_never_run_whatever_the_file_is_called(tmp_path, monkeypatch):
    """Pillow opens EPS by running Ghostscript on the file's PostScript: a program a user (or a
    service's client) hands over, not pixels. Such a file is "not an image" and gs never starts."""
    from contentiqa.data.imageio import ImageLoadError, load_image
    from contentiqa.data.imageio import header_size

    marker = tmp_path / "GS-RAN"
    fake = tmp_path / "bin" / "gs"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n(hello) print showpage\n")
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(photo)
    with pytest.raises(ImageLoadError, match="not an image"):
        header_size(str(photo))
    assert not marker.exists()


def test_a_header_over_the_pixel_limit_or_of_no_image_is_named_as_load_image_names_it(tmp_path):
    """Training reads every photo's size from its header first: PIL's own bomb check there was a
    traceback (DecompressionBombError past 179 MP), before load_image's guard was ever met."""
    from contentiqa.data.imageio import ImageLoadError, header_size

    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header_only(20000, 20000))
    with pytest.raises(ImageLoadError, match=r"huge.png.*20000x20000 = 400 MP, over the limit of 100 MP"):
        header_size(huge)
    assert header_size(huge, max_pixels=None) == (20000, 20000)
    for name, content in (("empty.png", b""), ("text.png", b"hello")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ImageLoadError, match=name):
            header_size(tmp_path / name)
    with pytest.raises(ImageLoadError, match="file does not exist"):
        header_size(tmp_path / "gone.png")


def _write_pgm(path, arr: np.ndarray, maxval: int) -> None:
    path.write_bytes(f"P5\n{arr.shape[1]} {arr.shape[0]}\n{maxval}\n".encode() + arr.astype(">u2").tobytes())


def test_a_16bit_pgm_is_read_on_its_range_as_a_16bit_png_is(tmp_path):
    """Pillow opens a 16-bit PGM as 32-bit I (stretched to 0-65535 whatever its maxval)."""
    arr = np.zeros((40, 40), np.uint16)
    arr[:20] = 65535
    arr[20:] = 257 * 100
    _write_pgm(tmp_path / "g16.pgm", arr, 65535)
    _write_pgm(tmp_path / "g12.pgm", arr >> 4, 4095)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    want = np.asarray(load_image(tmp_path / "g16.png").image)
    for name in ("g16.pgm", "g12.pgm"):
        res = load_image(tmp_path / name)
        assert np.abs(np.asarray(res.image).astype(int) - want).max() <= 1, name
        assert any("16-bit" in n for n in res.notes)
    # the same file opened by the caller scores alike
    from contentiqa.models.scoring import to_pil

    with Image.open(tmp_path / "g16.pgm") as im:
        img, _, _ = to_pil(im)
    assert np.array_equal(np.asarray(img), want)


@pytest.mark.parametrize("mode", ["L", "RGB", "I;16"])
def test_a_colour_key_is_transparent_as_an_alpha_channel_is(tmp_path, mode):
    """A PNG's tRNS colour key (grayscale or RGB) marks pixels transparent: white, as with alpha."""
    base = np.zeros((40, 40), np.uint8)
    base[:, :20] = 200
    alpha = np.where(base == 0, 0, 255).astype(np.uint8)
    Image.fromarray(np.dstack([base, base, base, alpha]), "RGBA").save(tmp_path / "alpha.png")
    if mode == "RGB":
        Image.fromarray(np.dstack([base] * 3)).save(tmp_path / "key.png", transparency=(0, 0, 0))
    elif mode == "L":
        Image.fromarray(base).save(tmp_path / "key.png", transparency=0)
    else:
        Image.fromarray(base.astype(np.uint16) * 257).save(tmp_path / "key.png", transparency=0)
    with Image.open(tmp_path / "key.png") as im:
        assert im.mode.startswith(mode[0]) and "transparency" in im.info
    want = load_image(tmp_path / "alpha.png")
    got = load_image(tmp_path / "key.png")
    assert np.array_equal(np.asarray(got.image), np.asarray(want.image))
    assert tuple(np.asarray(got.image)[0, 30]) == (255, 255, 255)
    assert any("transparent" in n for n in got.notes)
    # a key no pixel has: nothing transparent, nothing said
    Image.fromarray(np.dstack([base] * 3)).save(tmp_path / "unused.png", transparency=(1, 2, 3))
    assert not any("transparent" in n for n in load_image(tmp_path / "unused.png").notes)


def test_a_jpeg_cut_short_before_its_end_marker_is_noted_not_scored_silently(tmp_path):
    """libjpeg fills the blocks a file's data no longer covers with mid-grey and only warns:
    a photo cut short and closed with an end-of-image marker decodes without an error."""
    buf = io.BytesIO()
    Image.fromarray(random_rgb(96, 80, seed=3)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    (tmp_path / "whole.jpg").write_bytes(data)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    res = load_image(tmp_path / "cut.jpg")
    assert (np.asarray(res.image)[-8:] == 128).all()
    assert any("cut short or damaged" in n for n in res.notes)
    assert not any("cut short" in n for n in load_image(tmp_path / "whole.jpg").notes)
    # pictures of grey are not fills: a mid-grey frame, and a grey band under a block's height
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "grey.jpg", quality=95)
    band = random_rgb(64, 64, seed=4)
    band[-4:] = 128
    Image.fromarray(band).save(tmp_path / "band.png")
    for name in ("grey.jpg", "band.png"):
        assert not any("cut short" in n for n in load_image(tmp_path / name).notes), name


def test_icon_and_texture_containers_are_refused_before_their_inner_images_are_decoded(tmp_path):
    """ICO, ICNS and BLP hold other compressed images whose size their header does not state:
    a 445 kB ICO or ICNS decoded 144 MP past max_pixels (ICO while opening), a BLP was scored."""
    img = Image.fromarray(random_rgb(64, 64, seed=1))
    img.save(tmp_path / "a.ico", format="ICO")
    img.save(tmp_path / "a.icns", format="ICNS")
    (tmp_path / "a.blp").write_bytes(b"BLP1" + bytes(200))
    for name, what in (("a.ico", "icon (ICO)"), ("a.icns", "Apple icon (ICNS)"), ("a.blp", "BLP texture")):
        _expect_error(tmp_path / name, what, "not read")
    from contentiqa.data.imageio import image_extensions

    assert not {".ico", ".icns", ".blp", ".cur"} & image_extensions()  # folder scans pass them over


def test_pil_checks_images_decoded_inside_others_against_max_pixels(tmp_path, monkeypatch):
    """Decoding runs under PIL's own bomb check set to max_pixels, not switched off: an image a
    container decodes inside itself past twice the limit is refused, naming the guard."""
    path = tmp_path / "ok.png"
    Image.fromarray(random_rgb(64, 64, seed=1)).save(path)
    seen = []

    def load(self, *a, **k):
        seen.append(Image.MAX_IMAGE_PIXELS)
        Image._decompression_bomb_check((5000, 5000))  # as a container's inner image does
        return original(self, *a, **k)

    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    err = _expect_error(path, "over the limit of 1 MP", "decompression-bomb guard", max_pixels=1_000_000)
    assert seen == [1_000_000] and "holds an image" in err.reason
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS != 1_000_000  # restored


def test_a_16bit_rgb_pngs_colour_key_is_not_compared_with_its_8bit_pixels(tmp_path):
    """Pillow reads a 16-bit RGB PNG as 8-bit RGB but keeps its key in 16-bit units: a key of 1000
    raised, one of 100 made opaque pixels stored as 25700 (read as 100) white."""
    pixels = np.full((40, 40, 3), 25700, np.uint16)  # 100 on 8 bits
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    for key in (100, 1000):
        path = tmp_path / f"key{key}.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 40, 40, 16, 2, 0, 0, 0))
                         + png_chunk(b"tRNS", struct.pack(">HHH", key, key, key)) + png_chunk(b"IDAT", zlib.compress(raw))
                         + png_chunk(b"IEND", b""))
        res = load_image(path)
        assert (np.asarray(res.image) == 100).all() and not any("transparent" in n for n in res.notes), key
        # said, not silent: the samples' low bytes dropped, and the key left unapplied
        assert res.notes == ["16-bit colour read as its top 8 bits (the decoder's)",
                             "its 16-bit colour key not applied: keyed pixels scored as stored"], key
    # without a key, the narrowing alone; an 8-bit RGB PNG says nothing
    path = tmp_path / "plain16.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 40, 40, 16, 2, 0, 0, 0))
                     + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))
    assert load_image(path).notes == ["16-bit colour read as its top 8 bits (the decoder's)"]
    Image.fromarray(np.full((40, 40, 3), 100, np.uint8)).save(tmp_path / "plain8.png")
    assert load_image(tmp_path / "plain8.png").notes == []
    # 16-bit grey with alpha: narrowed the same way, and said as grey
    ga = np.stack([np.full((40, 40), 25700, np.uint16), np.full((40, 40), 65535, np.uint16)], -1)
    raw_ga = b"".join(b"\0" + row.astype(">u2").tobytes() for row in ga)
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 40, 40, 16, 4, 0, 0, 0))
    (tmp_path / "la16.png").write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr + png_chunk(b"IDAT", zlib.compress(raw_ga))
                                        + png_chunk(b"IEND", b""))
    assert load_image(tmp_path / "la16.png").notes == ["16-bit grey read as its top 8 bits (the decoder's)"]


def _rgb16_tiff(path, pixels: np.ndarray) -> None:
    """An uncompressed 16-bit RGB TIFF (Pillow writes none), little-endian, one strip."""
    h, w, _ = pixels.shape
    data = pixels.astype("<u2").tobytes()
    tags = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 3, None), (259, 3, 1, 1), (262, 3, 1, 2), (273, 4, 1, None),
            (277, 3, 1, 3), (278, 3, 1, h), (279, 4, 1, len(data)), (284, 3, 1, 1)]
    ifd_at = 8
    bits_at = ifd_at + 2 + 12 * len(tags) + 4
    data_at = bits_at + 6
    entries = b""
    for tag, kind, count, value in tags:
        value = bits_at if tag == 258 else data_at if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value)
        entries += struct.pack("<HHI", tag, kind, count) + packed
    path.write_bytes(b"II*\x00" + struct.pack("<I", ifd_at) + struct.pack("<H", len(tags)) + entries
                     + struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + data)


def test_a_16bit_rgb_tiff_says_its_colour_was_narrowed_by_the_decoder(tmp_path):
    """The note was asked after decoding, when only a PNG's header could still tell: a TIFF's
    16-bit colour was narrowed without a word, from a file and from a PIL image alike."""
    from contentiqa.models.scoring import to_pil

    _rgb16_tiff(tmp_path / "rgb16.tif", np.full((32, 40, 3), 101 * 257, np.uint16))
    res = load_image(tmp_path / "rgb16.tif")
    assert (np.asarray(res.image) == 101).all()
    assert res.notes == ["16-bit colour read as its top 8 bits (the decoder's)"]
    assert to_pil(Image.open(tmp_path / "rgb16.tif"))[2] == res.notes


def test_a_broken_link_is_said_as_one_not_as_a_missing_file(tmp_path):
    """`ls` lists the link: "file does not exist" (explain, the API) sent users looking for the wrong thing."""
    (tmp_path / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "a.jpg").symlink_to(tmp_path / "b.jpg")
    (tmp_path / "b.jpg").symlink_to(tmp_path / "a.jpg")
    for name in ("broken.jpg", "a.jpg"):
        _expect_error(tmp_path / name, "broken symbolic link or link loop")
    _expect_error(tmp_path / "absent.jpg", "file does not exist")


def test_palette_and_low_bit_transparency_still_go_on_white_and_a_16bit_key_from_bytes_is_not_read(tmp_path):
    """The 16-bit colour-key check dropped a 4-bit palette's transparency; a 16-bit RGB PNG opened
    from bytes (no file to read its depth from) raised on a key past 255."""
    pal = Image.new("P", (40, 40), 0)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * (254 * 3))
    pal.paste(1, (20, 0, 40, 40))
    pal.save(tmp_path / "pal4.png", bits=4, transparency=0)
    with Image.open(tmp_path / "pal4.png") as im:
        assert im.mode == "P"
    res = load_image(tmp_path / "pal4.png")
    assert tuple(np.asarray(res.image)[0, 0]) == (255, 255, 255) and any("transparent" in n for n in res.notes)

    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in np.full((40, 40, 3), 25700, np.uint16))
    png = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 40, 40, 16, 2, 0, 0, 0))
           + png_chunk(b"tRNS", struct.pack(">HHH", 1000, 1000, 1000)) + png_chunk(b"IDAT", zlib.compress(raw))
           + png_chunk(b"IEND", b""))
    from contentiqa.data.imageio import pil_to_rgb

    notes: list[str] = []
    assert (np.asarray(pil_to_rgb(Image.open(io.BytesIO(png)), notes)) == 100).all()
    assert notes == ["16-bit colour read as its top 8 bits (the decoder's)"]  # the key: no 8-bit pixel has it


def test_a_photo_too_large_for_the_memory_left_is_not_called_corrupt(tmp_path, monkeypatch):
    """A good 20000x20000 PNG on a laptop ran out of memory while decoding: the row said
    "corrupt PNG data (MemoryError: )", and a user would delete a good photo."""
    from contentiqa.models.scoring import load_image_safely

    path = tmp_path / "big.png"
    Image.fromarray(random_rgb(40, 60)).save(path)

    def no_memory(self, *a, **kw):
        raise MemoryError()

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_memory)
    with pytest.raises(ImageLoadError, match=r"not enough memory to decode this 60x40 \(0.0024 MP\) image") as info:
        load_image(path)
    assert "corrupt" not in str(info.value)
    from PIL import GifImagePlugin

    gif = tmp_path / "anim.gif"
    frames = [Image.fromarray(random_rgb(40, 60, seed=s)) for s in range(2)]
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    monkeypatch.setattr(GifImagePlugin.GifImageFile, "n_frames", property(lambda self: no_memory(self)))
    with pytest.raises(ImageLoadError, match=r"not enough memory to decode this 60x40"):  # counting its frames
        load_image(gif)

    import contentiqa.models.scoring as scoring

    monkeypatch.setattr(scoring, "to_pil", lambda *a, **kw: no_memory(None))  # converting or resizing it
    class Limits:
        max_pixels, min_size = 10**9, 1

    assert load_image_safely(str(path), Limits())[3].startswith("not enough memory to read this image")
