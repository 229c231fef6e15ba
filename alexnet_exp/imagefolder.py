"""Folders of images in torchvision's layout, decoded once into a uint8 cache that every trial shares.

Layouts (class names are the folder names, sorted):
- `root/<class>/<image>`: one pool, split into train / validation / test by stratified, seeded fractions;
- `root/train/<class>/<image>`, with optional `root/val/<class>/...` and `root/test/<class>/...` used as they
  are (a missing one is carved from train/ like the above).

The cache is one memory-mapped `.npy` of every image (shorter side resized to `image_size`, central square,
uint8 (N, 3, S, S)) and a `.json` beside it (labels, splits, class names, files that could not be read). Its
name is a hash of the file list (paths, sizes, modification times) and the preprocessing, so a changed,
added or removed file gives a new cache, and an unchanged folder is decoded once for every trial, worker and
rerun. It is built under a file lock (N workers started at once: one decodes, the others wait), by a thread
on every core the process may use, into a temporary file renamed into place: a killed build leaves nothing
that looks finished.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .cores import usable_cores
from .locks import file_lock

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
SPLIT_FOLDERS = ("train", "val", "test")
CACHE_FORMAT = 2  # bump when the preprocessing changes: every cache is rebuilt
_RECORD_BYTES, _RECORD_BYTES_PER_IMAGE = 1 << 20, 64  # room for the .json beside the cache (labels, bad files)
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


def _remove_unfinished(cache_dir: Path, prefix: str) -> None:
    """The temporary files of builds that were killed (SIGKILL, out of memory, a lost node): each is as large
    as the cache. Called under the build lock, so no build of this prefix is running."""
    for unfinished in [*cache_dir.glob(f"{prefix}-*.tmp.npy"), *cache_dir.glob(f"{prefix}-*.json.*.tmp")]:
        try:
            unfinished.unlink()
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
                      bad_images: str = "error", threads: Optional[int] = None) -> FolderCache:
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
                              f"data.image_cache_dir to a writable folder (the image folder may stay read-only)"
                              ) from None
        with file_lock(folder / f"{prefix}.lock"):
            if not meta.is_file():  # another process may have built it while this one waited
                _remove_unfinished(folder, prefix)
                _build(layout, image_size, npy, meta, threads)
                _remove_stale(folder, prefix, key)
    return _read_cache(npy, meta, bad_images)


class CacheStopped(RuntimeError):
    """A row written after the build stopped (Ctrl-C or an error elsewhere): the decoding thread ends there."""


class RowWriter:
    """The cache file being built, written a row at a time with pwrite: a full disk is an OSError here, where a
    memory map's store would kill the process with SIGBUS (and leave its temporary file filling the disk), and
    no page fault per 4 kB of a fresh file (a fifth of the writing time). pwrite releases the GIL.

    Its descriptor is closed only once no thread is inside a write, and no write starts after `stop`: a thread
    still decoding when a second Ctrl-C cuts the wait for it short must not write into whatever file is opened
    next under the same descriptor number."""

    def __init__(self, path: Path, shape: tuple[int, int, int, int]):
        header = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)  # a sparse file
        self.offset, self.row_bytes = header.offset, int(np.prod(shape[1:]))
        del header
        self.fd = os.open(path, os.O_WRONLY)
        self._state = threading.Condition()
        self._writing, self._stopped = 0, False

    def write(self, row: int, image: np.ndarray) -> None:
        with self._state:
            if self._stopped:
                raise CacheStopped(f"row {row} not written: the build stopped")
            self._writing += 1
        try:
            view, at = memoryview(np.ascontiguousarray(image)).cast("B"), self.offset + row * self.row_bytes
            while view:  # a regular file's pwrite is whole or an error, but the loop costs nothing
                written = os.pwrite(self.fd, view, at)
                view, at = view[written:], at + written
        finally:
            with self._state:
                self._writing -= 1
                self._state.notify_all()

    def stop(self) -> None:
        with self._state:
            self._stopped = True

    def sync(self) -> None:
        os.fsync(self.fd)

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        with self._state:
            self._state.wait_for(lambda: self._writing == 0)  # a write takes well under a millisecond
        os.close(self.fd)  # not reached if another interrupt lands in the wait: the descriptor stays open, unused


def _decode_chunks(cache: RowWriter, chunks: list[list[tuple[int, str]]], side: int, threads: int,
                   advance: Callable[[int], object]) -> list[tuple[int, str]]:
    """Decode every chunk into the cache file; returns the (row, why) of the unreadable files.

    Threads of this process, not processes: the decoding (simplejpeg or PIL), the resize (torch), the reads
    and the writes release the GIL, which a photo holds for under 10% of its time (about 10 cores' worth of
    threads, benchmarks/RESULTS.md). A decoding process would first import torch, 3 CPU-seconds and 0.3 GB
    each, which this process has done already."""
    import torch

    from .image_decode import decode_into

    bad_rows: list[tuple[int, str]] = []
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a core per thread: torch's own threads in every resize would oversubscribe
    try:
        if threads == 1:
            for chunk in chunks:
                bad_rows += decode_into(cache, chunk, side)
                advance(len(chunk))
            return bad_rows
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="image-decode") as pool:
            futures = {pool.submit(decode_into, cache, chunk, side): len(chunk) for chunk in chunks}
            try:
                for done in as_completed(futures):
                    bad_rows += done.result()
                    advance(futures[done])
            except BaseException:  # Ctrl-C or an error: the running chunks end at their next image, the rest
                cache.stop()         # are never started
                for future in futures:
                    future.cancel()
                raise
        return bad_rows
    finally:
        torch.set_num_threads(torch_threads)


def _build(layout: FolderLayout, side: int, npy: Path, meta: Path, threads: Optional[int]) -> None:
    files = [f for split in SPLIT_FOLDERS if split in layout.splits for f in layout.splits[split]]
    n = len(files)
    tmp = npy.with_name(f"{npy.stem}.{os.getpid()}.tmp.npy")
    size = f"{n} images x {3 * side * side / 1e6:.2f} MB = {n * 3 * side * side / 1e9:.2f} GB"
    free = shutil.disk_usage(npy.parent).free
    if free < n * (3 * side * side + _RECORD_BYTES_PER_IMAGE) + _RECORD_BYTES:
        raise FolderError(f"the image cache needs {size} and {npy.parent} has {free / 1e9:.2f} GB free; free "
                          f"space or set data.image_cache_dir to a larger disk")
    rows = [(i, str(f.path)) for i, f in enumerate(files)]
    chunks = [rows[i:i + _CHUNK] for i in range(0, n, _CHUNK)]
    threads = min(threads or usable_cores(), len(chunks))
    started = time.monotonic()
    print(f"decoding {n} images of {layout.root} into {npy.parent}/ ({side} x {side}, "
          f"{n * 3 * side * side / 1e9:.2f} GB) on {threads} core(s); once for every trial", file=sys.stderr,
          flush=True)
    from tqdm import tqdm

    tmp_meta = meta.with_name(f"{meta.name}.{os.getpid()}.tmp")
    try:
        with RowWriter(tmp, (n, 3, side, side)) as cache, \
                tqdm(total=n, unit="img", desc="image cache", file=sys.stderr, dynamic_ncols=True,
                     mininterval=1.0) as bar:
            bad_rows = _decode_chunks(cache, chunks, side, threads, bar.update)
            cache.sync()  # on disk before the record that says it is whole
        tmp_meta.write_text(json.dumps(_record(layout, files, side, sorted(bad_rows), started, threads)))
        os.replace(tmp, npy)
        os.replace(tmp_meta, meta)  # last: its presence says the cache is whole
    except OSError as exc:  # the disk filled while decoding (another writer), or the folder went read-only
        tmp.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
        raise FolderError(f"cannot write the image cache {tmp} ({size}; {exc.strerror}); free space or set "
                          f"data.image_cache_dir to a larger disk") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
        raise
    rate = n / max(time.monotonic() - started, 1e-9)
    print(f"image cache ready: {n - len(bad_rows)} images ({len(bad_rows)} unreadable) in "
          f"{time.monotonic() - started:.1f} s, {rate:.0f} images/s", file=sys.stderr, flush=True)


def _record(layout: FolderLayout, files: list[ImageFile], side: int, bad_rows: list[tuple[int, str]],
            started: float, threads: int) -> dict:
    """The .json beside the cache: what each row is, which split, which files could not be read."""
    bounds, start = {}, 0
    for split in SPLIT_FOLDERS:
        if split in layout.splits:
            bounds[split] = (start, start + len(layout.splits[split]))
            start += len(layout.splits[split])
    return {"root": str(layout.root), "side": side, "class_names": layout.class_names,
            "labels": [f.label for f in files], "splits": bounds, "bad_rows": bad_rows,
            "bad": [(str(files[row].path), why) for row, why in bad_rows],
            "seconds": round(time.monotonic() - started, 2), "threads": threads}
