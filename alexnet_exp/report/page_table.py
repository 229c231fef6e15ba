"""The trials table as the report's page shows it, read at 1400 px without sideways scrolling (issue 21):
trials.csv keeps every column; the page leaves out what says nothing row by row. A column with one value in
every trial becomes a sentence above the table, the epochs run and budgeted share one column, the augmentation
summary goes when the crop and flip columns already show it, the note sits under its trial, and the trial
number links to its MLflow run on a tracking server."""
from __future__ import annotations

import pandas as pd

from .data import StudyData
from .render import Table, fmt

# Never folded into the sentence, even when equal in every row: they are what a reader compares.
KEEP = ("trial", "state", "vs_best")
# What the `augmentation` summary is made of (data._augmentation).
AUGMENT_KEYS = ("augment.crop", "augment.crop_padding", "augment.flip", "augment.pca_color")
# Prose that wraps in its cell instead of widening the table.
WRAP = ("vs_best", "baseline")


def _same_everywhere(frame: pd.DataFrame, column: str) -> bool:
    return frame[column].map(fmt).nunique() == 1


def _augmentation_shown_by_columns(data: StudyData, columns: dict[str, str]) -> bool:
    """Whether every augmentation setting that differs between trials has a column of its own."""
    keys = set(columns.values())
    for key in AUGMENT_KEYS:
        part = key.split(".", 1)[1]
        values = {fmt(getattr(t.config.augment, part)) for t in data.trials if t.config is not None}
        if len(values) > 1 and key not in keys:
            return False
    return True


def page_table(data: StudyData, frame: pd.DataFrame, columns: dict[str, str]) -> tuple[Table, str]:
    """The page's table and the sentence of values every trial shares ("" when none). `frame` is
    trials_frame's (run_id included), `columns` its parameter columns (data.param_columns)."""
    links = {"trial": [data.run_link(r) for r in frame["run_id"]]} if "run_id" in frame else {}
    page = frame.drop(columns=["run_id"], errors="ignore")
    if {"epochs_run", "epochs"} <= set(page.columns):  # "2/3": pruned after 2 of its 3
        merged = [f"{fmt(run)}/{fmt(budget)}" if fmt(budget) else fmt(run)
                  for run, budget in zip(page["epochs_run"], page["epochs"])]
        page = page.drop(columns="epochs_run").assign(epochs=merged)
    shared = []
    if len(page) > 1:
        for column in [c for c in page.columns if c not in KEEP and c != "note"]:
            if _same_everywhere(page, column):
                value = fmt(page[column].iloc[0])
                if value:
                    shared.append(f"`{column}={value}`")
                page = page.drop(columns=column)
    if "augmentation" in page and _augmentation_shown_by_columns(data, columns):  # it varies, and they show how
        page = page.drop(columns="augmentation")
    sentence = f"Same in every trial (not repeated in the table): {', '.join(shared)}." if shared else ""
    return Table(page, links, below=("note",), wrap=tuple(c for c in WRAP if c in page.columns)), sentence
