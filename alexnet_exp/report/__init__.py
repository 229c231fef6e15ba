"""The reports wing: `python -m alexnet_exp.report` compares the trials of a sweep, like the hand-written list
it replaces. It reads the Optuna study and its MLflow runs (never trains, needs no GPU) and writes
`reports/<study>/`: report.md, a self-contained report.html, trials.csv and the figures as PNG.

data.py reads a study (Optuna + MLflow) into rows; ties.py groups seeds and calls ties; references.py holds the
seed documents' own figures and the reported-vs-replayed rows; figures.py and study_figures.py draw; render.py
writes Markdown and HTML; cli.py lays the report out. Nothing here is imported by the training or sweep side.
"""
from .cli import comparison_report, main, study_report

__all__ = ["comparison_report", "main", "study_report"]
