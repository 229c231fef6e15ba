"""Decode one image file into the uint8 square every trial trains on: the paper's preprocessing.

Run by the cache builder's threads (imagefolder.py), a core each: the decoders, torch's resize, the reads and
the writes release the GIL. Any format PIL reads (JPEG, PNG, WebP, BMP, GIF's first frame) and any mode
(greyscale, palette, CMYK, 16-bit, alpha) ends as RGB; the EXIF (or XMP) orientation is applied first, as a
photo viewer would.

Where the time goes, per 500 x 375 JPEG on this project's 2-core VM (benchmarks/RESULTS.md, 2026-12-02):
PIL's decode 1.8 ms, and its pixels into numpy 0.5 ms more; simplejpeg (the same libjpeg-turbo, straight into
numpy) 1.2-1.4 ms. PIL's antialiased resize to 256 took 1.6-2.0 ms, torch's (vectorised for uint8, channels
last) 0.6-0.7 ms. So a plain RGB or greyscale JPEG, the common photo, goes simplejpeg -> torch; anything else
PIL -> torch, and PIL also has the last word on a file simplejpeg refuses.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

ORIENTATION = 0x0112  # the EXIF tag

# A decompression bomb is an error, not a warning (_pixels): a 30000 x 30000 PNG would take gigabytes to decode.
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


def center_square(pixels: np.ndarray, side: int) -> np.ndarray:
    """(height, width, 3) uint8 -> (3, side, side) uint8: the shorter side resized to `side` (bilinear,
    antialiased, as torchvision's Resize), then the central `side` x `side` patch (the paper's 256 x 256)."""
    h, w = pixels.shape[:2]
    scale = side / min(w, h)
    new_w, new_h = max(side, round(w * scale)), max(side, round(h * scale))
    left, top = (new_w - side) // 2, (new_h - side) // 2
    if max(new_w, new_h) > 2 * side:  # a panorama or a banner: resize only the square (see _square_of)
        return _square_of(pixels, side, (new_w, new_h), (left, top))
    image = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)  # channels last in memory: the fast kernel
    if (new_w, new_h) != (w, h):
        image = F.interpolate(image, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    return np.ascontiguousarray(image[0, :, top:top + side, left:left + side].numpy())


def _square_of(pixels: np.ndarray, side: int, new: tuple[int, int], corner: tuple[int, int]) -> np.ndarray:
    """PIL's resize of the source region the square covers (its `box`, fractional): slower per pixel than
    torch's, but it computes none of the pixels the crop throws away. torch's resize of a 20000 x 20 banner to
    256 px high would make a 256000-wide image (200 MB) to keep 256 columns of it."""
    h, w = pixels.shape[:2]
    x, y = w / new[0], h / new[1]  # source pixels per resized pixel
    left, top = corner
    box = (left * x, top * y, (left + side) * x, (top + side) * y)
    square = Image.fromarray(pixels).resize((side, side), Image.Resampling.BILINEAR, box=box)
    return np.asarray(square, dtype=np.uint8).transpose(2, 0, 1).copy()


def _upright(img: Image.Image) -> Image.Image:
    """The image as a viewer shows it (EXIF orientation applied). Read first: exif_transpose copies the whole
    image even when there is nothing to turn, which cost a fifth of a photo's decoding."""
    if img.getexif().get(ORIENTATION, 1) == 1:
        return img
    return ImageOps.exif_transpose(img)


_ORIENTATION_BLOCKS = (b"Exif\x00\x00", b"http://ns.adobe.com/xap/1.0/\x00")  # APP1: EXIF, and XMP (tiff:Orientation)


def _jpeg_without_orientation(data: bytes) -> bool:
    """Whether `data` is a JPEG whose header segments, up to the image data, hold no EXIF or XMP block (where
    PIL finds an orientation): then there is nothing for PIL to read first (its header parse cost 0.2 ms an
    image). Anything unexpected is False, and PIL reads the header."""
    if data[:2] != b"\xff\xd8":
        return False
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF:  # a fill byte before the marker
            at += 1
        elif marker == 0xDA:  # start of scan: the header is over
            return True
        elif marker == 0xE1 and data[at + 4:].startswith(_ORIENTATION_BLOCKS):
            return False
        else:
            at += 2 + int.from_bytes(data[at + 2:at + 4], "big")
    return False


def _upright_plain_jpeg(img: Image.Image) -> bool:
    """A JPEG with EXIF that needs no turning and no colour conversion of PIL's own (CMYK's inversion
    conventions are PIL's business): simplejpeg decodes it to what PIL would give."""
    return img.format == "JPEG" and img.mode in ("RGB", "L") and img.getexif().get(ORIENTATION, 1) == 1


def _dct_shrink(size: tuple[int, int], side: int) -> int:
    """1, 2, 4 or 8: the most JPEG's DCT may shrink an image of `size` with both sides staying >= side.
    PIL's draft rule; these factors also have libjpeg-turbo's vectorised inverse DCTs (3/8 or 6/8 do not)."""
    fits = min(size[0] // side, size[1] // side)  # 0 for an image smaller than the side: enlarged, not shrunk
    return next((s for s in (8, 4, 2) if fits >= s), 1)


def _simplejpeg_pixels(data: bytes, side: int) -> Optional[np.ndarray]:
    """The JPEG's RGB pixels, shrunk in the DCT as PIL's draft would, or None where this is not a JPEG of
    RGB or greyscale colours within PIL's size limit, or simplejpeg refuses it (PIL then decides)."""
    try:
        height, width, colours, _ = simplejpeg.decode_jpeg_header(data)
        if colours not in ("YCbCr", "Gray", "RGB") or width * height > Image.MAX_IMAGE_PIXELS:
            return None
        s = _dct_shrink((width, height), side)
        # the smallest n/8 scale whose output is at least this is exactly 1/s: the same pixels as PIL's draft
        least = {"min_width": -(-width // s), "min_height": -(-height // s)} if s > 1 else {}
        return simplejpeg.decode_jpeg(data, "rgb", **least)
    except ValueError:  # not a JPEG, truncated, corrupt, or a variant it does not read
        return None


def _pil_pixels(img: Image.Image, side: int) -> np.ndarray:
    if img.format == "JPEG":
        img.draft("RGB", (side, side))  # only shrinks while both sides stay >= side
    img.seek(0)  # a GIF's (or an animated WebP's) first frame
    img.load()  # a truncated file fails here, not later
    return np.array(_to_rgb(_upright(img)), dtype=np.uint8)  # a writable copy, as torch.from_numpy wants


def _pixels(path: str, side: int) -> np.ndarray:
    data = Path(path).read_bytes()
    plain = _jpeg_without_orientation(data)
    if plain:  # most photos
        pixels = _simplejpeg_pixels(data, side)
        if pixels is not None:
            return pixels
    with Image.open(path) as img:  # the header: format, mode, size, EXIF; its errors name the file
        # PIL only warns below twice its limit; a warning filter is not for threads (process-wide, and
        # catch_warnings restores it under another thread's feet), so the bomb check is made here
        if img.width * img.height > Image.MAX_IMAGE_PIXELS:
            raise Image.DecompressionBombError(f"{img.width} x {img.height} pixels, over the limit of "
                                               f"{Image.MAX_IMAGE_PIXELS} (PIL.Image.MAX_IMAGE_PIXELS)")
        if not plain and _upright_plain_jpeg(img):  # EXIF or XMP, nothing to turn
            pixels = _simplejpeg_pixels(data, side)
            if pixels is not None:
                return pixels
        return _pil_pixels(img, side)


def decode(path: str, side: int) -> tuple[Optional[np.ndarray], Optional[str]]:
    """(uint8 array (3, side, side), None), or (None, why) for a file that is not a readable image."""
    try:
        return center_square(_pixels(path, side), side), None
    except Exception as exc:  # PIL raises many types for broken files; each is a bad image, named by the caller
        return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def decode_into(cache, rows: list[tuple[int, str]], side: int) -> list[tuple[int, str]]:
    """Decode `rows` ((row, file) pairs) into those rows of `cache` (imagefolder.RowWriter, the file being
    built); returns the (row, why) of the files that are not readable images (their rows stay zero).

    No sync here: the builder syncs the file once, before it is put in place (imagefolder._build); a write-back
    per chunk kept the decoder waiting on the disk for about a third of its time."""
    bad = []
    for row, path in rows:
        image, why = decode(path, side)
        if image is None:
            bad.append((row, why))
        else:
            cache.write(row, image)
    return bad
