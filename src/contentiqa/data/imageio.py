"""Robust image reading: every way a photo can be odd is handled or named, never guessed.

Quality models are sensitive to how pixels are decoded, so this is the only place images are
opened. It returns an 8-bit RGB PIL image at native resolution with the EXIF orientation
applied, plus notes about anything it had to do (first frame of an animation, alpha dropped,
16-bit scaled down). Anything it cannot do faithfully raises :class:`ImageLoadError` with the
file name and the problem.
"""
from __future__ import annotations

import os
import re
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..utils.io import read_head

# A 100-megapixel ceiling covers every camera photo of the target datasets (SPAQ's largest
# are ~ 4000x4000) while refusing decompression bombs before their pixels are allocated.
DEFAULT_MAX_PIXELS = 100_000_000
DEFAULT_MIN_SIZE = 32

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm",
                    ".heic", ".heif")
"""The common photo extensions; :func:`image_extensions` is every one Pillow can open. Phone
photos (HEIC) are taken from folders even without the plugin that reads them, so that each
gets a row saying what to install rather than being passed over as "not an image"."""

# Phone photos (HEIC/HEIF) open through the optional pillow-heif plugin when it is installed.
try:
    from pillow_heif import register_heif_opener
except ImportError:  # pragma: no cover - optional
    pass
else:
    register_heif_opener()

# Pillow names these formats but cannot read their pixels without outside software; EPS would run
# Ghostscript on the file's PostScript (a program, not pixels: never for a file a user or client hands us).
# Icon and texture containers (ICO, CUR, ICNS, BLP) hold other compressed images whose size their
# header does not state: a few hundred kB decoded to gigabytes past the max_pixels guard, and they
# are no photos.
_NOT_DECODABLE = {"BUFR", "GRIB", "HDF5", "WMF", "EPS", "MPEG", "ICO", "CUR", "ICNS", "BLP"}


@lru_cache(maxsize=1)
def decodable_formats() -> tuple[str, ...]:
    """The formats every ``Image.open`` of a given file may take (Pillow's own decoders): a file
    that claims another (EPS) is "not an image", whatever its name."""
    Image.init()
    return tuple(sorted(fmt for fmt in Image.OPEN if fmt not in _NOT_DECODABLE))

# Never silently pad truncated files with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


_PIL_LIMIT_LOCK = threading.Lock()
_PIL_LIMITS: list[int | None] = []
_PIL_LIMIT_SAVED: int | None = None


@contextmanager
def _pil_pixel_limit(max_pixels: int | None):
    """PIL's global decompression-bomb limit set to ``max_pixels`` (None: none) instead of its own
    ~89 MP: our limit decides, from the header, and PIL's own check still stops any image
    decoded inside another (a container's) past twice that.

    Shared by the loads running in threads: the most permissive limit of those active holds,
    and the last one out restores PIL's (a plain save/restore could restore another's)."""
    global _PIL_LIMIT_SAVED
    with _PIL_LIMIT_LOCK:
        if not _PIL_LIMITS:
            _PIL_LIMIT_SAVED = Image.MAX_IMAGE_PIXELS
        _PIL_LIMITS.append(max_pixels)
        Image.MAX_IMAGE_PIXELS = None if None in _PIL_LIMITS else max(_PIL_LIMITS)  # type: ignore[type-var]
    try:
        yield
    finally:
        with _PIL_LIMIT_LOCK:
            _PIL_LIMITS.remove(max_pixels)
            if not _PIL_LIMITS:
                Image.MAX_IMAGE_PIXELS = _PIL_LIMIT_SAVED
            else:
                Image.MAX_IMAGE_PIXELS = None if None in _PIL_LIMITS else max(_PIL_LIMITS)  # type: ignore[type-var]


BOMB_HINT = "raise max_pixels to allow it"
"""How the refusal of an image over ``max_pixels`` ends: what a caller who can raise the limit
does. A caller whose users cannot (the service) puts its own advice instead."""
MEMORY_HINT = "free memory, or lower max_pixels (the file itself may be fine)"
"""The library's advice for a photo too large for the memory left; commands say it in their own
options (score: --max-pixels; the service: the client's side), as for :data:`BOMB_HINT`."""


class ImageLoadError(ValueError):
    """A file could not be turned into an RGB image; the message names the file and why."""

    def __init__(self, path: str | os.PathLike, reason: str | None = None):
        if reason is None:
            # raised in a DataLoader worker, rebuilt in the main process from its formatted
            # traceback alone (torch calls the type with one message): its last line is ours
            path, reason = _worker_message(str(path))
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _worker_message(text: str) -> tuple[str, str]:
    """(path, reason) of the ImageLoadError a worker's traceback ``text`` ends with."""
    mark = ImageLoadError.__name__ + ": "
    line = next((ln for ln in reversed(text.splitlines()) if mark in ln), text)
    said = line.split(mark, 1)[-1]
    path, _, reason = said.partition(": ")
    return path, reason


@dataclass
class LoadedImage:
    image: Image.Image
    path: str
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def out_of_memory(size: tuple[int, int]) -> str:
    """Why a photo that is not damaged could not be read: the memory its pixels need."""
    w, h = size
    return f"not enough memory to decode this {w}x{h} ({w * h / 1e6:.4g} MP) image: {MEMORY_HINT}"


def _describe(exc: Exception) -> str:
    """An exception's message, with its type where the message alone says little (``struct.error``)."""
    return str(exc) if isinstance(exc, OSError) and str(exc) else f"{type(exc).__name__}: {exc}"


FLOAT_TOLERANCE = 1e-3
"""Float pixels may step this far outside [0, 1] (resampling overshoot); they are clipped."""


def pixels_to_uint8(a: np.ndarray) -> np.ndarray:
    """Pixel values of any numeric dtype -> uint8, by one rule per dtype, never by the values seen
    (one brighter pixel must not turn a photo's range from 8-bit into 16-bit):

    - uint8: as is; bool: refused (a mask, not a photo).
    - floating point: must lie in [0, 1] (NaN / inf refused); scaled by 255.
    - uint16, either byte order: the 16-bit range 0-65535 (what 16-bit PNG / TIFF hold), rounded
      to the nearest 8-bit level. (16-bit *colour* files are the exception: Pillow decodes them
      to their top 8 bits, which :func:`load_image` notes.)
    - other integers (int8/16/32/64, uint32/64, e.g. a list of Python ints): must lie in 0-255,
      taken as 8-bit values; anything outside is refused (its range is unknown).

    Arrays and PIL images in memory and 32-bit or float image files all follow it.
    """
    if a.dtype.byteorder not in ("=", "|"):
        a = a.astype(a.dtype.newbyteorder("="))
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        raise ValueError("boolean input is a mask, not an image: pass uint8 (0-255) or float (0-1) pixels")
    if np.issubdtype(a.dtype, np.floating):
        if a.size and not np.isfinite(a).all():
            raise ValueError("input has NaN or infinite values: pixels must be finite")
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo < -FLOAT_TOLERANCE or hi > 1.0 + FLOAT_TOLERANCE:
            raise ValueError(
                f"float input has values in [{lo:.4g}, {hi:.4g}]: float pixels must be in [0, 1] "
                "(divide 0-255 data by 255, or pass it as uint8)"
            )
        return (np.clip(a, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if a.dtype == np.uint16:
        return np.round(a.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 255:
            raise ValueError(
                f"{a.dtype} input has values in [{lo}, {hi}]: integer pixels other than uint8/uint16 must be "
                "0-255 (pass uint16 for 16-bit data, or scale it)"
            )
        return a.astype(np.uint8)
    raise TypeError(f"cannot score pixels of dtype {a.dtype}")


_AT_MOST_16_BITS = ("PNG", "PPM")
"""Formats whose 32-bit integer (I) images hold at most 16 bits: some Pillow versions open a
16-bit grayscale PNG as I, and every version a 16-bit PGM (already stretched to 0-65535)."""


def _sixteen_bit(im: Image.Image) -> Image.Image:
    """A 16-bit grayscale PNG or PGM as I;16, however this Pillow opened it: as 32-bit I its
    values would have no display range of their own, but these formats hold at most 16 bits."""
    if im.mode != "I" or im.format not in _AT_MOST_16_BITS:
        return im
    wide = Image.fromarray(np.asarray(im).astype(np.uint16))
    wide.info.update(im.info)  # its EXIF orientation, if any
    return wide


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1 when absent or unreadable)."""
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block: apply_orientation says so when it meets it
        return 1
    return value if isinstance(value, int) else 1


def orientation_before_decoding(im: Image.Image) -> int:
    """The EXIF orientation of a TIFF whose pixels are not decoded yet (else 1): Pillow's TIFF
    reader turns the image as it decodes and drops the tag, so it is read first. Only a TIFF's:
    its tag is in the header, where a PNG's getexif would decode the pixels (outside the pixel
    limit a decode runs under)."""
    return _orientation(im) if im.format == "TIFF" and getattr(im, "tile", None) else 1


def note_decoder_orientation(im: Image.Image, stored: int, notes: list[str]) -> None:
    """After decoding: the note :func:`apply_orientation` gives, where the decoder turned the
    image itself (``stored``: :func:`orientation_before_decoding`)."""
    if stored in range(2, 9) and _orientation(im) != stored:
        notes.append(f"EXIF orientation {stored} applied")


def apply_orientation(im: Image.Image, notes: list[str]) -> Image.Image:
    """``im`` turned upright as its EXIF orientation says (as viewers show it), with a note; for a
    file and for a PIL image opened from one alike, so both score the same."""
    try:
        # read first: for a TIFF, exif_transpose removes the tag from the original's EXIF too
        orientation = im.getexif().get(0x0112, 1)
        oriented = ImageOps.exif_transpose(im)
    except Exception:  # malformed EXIF must not lose the pixels
        notes.append("EXIF orientation unreadable, image used as stored")
        return im.copy()
    if orientation in range(2, 9):  # other values are invalid and exif_transpose ignores them
        notes.append(f"EXIF orientation {orientation} applied")
    return oriented


def pil_to_rgb(im: Image.Image, notes: list[str], narrowed: str | None = None) -> Image.Image:
    """An opened image as :func:`load_image` reads its file: 16-bit formats on their range,
    turned upright, 8-bit RGB (notes on what was done), for files and images in memory alike.
    ``narrowed``: :func:`colour_narrowed` asked before the pixels were decoded (after, only a
    PNG's header can still say)."""
    usable_key = _key_in_pixel_units(im)  # asked of the image as read: its format and file
    kind = colour_narrowed(im) if narrowed is None else narrowed
    if kind:
        notes.append(f"16-bit {kind} read as its top 8 bits (the decoder's)")
    oriented = apply_orientation(_sixteen_bit(im), notes)  # a new image: its info is its own
    if not usable_key and oriented.info.pop("transparency", None) is not None:
        notes.append("its 16-bit colour key not applied: keyed pixels scored as stored")
    return _to_rgb(oriented, notes)


def colour_narrowed(im: Image.Image) -> str | None:
    """``"colour"`` (or ``"grey"``, for grey with alpha) when the decoder reads this image's 16-bit
    samples as their top 8 bits (Pillow has no 16-bit RGB or LA mode), else None: its tile's raw
    mode says so before it is decoded (PNG, TIFF: RGB, RGBA, RGBX, premultiplied RGBa, LA), a
    PNG's header after. (BMP's packed 5-6-5 'BGR;16' is no 16-bit sample.)"""
    if im.mode not in ("RGB", "RGBA", "LA"):
        return None
    for tile in (im.tile if isinstance(im, ImageFile.ImageFile) else ()):
        raw = tile.args if isinstance(tile.args, str) else (tile.args[0] if tile.args else None)
        if isinstance(raw, str) and re.fullmatch(r"(RGB[AaX]?|LA);16[BLN]", raw):
            return "grey" if raw.startswith("LA") else "colour"
    if im.format == "PNG" and getattr(im, "filename", None):
        head = read_head(Path(im.filename), 26)  # IHDR: bit depth at byte 24, colour type at 25
        if len(head) == 26 and head[24] == 16:
            return "grey" if head[25] == 4 else "colour"
    return None


def to_rgb8(im: Image.Image) -> Image.Image:
    """An image of any mode as 8-bit RGB, as :func:`load_image` reads files (16-bit and float
    on their range, transparency on white): ``convert("RGB")`` clips 16-bit values to white."""
    return _to_rgb(im, [])


_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _colour_key_mask(im: Image.Image) -> np.ndarray | None:
    """The pixels a colour key makes transparent (a PNG's tRNS on a grayscale or RGB image: one
    value or colour that stands for "nothing here"); None when there are none. Palette images
    carry theirs per entry and go through RGBA instead."""
    key = im.info.get("transparency")
    if key is None or im.mode == "P" or im.mode in _ALPHA_MODES:
        return None
    arr = np.asarray(im)
    top = np.iinfo(arr.dtype).max if np.issubdtype(arr.dtype, np.integer) else None
    if top is not None and any(int(v) > top for v in (key if isinstance(key, tuple) else (key,))
                               if isinstance(v, (int, np.integer))):
        return None  # a key no pixel of this depth can have
    if arr.ndim == 3:
        if not isinstance(key, tuple) or len(key) != arr.shape[2]:
            return None
        mask = (arr == np.asarray(key, arr.dtype)).all(axis=2)
    elif isinstance(key, int):
        mask = arr == key
    else:
        return None
    return mask if mask.any() else None


def _key_in_pixel_units(im: Image.Image) -> bool:
    """Whether a PNG's colour key can be compared with the decoded pixels: Pillow reads a 16-bit
    RGB PNG as 8-bit RGB but keeps its key in 16-bit values. Read from a file, the header says
    the bit depth (opened from bytes, a key past 255 names no 8-bit pixel: :func:`_colour_key_mask`
    leaves it). Other images: their mode says."""
    if im.format != "PNG" or im.mode != "RGB" or not getattr(im, "filename", None):
        return True
    head = read_head(Path(im.filename), 25)  # IHDR: bit depth at byte 24
    return not (len(head) == 25 and head[24] == 16)


def _to_rgb(im: Image.Image, notes: list[str]) -> Image.Image:
    # transparency on white whichever way the file stores it (an alpha channel, a palette's
    # entries or a colour key), so the same picture reads the same pixels
    keyed = _colour_key_mask(im)
    rgb = _to_rgb_ignoring_key(im, notes)
    if keyed is None:
        return rgb
    arr = np.array(rgb)
    arr[keyed] = 255
    notes.append("transparent pixels composited on white")
    return Image.fromarray(arr, "RGB")


def _to_rgb_ignoring_key(im: Image.Image, notes: list[str]) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im)  # I;16*: uint16 in the file's byte order; I: int32; F: float32
        try:
            arr8 = pixels_to_uint8(arr)
        except ValueError:  # the same rule as an array's, said of an image
            if not np.isfinite(arr).all():
                raise ValueError("floating-point image with NaN or infinite pixels") from None
            lo, hi = arr.min(), arr.max()
            raise ValueError(
                f"floating-point image with values in [{lo:.4g}, {hi:.4g}]: float pixels must be in [0, 1]" if mode == "F"
                else f"32-bit integer image with values in [{lo}, {hi}] has no defined display range "
                "(values 0-255 are read as 8-bit; save 16-bit data as 16-bit)") from None
        notes.append({"F": "floating-point image converted to 8-bit",
                      "I": "32-bit integer image read as 8-bit values"}.get(mode, "16-bit grayscale scaled to 8-bit"))
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in im.info):
        # (Pillow converts premultiplied grey, a TIFF's 'La', to nothing but LA)
        rgba = (im.convert("LA") if mode == "La" else im).convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        if alpha.min() < 255:
            notes.append("transparent pixels composited on white")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "CMYK":
        notes.append("CMYK converted to RGB")
    return im.convert("RGB")


_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}


_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


_CONTAINER_SIGNATURES = {b"\x00\x00\x01\x00": "icon (ICO)", b"\x00\x00\x02\x00": "cursor (CUR)",
                         b"icns": "Apple icon (ICNS)", b"BLP1": "BLP texture", b"BLP2": "BLP texture"}


def _signature_format(head: bytes) -> str | None:
    """The format a file's first bytes announce (None: no image format's), so a damaged photo
    is called a damaged PNG, not "not an image"."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _SIGNATURES if head.startswith(magic)), None)


def _unidentified_reason(path: Path) -> str:
    """Why Pillow recognised no format: a HEIC/HEIF photo (an ISO media file of a HEIF brand)
    without the plugin is named as such, with the extra that reads it; a file that starts as an
    image format does is damaged, not something else."""
    head = read_head(path, 12)
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS and "HEIF" not in Image.OPEN:
        from ..utils.extras import install_hint

        return f"HEIC/HEIF photo: reading it needs pillow-heif ({install_hint('heif')})"
    announced = _signature_format(head)
    if announced is not None:
        return f"damaged {announced} file: it starts as one, but its header cannot be read"
    if head[:4] in _CONTAINER_SIGNATURES:
        return (f"{_CONTAINER_SIGNATURES[head[:4]]} file: not read (icon and texture files hold images of sizes "
                "their header does not state; save the picture as JPEG or PNG)")
    return "not an image (format not recognised)"


def _open_failed_reason(path: Path, exc: OSError) -> str:
    """Why Pillow could not open a file it recognised (a truncated WebP: "could not create
    decoder object"), naming the format when the file's first bytes do."""
    announced = _signature_format(read_head(path, 12))
    kind = f"{announced} file" if announced else "file"
    if "truncated" in str(exc).lower():
        return f"truncated or incomplete {kind}: the header is cut short ({exc})"
    return f"damaged or truncated {kind} ({exc})" if announced else f"cannot open image: {exc}"


_LOADING = threading.local()


def loading_path() -> str | None:
    """The file :func:`load_image` is reading in this thread, None outside it: a warning a
    decoder gives mid-read (Pillow's "Corrupt EXIF data") can then say which file it is about."""
    return getattr(_LOADING, "path", None)


def load_image(
    path: str | os.PathLike,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_size: int = DEFAULT_MIN_SIZE,
) -> LoadedImage:
    """Read ``path`` as 8-bit RGB at native resolution, EXIF orientation applied.

    Raises :class:`ImageLoadError` for: missing files, directories, unreadable permissions,
    empty files, non-images, truncated or corrupt data, images with a side shorter than
    ``min_size`` and images over ``max_pixels`` (decompression-bomb guard; ``None`` disables).
    """
    _LOADING.path = str(path)
    try:
        return _load_image(path, max_pixels, min_size)
    finally:
        _LOADING.path = None


def header_size(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of ``path`` after EXIF orientation, from its header alone (training groups
    photos by it before decoding any); :class:`ImageLoadError` as :func:`load_image` raises it
    for a missing, unreadable or non-image file and one over ``max_pixels`` (PIL's own bomb
    check was a traceback)."""
    p = _file_path(path)
    _check_file(p)
    with _open_header(p) as im:
        _check_pixels(p, im.size, max_pixels)
        # the size as stored: a newer Pillow gives a TIFF's size already turned upright (and
        # keeps the stored one as _tile_size); turned again it was the wrong way round
        w, h = (getattr(im, "_tile_size", None) if im.format == "TIFF" else None) or im.size
        try:
            orientation = im.getexif().get(0x0112, 1)
        except Exception:  # a damaged EXIF block: the decode says so, the size stands as stored
            orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _file_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path; an empty one (an unset variable) is an error, not the current folder
    that Path('') names ("is a directory")."""
    if not os.fspath(path).strip():
        raise ImageLoadError(path, "empty path (an unset variable?)")
    return Path(path)


def _check_file(p: Path) -> None:
    """ImageLoadError for a path that is no readable, non-empty regular file."""
    if not p.exists():  # a link that leads nowhere is there to see (ls lists it): said as what it is
        raise ImageLoadError(p, "broken symbolic link or link loop" if p.is_symlink() else "file does not exist")
    if p.is_dir():
        raise ImageLoadError(p, "is a directory, not an image file")
    if not p.is_file():
        raise ImageLoadError(p, "not a regular file (a FIFO, socket or device)")
    if not os.access(p, os.R_OK):
        raise ImageLoadError(p, "permission denied (file is not readable)")
    try:
        if p.stat().st_size == 0:
            raise ImageLoadError(p, "file is empty (0 bytes)")
    except OSError as exc:
        raise ImageLoadError(p, f"cannot stat file: {exc.strerror or exc}") from exc


def _open_header(p: Path) -> Image.Image:
    """``p`` opened (its header parsed, no pixels decoded), or ImageLoadError saying why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(p, formats=decodable_formats())
    except UnidentifiedImageError:
        raise ImageLoadError(p, _unidentified_reason(p)) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        # Our own limit (max_pixels, checked below from the header alone) is the authoritative
        # one; PIL warns at ~89 MP and refuses at ~179 MP whatever max_pixels says. Opening
        # only parses the header, so re-opening without PIL's limit allocates nothing.
        try:
            with _pil_pixel_limit(None):  # no format left decodes pixels when it opens
                im = Image.open(p, formats=decodable_formats())
        except OSError as exc:
            raise ImageLoadError(p, _open_failed_reason(p, exc)) from None
    except PermissionError:
        raise ImageLoadError(p, "permission denied (file is not readable)") from None
    except OSError as exc:
        raise ImageLoadError(p, _open_failed_reason(p, exc)) from None
    return im


def _check_pixels(p: Path, size: tuple[int, int], max_pixels: int | None) -> None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            p,
            f"image is {width}x{height} = {width * height / 1e6:.4g} MP, over the limit of "
            f"{max_pixels / 1e6:.4g} MP (decompression-bomb guard; {BOMB_HINT})",
        )


def _load_image(path: str | os.PathLike, max_pixels: int | None, min_size: int) -> LoadedImage:
    p = _file_path(path)
    _check_file(p)
    notes: list[str] = []
    with _open_header(p) as im:
        _check_pixels(p, im.size, max_pixels)
        # Pillow's decoders report damaged data with whatever their parsing hits (IndexError,
        # struct.error, KeyError ... besides OSError), so any exception here is the file's.
        try:
            with _pil_pixel_limit(max_pixels):  # counting frames seeks through them
                n_frames = getattr(im, "n_frames", 1)
                if n_frames > 1:
                    im.seek(0)
        except MemoryError:  # seeking through a large animation's frames: not "corrupt"
            raise ImageLoadError(p, out_of_memory(im.size)) from None
        except Exception as exc:
            raise ImageLoadError(p, f"corrupt {im.format} frame data ({_describe(exc)})") from None
        if n_frames > 1:
            notes.append(f"animated {im.format} with {n_frames} frames: scored the first frame")
        narrowed = colour_narrowed(im)  # before decoding: its raw mode goes with its tile
        stored = orientation_before_decoding(im)
        try:
            with _pil_pixel_limit(max_pixels):  # the size read from the header is checked above
                im.load()
        except Image.DecompressionBombError as exc:  # an image inside this one, past twice max_pixels
            raise ImageLoadError(p, f"holds an image over the limit of {max_pixels / 1e6:.4g} MP ({exc}; "
                                    f"decompression-bomb guard; {BOMB_HINT})") from None
        except MemoryError:  # a good file too large for this machine: not "corrupt"
            raise ImageLoadError(p, out_of_memory(im.size)) from None
        except Exception as exc:
            msg = _describe(exc)
            if "truncated" in msg.lower():
                raise ImageLoadError(p, f"truncated or incomplete {im.format} file ({msg})") from None
            raise ImageLoadError(p, f"corrupt {im.format} data ({msg})") from None
        note_decoder_orientation(im, stored, notes)
        grey = _decoder_grey_rows(im)
        if grey:
            notes.append(f"the bottom {grey} rows are the flat mid-grey a JPEG decoder puts where a file's data ends "
                         "early: the file is probably cut short or damaged, and its score reads that grey")
        try:
            rgb = pil_to_rgb(im, notes, narrowed)
        except ValueError as exc:
            raise ImageLoadError(p, str(exc)) from None
        rgb = rgb.copy() if rgb is im else rgb

    w, h = rgb.size
    if min(w, h) < min_size:
        raise ImageLoadError(p, f"image is {w}x{h}, smaller than the minimum side of {min_size} px")
    return LoadedImage(image=rgb, path=str(p), notes=notes)


_MIN_GREY_ROWS = 8
"""A JPEG block's height: a decoder's fill covers whole blocks."""


def _decoder_grey_rows(im: Image.Image) -> int:
    """How many rows at the bottom of a decoded JPEG are exactly mid-grey (128): libjpeg fills
    the blocks a file's data no longer covers with that grey and only warns, which Pillow does
    not pass on, so a photo cut short after its last marker decodes "fine". 0 when fewer than a
    block's rows, or when the whole frame is grey (a picture of grey, not a fill)."""
    if im.format != "JPEG" or im.mode not in ("L", "RGB"):
        return 0
    width, height = im.size
    # the bottom block's rows first: a photo's pixels are not read again unless they are grey
    if height <= _MIN_GREY_ROWS or not (np.asarray(im.crop((0, height - _MIN_GREY_ROWS, width, height))) == 128).all():
        return 0
    arr = np.asarray(im)
    rows = arr.reshape(arr.shape[0], -1)
    picture = np.flatnonzero(~(rows == 128).all(axis=1))
    return 0 if picture.size == 0 else int(rows.shape[0] - 1 - picture[-1])


@lru_cache(maxsize=1)
def image_extensions() -> frozenset[str]:
    """Extensions of every format this Pillow can open (AVIF, JPEG 2000, JFIF, HEIC with
    pillow-heif, ...), so folder scans take what a named file would score."""
    Image.init()
    found = {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN and fmt not in _NOT_DECODABLE}
    return frozenset(found | set(IMAGE_EXTENSIONS))


def is_image_file(path: str | os.PathLike) -> bool:
    """By extension. The common ones are answered without loading every Pillow plugin (which
    :func:`image_extensions` does: 50 ms of a one-photo run's start-up)."""
    suffix = Path(path).suffix.lower()
    return suffix in IMAGE_EXTENSIONS or suffix in image_extensions()
