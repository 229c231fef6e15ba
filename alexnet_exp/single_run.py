"""`python -m alexnet_exp.train CONFIG.yaml [--set key=value ...]`: train one configuration, print a table."""
from __future__ import annotations

import argparse
import sys
import time

from tqdm import tqdm

from .config import ConfigError, load_config
from .data import DataError
from .run_parts import DataCache, evaluate_split, input_size, train_run
from .train import EpochMetrics, resolve_device

COLUMNS = ("epoch", "train_loss", "val_loss", "val_acc", "val_f1", "lr", "img/s", "sec")


def _row(m: EpochMetrics) -> str:
    return (f"{m.epoch:>5d} {m.train_loss:>10.4f} {m.val_loss:>10.4f} {m.val_accuracy:>8.4f} "
            f"{m.val_macro_f1:>8.4f} {m.lr:>9.2e} {m.images_per_second:>8.0f} {m.epoch_seconds:>6.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alexnet_exp.train",
                                     description="Train one AlexNet configuration and print per-epoch metrics.")
    parser.add_argument("config", help="YAML file, e.g. search_spaces/smoke.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value, e.g. --set train.batch_size=64 (repeatable); a rate: --set "
                             "train.lr_scale=2, or --set train.lr_scale=null --set train.lr=0.01")
    parser.add_argument("--test", action="store_true",
                        help="after training, evaluate once on the held-out test split")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    try:
        config = load_config(args.config, args.overrides)
        device = resolve_device(config.train.device)
    except (ConfigError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    cache = DataCache(device)
    try:
        data, _ = cache.get(config.data)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"data   {data.describe()} on {device}")
    print(f"model  {config.model.arch} norm={config.model.norm} groups={config.model.groups} "
          f"width={config.model.width} input={input_size(config.model, config.augment)}")
    t = config.train
    print(f"train  {t.optimizer} lr={t.lr} batch={t.batch_size} epochs={t.epochs} schedule={t.schedule}\n")
    print(" ".join(f"{c:>{w}}" for c, w in zip(COLUMNS, (5, 10, 10, 8, 8, 9, 8, 6))))

    bar = None if args.quiet else tqdm(total=config.train.epochs, unit="epoch", leave=False, file=sys.stderr)

    def on_batch(step: int, steps: int) -> None:
        if bar is not None:
            bar.set_postfix_str(f"step {step}/{steps}", refresh=False)
            bar.update(0)  # redraws at tqdm's own rate, not every step

    def on_epoch(m: EpochMetrics) -> None:
        if bar is not None:
            bar.update(1)
            bar.write(_row(m))
        else:
            print(_row(m), flush=True)

    parts, result = train_run(config, cache, on_epoch=on_epoch, on_batch=on_batch)
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - started
    if result.status != "completed":
        print(f"\nrun ended early: {result.status}: {result.reason}")
    best = max(result.history, key=lambda m: m.val_accuracy, default=None)
    if best is not None:
        print(f"\nbest epoch {best.epoch}: val accuracy {best.val_accuracy:.4f}, val macro-F1 {best.val_macro_f1:.4f}"
              f" (chance {1 / data.num_classes:.4f}); {elapsed:.1f} s in all")
    if args.test:
        test = evaluate_split(parts, "test", t.eval_batch_size)
        print(f"held-out test: accuracy {test.accuracy:.4f}, macro-F1 {test.macro_f1:.4f}, loss {test.loss:.4f}")
    return 0 if result.status == "completed" else 1
