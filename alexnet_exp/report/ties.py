"""Which configurations the study cannot tell apart from its best: seeds grouped per configuration (a search
trial and its repeats), their mean, spread and 95% interval, and the ties with the best (seed_stats.py does the
arithmetic). Reads a StudyData; writes nothing."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import pandas as pd

from ..sweep.search.seed_stats import SeedStats, binomial_halfwidth, seed_stats, within_noise
from .data import StudyData

BEST = "best"
TIED = "tied with the best (equal value)"
NOISE = "within noise of the best"
# Objectives that are a share of the validation images, so the split's binomial noise applies: exactly for
# accuracy, as an approximation for macro-F1 (a mean of per-class shares).
PROPORTIONS = ("val_accuracy", "val_macro_f1")


@dataclass
class Configuration:
    number: int  # the search trial whose configuration this is
    trials: list[int]  # its complete trials: the original and its repeats (other seeds)
    stats: SeedStats  # every seed, the search trial's included
    fresh: Optional[SeedStats] = None  # the repeats' seeds only (the search seed was selected for being good)
    search_value: Optional[float] = None  # the search trial's own value (None: only its repeats completed)
    label: str = ""  # BEST, TIED, NOISE or ""

    @property
    def estimate(self) -> SeedStats:
        """What the configuration is judged by: its fresh seeds, or its one seed when it was not repeated."""
        return self.fresh or self.stats


def split_size(data: StudyData) -> Optional[int]:
    return data.val_images if data.metric in PROPORTIONS else None


def configurations(data: StudyData) -> list[Configuration]:
    """Every configuration with a complete trial, labelled against the study's chosen one."""
    groups: dict[int, list] = {}
    for t in data.trials:
        if t.state == "COMPLETE" and t.value is not None and math.isfinite(t.value):
            groups.setdefault(t.repeat_of if t.repeat_of is not None else t.number, []).append(t)
    configs = []
    for n, ts in sorted(groups.items()):
        repeats = [t.value for t in ts if t.repeat_of is not None]
        search = next((t.value for t in ts if t.repeat_of is None), None)
        configs.append(Configuration(n, [t.number for t in ts], seed_stats([t.value for t in ts]),
                                     seed_stats(repeats) if repeats else None, search))
    if not configs:
        return []
    sign = 1.0 if data.direction == "maximize" else -1.0
    # the study's own choice (data.best_number: with repeats, the best fresh-seed mean among the repeated
    # configurations, one that failed on a seed last), so that the report and the sweep name the same winner
    best = (next((c for c in configs if c.number == data.best_number), None)
            or max(configs, key=lambda c: sign * c.estimate.mean))
    size = split_size(data)
    for c in configs:
        if c is best:
            c.label = BEST
        elif c.estimate.mean == best.estimate.mean:
            c.label = TIED  # equal values: the order between them would be only the trial order
        elif within_noise(c.estimate, best.estimate, size):
            c.label = NOISE
    return configs


def labels_by_trial(configs: list[Configuration]) -> dict[int, str]:
    return {n: c.label for c in configs for n in c.trials}


def seeds_table(configs: list[Configuration]) -> pd.DataFrame:
    """One row per configuration trained with more than one seed."""
    return pd.DataFrame([{"configuration": f"trial {c.number}", "trials": ", ".join(map(str, c.trials)),
                          "fresh seeds": c.estimate.n, "fresh mean": c.estimate.mean, "fresh std": c.estimate.std,
                          "ci95_low": c.estimate.low, "ci95_high": c.estimate.high,
                          "fresh mean ± std (95% CI)": c.estimate.text(), "search seed": c.search_value,
                          "mean of all seeds": c.stats.mean, "vs_best": c.label}
                         for c in configs if c.stats.n > 1])


def noise_blocks(data: StudyData, configs: list[Configuration]) -> list[str | pd.DataFrame]:
    """The report's section on seeds and ties; empty when no trial is complete."""
    if not configs:
        return []
    best = next(c for c in configs if c.label == BEST)
    size = split_size(data)
    if size:
        half = binomial_halfwidth(min(max(best.estimate.mean, 0.0), 1.0), size)
        single = (f"a configuration trained once is compared through the binomial noise of a share measured on "
                  f"the {size:,} validation images (±{half:.3f} at the best's value, 95%"
                  f"{'; an approximation for macro-F1' if data.metric == 'val_macro_f1' else ''}) only: the "
                  f"split's noise, not the seed's, which one seed cannot show, so such a test calls differences "
                  f"real more readily than repeated seeds would")
    else:
        single = ("the validation split's size is unknown (no run logged it) or the objective is not a share of "
                  "its images, so a configuration trained once ties with the best only on an equal value")
    if best.fresh is not None and best.search_value is not None:
        chosen = (f"Best configuration by the mean of its fresh seeds (its repeats; the search trial's seed, which "
                  f"got it chosen among many on one seed, is biased upward and left out): trial {best.number}, "
                  f"{data.metric} {best.fresh.text()}; its search seed gave {best.search_value:.4f}, the mean of "
                  f"all {best.stats.n} seeds is {best.stats.mean:.4f}.")
    else:
        chosen = f"Best configuration: trial {best.number}, {data.metric} {best.stats.text()}."
    blocks: list[str | pd.DataFrame] = [
        "## Seeds and ties",
        f"{chosen} Repeated configurations are compared on their fresh seeds; two tie when the 95% Welch interval "
        f"of their difference contains 0 (seed spread from their repeats); {single}."]
    tied = [c for c in configs if c.label in (TIED, NOISE)]
    if tied:
        blocks.append(f"**{len(tied)} configuration(s) cannot be told apart from the best**: "
                      + "; ".join(f"trial {c.number}, {c.label}" for c in tied)
                      + ". Their order in the trials table is not a ranking; repeat them with more seeds to "
                        "separate them.")
    else:
        blocks.append("No other configuration is within noise of the best.")
    table = seeds_table(configs)
    if not table.empty:
        blocks += ["Configurations trained with several seeds (complete trials: the original and its repeats; "
                   "\"fresh\" are the repeats' seeds, ranked on):", table]
    return blocks
