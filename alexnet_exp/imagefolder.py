"""Folders of images in torchvision's layout, decoded once into a uint8 cache that every trial shares.

Layouts (class names are the folder names, sorted):
- `root/<class>/<image>`: one pool, split into train / validation / test by stratified, seeded fractions;
- `root/train/<class>/<image>`, with optional `root/val/<class>/...` and `root/test/<class>/...` used as they
  are (a missing one is carved from train/ like the above).

The cache is one memory-mapped `.npy` of every image (shorter side resized to `image_size`, central square,
uint8 (N, 3, S, S)) and a `.json` beside it (labels, splits, class names, files that could not be read). Its
name is a hash of the file list (paths, sizes, modification times) and the preprocessing, so a changed,
added or removed file gives a new cache, and an unchanged folder is decoded once for every trial, worker and
rerun. It is built under a file lock (N workers started at once: one decodes, the others wait), by all cores,
into a temporary file renamed into place: a killed build leaves nothing that looks finished.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Optional

import numpy as np

from .locks import file_lock

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
SPLIT_FOLDERS = ("train", "val", "test")
CACHE_FORMAT = 1  # bump when the preprocessing changes: every cache is rebuilt
_CHUNK = 64  # files per decoding task: small enough for a smooth progress bar, large enough to be cheap
MAX_LISTED_BAD = 20  # bad files named in an error; the rest counted


class FolderError(RuntimeError):
    """The folder cannot be used as a dataset; the message names the folder or files and the fix."""


@dataclass(frozen=True)
class ImageFile:
    path: Path
    label: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class FolderLayout:
    root: Path
    class_names: list[str]
    splits: dict[str, list[ImageFile]]  # "train" always; "val" and "test" when the root has those folders


def _image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively (as torchvision's ImageFolder), hidden ones skipped, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames
                  if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(found)


def _class_folders(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def scan(root: str | Path) -> FolderLayout:
    """The layout of `root`, or a FolderError naming what is wrong (before anything is decoded)."""
    root = Path(root)
    if not root.is_dir():
        raise FolderError(f"data.root {root}: no such folder; point data.root at a folder of class folders "
                          f"(root/<class>/<image>.jpg) or of train/ (and val/, test/) folders")
    split_dirs = {"train": root / "train"} if (root / "train").is_dir() else {"train": root}
    for split in ("val", "test"):
        if "train" in split_dirs and split_dirs["train"] != root and (root / split).is_dir():
            split_dirs[split] = root / split
    class_names = _class_folders(split_dirs["train"])
    if not class_names:
        raise FolderError(f"{split_dirs['train']}: no class folders; expected {split_dirs['train']}/<class>/"
                          f"<image> (one folder per class, {', '.join(IMAGE_SUFFIXES)} files)")
    if len(class_names) < 2:
        raise FolderError(f"{split_dirs['train']}: one class folder ({class_names[0]}/); a classifier needs two "
                          f"or more")
    labels = {name: i for i, name in enumerate(class_names)}
    splits: dict[str, list[ImageFile]] = {}
    for split, folder in split_dirs.items():
        names = _class_folders(folder)
        strangers = sorted(set(names) - set(labels))
        if strangers:
            raise FolderError(f"{folder}: class folder(s) {', '.join(strangers)} are not in {split_dirs['train']}/;"
                              f" every class must have training images (rename or remove them)")
        files = []
        for name in names:
            images = _image_files(folder / name)
            if not images:
                raise FolderError(f"{folder / name}: an empty class folder (no {', '.join(IMAGE_SUFFIXES)} "
                                  f"files); add its images or remove the folder")
            for path in images:
                st = path.stat()
                files.append(ImageFile(path, labels[name], st.st_size, st.st_mtime_ns))
        splits[split] = files
    return FolderLayout(root, class_names, splits)


def cache_key(layout: FolderLayout, image_size: int) -> str:
    """A hash of everything the cache holds: the files (path, size, modification time, label, split) and the
    preprocessing. Any change to the folder gives another key, so a stale cache is never read."""
    digest = hashlib.sha256(f"format {CACHE_FORMAT}; side {image_size}; classes {layout.class_names}\n".encode())
    for split in sorted(layout.splits):
        for f in layout.splits[split]:
            digest.update(f"{split}\t{f.path.relative_to(layout.root)}\t{f.size}\t{f.mtime_ns}\t{f.label}\n"
                          .encode())
    return digest.hexdigest()[:20]


def default_cache_dir(root: Path) -> Path:
    return root / ".alexnet_cache"


@dataclass(frozen=True)
class FolderCache:
    """A built cache: `images` is a read-only memory map (N, 3, S, S) uint8; rows of unreadable files skipped
    (with `bad_images: skip`) are not in `rows`."""
    images: np.ndarray
    labels: np.ndarray  # (N,) int64, one per row of `images`
    splits: dict[str, np.ndarray]  # rows of each split given by folders ("train", and "val"/"test" if any)
    class_names: list[str]
    bad: list[tuple[str, str]]  # (file, why) of the files that could not be read
    path: Path


def _prefix(root: Path, side: int) -> str:
    """What the caches of one folder at one side share: a cache folder may serve several image folders."""
    return f"images-{side}px-{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]}"


def _paths(cache_dir: Path, prefix: str, key: str) -> tuple[Path, Path]:
    return cache_dir / f"{prefix}-{key}.npy", cache_dir / f"{prefix}-{key}.json"


def _remove_stale(cache_dir: Path, prefix: str, keep: str) -> None:
    """Caches of this folder and side built from an earlier state of it: never read again (best effort: a
    process still reading one keeps its open memory map)."""
    for old in cache_dir.glob(f"{prefix}-*"):
        if keep not in old.name and not old.name.endswith(".lock"):
            try:
                old.unlink()
            except OSError:
                pass


def _read_cache(npy: Path, meta_path: Path, bad_images: str) -> FolderCache:
    meta = json.loads(meta_path.read_text())
    bad = [tuple(b) for b in meta["bad"]]
    if bad and bad_images == "error":
        raise FolderError(_bad_message(bad, meta["root"]))
    bad_rows = np.asarray([row for row, _ in meta["bad_rows"]], dtype=np.int64)
    labels = np.asarray(meta["labels"], dtype=np.int64)
    splits = {split: np.setdiff1d(np.arange(start, stop, dtype=np.int64), bad_rows)
              for split, (start, stop) in meta["splits"].items()}
    return FolderCache(np.load(npy, mmap_mode="r"), labels, splits, meta["class_names"], bad, npy)


def _bad_message(bad: list[tuple[str, str]], root: str) -> str:
    listed = "\n".join(f"  {path}: {why}" for path, why in bad[:MAX_LISTED_BAD])
    more = f"\n  ... and {len(bad) - MAX_LISTED_BAD} more" if len(bad) > MAX_LISTED_BAD else ""
    return (f"{len(bad)} file(s) in {root} are not readable images:\n{listed}{more}\n"
            f"Remove or replace them, or set data.bad_images: skip to train without them (they are counted).")


def load_folder_cache(root: str | Path, image_size: int, *, cache_dir: Optional[str | Path] = None,
                      bad_images: str = "error", workers: Optional[int] = None) -> FolderCache:
    """The cache of `root` at `image_size`, built first when it does not exist (or the folder changed)."""
    layout = scan(root)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir(layout.root)
    key = cache_key(layout, image_size)
    prefix = _prefix(layout.root, image_size)
    npy, meta = _paths(folder, prefix, key)
    if not meta.is_file():  # the .json is written last: its presence means the cache is whole
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FolderError(f"cannot create the image cache folder {folder} ({exc.strerror}); set "
                              f"data.cache_dir to a writable folder (the image folder may stay read-only)") from None
        with file_lock(folder / f"{prefix}.lock"):
            if not meta.is_file():  # another process may have built it while this one waited
                _build(layout, image_size, npy, meta, workers)
                _remove_stale(folder, prefix, key)
    return _read_cache(npy, meta, bad_images)


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _build(layout: FolderLayout, side: int, npy: Path, meta: Path, workers: Optional[int]) -> None:
    files = [f for split in SPLIT_FOLDERS if split in layout.splits for f in layout.splits[split]]
    n = len(files)
    tmp = npy.with_name(f"{npy.stem}.{os.getpid()}.tmp.npy")
    try:
        cache = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 3, side, side))
        del cache  # the decoding processes write into the file; this one only created it
    except OSError as exc:
        raise FolderError(f"cannot write the image cache {tmp} ({n} images x {3 * side * side / 1e6:.2f} MB = "
                          f"{n * 3 * side * side / 1e9:.1f} GB; {exc.strerror}); free space or set data.cache_dir "
                          f"to a larger disk") from None
    workers = workers or os.cpu_count() or 1
    rows = [(i, str(f.path)) for i, f in enumerate(files)]
    chunks = [rows[i:i + _CHUNK] for i in range(0, n, _CHUNK)]
    bad_rows: list[tuple[int, str]] = []
    started = time.monotonic()
    print(f"decoding {n} images of {layout.root} into {npy.parent}/ ({side} x {side}, "
          f"{n * 3 * side * side / 1e9:.2f} GB) on {workers} process(es); once for every trial", file=sys.stderr,
          flush=True)
    from tqdm import tqdm

    from .image_decode import decode_into

    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool, \
                tqdm(total=n, unit="img", desc="image cache", file=sys.stderr, dynamic_ncols=True,
                     mininterval=1.0) as bar:
            futures = {pool.submit(decode_into, str(tmp), chunk, side): len(chunk) for chunk in chunks}
            for done in as_completed(futures):
                bad_rows += done.result()
                bar.update(futures[done])
        _sync(tmp)  # on disk before the record that says it is whole
        os.replace(tmp, npy)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    bounds, start = {}, 0
    for split in SPLIT_FOLDERS:
        if split in layout.splits:
            bounds[split] = (start, start + len(layout.splits[split]))
            start += len(layout.splits[split])
    bad_rows.sort()
    record = {"root": str(layout.root), "side": side, "class_names": layout.class_names,
              "labels": [f.label for f in files], "splits": bounds, "bad_rows": bad_rows,
              "bad": [(str(files[row].path), why) for row, why in bad_rows],
              "seconds": round(time.monotonic() - started, 2), "workers": workers}
    tmp_meta = meta.with_name(f"{meta.name}.{os.getpid()}.tmp")
    tmp_meta.write_text(json.dumps(record))
    os.replace(tmp_meta, meta)
    rate = n / max(time.monotonic() - started, 1e-9)
    print(f"image cache ready: {n - len(bad_rows)} images ({len(bad_rows)} unreadable) in "
          f"{time.monotonic() - started:.1f} s, {rate:.0f} images/s", file=sys.stderr, flush=True)
