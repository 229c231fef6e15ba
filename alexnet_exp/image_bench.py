"""`python -m alexnet_exp.bench images`: a folder of photo-sized JPEGs, from files to trained images.

Measured on generated JPEGs of ImageNet's typical size (500 x 375, photo-like texture, quality 90):
(a) decoding into the image cache (imagefolder.py): images/s on one core and on every core (thousands of
    hard links to the photos, for a steady rate), and of the decode function alone;
(b) training the paper AlexNet (256 px cache, random 227 crops, flips, PCA colour noise) through `train.fit`
    from the cache held in memory (resident) and streamed from its memory map, same seed, same batches;
(c) the documents' pipeline on the same files: torchvision's ImageFolder with PIL transforms (Resize(256),
    CenterCrop(256), RandomCrop(227), RandomHorizontalFlip, ToTensor, Normalize) through a DataLoader with a
    worker per core, decoding every JPEG at every epoch.
Writes a table to stdout and JSON to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .cores import usable_cores

PHOTO_SIZE = (500, 375)  # ImageNet's most common size


def write_photos(root: Path, n: int, classes: int = 4, seed: int = 0) -> None:
    """`n` JPEGs of smooth random texture (so that JPEG has detail to code, as in a photo), `classes` folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = PHOTO_SIZE
    for i in range(n):
        folder = root / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.uniform(0, 255, (h // 25 + 1, w // 25 + 1, 3)).astype(np.uint8)
        image = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
        noise = rng.normal(0, 10, (h, w, 3))
        pixels = np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.jpg", "JPEG", quality=90)


def link_photos(photos: Path, root: Path, n: int) -> None:
    """A folder of `n` files, hard links to the photos in turn (their class folders kept): thousands of images
    for a steady decoding rate without generating thousands of JPEGs. Every file is decoded in full; the data
    are in the page cache either way."""
    sources = sorted(photos.rglob("*.jpg"))
    for i in range(n):
        source = sources[i % len(sources)]
        target = root / source.parent.name / f"{i:07d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, target)


def decode_rate(photos: Path, tmp: Path, files: int, threads: int) -> float:
    """Images/s of a whole cache build of `files` (folder scan, decoding, final sync), as a sweep builds it."""
    from .imagefolder import load_folder_cache

    root, cache_dir = tmp / f"linked-{files}", tmp / f"cache-{files}-{threads}"
    if not root.exists():
        link_photos(photos, root, files)
    started = time.perf_counter()
    cache = load_folder_cache(root, 256, cache_dir=cache_dir, threads=threads)
    rate = len(cache.labels) / (time.perf_counter() - started)
    del cache
    shutil.rmtree(cache_dir)  # gigabytes at 256 px
    return rate


def decode_function_rate(root: Path, limit: int = 500) -> float:
    """Images/s of `image_decode.decode` alone, in this process: the decoding without the pool around it."""
    from .image_decode import decode

    files = sorted(root.rglob("*.jpg"))[:limit]
    started = time.perf_counter()
    for f in files:
        decode(str(f), 256)
    return len(files) / (time.perf_counter() - started)


def training_rate(root: Path, cache_dir: Path, device: torch.device, batch: int, resident_gb, arch: str,
                  width: float) -> dict:
    """Images/s of `fit`'s second epoch (the first warms up) from the cache, resident or streamed."""
    from .config import config_from_dict
    from .run_parts import DataCache, train_run

    config = config_from_dict({
        "data": {"dataset": "imagefolder", "root": str(root), "image_cache_dir": str(cache_dir), "image_size": 256,
                 "resident_gb": resident_gb, "val_fraction": 0.05, "test_fraction": 0.05},
        "model": {"arch": arch, "norm": "lrn", "width": width},
        "augment": {"crop_size": 227, "flip": True, "pca_color": 0.1},
        "train": {"epochs": 2, "batch_size": batch, "lr": 0.01, "stall_epochs": 99,
                  "device": device.type}})
    cache = DataCache(device)
    data, _ = cache.get(config.data)
    _, result = train_run(config, cache)
    return {"train_img_s": result.history[-1].images_per_second, "streamed": type(data.train_x).__name__ != "Tensor",
            "train_images": len(data.train_y)}


def documents_rate(root: Path, device: torch.device, batch: int, steps: int, arch: str, width: float) -> float:
    from torchvision import datasets
    from torchvision import transforms as T

    from .architecture import ARCH_INPUT_SIZE
    from .bench import _with_torch_lrn, timed_training
    from .model import build_model

    tf = T.Compose([T.Resize(256), T.CenterCrop(256), T.RandomCrop(227), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(root), tf), batch_size=batch, shuffle=True,
                                         num_workers=usable_cores(), drop_last=True)
    size = ARCH_INPUT_SIZE[arch]
    if size != 227:
        tf.transforms.insert(4, T.Resize(size))  # after the crop and flip, as the project's pipeline resizes
    model = _with_torch_lrn(build_model(arch, 4, norm="lrn", input_size=size, width=width)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def batches():  # epochs after epochs, until `steps` are timed (a small folder is one batch per epoch)
        while True:
            yield from loader

    return timed_training(model, opt, batches(), device, steps)


def main(argv: list[str]) -> int:
    from .train import resolve_device

    p = argparse.ArgumentParser(prog="python -m alexnet_exp.bench images", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--photos", type=int, help="JPEGs to generate (default: 2,000 on CUDA, 320 on CPU)")
    p.add_argument("--decode-files", type=int, default=3000,
                   help="files decoded per core in the cache-build rates (hard links to the photos)")
    p.add_argument("--arch", default="alexnet", help="the network trained (default: the paper's, at 227)")
    p.add_argument("--width", type=float, default=1.0, help="its channel multiplier (tests: 0.25)")
    p.add_argument("--out", default="benchmarks/results", help="folder for the JSON")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    n = args.photos or (2_000 if cuda else 320)
    batch = 128 if cuda else 16
    cores = usable_cores()
    result = {"date": dt.date.today().isoformat(), "device": torch.cuda.get_device_name(device) if cuda
              else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
              "torch": torch.__version__, "python": platform.python_version(), "cores": cores, "photos": n,
              "photo_size": PHOTO_SIZE, "batch": batch, "arch": args.arch, "width": args.width}
    with tempfile.TemporaryDirectory() as tmp:
        root, cache_dir = Path(tmp) / "photos", Path(tmp) / "cache"
        print(f"writing {n} JPEGs of {PHOTO_SIZE[0]} x {PHOTO_SIZE[1]} ...", flush=True)
        write_photos(root, n)
        result["jpeg_kb_mean"] = sum(f.stat().st_size for f in root.rglob("*.jpg")) / n / 1024
        result["decode_function_img_s"] = decode_function_rate(root)
        one, every = args.decode_files, args.decode_files * cores
        result["decode_files"] = {"one_core": one, "all_cores": every}
        print(f"decoding {one} files, one thread ...", flush=True)
        result["decode_img_s_one_core"] = decode_rate(root, Path(tmp), one, 1)
        print(f"decoding {every} files, {cores} threads ...", flush=True)
        result["decode_img_s_all_cores"] = decode_rate(root, Path(tmp), every, cores)
        for mode, budget in (("resident", None), ("streamed", 0.0)):
            print(f"training from the cache, {mode} ...", flush=True)
            result[mode] = training_rate(root, cache_dir, device, batch, budget, args.arch, args.width)
        print("training, the documents' pipeline (ImageFolder + PIL + DataLoader) ...", flush=True)
        result["documents_train_img_s"] = documents_rate(root, device, batch, max(3, n // batch - 2), args.arch,
                                                         args.width)
    result["streamed_over_resident"] = result["streamed"]["train_img_s"] / result["resident"]["train_img_s"]
    print(f"\n{result['device']}, torch {result['torch']}, {result['date']}, {cores} cores")
    print(f"decoding {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEGs ({result['jpeg_kb_mean']:.0f} kB) to 256 px: "
          f"{result['decode_img_s_one_core']:.0f} img/s on one core, {result['decode_img_s_all_cores']:.0f} "
          f"img/s on {cores} (the decode function alone: {result['decode_function_img_s']:.0f} img/s)")
    print(f"training {args.arch} x{args.width} (batch {batch}): resident "
          f"{result['resident']['train_img_s']:.1f} img/s, "
          f"streamed {result['streamed']['train_img_s']:.1f} img/s ({result['streamed_over_resident']:.1%}), the "
          f"documents' pipeline {result['documents_train_img_s']:.1f} img/s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-images-{device.type}-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"written {path}")
    return 0
