"""Decode one image file into the uint8 square every trial trains on: the paper's preprocessing.

Only PIL and numpy: this module runs in the decoding processes (imagefolder.py), which must start fast and
never import torch. Any format PIL reads (JPEG, PNG, WebP, BMP, GIF's first frame) and any mode (greyscale,
palette, CMYK, 16-bit, alpha) ends as RGB; the EXIF orientation is applied first, as a photo viewer would.
"""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
from PIL import Image, ImageOps

# A decompression bomb is an error, not a warning: a 30000 x 30000 PNG would take gigabytes to decode.
Image.MAX_IMAGE_PIXELS = 200_000_000


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: scale to 8 bits, not clip at 255
        array = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        img = Image.fromarray(np.clip(array * 255.0 / peak, 0, 255).round().astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels over white, as a browser shows them (their RGB is often black or garbage).
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, P, CMYK, YCbCr, F, 1


def resize_center_square(img: Image.Image, side: int) -> Image.Image:
    """Shorter side to `side` (antialiased), then the central `side` x `side` patch: the paper's 256 x 256."""
    w, h = img.size
    scale = side / min(w, h)
    new = (max(side, round(w * scale)), max(side, round(h * scale)))
    if new != (w, h):
        # draft(): JPEG decodes at 1/2, 1/4 or 1/8 of its size when that is still at least the target, which
        # is most of the decoding time saved on photos larger than the cache side.
        img = img.resize(new, Image.Resampling.BILINEAR, reducing_gap=3.0)  # antialiased, as torchvision's Resize
    left, top = (new[0] - side) // 2, (new[1] - side) // 2
    return img.crop((left, top, left + side, top + side))


def decode(path: str, side: int) -> tuple[Optional[np.ndarray], Optional[str]]:
    """(uint8 array (3, side, side), None), or (None, why) for a file that is not a readable image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.format == "JPEG":
                    img.draft("RGB", (side, side))  # only shrinks while both sides stay >= side
                img.seek(0)  # a GIF's (or an animated WebP's) first frame
                img = ImageOps.exif_transpose(img)
                img.load()  # a truncated file fails here, not later
                square = resize_center_square(_to_rgb(img), side)
        return np.asarray(square, dtype=np.uint8).transpose(2, 0, 1), None
    except Exception as exc:  # PIL raises many types for broken files; each is a bad image, named by the caller
        return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def decode_into(cache_path: str, rows: list[tuple[int, str]], side: int) -> list[tuple[int, str]]:
    """Decode `rows` ((row, file) pairs) into the rows of the memory-mapped cache at `cache_path`; returns the
    (row, why) of the files that are not readable images (their rows stay zero)."""
    cache = np.load(cache_path, mmap_mode="r+")
    bad = []
    for row, path in rows:
        image, why = decode(path, side)
        if image is None:
            bad.append((row, why))
        else:
            cache[row] = image
    cache.flush()
    del cache
    return bad
