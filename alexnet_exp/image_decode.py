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

ORIENTATION = 0x0112  # the EXIF tag

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
    """Shorter side to `side` (antialiased), then the central `side` x `side` patch: the paper's 256 x 256.

    Done as one resize of the source region that patch covers (PIL's `box`): the pixels a crop would throw
    away are never computed, a quarter of the resize on a 4:3 photo; within 1 of 255 of resizing first."""
    w, h = img.size
    scale = side / min(w, h)
    new = (max(side, round(w * scale)), max(side, round(h * scale)))
    left, top = (new[0] - side) // 2, (new[1] - side) // 2
    if new == (w, h):
        return img.crop((left, top, left + side, top + side))
    x, y = w / new[0], h / new[1]  # source pixels per resized pixel
    box = (left * x, top * y, (left + side) * x, (top + side) * y)
    # antialiased, as torchvision's Resize; no reducing_gap: its integer shrink first would not line up with the box
    return img.resize((side, side), Image.Resampling.BILINEAR, box=box)


def _upright(img: Image.Image) -> Image.Image:
    """The image as a viewer shows it (EXIF orientation applied). Read first: exif_transpose copies the whole
    image even when there is nothing to turn, which cost a fifth of a photo's decoding."""
    if img.getexif().get(ORIENTATION, 1) == 1:
        return img
    return ImageOps.exif_transpose(img)


def decode(path: str, side: int) -> tuple[Optional[np.ndarray], Optional[str]]:
    """(uint8 array (3, side, side), None), or (None, why) for a file that is not a readable image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.format == "JPEG":
                    img.draft("RGB", (side, side))  # only shrinks while both sides stay >= side
                img.seek(0)  # a GIF's (or an animated WebP's) first frame
                img.load()  # a truncated file fails here, not later
                square = resize_center_square(_to_rgb(_upright(img)), side)
        return np.asarray(square, dtype=np.uint8).transpose(2, 0, 1), None
    except Exception as exc:  # PIL raises many types for broken files; each is a bad image, named by the caller
        return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def decode_into(cache_path: str, rows: list[tuple[int, str]], side: int) -> list[tuple[int, str]]:
    """Decode `rows` ((row, file) pairs) into the rows of the memory-mapped cache at `cache_path`; returns the
    (row, why) of the files that are not readable images (their rows stay zero).

    No flush here: the rows are in the page cache, which every process reads, and a synchronous write-back
    per chunk kept the decoder waiting on the disk for about a third of its time; the builder syncs the
    file once, before it is put in place (imagefolder._build)."""
    cache = np.load(cache_path, mmap_mode="r+")
    bad = []
    for row, path in rows:
        image, why = decode(path, side)
        if image is None:
            bad.append((row, why))
        else:
            cache[row] = image
    del cache
    return bad
