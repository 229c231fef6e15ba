"""Repeated seeds (`study.repeats: {top_k: K, seeds: S}`): once the search budget is spent, the K best
configurations are trained again with S further seeds each, as trials of their own (resumable, tracked like any
trial, never pruned), and the winner is the configuration with the best mean over its fresh seeds: the seed of
its search trial was selected for being good (the top 3 of 50 on one seed are partly luck), so it is left out
of the ranking and shown beside it.

On a 5,000-image validation split an accuracy near 48% carries about +-1.4 points of sampling noise alone, more
than the gap between the top trials of a sweep; one seed per configuration lets the noise pick the winner.

The plan (which trials are repeated, with which seeds) is written once into the study, under the study lock, by
whichever worker finds the search settled first; every worker then runs the planned repeats as they come.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import optuna
from optuna.trial import TrialState

from .. import keys
from ..upstream import retry_history
from .budget import budget_state, is_repeat, is_verdict
from .seed_stats import SeedStats, seed_stats

SEED_KEY = "train.seed"


@dataclass(frozen=True)
class RepeatPlan:
    after_trial: int  # the highest trial number when the plan was made: later sampled trials are surplus
    seeds: dict[int, list[int]]  # search trial number -> the seeds of its repeats
    # what it was made for: a resume with a larger search budget, or other repeats settings, plans anew
    n_trials: int = 0
    top_k: int = 0
    n_seeds: int = 0

    def made_for(self, n_trials: int, top_k: int, seeds: int) -> bool:
        return (self.n_trials, self.top_k, self.n_seeds) == (n_trials, top_k, seeds)

    @property
    def planned(self) -> int:
        return sum(len(s) for s in self.seeds.values())

    def keys(self) -> set[tuple[int, int]]:
        return {(number, seed) for number, seeds in self.seeds.items() for seed in seeds}


@dataclass
class ConfigGroup:
    """One configuration: its search trial and the complete repeats of it, with their seed statistics.

    `fresh` are the repeats' seeds alone. The search trial's seed is the one that got the configuration chosen
    (the top 3 of 50 on one seed are there partly by luck), so a mean that includes it is biased upward:
    configurations are ranked on `fresh`, and `stats` (all seeds) is shown beside it."""

    trial: optuna.trial.FrozenTrial  # the search trial
    members: list[optuna.trial.FrozenTrial]  # COMPLETE trials of this configuration, the search trial first
    failed: int  # repeats that ended as a verdict failure (diverged, stalled ...) or were pruned
    stats: SeedStats  # every seed, the search trial's included
    fresh: Optional[SeedStats] = None  # the repeats' seeds only; None before one completes

    @property
    def estimate(self) -> SeedStats:
        """What the configuration is judged by: its fresh seeds, or its only seed before any repeat is in."""
        return self.fresh or self.stats


def load_plan(study: optuna.Study) -> Optional[RepeatPlan]:
    raw = study.user_attrs.get(keys.REPEATS_PLAN)
    if raw is None:
        return None
    data = json.loads(raw)
    return RepeatPlan(data["after_trial"], {int(k): v for k, v in data["seeds"].items()}, data.get("n_trials", 0),
                      data.get("top_k", 0), data.get("n_seeds", 0))


def values_of(trial: optuna.trial.FrozenTrial) -> dict:
    return json.loads(trial.user_attrs.get(keys.VALUES, "{}"))


def repeat_key(trial: optuna.trial.FrozenTrial) -> Optional[tuple[int, int]]:
    """(search trial number, seed) of a repeat; None for any other trial."""
    of = trial.user_attrs.get(keys.REPEAT_OF)
    if of is None:
        return None
    return int(of), int(json.loads(trial.user_attrs.get(keys.FIXED, "{}"))[SEED_KEY])


def _configuration(trial: optuna.trial.FrozenTrial) -> str:
    return json.dumps({k: v for k, v in values_of(trial).items() if k != SEED_KEY}, sort_keys=True)


def top_configurations(trials: list[optuna.trial.FrozenTrial], k: int,
                       maximize: bool) -> list[optuna.trial.FrozenTrial]:
    """The K best COMPLETE search trials with distinct configurations (a baseline and a sampled trial that
    happen to agree count once), best first; ties keep the lower trial number."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and not is_repeat(t)]
    complete.sort(key=lambda t: (-t.value if maximize else t.value, t.number))
    chosen, seen = [], set()
    for t in complete:
        if _configuration(t) not in seen:
            seen.add(_configuration(t))
            chosen.append(t)
        if len(chosen) == k:
            break
    return chosen


def best_search_trial(study: optuna.Study) -> Optional[optuna.trial.FrozenTrial]:
    """The best COMPLETE search trial (repeats left out; ties: the earlier trial), None before one completes."""
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    top = top_configurations(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), 1, maximize)
    return top[0] if top else None


def search_settled(study: optuna.Study, n_trials: int) -> bool:
    """The search budget is met and no search trial is still running (one of them could still be the best)."""
    finished, running = budget_state(study)
    return finished >= n_trials and not running


def _present(trial: optuna.trial.FrozenTrial, max_retries: int) -> bool:
    """A repeat that is done, under way or queued, or that its worker lost and Optuna is about to retry (it
    fails the stale trial first and queues the retry just after, outside any lock of ours)."""
    retries_left = len(retry_history(trial)) < max_retries
    return (trial.state in (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
            or is_verdict(trial) or (trial.user_attrs.get(keys.FAIL_KIND) == keys.LOST and retries_left))


def ensure_repeats(study: optuna.Study, n_trials: int, top_k: int, seeds: int, default_seed: int,
                   max_retries: int = 2) -> RepeatPlan:
    """Make the plan if there is none for this search budget and these settings (a resume with a larger
    `n_trials` plans again, among all search trials), and enqueue every planned repeat that is not present (a
    repeat that raised an error runs again; one already trained for an earlier plan counts). Call under the
    study lock, once the search is settled, after queueing interrupted trials to resume."""
    plan = load_plan(study)
    trials = study.get_trials(deepcopy=False)
    if plan is None or not plan.made_for(n_trials, top_k, seeds):
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        top = top_configurations(trials, top_k, maximize)
        plan = RepeatPlan(max((t.number for t in trials), default=-1), {
            t.number: [int(values_of(t).get(SEED_KEY, default_seed)) + i for i in range(1, seeds + 1)] for t in top},
            n_trials, top_k, seeds)
        study.set_user_attr(keys.REPEATS_PLAN, json.dumps({
            "after_trial": plan.after_trial, "seeds": plan.seeds, "n_trials": n_trials, "top_k": top_k,
            "n_seeds": seeds}))
    present = {repeat_key(t) for t in trials if is_repeat(t) and _present(t, max_retries)}
    by_number = {t.number: t for t in trials}
    for number, seed in sorted(plan.keys() - present):
        original = by_number[number]
        fixed = {**json.loads(original.user_attrs.get(keys.FIXED, "{}")), SEED_KEY: seed}
        attrs = {keys.REPEAT_OF: number, keys.FIXED: json.dumps(fixed)}
        if keys.BASELINE in original.user_attrs:
            attrs[keys.BASELINE] = original.user_attrs[keys.BASELINE]
        study.enqueue_trial(original.params, user_attrs=attrs, skip_if_exists=False)
    return plan


def repeats_state(study: optuna.Study, plan: RepeatPlan) -> tuple[int, int]:
    """(planned repeats finished, planned repeats running), each (trial, seed) counted once."""
    finished, running = set(), set()
    for t in study.get_trials(deepcopy=False):
        key = repeat_key(t)
        if key is None or key not in plan.keys():
            continue
        if is_verdict(t):
            finished.add(key)
        elif t.state == TrialState.RUNNING:
            running.add(key)
    return len(finished), len(running - finished)


def sweep_complete(study: optuna.Study, n_trials: int, repeats: Optional[tuple[int, int]]) -> bool:
    """Is everything the study asks for done: the search budget, and with `repeats` (top_k, seeds) the
    repeats planned for this budget and these settings?"""
    if repeats is None:
        return budget_state(study)[0] >= n_trials
    plan = load_plan(study)
    return (plan is not None and plan.made_for(n_trials, *repeats) and search_settled(study, n_trials)
            and repeats_state(study, plan)[0] >= plan.planned)


def config_groups(study: optuna.Study, plan: RepeatPlan) -> list[ConfigGroup]:
    """The repeated configurations, best mean first (the report calls the ties, report/ties.py)."""
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    groups = []
    for number in plan.seeds:
        original = by_number[number]
        repeats = [t for t in trials if (repeat_key(t) or (None,))[0] == number]
        by_seed = {}  # one result per seed: a lost repeat queued twice (see _present) must not count twice
        for t in repeats:
            if t.state == TrialState.COMPLETE:
                by_seed.setdefault(repeat_key(t), t)
        members = [original] + list(by_seed.values())
        failed = sum(1 for t in repeats
                     if t.state == TrialState.PRUNED or (is_verdict(t) and t.state == TrialState.FAIL))
        fresh = seed_stats([t.value for t in by_seed.values()]) if by_seed else None
        groups.append(ConfigGroup(original, members, failed, seed_stats([t.value for t in members]), fresh))
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    # Ranked on the fresh seeds (see ConfigGroup). A configuration that failed on a seed is ranked after every
    # one that completed all of them: a mean over the seeds that happened to work would hide that it is not
    # reliable; one with no repeat in yet after those that have some.
    groups.sort(key=lambda g: (g.failed > 0, g.fresh is None, -g.estimate.mean if maximize else g.estimate.mean,
                               g.trial.number))
    return groups


def chosen_configuration(study: optuna.Study, repeats: bool
                         ) -> Optional[tuple[optuna.trial.FrozenTrial, list, Optional[ConfigGroup]]]:
    """What the study chose, the one reading of it (the test evaluation, the parent run and the report): (its
    search trial, the COMPLETE trials of its configuration, its repeated-seeds group or None). With `repeats`
    (the config's `study.repeats` is set) and a plan made, the configuration with the best mean over its fresh
    seeds; else the best single search trial, as the config says, even where an earlier run planned repeats.
    None before any search trial completes."""
    plan = load_plan(study) if repeats else None
    groups = config_groups(study, plan) if plan is not None else []
    if groups:
        return groups[0].trial, groups[0].members, groups[0]
    best = best_search_trial(study)
    return (best, [best], None) if best is not None else None
