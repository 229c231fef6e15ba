"""`glyphs`: a generated, offline stand-in for CIFAR-100, built from the fonts that ship with matplotlib.

100 classes, each a character (Latin, digits, Greek, Cyrillic, symbols), as 32x32 RGB uint8 images. Every image
shows its class's character, or with probability 1/2 its mirror image, drawn in a random font, warped (rotation,
scale, shear, aspect, translation), coloured, on a cluttered background (gradient, blotches, a smaller stray
glyph of another class cut by the frame), half the time crossed by a thin line in front of it, with pixel noise.

Why it is built this way:
- The offline datasets (gratings, scikit-learn's digits) saturate, so tuning cannot show on them. Here the shapes
  differ in detail, fonts and warps give within-class variety, and the clutter and colours add nuisance, so an
  AlexNet needs to learn features, can overfit a 500-image class, and benefits from augmentation as on CIFAR.
- Mirrored half the time, like a photographed object facing either way: a horizontal flip keeps the label, as
  on CIFAR, so `augment.flip` is a fair knob. That is also why no chosen character is (close to) the mirror
  image of another (b/d, p/q, R/Я, N/И, 3/ε): their classes would be the same set of images.
- Strokes bend by a smooth random displacement, so that no two images of one (character, font) are the same
  shape and 450 images of a class are more than a dozen fonts seen many times.
- Glyphs fill 55-80% of the frame: a prototype with smaller glyphs sat at loss ln C for a seed-dependent number
  of epochs, and a 4-pixel crop cut its thin strokes so that crop+flip lost to no augmentation.
- Colours correlate with the class (half the images take a hue near their class's own) but never decide it,
  like the sky behind a plane: an early, weak cue, so learning starts at epoch 1, and a cue the net cannot
  rest on.
- The test split is drawn in fonts the training pool never uses (one style of each family held out), so the
  held-out test measures transfer to a new typeface; the validation split (carved from the training pool by
  `load_dataset`) shares the training fonts, as CIFAR's validation shares its training distribution.

Only the font files matplotlib installs are used (DejaVu Sans, Sans Mono, Serif and STIX General, four styles
each). The Computer Modern cm*.ttf files are left out: they are TeX's 7-bit OT1 layout under ASCII codes (no
Cyrillic, no lowercase Greek outside cmmi10, the Greek capitals under Latin-1 codes, `<` drawn as an inverted
exclamation mark, `{` as a dash), so they cannot draw
the 100 characters; the Display and STIX size/non-Unicode variants hold only a few symbols. The images are
therefore pinned by the matplotlib version (its font files and bundled FreeType) together with torch: each
(character, font) is rasterised once by FreeType at 96 px, then every image is produced by batched
affine sampling grids and `grid_sample` at 64x64, averaged down to 32x32, all from fixed seeds, so two runs give the
same bytes (`provenance()` names what they depend on).
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Literal

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import ft2font

from .data import DataError

# 100 characters in a fixed, interleaved order (Latin capitals, symbols, lowercase, digits, Greek, Cyrillic take
# turns) so that `glyph_classes: N` takes a mix of every script rather than the first N capitals.
# Left out, and why: homoglyphs of a chosen character after the glyph is scaled to its box (o/O, c s u v w x z, l
# and |, 0, Cyrillic А В Е К М Н О Р С Т Х and their small letters, Greek Α Β Ε Ζ Η Ι Κ Μ Ν Ο Ρ Τ Υ Χ, ν, χ, φ, ψ,
# ρ, Ф, Г, П, Л, Ь, Щ, Й), mirror images of a chosen one (d, q, p: mirror of q ~ P, Я, И, Э, з/З/ε ~ 3), and the
# closest pairs that a pixel-correlation check over all 16 fonts flagged (Λ~A, Θ~O, Γ~F, Π~H, Б~B, ÷~+, œ~æ,
# ξ~ζ, [~(, ð~δ, ¥~Y, τ~T, γ~Y). Dots and dashes (. , - _ ' ") are left out: scaled to the frame they are blobs.
# Rotations stay within +-20 degrees, so 6 and 9 stay apart.
CHARACTERS = tuple("A§a#1αBДΔC¶b$D2β©EeЖ%F®GfΞ&3δH£ЦgI*J€4ζhKΣ+¢ЧLiM5η=æNjOШø?ΦPk6λÆQ@RmЪŒS7μ(TnΨÞU{ЫrV8σþW<t"
                   "∂XΩЮY9ω/y±Z")

# Four families, four styles each; the test split's fonts are one style per family, a different style in each,
# so every family and every style is seen in training and the test is a new typeface, not a new family.
FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
)
TEST_FONTS = ("DejaVuSans-BoldOblique.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSerif-Bold.ttf", "STIXGeneral.ttf")
TRAIN_FONTS = tuple(f for f in FONT_FILES if f not in TEST_FONTS)

Split = Literal["train", "test"]
SPLIT_FONTS = {"train": TRAIN_FONTS, "test": TEST_FONTS}
SPLIT_SEEDS = {"train": 0, "test": 1}  # as make_synthetic: the training pool and the test set never share draws

IMAGE_SIZE = 32
_RENDER_SIZE = 2 * IMAGE_SIZE  # images are drawn at twice the size and averaged down: anti-aliased edges
_ATLAS_SIZE = 64  # side of each glyph's square mask, the glyph's longer side filling it
_RASTER_PX = 96  # FreeType's em size: the atlas is a downscale of it, so its edges are smooth
_CHUNK = 2048  # images per batched warp: bounds memory at ~0.3 GB whatever the dataset's size

# Warp ranges. Scale is the glyph's longer side as a share of the frame (see the module docstring).
_SCALE = (0.55, 0.80)
_ROTATION_DEG = 20.0
_SHEAR = 0.2
_ASPECT_LOG = 0.12  # log of the width/height stretch
_BEND = 0.08  # amplitude of the smooth random displacement, in half-glyphs: strokes bend as in handwriting
_CLASS_HUE_SHARE = 0.5  # share of images whose glyph colour is near their class's hue
_CLASS_HUE_SPREAD = 0.04
_MIN_CONTRAST = 0.2  # value (HSV) gap between glyph and background: the glyph is always readable
_STRAY_SHARE = 0.7  # share of images with a stray glyph of another class at the edge
_STRAY_SCALE = (0.35, 0.6)
_STRAY_CENTRE_RADIUS = (0.5, 0.95)  # from the frame's centre, in half-frames
_WIRE_SHARE = 0.5  # share of images with a thin line across the frame, in front of the glyph (occlusion)
_WIRE_HALF_WIDTH_PX = (0.5, 1.3)
_BLOTCH_SIGMA = 0.1
_NOISE_SIGMA = 0.03


def font_dir() -> Path:
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def provenance() -> dict[str, str]:
    """What the images' bytes depend on besides this module: the fonts and FreeType come with matplotlib."""
    return {"matplotlib": matplotlib.__version__, "freetype": ft2font.__freetype_version__,
            "torch": torch.__version__.split("+")[0]}


def class_names(num_classes: int) -> list[str]:
    """The first `num_classes` characters of the fixed order; each name is the character itself."""
    if not 2 <= num_classes <= len(CHARACTERS):
        raise DataError(f"glyph_classes: {num_classes} is outside 2..{len(CHARACTERS)}")
    return list(CHARACTERS[:num_classes])


# ---- rasterising --------------------------------------------------------------------------------------------

def _open_font(name: str) -> ft2font.FT2Font:
    path = font_dir() / name
    if not path.is_file():
        raise DataError(f"{path}: missing; the glyphs dataset needs the fonts matplotlib ships "
                        f"(matplotlib {matplotlib.__version__}). Reinstall matplotlib.")
    return ft2font.FT2Font(str(path))


def _raster(font: ft2font.FT2Font, char: str) -> np.ndarray:
    """The glyph as FreeType draws it, cropped to its ink: float32 coverage in [0, 1]."""
    if ord(char) not in font.get_charmap():
        raise DataError(f"{font.fname}: has no glyph for {char!r} (U+{ord(char):04X}); this matplotlib "
                        f"({matplotlib.__version__}) ships other fonts than the glyphs dataset was built for.")
    font.clear()
    font.set_size(_RASTER_PX, 72)  # 72 dpi: points are pixels
    font.set_text(char, 0.0, flags=ft2font.LoadFlags.NO_HINTING)  # hinting would snap outlines per size
    font.draw_glyphs_to_bitmap(antialiased=True)
    coverage = np.asarray(font.get_image(), dtype=np.float32) / 255.0
    rows, cols = np.nonzero(coverage > 0)
    return coverage[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def _square_mask(coverage: np.ndarray) -> torch.Tensor:
    """Centred in a square whose side is the glyph's longer side, resized to the atlas: every glyph's box has
    the same longer side, so the warp's scale alone sets its size in the frame."""
    h, w = coverage.shape
    side = max(h, w)
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    square[top:top + h, left:left + w] = coverage
    resized = F.interpolate(torch.from_numpy(square)[None, None], size=(_ATLAS_SIZE, _ATLAS_SIZE),
                            mode="bilinear", antialias=True, align_corners=False)
    return resized[0, 0].clamp_(0.0, 1.0)


@functools.lru_cache(maxsize=4)
def glyph_atlas(characters: tuple[str, ...], fonts: tuple[str, ...]) -> torch.Tensor:
    """(len(characters), len(fonts), 64, 64) float32 masks, each (character, font) rasterised once."""
    opened = [_open_font(name) for name in fonts]
    return torch.stack([torch.stack([_square_mask(_raster(font, char)) for font in opened]) for char in characters])


# ---- drawing the per-image parameters (numpy, one seeded stream) -----------------------------------------------

def _balanced_labels(num_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    rng.shuffle(labels)
    return labels


def _warp_matrices(n: int, scale: tuple[float, float], rng: np.random.Generator,
                   mirror: np.ndarray, centre_radius: tuple[float, float] | None = None) -> np.ndarray:
    """(n, 2, 3) affine_grid thetas: output coordinates -> glyph-mask coordinates (both in [-1, 1]).

    Built forwards (mask -> frame: mirror, aspect, shear, rotate, scale, shift) and inverted, since
    grid_sample asks where each output pixel comes from. Without `centre_radius` the glyph is shifted at most
    as far as keeps its box in the frame; with it, the centre lies that far from the frame's centre (a stray
    glyph cut by the edge)."""
    s = rng.uniform(*scale, n)
    angle = np.deg2rad(rng.uniform(-_ROTATION_DEG, _ROTATION_DEG, n))
    shear = rng.uniform(-_SHEAR, _SHEAR, n)
    aspect = np.exp(rng.uniform(-_ASPECT_LOG, _ASPECT_LOG, n))
    if centre_radius is None:
        shift = rng.uniform(-1.0, 1.0, (n, 2)) * (1.0 - s)[:, None]
    else:
        direction = rng.uniform(0.0, 2 * np.pi, n)
        radius = rng.uniform(*centre_radius, n)
        shift = np.stack([np.cos(direction), np.sin(direction)], axis=1) * radius[:, None]
    cos, sin = np.cos(angle), np.sin(angle)
    rotate = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shear_m = np.zeros((n, 2, 2))
    shear_m[:, 0, 0] = shear_m[:, 1, 1] = 1.0
    shear_m[:, 0, 1] = shear
    stretch = np.zeros((n, 2, 2))
    stretch[:, 0, 0] = np.where(mirror, -1.0, 1.0) * np.sqrt(aspect)
    stretch[:, 1, 1] = 1.0 / np.sqrt(aspect)
    forward = s[:, None, None] * rotate @ shear_m @ stretch
    inverse = np.linalg.inv(forward)
    offset = -(inverse @ shift[:, :, None])
    return np.concatenate([inverse, offset], axis=2)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(n, 3) RGB in [0, 1] from hue (turns), saturation and value, each (n,)."""
    k = (np.array([5.0, 3.0, 1.0]) + 6.0 * (h % 1.0)[:, None]) % 6.0
    return v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _class_hues(num_classes: int) -> np.ndarray:
    """Each class's own hue, golden-ratio spaced so that any first N classes spread over the circle."""
    return (np.arange(num_classes) * (math.sqrt(5) - 1) / 2) % 1.0


def _glyph_and_ground_values(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Value (brightness) of the background and of the glyph, at least _MIN_CONTRAST apart, either one lighter."""
    ground = rng.uniform(0.1, 0.9, n)
    gap = rng.uniform(_MIN_CONTRAST, 0.7, n)
    lighter = rng.random(n) < 0.5
    up_fits, down_fits = ground + gap <= 1.0, ground - gap >= 0.0
    go_up = np.where(up_fits & down_fits, lighter, up_fits)
    glyph = np.clip(np.where(go_up, ground + gap, ground - gap), 0.0, 1.0)
    return glyph, ground


def _colours(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per image: glyph colour (class-correlated hue), two background colours, the gradient's direction."""
    n = len(labels)
    near_class = rng.random(n) < _CLASS_HUE_SHARE
    hue = np.where(near_class, _class_hues(num_classes)[labels] + rng.normal(0, _CLASS_HUE_SPREAD, n),
                   rng.random(n))
    glyph_v, ground_v = _glyph_and_ground_values(n, rng)
    glyph = _hsv_to_rgb(hue, rng.uniform(0.3, 1.0, n), glyph_v)
    ground_hue = rng.random(n)
    ground_a = _hsv_to_rgb(ground_hue, rng.uniform(0.0, 0.7, n), ground_v)
    ground_b = _hsv_to_rgb(ground_hue + rng.normal(0, 0.15, n), rng.uniform(0.0, 0.7, n),
                           np.clip(ground_v + rng.normal(0, 0.1, n), 0.0, 1.0))
    angle = rng.uniform(0, 2 * np.pi, n)
    return {"glyph": glyph, "ground_a": ground_a, "ground_b": ground_b,
            "gradient": np.stack([np.cos(angle), np.sin(angle)], axis=1)}


def _stray_glyphs(labels: np.ndarray, num_classes: int, n_fonts: int, rng: np.random.Generator) -> dict:
    """A smaller glyph of another class near the edge (clutter the net must learn to ignore), on 70% of images."""
    n = len(labels)
    other = (labels + rng.integers(1, num_classes, n)) % num_classes
    mirror = rng.random(n) < 0.5
    return {"label": other, "font": rng.integers(0, n_fonts, n),
            "theta": _warp_matrices(n, _STRAY_SCALE, rng, mirror, centre_radius=_STRAY_CENTRE_RADIUS),
            "opacity": np.where(rng.random(n) < _STRAY_SHARE, rng.uniform(0.4, 0.8, n), 0.0),
            "colour": _hsv_to_rgb(rng.random(n), rng.uniform(0.0, 1.0, n), rng.uniform(0.0, 1.0, n))}


def _wires(n: int, rng: np.random.Generator) -> dict:
    """A straight line across the frame in front of the glyph on half the images, like a twig before an
    animal: it cuts strokes, so no single stroke can be relied on."""
    angle = rng.uniform(0, np.pi, n)
    return {"normal": np.stack([np.cos(angle), np.sin(angle)], axis=1), "offset": rng.uniform(-0.6, 0.6, n),
            "half_width": np.where(rng.random(n) < _WIRE_SHARE, rng.uniform(*_WIRE_HALF_WIDTH_PX, n), 0.0),
            "colour": _hsv_to_rgb(rng.random(n), rng.uniform(0.0, 1.0, n), rng.uniform(0.0, 1.0, n))}


def _plan(num_classes: int, per_class: int, n_fonts: int, seed: int) -> dict:
    """Every random choice of every image, drawn up front from one seeded stream (in a fixed order, so the
    same arguments give the same images), as numpy arrays of length num_classes * per_class."""
    rng = np.random.default_rng(seed)
    labels = _balanced_labels(num_classes, per_class, rng)
    n = len(labels)
    mirror = rng.random(n) < 0.5
    return {"label": labels, "font": rng.integers(0, n_fonts, n),
            "theta": _warp_matrices(n, _SCALE, rng, mirror),
            "bend": rng.normal(0.0, _BEND, (n, 2, 4, 4)).astype(np.float32),
            "colours": _colours(labels, num_classes, rng),
            "stray": _stray_glyphs(labels, num_classes, n_fonts, rng),
            "wire": _wires(n, rng),
            "blotches": rng.normal(0.0, _BLOTCH_SIGMA, (n, 3, 4, 4)).astype(np.float32)}


# ---- drawing the images (torch, batched) -------------------------------------------------------------------

def _pixel_centres(size: int) -> torch.Tensor:
    """(size * size, 3) homogeneous [-1, 1] coordinates (x, y, 1) of a square frame's pixel centres."""
    axis = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([x.flatten(), y.flatten(), torch.ones(size * size)], dim=1)


@functools.lru_cache(maxsize=4)
def _linear_weights(coarse: int, size: int) -> torch.Tensor:
    """(size, coarse): row i holds the weights with which linear interpolation makes sample i of `size`."""
    basis = torch.eye(coarse)[:, None, :]
    return F.interpolate(basis, size=size, mode="linear", align_corners=False)[:, 0, :].T.contiguous()


def _smooth_upsample(coarse: torch.Tensor, size: int) -> torch.Tensor:
    """(n, c, k, k) -> (n, c, size, size), bilinear, as two small matrix products: the same numbers as
    F.interpolate's bilinear mode, which is 10x slower on the CPU for so coarse an input."""
    weights = _linear_weights(coarse.shape[-1], size)
    return weights @ coarse @ weights.T


def _warp(atlas: torch.Tensor, label: np.ndarray, font: np.ndarray, theta: np.ndarray,
          bend: np.ndarray | None = None) -> torch.Tensor:
    """(n, 1, 32, 32) coverage of each image's glyph, warped into the frame: sampled at 64x64 and averaged
    down, so edges are anti-aliased. The coverage, not the coloured image, is averaged: painting is linear in
    it and the background is smooth, so compositing at 32x32 gives the same picture at a quarter of the cost.
    `bend` (n, 2, 4, 4): a coarse displacement field, smoothed over the frame and added to the sampling
    positions, so the glyph's strokes bend a little differently in every image."""
    n = len(label)
    masks = atlas[torch.from_numpy(label), torch.from_numpy(font)][:, None]
    # affine_grid's own generator is 4x slower on the CPU than this one matrix product
    grid = (_pixel_centres(_RENDER_SIZE) @ torch.from_numpy(theta).float().transpose(1, 2))
    grid = grid.view(n, _RENDER_SIZE, _RENDER_SIZE, 2)
    if bend is not None:
        grid = grid + _smooth_upsample(torch.from_numpy(bend), _RENDER_SIZE).permute(0, 2, 3, 1)
    fine = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return F.avg_pool2d(fine, _RENDER_SIZE // IMAGE_SIZE)


def _ramp(direction: np.ndarray) -> torch.Tensor:
    """(n, 1, 32, 32) position along each image's gradient direction, 0 at one side of the frame, 1 at the other."""
    centres = _pixel_centres(IMAGE_SIZE)[:, :2]
    along = torch.from_numpy(direction).float() @ centres.T
    return ((along / math.sqrt(2) + 1.0) / 2.0).view(-1, 1, IMAGE_SIZE, IMAGE_SIZE)


def _wire_coverage(wire: dict) -> torch.Tensor:
    """(n, 1, 32, 32) coverage of each image's line: its pixel distance from the line, turned into an
    anti-aliased edge half a pixel wide; zero where the image has no line (half-width 0)."""
    centres = _pixel_centres(IMAGE_SIZE)[:, :2]
    signed = torch.from_numpy(wire["normal"]).float() @ centres.T - torch.from_numpy(wire["offset"]).float()[:, None]
    distance_px = signed.abs() * (IMAGE_SIZE / 2)
    half_width = torch.from_numpy(wire["half_width"]).float()[:, None]
    coverage = (half_width + 0.5 - distance_px).clamp_(0.0, 1.0) * (half_width > 0)
    return coverage.view(-1, 1, IMAGE_SIZE, IMAGE_SIZE)


def _background(colours: dict, blotches: np.ndarray) -> torch.Tensor:
    """(n, 3, 32, 32): a two-colour gradient with soft coloured blotches."""
    a = torch.from_numpy(colours["ground_a"]).float()[:, :, None, None]
    b = torch.from_numpy(colours["ground_b"]).float()[:, :, None, None]
    soft = _smooth_upsample(torch.from_numpy(blotches), IMAGE_SIZE)
    return soft.add_(a).add_((b - a) * _ramp(colours["gradient"]))


def _over(image: torch.Tensor, colour: np.ndarray, coverage: torch.Tensor) -> torch.Tensor:
    """`colour` painted over `image` where `coverage` (n, 1, H, W) says, as paint covers what is below it."""
    c = torch.from_numpy(colour).float()[:, :, None, None]
    return image.add_((c - image).mul_(coverage))


def _draw_chunk(atlas: torch.Tensor, plan: dict, part: slice, noise_seed: int) -> np.ndarray:
    """Images `part` of the plan as uint8 (n, 3, 32, 32); `noise_seed` seeds this chunk's pixel noise."""
    chunk = _take(plan, part)
    stray, colours = chunk["stray"], chunk["colours"]
    image = _background(colours, chunk["blotches"])
    opacity = torch.from_numpy(stray["opacity"]).float()[:, None, None, None]
    image = _over(image, stray["colour"], _warp(atlas, stray["label"], stray["font"], stray["theta"]) * opacity)
    image = _over(image, colours["glyph"], _warp(atlas, chunk["label"], chunk["font"], chunk["theta"], chunk["bend"]))
    image = _over(image, chunk["wire"]["colour"], _wire_coverage(chunk["wire"]))
    noise = np.random.default_rng(noise_seed).standard_normal(image.shape, dtype=np.float32)
    image = image.add_(torch.from_numpy(noise).mul_(_NOISE_SIGMA))
    return image.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).numpy()


def _take(value, part: slice):
    """The slice `part` of every array in a (nested) plan."""
    return {k: _take(v, part) for k, v in value.items()} if isinstance(value, dict) else value[part]


def make_glyphs(num_classes: int, per_class: int, split: Split, seed: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` images of each of the first `num_classes` characters in `split`'s fonts:
    (uint8 (N, 3, 32, 32), int64 (N,)), in a shuffled order. `seed` defaults to the split's own (0 train, 1 test)."""
    class_names(num_classes)  # validates the count
    if per_class < 1:
        raise DataError(f"glyphs: {per_class} images per class; need at least 1")
    seed = SPLIT_SEEDS[split] if seed is None else seed
    fonts = SPLIT_FONTS[split]
    atlas = glyph_atlas(CHARACTERS[:num_classes], fonts)
    plan = _plan(num_classes, per_class, len(fonts), seed)
    n = len(plan["label"])
    images = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    with torch.no_grad():
        for index, start in enumerate(range(0, n, _CHUNK)):
            part = slice(start, min(start + _CHUNK, n))
            images[part] = _draw_chunk(atlas, plan, part, noise_seed=seed * 1_000_003 + index)
    return images, plan["label"]


def load_glyphs(num_classes: int, train_per_class: int, test_per_class: int):
    """((train_x, train_y), (test_x, test_y), names) as `load_dataset` takes them from every source."""
    train = make_glyphs(num_classes, train_per_class, "train")
    test = make_glyphs(num_classes, test_per_class, "test")
    return train, test, class_names(num_classes)
