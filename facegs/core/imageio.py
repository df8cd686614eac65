"""Reading and writing the images of a subject: RGB, label maps, confidence, masks, depth.

- RGB: [H, W, 3] uint8, RGB order (OpenCV's BGR is converted at the boundary).
- Label maps: [H, W] uint8 class indices, stored as palette PNGs (index = pixel value; the palette is
  only for people looking at the file). Read with Pillow, never with OpenCV (which would expand a
  palette PNG to colours).
- Confidence: [H, W] float32 in [0, 1], stored as 8-bit PNG (value * 255, rounded).
- Masks: [H, W] bool, stored as 8-bit PNG (0 / 255).
- Depth: [H, W] float32 metres along the camera z axis, 0 where nothing is hit; stored as 16-bit PNG
  in units of 1/``DEPTH_SCALE`` (0.1 mm).
Every reader raises :class:`facegs.core.errors.InputError` naming the file when it cannot decode it.

Decoded-pixel cap: every reader parses the image header first (Pillow, which reads the header
only) and refuses an image of more than ``max_pixels`` pixels before any pixel is decoded -- a
250 KB PNG can declare 16000 x 16000 pixels (1 GB decoded). The default for captures is
:data:`DEFAULT_MAX_PIXELS` (120 megapixels: a 100-megapixel medium-format frame fits), raised or
lowered with the ``FACEGS_MAX_PIXELS`` environment variable or each reader's ``max_pixels``;
Pillow's own decompression-bomb limit (2 x ``PIL.Image.MAX_IMAGE_PIXELS``, about 179 megapixels)
stays an upper bound. Shard members have their own, smaller cap (:mod:`facegs.shards.stages`).

Captures that are not 8-bit RGB (grayscale, 16-bit, with an alpha channel, CMYK) are converted to
8-bit RGB as OpenCV's ``IMREAD_COLOR`` does; :func:`rgb_conversion` names what was converted, so
that validation can say so once per subject.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from facegs.core.errors import InputError
from facegs.core.labels import LabelSet, get_label_set

DEPTH_SCALE = 10000.0


DEFAULT_MAX_PIXELS = 120_000_000


MAX_PIXELS_ENV = "FACEGS_MAX_PIXELS"


def max_pixels_default() -> int:
    """The capture pixel cap: ``$FACEGS_MAX_PIXELS`` when set, else :data:`DEFAULT_MAX_PIXELS`."""
    env = os.environ.get(MAX_PIXELS_ENV, "").strip()
    try:
        return int(float(env)) if env else DEFAULT_MAX_PIXELS
    except ValueError:
        raise ValueError(f"${MAX_PIXELS_ENV} must be a number of pixels, got {env!r}") from None


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says: size, Pillow mode (``RGB``, ``L``, ``RGBA``, ``I;16``, ``P``, ...),
    the decoder's raw mode (``RGB;16B`` for a 16-bit RGB PNG) and the format (``PNG``, ``JPEG``)."""

    width: int
    height: int
    mode: str
    rawmode: str
    format: str

    @property
    def pixels(self) -> int:
        return self.width * self.height


_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_MODES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}  # PNG colour types (PNG spec, IHDR)


def _png_header(data: bytes) -> ImageHeader | None:
    """The IHDR of a PNG (the PNG spec fixes it as the first chunk, at byte 8): size, colour type and
    bit depth, without Pillow's open (tens to hundreds of microseconds per image)."""
    if len(data) < 33 or data[:8] != _PNG_SIG or data[12:16] != b"IHDR":
        return None
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    depth, ctype = data[24], data[25]
    mode = _PNG_MODES.get(ctype)
    if mode is None or w == 0 or h == 0:
        return None  # let Pillow name what is wrong
    if mode == "L" and depth == 16:
        mode = "I;16"
    return ImageHeader(w, h, mode, mode + (";16B" if depth == 16 else ""), "PNG")


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_MODES = {1: "L", 3: "RGB", 4: "CMYK"}


def _jpeg_header(data: bytes) -> ImageHeader | None:
    """Size and components of a JPEG from its SOF segment (ITU T.81 B.2.2), walking the marker
    segments that precede it; None when it is not that simple (Pillow then reads it)."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _JPEG_SOF:
            h, w, comps = int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big"), data[i + 9]
            mode = _JPEG_MODES.get(comps)
            return None if mode is None or w == 0 or h == 0 else ImageHeader(w, h, mode, mode, "JPEG")
        if marker in (0xD9, 0xDA) or length < 2:  # end of image or scan data before any frame header
            return None
        i += 2 + length
    return None


def read_header(data: bytes, path: str = "<bytes>") -> ImageHeader:
    """Parse an image header without decoding pixels; :class:`InputError` for unreadable data or a
    header beyond Pillow's decompression-bomb limit. PNG and JPEG headers are read directly (a
    microsecond: every shard member is checked), anything else through Pillow."""
    fast = _png_header(data) or _jpeg_header(data)
    if fast is not None:
        return fast
    try:
        with warnings.catch_warnings():  # our own cap (check_pixels) replaces Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                tile = im.tile[0] if im.tile else None
                args = getattr(tile, "args", None) if tile is not None else None
                raw = args[0] if isinstance(args, tuple) and args else args
                return ImageHeader(int(im.size[0]), int(im.size[1]), str(im.mode), str(raw or im.mode), str(im.format))
    except Image.DecompressionBombError as e:
        raise _bomb_error(e, path) from None
    except Exception as e:  # Pillow raises many types for corrupt files
        raise InputError(f"corrupt or unreadable image ({type(e).__name__}: {e})", path=path) from None


def _bomb_error(e: Exception, path: str) -> InputError:
    n = re.search(r"\((\d+) pixels\)", str(e))
    size = f"{int(n.group(1)) / 1e6:.1f} megapixels" if n else "more pixels than Pillow decodes safely"
    return InputError(f"image header declares {size}, over the pixel cap (and Pillow's decompression-bomb limit); "
                      "nothing decoded", path=path)


def check_pixels(header: ImageHeader, path: str, max_pixels: int | None = None, what: str = "image") -> None:
    """Refuse an image whose header declares more than ``max_pixels`` (default
    :func:`max_pixels_default`) pixels, before it is decoded."""
    cap = max_pixels_default() if max_pixels is None else int(max_pixels)
    if header.pixels > cap:
        raise InputError(f"{what} is {header.width}x{header.height} = {header.pixels / 1e6:.1f} megapixels, over the cap "
                         f"of {cap / 1e6:g} megapixels (checked from the header, nothing decoded; "
                         f"${MAX_PIXELS_ENV} sets the cap)", path=path)


def rgb_conversion(header: ImageHeader) -> str | None:
    """What decoding to 8-bit RGB changes about an image (None: it is 8-bit RGB or a palette of
    colours): e.g. ``"16-bit grayscale"``, ``"RGBA (alpha dropped)"``."""
    mode, raw = header.mode, header.rawmode
    parts = []
    if ";16" in raw or mode.startswith("I") or mode == "F":
        parts.append("16-bit" if mode != "F" else "floating-point")
    if mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;"):
        parts.append("grayscale")
    elif mode == "CMYK":
        parts.append("CMYK")
    elif mode in ("RGBA", "RGBa", "PA"):
        parts.append(mode)
    if "A" in mode or "a" in mode:
        parts.append("(alpha dropped)")
    return " ".join(parts) or None


def _read_bytes(path: str | os.PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise InputError("file does not exist", path=str(path)) from None
    except OSError as e:
        raise InputError(f"cannot read file: {e.strerror}", path=str(path)) from None


def decode_rgb(data: bytes, path: str = "<bytes>", *, max_pixels: int | None = None,
               header: ImageHeader | None = None) -> np.ndarray:
    """Decode PNG/JPEG bytes to [H, W, 3] uint8 RGB, after checking the header against the pixel
    cap (``header``: one already parsed by :func:`read_header`)."""
    header = header or read_header(data, path)
    check_pixels(header, path, max_pixels)
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if arr is None:
        raise InputError("corrupt or unreadable image (OpenCV could not decode it)", path=path)
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def read_rgb(path: str | os.PathLike, *, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as [H, W, 3] uint8 RGB (pixel cap: see the module docstring)."""
    return decode_rgb(_read_bytes(path), str(path), max_pixels=max_pixels)


def read_rgb_noting(path: str | os.PathLike, *, max_pixels: int | None = None) -> tuple[np.ndarray, str | None]:
    """:func:`read_rgb` plus :func:`rgb_conversion` of the file (None when nothing was converted)."""
    data = _read_bytes(path)
    header = read_header(data, str(path))
    return decode_rgb(data, str(path), max_pixels=max_pixels, header=header), rgb_conversion(header)


def image_size(path: str | os.PathLike, *, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) of an image file from its header, without decoding the pixels (the pixel
    cap applies: an image too large to decode is refused here too)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.verify()
    except FileNotFoundError:
        raise InputError("file does not exist", path=str(path)) from None
    except Image.DecompressionBombError as e:
        raise _bomb_error(e, str(path)) from None
    except Exception as e:  # Pillow raises many types for corrupt files
        raise InputError(f"corrupt or unreadable image ({type(e).__name__}: {e})", path=str(path)) from None
    header = read_header(_read_bytes(path), str(path))
    check_pixels(header, str(path), max_pixels)
    return header.width, header.height


def encode_rgb(rgb: np.ndarray, ext: str = ".png", jpeg_quality: int = 95) -> bytes:
    """Encode [H, W, 3] uint8 RGB as PNG or JPEG bytes (deterministic)."""
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if ext.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, bgr, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode an image as {ext}")
    return buf.tobytes()


def write_rgb(path: str | os.PathLike, rgb: np.ndarray, jpeg_quality: int = 95) -> None:
    Path(path).write_bytes(encode_rgb(rgb, Path(path).suffix or ".png", jpeg_quality))


def encode_label_png(labels: np.ndarray, label_set: LabelSet | str | None = None) -> bytes:
    """Encode [H, W] uint8 class indices as a palette PNG (pixel value = class index)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"label map must be [H, W] uint8, got {labels.dtype} {list(labels.shape)}")
    ls = get_label_set(label_set)
    im = Image.fromarray(labels, mode="P")
    pal = np.full((256, 3), 255, dtype=np.uint8)
    pal[: ls.num_classes] = ls.palette
    im.putpalette(pal.reshape(-1).tolist())
    out = io.BytesIO()
    im.save(out, format="PNG", optimize=False)
    return out.getvalue()


def decode_label_png(data: bytes, path: str = "<bytes>", *, max_pixels: int | None = None,
                     header: ImageHeader | None = None) -> np.ndarray:
    """Decode a label PNG (palette or 8-bit grayscale) to [H, W] uint8 class indices (``header``:
    one already parsed and checked by the caller)."""
    if header is None:
        check_pixels(read_header(data, path), path, max_pixels, "label map")
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except Exception as e:
        raise InputError(f"corrupt or unreadable label map ({type(e).__name__}: {e})", path=path) from None
    if im.mode not in ("P", "L"):
        raise InputError(f"label map must be a palette or 8-bit grayscale PNG, got mode {im.mode}", path=path)
    return np.array(im, dtype=np.uint8)


def read_labels(path: str | os.PathLike, *, max_pixels: int | None = None) -> np.ndarray:
    return decode_label_png(_read_bytes(path), str(path), max_pixels=max_pixels)


def write_labels(path: str | os.PathLike, labels: np.ndarray, label_set: LabelSet | str | None = None) -> None:
    Path(path).write_bytes(encode_label_png(labels, label_set))


def encode_gray_png(arr: np.ndarray) -> bytes:
    """Encode [H, W] uint8 or uint16 as a grayscale PNG."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr))
    if not ok:
        raise ValueError("OpenCV could not encode a grayscale PNG")
    return buf.tobytes()


def _read_gray(path: str | os.PathLike, dtype: type) -> np.ndarray:
    data = _read_bytes(path)
    check_pixels(read_header(data, str(path)), str(path), None)
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 2 or arr.dtype != dtype:
        got = "undecodable" if arr is None else f"{arr.dtype} {list(arr.shape)}"
        raise InputError(f"expected a single-channel {np.dtype(dtype).name} PNG, got {got}", path=str(path))
    return arr


def quantize_unit(x: np.ndarray) -> np.ndarray:
    """[H, W] values in [0, 1] -> uint8 ``round(x * 255)`` (confidence, alpha: how they are stored)."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def dequantize_unit(q: np.ndarray) -> np.ndarray:
    """uint8 [H, W] -> float32 ``q / 255`` (how a stored confidence or alpha map is read back)."""
    return np.asarray(q, dtype=np.uint8).astype(np.float32) / 255.0


def write_confidence(path: str | os.PathLike, conf: np.ndarray) -> None:
    Path(path).write_bytes(encode_gray_png(quantize_unit(conf)))


def read_confidence(path: str | os.PathLike) -> np.ndarray:
    return dequantize_unit(_read_gray(path, np.uint8))


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    Path(path).write_bytes(encode_gray_png(np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8)))


def read_mask(path: str | os.PathLike) -> np.ndarray:
    return _read_gray(path, np.uint8) >= 128


def write_depth(path: str | os.PathLike, depth: np.ndarray) -> None:
    d = np.clip(np.rint(np.asarray(depth, dtype=np.float64) * DEPTH_SCALE), 0, 65535).astype(np.uint16)
    Path(path).write_bytes(encode_gray_png(d))


def read_depth(path: str | os.PathLike) -> np.ndarray:
    return _read_gray(path, np.uint16).astype(np.float32) / DEPTH_SCALE


def decode_gray_png(data: bytes, where: str, *, max_pixels: int | None = None,
                    header: ImageHeader | None = None) -> np.ndarray:
    """8-bit single-channel PNG bytes -> [H, W] uint8 (pixel cap checked from the header first, unless
    the caller passes the ``header`` it checked)."""
    if header is None:
        check_pixels(read_header(data, where), where, max_pixels)
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 2 or arr.dtype != np.uint8:
        got = "undecodable" if arr is None else f"{arr.dtype} {list(arr.shape)}"
        raise InputError(f"expected an 8-bit single-channel PNG, got {got}", path=where)
    return arr
