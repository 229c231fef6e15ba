"""`python -m alexnet_exp.bench`: throughput of this project's pipeline against the documents' pipeline
(`python -m alexnet_exp.bench search`: the search's quality against random search, search_bench.py;
`python -m alexnet_exp.bench images`: a folder of JPEGs decoded, then trained resident and streamed,
image_bench.py).

Measured in one run on one device, on synthetic data of CIFAR's shape (throughput does not depend on content):
(a) this project: uint8 images on the device, per-image augmentation as batched tensor ops, resize per batch,
    channels_last, bf16 autocast + fused optimiser on CUDA, malloc keeping freed memory on the CPU, the
    channel-sum LRN — through `train.fit` itself;
(b) the documents: a torchvision Dataset with PIL transforms (Resize, RandomCrop, RandomHorizontalFlip,
    ToTensor, Normalize) through a DataLoader, fp32, the same network with PyTorch's nn.LocalResponseNorm.
Also: LRN forward+backward, the time a trial spends outside training, and on CUDA the aggregate throughput
of K trials sharing one GPU. Writes a table to stdout and JSON to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .augment import BatchAugmenter, color_stats
from .config import TrainConfig
from .host_memory import keep_freed_memory
from .model import ChannelSumLRN, build_model
from .run_parts import fit_settings
from .train import evaluate, fit, resolve_device

CIFAR_TRAIN, CIFAR_VAL = 45_000, 5_000  # a CIFAR-100-sized epoch: train split + validation


def train_macs(model: nn.Module, size: int) -> float:
    """Multiply-accumulates of one forward pass for one image (conv + linear layers)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            fan_in = (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * fan_in
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features * (output.numel() // module.out_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return float(total)


def _with_torch_lrn(model: nn.Module) -> nn.Module:
    """The same network with PyTorch's LRN, as the documents' code has it (alpha scaled: torch divides by n)."""
    for i, layer in enumerate(model.features):
        if isinstance(layer, ChannelSumLRN):
            model.features[i] = nn.LocalResponseNorm(layer.size, layer.alpha * layer.size, layer.beta, layer.k)
    return model


def project_pipeline(arch: str, size: int, images: torch.Tensor, labels: torch.Tensor, batch: int,
                     compile_model: bool = False) -> dict:
    """Train two epochs with `fit` (the second is timed: no warm-up in it), then time evaluation."""
    stats = color_stats(images[:2048])
    augmenter = BatchAugmenter(stats=stats, input_size=size, crop_padding=4, flip=True, normalize="dataset")
    model = build_model(arch, 100, norm="lrn", input_size=size)
    settings = fit_settings(TrainConfig(optimizer="sgd", lr=0.01, batch_size=batch, epochs=2, stall_epochs=99,
                                        compile=compile_model))
    result = fit(model, images, labels, images[:batch], labels[:batch], augmenter, 100, settings)
    train_rate = result.history[-1].images_per_second
    evaluate(model, images[:batch * 2], labels[:batch * 2], augmenter, 100, batch_size=batch * 2)  # warm-up
    sync(images.device)
    started = time.perf_counter()
    evaluate(model, images, labels, augmenter, 100, batch_size=max(batch * 2, 512))
    sync(images.device)
    return {"train_img_s": train_rate, "eval_img_s": len(labels) / (time.perf_counter() - started)}


class _PILDataset(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i].transpose(1, 2, 0))), int(self.labels[i])


def documents_pipeline(arch: str, size: int, images: np.ndarray, labels: np.ndarray, batch: int,
                       device: torch.device, steps: int) -> dict:
    """The notebooks' way: PIL transforms per image in a DataLoader, fp32, eager, torch's LRN."""
    from torchvision import transforms as T

    norm = T.Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    resize = [T.Resize(size)] if size != 32 else []
    train_tf = T.Compose(resize + [T.RandomCrop(size, padding=4 * size // 32), T.RandomHorizontalFlip(),
                                   T.ToTensor(), norm])
    eval_tf = T.Compose(resize + [T.ToTensor(), norm])
    model = _with_torch_lrn(build_model(arch, 100, norm="lrn", input_size=size)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)  # as `fit` uses
    loader = torch.utils.data.DataLoader(_PILDataset(images, labels, train_tf), batch_size=batch, shuffle=True)
    train_rate = timed_training(model, opt, loader, device, steps)
    model.eval()
    loader = torch.utils.data.DataLoader(_PILDataset(images, labels, eval_tf), batch_size=batch * 2)
    seen, started = 0, time.perf_counter()
    with torch.no_grad():
        for step, (x, _) in enumerate(loader):
            model(x.to(device))
            seen += len(x)
            if step >= steps:
                break
    sync(device)
    return {"train_img_s": train_rate, "eval_img_s": seen / (time.perf_counter() - started)}


def timed_training(model: nn.Module, opt: torch.optim.Optimizer, batches, device: torch.device, steps: int) -> float:
    """Images/s of plain eager training steps 1..`steps` over `batches` ((x, y) on the host); step 0 warms up."""
    model.train()
    seen, started = 0, None
    for step, (x, y) in enumerate(batches):
        if step == 1:  # the first step is warm-up
            sync(device)
            started, seen = time.perf_counter(), 0
        loss = F.cross_entropy(model(x.to(device)), y.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
        if step >= steps:
            break
    sync(device)
    return seen / (time.perf_counter() - started)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lrn_microbench(device: torch.device, repeats: int) -> dict:
    """LRN forward + backward on conv1's output of `alexnet_cifar` (128 x 48 x 30 x 30), each in the memory
    layout its pipeline trains in: the documents' contiguous NCHW, the project's channels_last."""
    x = torch.randn(128, 48, 30, 30, device=device).relu()
    out = {}
    for name, layer, memory_format in (
            ("torch_LocalResponseNorm", nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0), torch.contiguous_format),
            ("channel_sum_LRN", ChannelSumLRN(48).to(device), torch.channels_last)):
        x = x.detach().contiguous(memory_format=memory_format).requires_grad_()
        for _ in range(2):
            layer(x).sum().backward()
        sync(device)
        started = time.perf_counter()
        for _ in range(repeats):
            layer(x).sum().backward()
        sync(device)
        out[name + "_ms"] = (time.perf_counter() - started) / repeats * 1000
    out["speedup"] = out["torch_LocalResponseNorm_ms"] / out["channel_sum_LRN_ms"]
    return out


def trial_overhead(device: torch.device, trials: int = 5) -> dict:
    """Seconds per trial outside training: sampling and storage (Optuna, sqlite), MLflow logging of a 20-epoch
    trial (start, params, 20 per-epoch batches, artifacts, finish; sqlite), and building the paper model on
    `device`."""
    import optuna

    from .config import config_from_dict, dump_config
    from .sweep.search.space import suggest
    from .sweep.stores.tracking import Tracker

    config = config_from_dict({"space": {
        "train.lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
        "train.optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
        "train.batch_size": {"type": "categorical", "choices": [64, 128, 256]},
        "model.norm": {"type": "categorical", "choices": ["lrn", "batchnorm", "none"]}}})
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        study = optuna.create_study(storage=f"sqlite:///{tmp}/optuna.db", direction="maximize")
        tracker = Tracker(f"sqlite:///{tmp}/mlflow.db", "bench")
        parent = tracker.start_parent("bench", {})
        timings = {"optuna_s": 0.0, "mlflow_s": 0.0, "model_build_s": 0.0}
        for i in range(trials + 1):  # the first round warms up the stores
            t0 = time.perf_counter()
            trial = study.ask()
            values = suggest(trial, config.space)
            resolved = config.with_values(values)
            for epoch in range(1, 21):
                trial.report(0.5, epoch)
                trial.should_prune()
            study.tell(trial, 0.5)
            t1 = time.perf_counter()
            run = tracker.start_trial(parent, f"trial-{i}", resolved.flat(), {"trial": i})
            tracker.log_text(run, dump_config(resolved), "config.yaml")
            for epoch in range(1, 21):
                tracker.log_metrics(run, {"train_loss": 1.0, "val_loss": 1.0, "val_accuracy": 0.5,
                                          "val_macro_f1": 0.5, "lr": 0.01, "epoch_seconds": 1.0,
                                          "images_per_second": 1.0}, epoch,
                                    [("train_loss_step", epoch * 100 + s, 1.0) for s in range(35)])
            tracker.finish(run, "FINISHED")
            t2 = time.perf_counter()
            with device:  # as the sweep builds it: on the training device
                build_model("alexnet", 100)
            sync(device)
            t3 = time.perf_counter()
            if i > 0:
                timings["optuna_s"] += (t1 - t0) / trials
                timings["mlflow_s"] += (t2 - t1) / trials
                timings["model_build_s"] += (t3 - t2) / trials
    timings["total_s"] = timings["optuna_s"] + timings["mlflow_s"] + timings["model_build_s"]
    return timings


def matmul_tflops(device: torch.device) -> float:
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    started = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    return 2 * 8192 ** 3 * 10 / (time.perf_counter() - started) / 1e12


def shared_device(k_values: list[int], images_per_worker: int, device: str = "cuda", batch: int = 512) -> dict:
    """Aggregate training throughput of K processes training alexnet_cifar on one device at once (what
    `--trials-per-gpu K` does on a GPU)."""
    out = {}
    code = ("import sys,torch;from alexnet_exp.bench import project_pipeline;"
            "n,d,b=int(sys.argv[1]),sys.argv[2],int(sys.argv[3]);"
            "x=torch.randint(0,256,(n,3,32,32),dtype=torch.uint8,device=d);"
            "y=torch.randint(0,100,(n,),device=d);print(project_pipeline('alexnet_cifar',32,x,y,b)['train_img_s'])")
    for k in k_values:
        procs = [subprocess.Popen([sys.executable, "-c", code, str(images_per_worker), device, str(batch)],
                                  stdout=subprocess.PIPE, text=True) for _ in range(k)]
        outputs = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError(f"a benchmark worker failed (K={k}): exit codes {[p.returncode for p in procs]}")
        rates = [float(text.strip().splitlines()[-1]) for text in outputs]
        out[f"K={k}"] = {"per_worker_img_s": rates, "aggregate_img_s": sum(rates)}
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["search"]:  # the search's quality, not the pipeline's speed: search_bench.py
        from .search_bench import main as search_main

        return search_main(argv[1:])
    if argv[:1] == ["images"]:  # a folder of JPEGs: decoding, resident against streamed (image_bench.py)
        from .image_bench import main as images_main

        return images_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m alexnet_exp.bench", description=__doc__.splitlines()[0],
                                epilog="python -m alexnet_exp.bench search --help: random search against the "
                                       "shipped search at equal compute; python -m alexnet_exp.bench images "
                                       "--help: a folder of JPEGs, decoded and trained")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--images", type=int, help="images per measurement (default: 50,000 on CUDA, 2,560 on CPU)")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile (CUDA)")
    p.add_argument("--out", default="benchmarks/results", help="folder for the JSON")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    n = args.images or (50_000 if cuda else 2_560)  # CPU: 20 steps of 128, in under two minutes
    variants = [("alexnet_cifar", 32, 512 if cuda else 128), ("alexnet", 227, 256 if cuda else 16)]
    result = {"date": dt.date.today().isoformat(), "device": torch.cuda.get_device_name(device) if cuda
              else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
              "torch": torch.__version__, "python": platform.python_version(), "images": n, "variants": {}}
    gen = torch.Generator().manual_seed(0)
    inputs = {}
    for arch, _size, batch in variants:
        count = n if arch == "alexnet_cifar" or cuda else max(batch * 4, 64)  # the 227 net is slow on a CPU
        inputs[arch] = (torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=gen),
                        torch.randint(0, 100, (count,), generator=gen), max(3, min(40, count // batch - 1)))
    # The documents' pipeline first, as a notebook runs it: with malloc's defaults, which `fit` changes
    # process-wide on the CPU (host_memory.py). Measured again after, to show what the allocator alone gives.
    docs = {}
    for arch, size, batch in variants:
        print(f"{arch} @ {size}: documents' pipeline ...", flush=True)
        images, labels, steps = inputs[arch]
        docs[arch] = documents_pipeline(arch, size, images.numpy(), labels.numpy(), batch, device, steps)
    kept_memory = device.type == "cpu" and keep_freed_memory()
    for arch, size, batch in variants:
        images, labels, steps = inputs[arch]
        print(f"{arch} @ {size}: project pipeline ...", flush=True)
        ours = project_pipeline(arch, size, images.to(device), labels.to(device), batch)
        macs = train_macs(build_model(arch, 100, input_size=size), size)
        entry = {"batch": batch, "project": ours, "documents": docs[arch],
                 "train_ratio": ours["train_img_s"] / docs[arch]["train_img_s"],
                 "eval_ratio": ours["eval_img_s"] / docs[arch]["eval_img_s"],
                 "epoch_s_project": CIFAR_TRAIN / ours["train_img_s"] + CIFAR_VAL / ours["eval_img_s"],
                 "epoch_s_documents": (CIFAR_TRAIN / docs[arch]["train_img_s"]
                                       + CIFAR_VAL / docs[arch]["eval_img_s"]),
                 "gflop_per_trained_image": 6 * macs / 1e9}
        if kept_memory:
            print(f"{arch} @ {size}: documents' pipeline, memory kept ...", flush=True)
            same = documents_pipeline(arch, size, images.numpy(), labels.numpy(), batch, device, steps)
            entry["documents_memory_kept"] = same
            entry["train_ratio_memory_kept"] = ours["train_img_s"] / same["train_img_s"]
        if args.compile and cuda:
            entry["project_compiled"] = project_pipeline(arch, size, images.to(device), labels.to(device), batch,
                                                         compile_model=True)
        result["variants"][f"{arch}@{size}"] = entry
    print("LRN forward+backward ...", flush=True)
    result["lrn_48x30x30_batch128"] = lrn_microbench(device, repeats=20 if cuda else 5)
    print("trial overhead ...", flush=True)
    result["trial_overhead"] = trial_overhead(device)
    if cuda:
        result["bf16_matmul_tflops"] = matmul_tflops(device)
        for entry in result["variants"].values():
            achieved = entry["project"]["train_img_s"] * entry["gflop_per_trained_image"] / 1e3
            entry["fraction_of_matmul_rate"] = achieved / result["bf16_matmul_tflops"]
        result["trials_per_gpu"] = shared_device([1, 2, 4], images_per_worker=20_000)

    print(f"\n{result['device']}, torch {result['torch']}, {result['date']}")
    print(f"{'variant':<20}{'pipeline':<12}{'train img/s':>12}{'eval img/s':>12}{'s/epoch*':>10}")
    for name, e in result["variants"].items():
        for label, key, epoch in (("project", "project", e["epoch_s_project"]),
                                  ("documents", "documents", e["epoch_s_documents"])):
            print(f"{name:<20}{label:<12}{e[key]['train_img_s']:>12.0f}{e[key]['eval_img_s']:>12.0f}{epoch:>10.1f}")
        print(f"{'':<20}{'ratio':<12}{e['train_ratio']:>11.2f}x{e['eval_ratio']:>11.2f}x")
        if "documents_memory_kept" in e:
            kept = e["documents_memory_kept"]
            print(f"{'':<20}{'documents+':<12}{kept['train_img_s']:>12.0f}{kept['eval_img_s']:>12.0f}"
                  f"{'':>10}  (malloc keeping freed memory, as the project's pipeline: "
                  f"ratio {e['train_ratio_memory_kept']:.2f}x)")
        if "project_compiled" in e:
            compiled = e["project_compiled"]
            print(f"{'':<20}{'compiled':<12}{compiled['train_img_s']:>12.0f}{compiled['eval_img_s']:>12.0f}")
        if "fraction_of_matmul_rate" in e:
            print(f"{'':<20}training runs at {e['fraction_of_matmul_rate']:.1%} of the measured bf16 matmul rate "
                  f"({e['gflop_per_trained_image']:.2f} GFLOP per trained image)")
    print("* seconds per CIFAR-100-sized epoch: 45,000 training + 5,000 validation images")
    if "bf16_matmul_tflops" in result:
        print(f"bf16 matmul (8192^3): {result['bf16_matmul_tflops']:.0f} TFLOP/s")
    for k, shared in result.get("trials_per_gpu", {}).items():
        print(f"alexnet_cifar, {k} processes on one GPU: {shared['aggregate_img_s']:.0f} img/s in all")
    lrn = result["lrn_48x30x30_batch128"]
    print(f"LRN fwd+bwd (128x48x30x30): torch {lrn['torch_LocalResponseNorm_ms']:.1f} ms, channel-sum "
          f"{lrn['channel_sum_LRN_ms']:.1f} ms ({lrn['speedup']:.2f}x)")
    o = result["trial_overhead"]
    print(f"time outside training per trial: {o['total_s']:.3f} s (Optuna {o['optuna_s']:.3f}, MLflow "
          f"{o['mlflow_s']:.3f}, model build {o['model_build_s']:.3f})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{device.type}-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
