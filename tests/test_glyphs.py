import numpy as np
import pytest
import torch
from matplotlib import ft2font

from alexnet_exp import glyphs
from alexnet_exp.data import DataError, load_dataset

CLASSES, PER_CLASS = 10, 20


@pytest.fixture(scope="module")
def train_images():
    return glyphs.make_glyphs(CLASSES, PER_CLASS, "train")


def test_two_generations_give_the_same_bytes(train_images):
    glyphs.glyph_atlas.cache_clear()  # rasterise the fonts again too, not only the warps
    again = glyphs.make_glyphs(CLASSES, PER_CLASS, "train")
    assert train_images[0].tobytes() == again[0].tobytes()
    assert np.array_equal(train_images[1], again[1])


def test_the_splits_draw_different_images():
    train, _ = glyphs.make_glyphs(CLASSES, 5, "train")
    test, _ = glyphs.make_glyphs(CLASSES, 5, "test")
    assert train.tobytes() != test.tobytes()


def test_shapes_dtypes_and_balanced_labels(train_images):
    x, y = train_images
    assert x.shape == (CLASSES * PER_CLASS, 3, 32, 32) and x.dtype == np.uint8
    assert y.dtype == np.int64
    assert np.bincount(y, minlength=CLASSES).tolist() == [PER_CLASS] * CLASSES
    assert x.min() < 40 and x.max() > 215  # the full range is used: glyphs contrast with their background


def test_class_names_are_the_characters_of_one_fixed_order():
    assert len(glyphs.CHARACTERS) == 100 and len(set(glyphs.CHARACTERS)) == 100
    assert all(len(c) == 1 and not c.isspace() for c in glyphs.CHARACTERS)
    assert glyphs.class_names(10) == list(glyphs.CHARACTERS[:10])
    assert glyphs.class_names(100)[:10] == glyphs.class_names(10)
    # the order mixes scripts, so a few classes are not all Latin capitals
    assert not all(c.isascii() and c.isupper() for c in glyphs.class_names(10))
    with pytest.raises(DataError, match="glyph_classes"):
        glyphs.class_names(101)


def test_every_font_draws_every_character():
    for name in glyphs.FONT_FILES:
        charmap = ft2font.FT2Font(str(glyphs.font_dir() / name)).get_charmap()
        assert [c for c in glyphs.CHARACTERS if ord(c) not in charmap] == [], name


def test_test_fonts_are_held_out_and_every_family_is_on_both_sides():
    train, test = set(glyphs.SPLIT_FONTS["train"]), set(glyphs.SPLIT_FONTS["test"])
    assert train.isdisjoint(test) and train | test == set(glyphs.FONT_FILES)

    def families(names):
        return {ft2font.FT2Font(str(glyphs.font_dir() / n)).family_name for n in names}

    assert families(train) == families(test) and len(families(test)) == 4


def test_held_out_fonts_draw_differently_from_every_training_font():
    """Catches a test font that is a training font under another name (or the same file twice)."""
    chars = glyphs.CHARACTERS[:CLASSES]
    train = glyphs.glyph_atlas(chars, glyphs.SPLIT_FONTS["train"])
    test = glyphs.glyph_atlas(chars, glyphs.SPLIT_FONTS["test"])
    for t in range(test.shape[1]):
        gaps = (train - test[:, t:t + 1]).abs().mean(dim=(0, 2, 3))  # per training font
        assert gaps.min() > 0.02


def _mirror_similarity(characters) -> torch.Tensor:
    """(C, C): how much character a looks like the mirror image of b, as the correlation of their 16x16 masks
    averaged over the upright training fonts (a mirrored italic slants the other way, so only upright ones
    tell mirror pairs apart from mere look-alikes)."""
    upright = tuple(f for f in glyphs.SPLIT_FONTS["train"] if not any(s in f for s in ("Oblique", "Italic", "Ita")))
    atlas = glyphs.glyph_atlas(tuple(characters), upright)
    small = torch.nn.functional.avg_pool2d(atlas.flatten(0, 1)[:, None], 4).view(*atlas.shape[:2], 16, 16)
    centred = small - small.mean(dim=(2, 3), keepdim=True)
    unit = centred / centred.flatten(2).norm(dim=2)[..., None, None]
    similarity = torch.einsum("afij,bfij->ab", unit, unit.flip(-1)) / len(upright)
    return similarity.fill_diagonal_(0.0)


def test_no_character_is_close_to_the_mirror_image_of_another():
    """A flip keeps the label only if no class holds another's mirror image (b/d)."""
    limit = 0.92
    assert _mirror_similarity("bd")[0, 1] > limit and _mirror_similarity("pq")[0, 1] > limit  # the check sees them
    similarity = _mirror_similarity(glyphs.CHARACTERS)
    worst = int(similarity.argmax())
    assert similarity.max() < limit, (glyphs.CHARACTERS[worst // 100], glyphs.CHARACTERS[worst % 100])


def test_images_of_a_class_are_not_copies_of_one_template(train_images):
    x, y = train_images
    pixels = x.reshape(len(x), -1).astype(np.float32) / 255
    for c in range(CLASSES):
        members = pixels[y == c]
        assert members.std(axis=0).mean() > 0.1  # of 1.0: images of one class differ


def test_mean_colour_does_not_give_the_class_away(train_images):
    """Colours correlate with the class but must not decide it: a nearest-centroid classifier on the mean
    colour of each image, fitted on half the images, stays far from perfect on the other half."""
    x, y = train_images
    colour = x.reshape(len(x), 3, -1).mean(axis=2)
    fit, held = np.arange(len(y)) % 2 == 0, np.arange(len(y)) % 2 == 1
    centroids = np.stack([colour[fit & (y == c)].mean(axis=0) for c in range(CLASSES)])
    guess = np.argmin(((colour[held, None, :] - centroids[None]) ** 2).sum(axis=2), axis=1)
    assert (guess == y[held]).mean() < 0.35  # chance is 0.1


def test_load_dataset_splits_the_training_pool_and_keeps_the_test_set():
    data = load_dataset("glyphs", glyph_classes=CLASSES, glyph_train_per_class=PER_CLASS, glyph_test_per_class=5,
                        val_fraction=0.1)
    assert data.class_names == glyphs.class_names(CLASSES)
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (180, 20, 50)
    assert np.bincount(data.val_y.numpy(), minlength=CLASSES).tolist() == [2] * CLASSES
    assert np.bincount(data.test_y.numpy(), minlength=CLASSES).tolist() == [5] * CLASSES
    assert data.train_x.dtype == torch.uint8 and tuple(data.test_x.shape[1:]) == (3, 32, 32)


def test_unknown_dataset_lists_glyphs():
    with pytest.raises(DataError, match="glyphs"):
        load_dataset("glyph")
