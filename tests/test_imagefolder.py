"""Folders of real image files (PIL-encoded JPEG, PNG, WebP, GIF, BMP, odd modes, broken files) as datasets."""
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from disks import tmpfs
from PIL import Image
from waits import STALL_S

from alexnet_exp.data import DataError, load_dataset
from alexnet_exp.image_decode import decode
from alexnet_exp.imagefolder import FolderError, load_folder_cache, scan

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 50, 230)}


def photo(colour, size=(50, 40), seed=0):
    """A photo-like RGB image: the class colour with a seeded texture (so JPEG has something to encode)."""
    rng = np.random.default_rng(seed)
    base = np.array(colour, dtype=np.float64)[None, None]
    noise = rng.normal(0, 12, (size[1], size[0], 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def write_folder(root: Path, per_class=6, size=(50, 40), fmt="JPEG", suffix=".jpg"):
    for c, (name, colour) in enumerate(COLOURS.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            photo(colour, size, seed=100 * c + i).save(root / name / f"{i:03d}{suffix}", fmt)
    return root


def test_a_folder_of_class_folders_splits_into_train_val_and_test(tmp_path):
    root = write_folder(tmp_path / "pets", per_class=10)
    data = load_dataset("imagefolder", root=str(root), image_size=24, val_fraction=0.2, test_fraction=0.1)
    assert data.class_names == ["blue", "green", "red"]  # the folder names, sorted
    # 10% of 30 held out for test, then 20% of the other 27 for validation
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (22, 5, 3)
    assert tuple(data.train_x.shape[1:]) == (3, 24, 24) and data.train_x.dtype == torch.uint8
    for split_y in (data.val_y, data.test_y):  # stratified: every class in every split
        assert sorted(set(split_y.tolist())) == [0, 1, 2]
    # the class colour survives decoding: red images are red
    red = data.train_x[data.train_y == 2].float().mean(dim=(0, 2, 3))
    assert red[0] > 150 and red[1] < 90 and red[2] < 90
    # the test split is the same whatever the validation seed: a sweep never validates on test images
    other = load_dataset("imagefolder", root=str(root), image_size=24, val_fraction=0.2, split_seed=7)
    assert torch.equal(other.test_x, data.test_x)


def test_train_val_test_folders_are_used_as_they_are(tmp_path):
    write_folder(tmp_path / "ds" / "train", per_class=5)
    write_folder(tmp_path / "ds" / "val", per_class=2)
    write_folder(tmp_path / "ds" / "test", per_class=3)
    data = load_dataset("imagefolder", root=str(tmp_path / "ds"), image_size=16)
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (15, 6, 9)
    assert data.class_names == ["blue", "green", "red"]


def test_a_class_only_in_val_an_empty_class_and_no_images_are_named(tmp_path):
    write_folder(tmp_path / "a" / "train", per_class=2)
    write_folder(tmp_path / "a" / "val", per_class=1)
    (tmp_path / "a" / "val" / "purple").mkdir()
    photo((120, 0, 120)).save(tmp_path / "a" / "val" / "purple" / "x.png")
    with pytest.raises(DataError, match=r"purple are not in .*train"):
        load_dataset("imagefolder", root=str(tmp_path / "a"), image_size=16)

    write_folder(tmp_path / "b", per_class=2)
    (tmp_path / "b" / "empty").mkdir()
    with pytest.raises(DataError, match=r"b/empty: an empty class folder"):
        load_dataset("imagefolder", root=str(tmp_path / "b"), image_size=16)

    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match=r"c: no class folders"):
        load_dataset("imagefolder", root=str(tmp_path / "c"), image_size=16)
    with pytest.raises(DataError, match=r"no such folder"):
        load_dataset("imagefolder", root=str(tmp_path / "missing"), image_size=16)


def test_every_format_and_mode_ends_as_rgb_the_right_way_up(tmp_path):
    # An image whose top half is red and bottom half blue, 60 wide and 40 high.
    top_red = np.zeros((40, 60, 3), np.uint8)
    top_red[:20] = (255, 0, 0)
    top_red[20:] = (0, 0, 255)
    img = Image.fromarray(top_red, "RGB")
    files = {}
    for name, fmt in (("a.png", "PNG"), ("a.webp", "WEBP"), ("a.bmp", "BMP"), ("a.gif", "GIF")):
        files[name] = tmp_path / name
        img.save(files[name], fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    files["cmyk.jpg"] = tmp_path / "cmyk.jpg"
    img.convert("CMYK").save(files["cmyk.jpg"], "JPEG", quality=95)
    for name, path in files.items():
        square, why = decode(str(path), 20)
        assert why is None and square.shape == (3, 20, 20), name
        assert square[0, 2].mean() > 180 and square[2, 2].mean() < 80, name  # top row red
        assert square[2, -3].mean() > 180 and square[0, -3].mean() < 80, name  # bottom row blue

    # EXIF orientation 3 (rotated 180 degrees): a viewer shows blue on top, and so must the decoder
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 3
    img.save(rotated, "JPEG", quality=95, exif=exif)
    square, _ = decode(str(rotated), 20)
    assert square[2, 2].mean() > 180 and square[0, 2].mean() < 80

    # greyscale, 16-bit greyscale (scaled, not clipped), palette, and alpha over white
    Image.fromarray(np.full((30, 30), 128, np.uint8), "L").save(tmp_path / "grey.png")
    Image.fromarray(np.full((30, 30), 32768, np.uint16)).save(tmp_path / "grey16.png")
    img.convert("P").save(tmp_path / "palette.png")
    rgba = np.zeros((30, 30, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent black: shown as white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    grey, _ = decode(str(tmp_path / "grey.png"), 16)
    grey16, _ = decode(str(tmp_path / "grey16.png"), 16)
    palette, _ = decode(str(tmp_path / "palette.png"), 16)
    clear, _ = decode(str(tmp_path / "clear.png"), 16)
    assert (grey == 128).all() and abs(int(grey16.mean()) - 128) <= 1
    assert palette[0, 1].mean() > 180 and (clear == 255).all()


def test_a_square_is_the_centre_of_the_shorter_side_resized(tmp_path):
    wide = np.zeros((40, 120, 3), np.uint8)
    wide[:, 40:80] = 255  # a white centre third between black sides
    Image.fromarray(wide).save(tmp_path / "wide.png")
    square, _ = decode(str(tmp_path / "wide.png"), 20)
    # the central 40x40 is all that is kept (its edge columns a little grey: bicubic sees the black beside)
    assert square.shape == (3, 20, 20) and square.min() > 220 and square[:, :, 2:-2].min() == 255


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (333, 257), (64, 48), (1000, 40), (30, 900)])
def test_the_square_is_the_resized_image_cropped(tmp_path, size):
    """The same pixels, within 1 of 255 (rounding), as resizing the whole image and cropping its centre, as
    torchvision's Resize + CenterCrop: torch's resize of a photo, PIL's of only the region the square covers
    for a panorama or a banner (1000 x 40, 30 x 900)."""
    rng = np.random.default_rng(sum(size))
    coarse = Image.fromarray(rng.integers(0, 256, (size[1] // 8 + 1, size[0] // 8 + 1, 3), dtype=np.uint8))
    coarse.resize(size, Image.Resampling.BICUBIC).save(tmp_path / "photo.png")
    side = 32
    with Image.open(tmp_path / "photo.png") as img:
        w, h = img.size
        scale = side / min(w, h)
        new = (max(side, round(w * scale)), max(side, round(h * scale)))
        resized = img.convert("RGB").resize(new, Image.Resampling.BILINEAR)
        left, top = (new[0] - side) // 2, (new[1] - side) // 2
        expected = np.asarray(resized.crop((left, top, left + side, top + side))).transpose(2, 0, 1).astype(int)
    square, why = decode(str(tmp_path / "photo.png"), side)
    assert why is None and np.abs(square.astype(int) - expected).max() <= 1


def _smooth_photo(size, seed):
    """Smooth random colour (detail at every scale a resize keeps), as a photo has."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (size[1] // 8 + 1, size[0] // 8 + 1, 3), dtype=np.uint8))
    return coarse.resize(size, Image.Resampling.BICUBIC)


def _resized_then_cropped(img, side):
    """The reference: PIL's decode, its bilinear resize of the whole image, the central square."""
    img = img.convert("RGB")
    w, h = img.size
    scale = side / min(w, h)
    new = (max(side, round(w * scale)), max(side, round(h * scale)))
    left, top = (new[0] - side) // 2, (new[1] - side) // 2
    resized = img.resize(new, Image.Resampling.BILINEAR)
    return np.asarray(resized.crop((left, top, left + side, top + side))).transpose(2, 0, 1).astype(int)


@pytest.mark.parametrize("size, mode, side", [((500, 375), "RGB", 256), ((375, 500), "RGB", 256),
                                             ((90, 70), "L", 64), ((640, 480), "RGB", 64), ((600, 301), "RGB", 32),
                                             ((50, 40), "RGB", 64)])
def test_a_plain_jpeg_decodes_to_what_pil_decodes_and_resizes(tmp_path, monkeypatch, size, mode, side):
    """A plain JPEG is decoded by simplejpeg, not PIL (faster): the same libjpeg-turbo, the same pixels; at
    least twice the side, the same shrink in the DCT as PIL's draft (1/4 for 640 x 480 to 64, 1/8 to 32);
    smaller than the side, enlarged."""
    from alexnet_exp import image_decode

    def not_pil(img, side):
        raise AssertionError("a plain JPEG went to PIL's decoder")

    monkeypatch.setattr(image_decode, "_pil_pixels", not_pil)
    path = tmp_path / "photo.jpg"
    _smooth_photo(size, seed=size[0]).convert(mode).save(path, "JPEG", quality=90)
    with Image.open(path) as img:
        img.draft("RGB", (side, side))
        expected = _resized_then_cropped(img, side)
    square, why = decode(str(path), side)
    assert why is None and np.abs(square.astype(int) - expected).max() <= 1


def test_an_orientation_in_xmp_turns_the_image_as_one_in_exif(tmp_path):
    """PIL reads tiff:Orientation from an XMP block when there is no EXIF; the fast path must not skip it."""
    top_red = np.zeros((40, 60, 3), np.uint8)
    top_red[:20] = (255, 0, 0)
    top_red[20:] = (0, 0, 255)
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="3"/></rdf:RDF>'
           b'</x:xmpmeta>')
    Image.fromarray(top_red).save(tmp_path / "xmp.jpg", "JPEG", quality=95, xmp=xmp)
    with Image.open(tmp_path / "xmp.jpg") as img:
        assert img.getexif().get(0x0112) == 3  # what PIL makes of it
    square, why = decode(str(tmp_path / "xmp.jpg"), 20)
    assert why is None and square[2, 2].mean() > 180 and square[0, 2].mean() < 80  # turned: blue on top


def test_a_decompression_bomb_is_refused_on_every_thread_and_the_warning_filters_stay(tmp_path, monkeypatch):
    """A warning filter for the bomb check is process-wide, and catch_warnings restored it under other
    threads' feet: an image over the limit was accepted now and then, and the filter leaked after the build."""
    import warnings

    from PIL import Image as PILImage

    import alexnet_exp.imagefolder as imagefolder

    root = write_folder(tmp_path / "ds", per_class=8, size=(50, 40))  # 2,000 pixels each
    photo((0, 0, 0)).resize((80, 40)).save(root / "red" / "big.jpg")  # 3,200: over the limit, under twice it
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 2_500)
    monkeypatch.setattr(imagefolder, "_CHUNK", 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)  # PIL's own warning, not the test's
        filters = list(warnings.filters)
        for attempt in range(3):
            cache = load_folder_cache(root, 16, cache_dir=tmp_path / f"cache{attempt}", bad_images="skip",
                                      threads=2)
            assert [Path(f).name for f, _ in cache.bad] == ["big.jpg"]
            assert "DecompressionBombError" in cache.bad[0][1]
            assert warnings.filters == filters


def _broken_folder(root):
    write_folder(root, per_class=4)
    (root / "red" / "empty.jpg").write_bytes(b"")
    good = (root / "green" / "000.jpg").read_bytes()
    (root / "green" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "blue" / "notes.png").write_text("not an image")
    return root


def test_unreadable_files_fail_the_build_listing_them_or_are_skipped_and_counted(tmp_path, capsys):
    root = _broken_folder(tmp_path / "broken")
    with pytest.raises(DataError) as err:
        load_dataset("imagefolder", root=str(root), image_size=16)
    message = str(err.value)
    assert "3 file(s)" in message and "data.bad_images: skip" in message
    for name in ("red/empty.jpg", "green/truncated.jpg", "blue/notes.png"):
        assert name in message
    data = load_dataset("imagefolder", root=str(root), image_size=16, bad_images="skip", val_fraction=0.25)
    assert len(data.train_y) + len(data.val_y) + len(data.test_y) == 12  # the 12 good images, no zero rows
    assert "3 unreadable image(s)" in capsys.readouterr().err
    assert all(x.float().mean() > 5 for x in torch.cat([data.train_x, data.val_x, data.test_x]))


def test_decoding_threads_fill_the_cache_as_one_thread_does(tmp_path, monkeypatch, capsys):
    """Chunks of 4 files over 2 decoding threads: the same cache, byte for byte, the same unreadable files
    named; torch runs one thread of its own in each, and its count is restored after the build."""
    import alexnet_exp.imagefolder as imagefolder

    root = _broken_folder(tmp_path / "broken")
    alone = load_folder_cache(root, 16, cache_dir=tmp_path / "alone", bad_images="skip", threads=1)
    assert "on 1 core(s)" in capsys.readouterr().err
    monkeypatch.setattr(imagefolder, "_CHUNK", 4)
    from alexnet_exp import image_decode

    seen, real_decode = set(), image_decode.decode

    def decode_seeing_torchs_threads(path, side):
        seen.add(torch.get_num_threads())
        return real_decode(path, side)

    monkeypatch.setattr(image_decode, "decode", decode_seeing_torchs_threads)
    torch.set_num_threads(2)  # restored by conftest's setting below
    threaded = load_folder_cache(root, 16, cache_dir=tmp_path / "threaded", bad_images="skip", threads=2)
    assert "on 2 core(s)" in capsys.readouterr().err and torch.get_num_threads() == 2 and seen == {1}
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    assert np.array_equal(threaded.images, alone.images) and sorted(threaded.bad) == sorted(alone.bad)
    assert len(threaded.bad) == 3 and threaded.images.sum() > 0


def test_a_cache_folder_that_cannot_be_made_names_the_key_that_moves_it(tmp_path):
    root = write_folder(tmp_path / "ds", per_class=2)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(FolderError, match=r"cannot create the image cache folder .*a_file/cache \(Not a directory\); "
                                          r"set data\.image_cache_dir to a writable folder"):
        load_folder_cache(root, 16, cache_dir=tmp_path / "a_file" / "cache")


def test_a_cache_larger_than_the_free_space_is_refused_before_decoding(tmp_path, capsys):
    root = write_folder(tmp_path / "ds", per_class=10)  # 30 images x 49 kB at 128 px: 1.5 MB
    with tmpfs(tmp_path / "disk", "1m") as disk:
        with pytest.raises(FolderError, match=r"needs 30 images x 0\.05 MB = 0\.00 GB and .* free; free space or "
                                              r"set data\.image_cache_dir to a larger disk"):
            load_folder_cache(root, 128, cache_dir=disk / "cache")
        assert "decoding" not in capsys.readouterr().err and not list((disk / "cache").glob("*.npy"))


_FILLED_WHILE_DECODING = """
import collections, sys
import alexnet_exp.imagefolder as imagefolder
Usage = collections.namedtuple("Usage", "total used free")
class SpaceTakenAfterTheCheck:  # another writer fills the disk once the check has passed: the check sees it empty
    disk_usage = staticmethod(lambda path: Usage(10**15, 0, 10**15))
imagefolder.shutil = SpaceTakenAfterTheCheck
imagefolder._CHUNK = 4  # several chunks: the threads' path
try:
    imagefolder.load_folder_cache(sys.argv[1], 128, cache_dir=sys.argv[2], threads=2)
except imagefolder.FolderError as exc:
    print(exc)
"""


def test_a_disk_that_fills_while_decoding_is_an_error_naming_the_fix_not_a_crash(tmp_path):
    """Written through a memory map, the first row past the end of the disk killed the build with SIGBUS
    (exit 135), its temporary file left filling the disk."""
    root = write_folder(tmp_path / "ds", per_class=10)
    with tmpfs(tmp_path / "disk", "1m") as disk:
        done = subprocess.run([sys.executable, "-c", _FILLED_WHILE_DECODING, str(root), str(disk / "cache")],
                              capture_output=True, text=True, timeout=STALL_S)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "cannot write the image cache" in done.stdout and "No space left on device" in done.stdout
        assert "set data.image_cache_dir to a larger disk" in done.stdout
        assert list((disk / "cache").iterdir()) == [next((disk / "cache").glob("*.lock"))]  # no .npy, no .tmp


_KILLED_MID_BUILD = """
import sys, threading
import alexnet_exp.image_decode as image_decode
from alexnet_exp.imagefolder import load_folder_cache

def decode_then_hang(cache, rows, side):  # as a build killed mid-way: the temporary file half written
    print("decoding", flush=True)
    threading.Event().wait()

image_decode.decode_into = decode_then_hang
load_folder_cache(sys.argv[1], 16, cache_dir=sys.argv[2], threads=1)
"""


def test_a_killed_builds_temporary_file_is_removed_by_the_next_build(tmp_path):
    """SIGKILL (out of memory, a lost node) leaves a temporary file as large as the cache; the next build, under
    the lock, removes it."""
    root, cache_dir = write_folder(tmp_path / "ds", per_class=2), tmp_path / "cache"
    child = subprocess.Popen([sys.executable, "-c", _KILLED_MID_BUILD, str(root), str(cache_dir)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert child.stdout.readline().strip() == "decoding"
    finally:
        child.kill()
        child.wait(timeout=STALL_S)
    (left,) = cache_dir.glob("*.tmp.npy")
    cache = load_folder_cache(root, 16, cache_dir=cache_dir)
    assert not left.exists() and not list(cache_dir.glob("*.tmp*")) and cache.images.sum() > 0


def test_no_row_is_written_once_the_build_stopped(tmp_path):
    """After Ctrl-C a decoding thread may still be on its image: its write is refused, and the descriptor is
    closed only when no write is under way (a second Ctrl-C could otherwise let a thread write into the next
    file opened under the same number)."""
    from alexnet_exp.imagefolder import CacheStopped, RowWriter

    with RowWriter(tmp_path / "cache.npy", (2, 3, 4, 4)) as writer:
        writer.write(0, np.full((3, 4, 4), 7, np.uint8))
        writer.stop()
        with pytest.raises(CacheStopped, match="row 1 not written"):
            writer.write(1, np.full((3, 4, 4), 9, np.uint8))
    rows = np.load(tmp_path / "cache.npy")
    assert (rows[0] == 7).all() and (rows[1] == 0).all()
    with pytest.raises(OSError):
        os.fstat(writer.fd)  # closed


def test_the_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path, capsys):
    root = write_folder(tmp_path / "ds", per_class=4)
    cache_dir = tmp_path / "cache"
    first = load_folder_cache(root, 16, cache_dir=cache_dir)
    assert "decoding 12 images" in capsys.readouterr().err
    again = load_folder_cache(root, 16, cache_dir=cache_dir)
    assert again.path == first.path and "decoding" not in capsys.readouterr().err  # reused, not decoded
    photo((0, 0, 0), seed=9).save(root / "red" / "000.jpg")  # a file changes
    os.utime(root / "red" / "000.jpg", ns=(1, 1))
    changed = load_folder_cache(root, 16, cache_dir=cache_dir)
    assert changed.path != first.path and "decoding 12 images" in capsys.readouterr().err
    assert not first.path.exists()  # the stale cache is gone, the new one holds the new image
    row = next(i for i, f in enumerate(scan(root).splits["train"]) if f.path.name == "000.jpg" and f.label == 2)
    assert changed.images[row].mean() < 30
    other_size = load_folder_cache(root, 8, cache_dir=cache_dir)  # another side: its own cache, both kept
    assert other_size.path.exists() and changed.path.exists()
    other_root = write_folder(tmp_path / "other", per_class=2)  # another folder sharing the cache folder
    shared = load_folder_cache(other_root, 16, cache_dir=cache_dir)
    assert shared.path != changed.path and shared.path.exists() and changed.path.exists()


def _load_in_process(root, cache_dir, log_dir, results):
    import sys

    sys.stderr = open(log_dir / f"{os.getpid()}.log", "w")  # what this process said: did it decode?
    cache = load_folder_cache(root, 16, cache_dir=cache_dir, threads=1)
    results.put((str(cache.path), int(cache.images.sum())))
    sys.stderr.close()


def test_processes_started_at_once_build_the_cache_once(tmp_path):
    root = write_folder(tmp_path / "ds", per_class=8)
    cache_dir, logs = tmp_path / "cache", tmp_path / "logs"
    logs.mkdir()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_load_in_process, args=(root, cache_dir, logs, results)) for _ in range(4)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=STALL_S) for _ in procs]
    for p in procs:
        p.join(timeout=STALL_S)
    assert [p.exitcode for p in procs] == [0] * 4
    assert len(set(outcomes)) == 1  # one cache, the same content for all
    assert sum("decoding 24 images" in log.read_text() for log in logs.iterdir()) == 1  # decoded once
    assert len(list(cache_dir.glob("*.npy"))) == 1 and not list(cache_dir.glob("*.tmp*"))


def _augmenter(**kw):
    from alexnet_exp.augment import BatchAugmenter, color_stats

    images = torch.randint(0, 256, (4, 3, 12, 12), dtype=torch.uint8)
    return BatchAugmenter(stats=color_stats(images), normalize="none", flip=False, **kw)


def test_sized_crops_train_on_random_patches_and_evaluate_on_the_centre():
    from alexnet_exp.augment import random_sized_crop

    images = torch.arange(2 * 3 * 12 * 12, dtype=torch.int64).reshape(2, 3, 12, 12).to(torch.uint8)
    crops = random_sized_crop(images, 8, torch.Generator().manual_seed(0))
    assert crops.shape == (2, 3, 8, 8)
    for crop, image in zip(crops, images):  # each crop is a patch of its own image, at some offset
        assert any(torch.equal(crop, image[:, y:y + 8, x:x + 8]) for y in range(5) for x in range(5))
    augmenter = _augmenter(input_size=8, crop_size=8)
    assert torch.equal(augmenter.eval(images), images[:, :, 2:10, 2:10].float() / 255)
    assert augmenter.train(images, torch.Generator().manual_seed(1)).shape == (2, 3, 8, 8)


def test_ten_crop_evaluation_averages_the_softmax_of_the_papers_ten_views():
    from alexnet_exp.train import evaluate

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    images = torch.randint(0, 256, (5, 3, 12, 12), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0, 1])
    result = evaluate(model, images, labels, _augmenter(input_size=8, crop_size=8, ten_crop=True), 3, batch_size=2)
    # by hand: the four corners, the centre, each mirrored; softmax of each, averaged; its log for the loss
    x = images.float() / 255
    views = [x[..., :8, :8], x[..., :8, 4:], x[..., 4:, :8], x[..., 4:, 4:], x[..., 2:10, 2:10]]
    views += [v.flip(-1) for v in views]
    with torch.no_grad():
        probs = torch.stack([model(v).softmax(dim=1) for v in views]).mean(dim=0)
    loss = torch.nn.functional.nll_loss(probs.log(), labels).item()
    assert result.loss == pytest.approx(loss, rel=1e-5)
    assert result.accuracy == pytest.approx((probs.argmax(dim=1) == labels).float().mean().item())
    one_view = evaluate(model, images, labels, _augmenter(input_size=8, crop_size=8), 3)
    with torch.no_grad():
        centre = torch.nn.functional.cross_entropy(model(x[..., 2:10, 2:10]), labels).item()
    assert one_view.loss == pytest.approx(centre, rel=1e-5) and one_view.loss != pytest.approx(loss, rel=1e-3)


def test_crops_larger_than_the_stored_images_are_refused_at_load(tmp_path):
    from alexnet_exp.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=r"augment.crop_size: 40 px crops cannot be cut from 32 px images"):
        config_from_dict({"data": {"dataset": "synthetic"}, "augment": {"crop_size": 40}})
    with pytest.raises(ConfigError, match=r"augment.ten_crop: needs augment.crop_size"):
        config_from_dict({"augment": {"ten_crop": True}})
    config_from_dict({"data": {"dataset": "imagefolder", "image_size": 256},
                      "model": {"arch": "alexnet"}, "augment": {"crop_size": 227, "ten_crop": True}})


def test_a_streamed_folder_trains_exactly_as_a_resident_one(tmp_path):
    from alexnet_exp.config import config_from_dict
    from alexnet_exp.run_parts import DataCache, train_run
    from alexnet_exp.streaming import StreamedImages, epoch_batches

    root = write_folder(tmp_path / "ds", per_class=12, size=(40, 30))
    results = {}
    for mode, budget in (("resident", None), ("streamed", 0.0)):  # 0 GB on the device: a tiny budget forces it
        config = config_from_dict({
            "data": {"dataset": "imagefolder", "root": str(root), "image_size": 20, "resident_gb": budget},
            "model": {"width": 0.25}, "augment": {"crop_size": 16, "input_size": 32, "pca_color": 0.1},
            "train": {"epochs": 2, "batch_size": 8, "lr": 0.01}})
        cache = DataCache(torch.device("cpu"))
        data, _ = cache.get(config.data)
        assert isinstance(data.train_x, StreamedImages) == (mode == "streamed")
        order = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(3))
        results[mode] = ([b.clone() for b in epoch_batches(data.train_x, order, 8, 3)],
                         train_run(config, cache)[1].history)
    for resident, streamed in zip(results["resident"][0], results["streamed"][0]):
        assert torch.equal(resident, streamed)  # the same seed gives the same batches
    resident, streamed = results["resident"][1], results["streamed"][1]
    assert [(m.train_loss, m.val_loss, m.val_accuracy) for m in resident] == \
        [(m.train_loss, m.val_loss, m.val_accuracy) for m in streamed]


def test_an_epoch_left_early_stops_its_gathering_thread(tmp_path):
    import threading

    from alexnet_exp.streaming import StreamedImages

    source = np.zeros((64, 3, 4, 4), np.uint8)
    images = StreamedImages(source, np.arange(64))
    batches = images.batches(torch.arange(64), 2, 32)
    next(batches)
    batches.close()  # a pruned or interrupted epoch
    assert not [t for t in threading.enumerate() if t.name == "batch-gather"]
    broken = StreamedImages(source, np.arange(64) + 100)  # rows past the end: the read error reaches the loop
    with pytest.raises(IndexError):
        list(broken.batches(torch.arange(64), 2, 32))


def test_a_sweep_on_a_folder_of_photos_names_its_classes_in_the_report(tmp_path, monkeypatch):
    from sweep_helpers import mlflow_runs, run_sweep, write_config

    from alexnet_exp import report

    monkeypatch.chdir(tmp_path)
    root = write_folder(tmp_path / "photos", per_class=16, size=(48, 36))
    cfg = write_config(tmp_path / "s.yaml",
                       data={"dataset": "imagefolder", "root": str(root), "image_size": 24, "val_fraction": 0.25},
                       augment={"crop": True, "crop_size": 20, "ten_crop": True, "input_size": 32},
                       train={"epochs": 2, "batch_size": 8}, study={"n_trials": 2})
    assert run_sweep(tmp_path, cfg) == 0
    _, parents, children = mlflow_runs(tmp_path)
    assert {c.data.tags["evaluation"] for c in children} == {
        "ten crops of 20 px (corners, centre, mirrored), softmax averaged"}
    assert "test_accuracy" in parents[0].data.metrics
    # the runs' MLflow dataset inputs say which folder the images came from
    assert {i.dataset.source for c in children for i in c.inputs.dataset_inputs} == {str(root)}
    out = tmp_path / "reports"
    assert report.main(["--study", "tiny", "--storage", f"sqlite:///{tmp_path / 'sweeps' / 'tiny' / 'optuna.db'}",
                        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--out", str(out)]) == 0
    text = (out / "tiny" / "report.md").read_text()
    assert "Validation and test figures of this trial: ten crops of 20 px" in text
    assert all(name in text for name in COLOURS)  # the per-class table names the folders' classes
