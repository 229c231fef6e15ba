"""Datasets as uint8 tensors (N, 3, H, W) with int64 labels, split into train / validation / held-out test.

The official test split is only ever evaluated once, on the best trial, by the sweep; nothing here or in
training chooses anything with it. The validation split is carved from the training set, stratified and seeded.
"""
from __future__ import annotations

import hashlib
import math
import pickle
import sys
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch


class DataError(RuntimeError):
    """A dataset cannot be loaded; the message names the file and what to do."""


@dataclass(frozen=True)
class ImageData:
    name: str
    source: str  # where the images came from: the folder read, or the dataset's name when generated in memory
    class_names: list[str]
    train_x: torch.Tensor  # uint8 (N, 3, H, W)
    train_y: torch.Tensor  # int64 (N,)
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of the `train`, `val` or `test` split."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; valid: train, val, test")
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")

    def to(self, device: torch.device) -> "ImageData":
        moved = {k: getattr(self, k).to(device) for k in
                 ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}
        return replace(self, **moved)

    def describe(self) -> str:
        return (f"{self.name}: {len(self.train_y)} train / {len(self.val_y)} val / {len(self.test_y)} test, "
                f"{self.num_classes} classes, {tuple(self.train_x.shape[1:])}")


# ---- splits ---------------------------------------------------------------------------------------------

def stratified_split(labels: np.ndarray, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held out) with `holdout` items, each class in proportion (largest remainder)."""
    labels = np.asarray(labels)
    n = len(labels)
    if not 0 < holdout < n:
        raise DataError(f"cannot hold out {holdout} of {n} images")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * holdout / n
    quota = np.floor(exact).astype(int)
    # Hand out the remaining places to the classes with the largest remainders; ties broken by the seed.
    order = np.lexsort((rng.random(len(classes)), -(exact - quota)))
    quota[order[: holdout - quota.sum()]] += 1
    kept, held = [], []
    for cls, q in zip(classes, quota):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        held.append(idx[:q])
        kept.append(idx[q:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def _subset(x: np.ndarray, y: np.ndarray, size: Optional[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    if size is None or size >= len(y):
        return x, y
    _, chosen = stratified_split(y, size, seed)
    return x[chosen], y[chosen]


# ---- CIFAR in the official python layout -----------------------------------------------------------------

@dataclass(frozen=True)
class CifarLayout:
    folder: str
    archive: str
    url: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes
    names_key: bytes


# Keys of the labels and of the class names inside the pickles (CIFAR-100: the 100 fine classes).
_LABEL_KEYS = {"cifar10": (b"labels", b"label_names"), "cifar100": (b"fine_labels", b"fine_label_names")}


def _torchvision_class(variant: str):
    from torchvision.datasets import CIFAR10, CIFAR100

    return {"cifar10": CIFAR10, "cifar100": CIFAR100}[variant]


def _layout(variant: str) -> CifarLayout:
    """File names, URL and keys of the official layout, as torchvision records them."""
    cls = _torchvision_class(variant)
    return CifarLayout(cls.base_folder, cls.filename, cls.url, tuple(f for f, _ in cls.train_list),
                       tuple(f for f, _ in cls.test_list), cls.meta["filename"], *_LABEL_KEYS[variant])


def official_checksums(variant: str) -> dict[str, str]:
    """md5 of every official file, keyed by file name (the archive's name included), from torchvision."""
    cls = _torchvision_class(variant)
    sums = {f: md5 for f, md5 in cls.train_list + cls.test_list}
    sums[cls.meta["filename"]] = cls.meta["md5"]
    sums[cls.filename] = cls.tgz_md5
    return sums


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _CifarUnpickler(pickle.Unpickler):
    """The CIFAR files are pickles: allow only what they contain (numpy arrays), nothing executable."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"),
                ("_codecs", "encode")}  # how Python 3 writes bytes into a protocol-2 pickle

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")


def _read_pickle(path: Path, expected_md5: Optional[str]) -> dict:
    if expected_md5 is not None:
        actual = _md5(path)
        if actual != expected_md5:
            raise DataError(f"{path}: md5 {actual} does not match the expected {expected_md5}; the file is corrupt "
                            f"or truncated. Delete it (or the whole folder) and download it again.")
    try:
        with open(path, "rb") as fh:
            return _CifarUnpickler(fh, encoding="bytes").load()
    except Exception as exc:  # a truncated or foreign file: refuse it whole, with its name
        raise DataError(f"{path}: not a readable CIFAR batch ({type(exc).__name__}: {exc}); "
                        f"delete it and download it again.") from None


def _read_images(path: Path, record: dict, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    data, labels = record.get(b"data"), record.get(label_key)
    if data is None or labels is None:
        raise DataError(f"{path}: missing {b'data'!r} or {label_key!r}; is this the right CIFAR variant?")
    data = np.asarray(data, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(f"{path}: expected (N, 3072) images and N labels, got {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def _locate_cifar(layout: CifarLayout, root: Path, download: bool, checksums: dict[str, Optional[str]]) -> Path:
    folder = root / layout.folder
    if folder.is_dir():
        return folder
    archive = root / layout.archive
    if not archive.is_file() and download:
        from torchvision.datasets.utils import download_url

        try:
            download_url(layout.url, str(root), layout.archive, checksums.get(layout.archive))
        except Exception as exc:
            raise DataError(
                f"{layout.folder} is not in {root}/ and the download from {layout.url} failed "
                f"({type(exc).__name__}: {exc}). Offline? Copy {layout.archive} (or its extracted folder "
                f"{layout.folder}/) into {root}/, or set data.root to where it is.") from None
    if not archive.is_file():
        raise DataError(f"{layout.folder} is not in {root}/ (nor {layout.archive}). Copy the official python "
                        f"version there, set data.root to where it is, or set data.download: true.")
    expected = checksums.get(layout.archive)
    if expected is not None and _md5(archive) != expected:
        raise DataError(f"{archive}: md5 does not match {expected}; the archive is corrupt or truncated. "
                        f"Delete it and download it again.")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{archive}: cannot be extracted ({exc}); delete it and download it again.") from None
    if not folder.is_dir():
        raise DataError(f"{archive}: holds no {layout.folder}/ folder; is it the python version of the dataset?")
    return folder


def load_cifar(variant: str, root: str | Path, *, download: bool,
               checksums: Optional[dict[str, Optional[str]]] = None):
    """Read CIFAR-10/100 from the official python layout: ((train_x, train_y), (test_x, test_y), names).
    `download`: fetch the archive when neither it nor its folder is in `root` (no default: a network access is
    the caller's choice; `data.download` in the config).

    Every file is md5-checked against `checksums` (default: the official sums) before it is read, so a
    corrupt file is refused with its name and nothing is half-loaded.
    """
    layout = _layout(variant)
    checksums = official_checksums(variant) if checksums is None else checksums
    folder = _locate_cifar(layout, Path(root), download, checksums)

    def read(files):
        parts = []
        for name in files:
            path = folder / name
            if not path.is_file():
                raise DataError(f"{path}: missing; the {layout.folder}/ folder is incomplete. Delete it and "
                                f"extract {layout.archive} again.")
            parts.append(_read_images(path, _read_pickle(path, checksums.get(name)), layout.label_key))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    train, test = read(layout.train_files), read(layout.test_files)
    meta_path = folder / layout.meta_file
    meta = _read_pickle(meta_path, checksums.get(layout.meta_file)) if meta_path.is_file() else {}
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(layout.names_key, [])]
    n_classes = int(max(train[1].max(), test[1].max())) + 1
    if len(names) < n_classes:
        names = [f"class_{i}" for i in range(n_classes)]
    return train, test, names


# ---- offline datasets --------------------------------------------------------------------------------------

def make_synthetic(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-conditional procedural images of CIFAR's shape.

    Each class is an oriented grating (orientation x frequency grid). Phase, colours, contrast, position jitter
    and noise are drawn per image, so the class mean image is flat: a linear model on raw pixels sits near
    chance, while conv + ReLU + pooling (orientation/frequency energy) learns it.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    n_orient = math.ceil(math.sqrt(num_classes))
    n_freq = math.ceil(num_classes / n_orient)
    orient = np.pi * (labels % n_orient) / n_orient
    freq = 2.0 + 9.0 * (labels // n_orient) / max(n_freq - 1, 1)  # cycles per image
    orient = orient + rng.normal(0, 0.08 * np.pi / n_orient, n)
    freq = freq * (1 + rng.normal(0, 0.03, n))
    phase = rng.uniform(0, 2 * np.pi, n)
    contrast = rng.uniform(0.25, 0.45, n)
    fg = rng.uniform(0.0, 1.0, (n, 3))
    bg = rng.uniform(0.2, 0.8, (n, 3))
    grid = (np.arange(32) + 0.5) / 32
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    images = np.empty((n, 3, 32, 32), dtype=np.uint8)
    for start in range(0, n, 4096):  # bounded memory for large n
        s = slice(start, min(start + 4096, n))
        proj = xx[None] * np.cos(orient[s])[:, None, None] + yy[None] * np.sin(orient[s])[:, None, None]
        wave = np.sin(2 * np.pi * freq[s][:, None, None] * proj + phase[s][:, None, None])
        stripes = (contrast[s][:, None, None] * wave)[:, None]
        img = bg[s][:, :, None, None] + stripes * (fg[s] - 0.5)[:, :, None, None] * 2
        img = img + rng.normal(0, 0.06, img.shape)
        images[s] = np.clip(img * 255, 0, 255).round().astype(np.uint8)
    return images, labels.astype(np.int64)


def _load_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8) in [0, 1]
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).numpy().copy()
    y = digits.target.astype(np.int64)
    # The bundled digits have no official test split: hold out a fixed, stratified 20% that never changes.
    train_idx, test_idx = stratified_split(y, len(y) // 5, seed=2012)
    return (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx]), [str(d) for d in range(10)]


# The test split carved from an image folder without test/: fixed, so that every sweep on the folder (whatever
# its data.split_seed) is tested on the same images, and no validation split ever overlaps it.
FOLDER_TEST_SEED = 2012


def _load_image_folder(root: str, image_size: int, cache_dir: Optional[str], bad_images: str,
                       test_fraction: float):
    """(train pool, explicit validation split or None, test split, class names) of a folder of images."""
    from .imagefolder import FolderError, load_folder_cache

    try:
        cache = load_folder_cache(root, image_size, cache_dir=cache_dir, bad_images=bad_images)
    except FolderError as exc:
        raise DataError(str(exc)) from None
    if cache.bad:
        print(f"warning: {len(cache.bad)} unreadable image(s) in {root} left out (data.bad_images: skip), e.g. "
              f"{cache.bad[0][0]}: {cache.bad[0][1]}", file=sys.stderr, flush=True)

    def rows(split):
        r = cache.splits.get(split)
        return None if r is None else (cache.images, r, cache.labels[r])

    train, val, test = rows("train"), rows("val"), rows("test")
    if test is None:
        keep, held = stratified_split(train[2], max(1, round(len(train[2]) * test_fraction)), FOLDER_TEST_SEED)
        test = (cache.images, train[1][held], train[2][held])
        train = (cache.images, train[1][keep], train[2][keep])
    for name, split in (("training", train), ("validation", val), ("test", test)):
        if split is not None and len(split[1]) == 0:
            raise DataError(f"{root}: no readable image left in the {name} split")
    return train, val, test, cache.class_names


def _cifar(*, dataset, root, download, checksums, **_):
    return load_cifar(dataset, root, download=download, checksums=checksums)


def _synthetic(*, synthetic_classes, synthetic_train_size, synthetic_test_size, **_):
    n_orient = math.ceil(math.sqrt(synthetic_classes))
    return (make_synthetic(synthetic_train_size, synthetic_classes, seed=0),
            make_synthetic(synthetic_test_size, synthetic_classes, seed=1),
            [f"o{c % n_orient}_f{c // n_orient}" for c in range(synthetic_classes)])


def _glyphs(*, glyph_classes, glyph_train_per_class, glyph_test_per_class, **_):
    from .glyphs import load_glyphs  # imported here: glyphs.py imports DataError from this module

    return load_glyphs(glyph_classes, glyph_train_per_class, glyph_test_per_class)


# Each dataset that is held in memory whole, by name: (train images, labels), (test images, labels), class
# names, from the `data:` section's settings it reads (the others pass by). The validation split is carved
# from the training images by load_dataset. An image folder (FOLDER_DATASET) has a loader of its own.
IN_MEMORY_DATASETS = {"cifar10": _cifar, "cifar100": _cifar, "synthetic": _synthetic,
                      "digits": lambda **_: _load_digits(), "glyphs": _glyphs}
READ_FROM_ROOT = {"cifar10", "cifar100"}  # the others are generated or bundled: their name is their source
FOLDER_DATASET = "imagefolder"


def load_dataset(dataset: str, *, root: str = "data", download: bool = True, val_fraction: float = 0.1,
                 split_seed: int = 0, max_train: Optional[int] = None, max_val: Optional[int] = None,
                 synthetic_classes: int = 10, synthetic_train_size: int = 5000, synthetic_test_size: int = 1000,
                 glyph_classes: int = 100, glyph_train_per_class: int = 500, glyph_test_per_class: int = 100,
                 image_size: int = 256, image_cache_dir: Optional[str] = None, bad_images: str = "error",
                 test_fraction: float = 0.1, resident_gb: Optional[float] = None,
                 device: torch.device = torch.device("cpu"),
                 checksums: Optional[dict[str, Optional[str]]] = None) -> ImageData:
    """Load a dataset on the CPU (call `.to(device)` to move it) with its validation split. The defaults are
    the `data:` section's (config.py); `run_parts.dataset_kwargs` passes every one of them from the config.

    `glyphs` (glyphs.py) is generated in memory: the first `glyph_classes` characters of a fixed order,
    `glyph_train_per_class` images each in the training fonts (the validation split is carved from these) and
    `glyph_test_per_class` each in held-out fonts for the test split."""
    if dataset == FOLDER_DATASET:
        from .streaming import resident_budget

        return _folder_data(root, image_size, image_cache_dir, bad_images, test_fraction, val_fraction, split_seed,
                            max_train, max_val, resident_budget(device, resident_gb), device)
    if dataset not in IN_MEMORY_DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; valid: {', '.join([*IN_MEMORY_DATASETS, FOLDER_DATASET])}")
    (tx, ty), (sx, sy), names = IN_MEMORY_DATASETS[dataset](
        dataset=dataset, root=root, download=download, checksums=checksums, synthetic_classes=synthetic_classes,
        synthetic_train_size=synthetic_train_size, synthetic_test_size=synthetic_test_size,
        glyph_classes=glyph_classes, glyph_train_per_class=glyph_train_per_class,
        glyph_test_per_class=glyph_test_per_class)
    keep, held = stratified_split(ty, max(1, round(len(ty) * val_fraction)), split_seed)
    train_x, train_y = _subset(tx[keep], ty[keep], max_train, split_seed)
    val_x, val_y = _subset(tx[held], ty[held], max_val, split_seed)
    as_t = torch.from_numpy
    source = str(root) if dataset in READ_FROM_ROOT else dataset
    return ImageData(dataset, source, names, as_t(np.ascontiguousarray(train_x)), as_t(train_y),
                     as_t(np.ascontiguousarray(val_x)), as_t(val_y), as_t(np.ascontiguousarray(sx)), as_t(sy))


def _folder_data(root, image_size, cache_dir, bad_images, test_fraction, val_fraction, split_seed, max_train,
                 max_val, resident_bytes: int, device: torch.device) -> ImageData:
    """The splits of an image folder, read from its cache into `device`'s memory, or streamed from it when
    they are more than `resident_bytes`."""
    (images, train_rows, train_y), val, (_, test_rows, test_y), names = _load_image_folder(
        root, image_size, cache_dir, bad_images, test_fraction)
    if val is None:
        keep, held = stratified_split(train_y, max(1, round(len(train_y) * val_fraction)), split_seed)
        val_rows, val_y = train_rows[held], train_y[held]
        train_rows, train_y = train_rows[keep], train_y[keep]
    else:
        _, val_rows, val_y = val
    train_rows, train_y = _subset(train_rows, train_y, max_train, split_seed)
    val_rows, val_y = _subset(val_rows, val_y, max_val, split_seed)

    from .streaming import StreamedImages

    stream = sum(len(r) for r in (train_rows, val_rows, test_rows)) * int(np.prod(images.shape[1:])) > resident_bytes
    if stream:
        print(f"images streamed from {root}'s cache ({len(train_rows)} training images over the "
              f"{resident_bytes / 1e9:.1f} GB kept in the device's memory; data.resident_gb)", file=sys.stderr)

    def split(rows, labels):
        order = np.argsort(rows, kind="stable")  # the memory map read front to back
        rows, labels = rows[order], torch.from_numpy(labels[order])
        if stream:
            return StreamedImages(images, rows, device), labels
        # Straight onto the device in slices of about 256 MB: no host copy of the whole split on the way.
        resident = torch.empty((len(rows), *images.shape[1:]), dtype=torch.uint8, device=device)
        step = max(1, (256 << 20) // int(np.prod(images.shape[1:])))
        for start in range(0, len(rows), step):
            resident[start:start + step] = torch.from_numpy(np.ascontiguousarray(images[rows[start:start + step]]))
        return resident, labels

    return ImageData(FOLDER_DATASET, str(root), names, *split(train_rows, train_y), *split(val_rows, val_y),
                     *split(test_rows, test_y))
