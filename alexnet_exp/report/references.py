"""What others reported, beside what this study measured: the seed documents' own figures (each labelled with
its document, run, split and metric, nothing else) and, for every baseline that carries `names.REPORTED`, its
source's figures beside the replayed trial's."""
from __future__ import annotations

import pandas as pd

from .data import StudyData, TrialRow
from .ties import Configuration

# Each seed document's own figures, read from /work/shared/seeds (000..004); None where it reports none.
# Documents 001 and 002 (ImageNet notes; 002 uses pretrained weights) report no figure of their own.
REFERENCE_RESULTS = {
    "cifar100": [{
        "source": "seed document 003: CIFAR-100 AlexNet notebook (PyTorch), run 7 of its 8 hand-tuned runs "
                  "(random crop, flip, normalisation, batch 32, SGD lr 0.005, 20 epochs)",
        "split": "test (10,000 images)", "metric": "accuracy and macro-F1",
        "accuracy": 0.4831, "macro_f1": 0.4727,
        # Its `correct / (num_steps * batch_size)` divides by 313 full batches of 32 = 10,016 images.
        "note": "printed 'Test Accuracy: 0.48232827476038337' (correct / 10,016); 4831 / 10,000 = 0.4831"}],
    "cifar10": [
        {"source": "seed document 000: 'Overview of the AlexNet Unit', a smaller AlexNet in PyTorch "
                   "(Adam, batch 256, 30 epochs configured)",
         "split": "test (10,000 images)", "metric": "accuracy only",
         "accuracy": 0.7082, "macro_f1": None,
         "note": "printed 'Test Accuracy of the model on the 10000 test images: 70.82 %'"},
        {"source": "seed document 004: blog post 'AlexNet' (2020-08-09), AlexNetSmall in TensorFlow "
                   "(Adam; trained 'for many epochs' before a 10-epoch demonstration)",
         "split": "test (10,000 images)", "metric": "accuracy only",
         "accuracy": 0.6436, "macro_f1": None, "note": "printed 'test accuracy: 0.6436'"}],
}


def reference_blocks(data: StudyData) -> list:
    refs = REFERENCE_RESULTS.get(data.dataset)
    if not refs:
        return []
    rows = [{"result": f"reported, not rerun: {r['source']}", "split": r["split"], "metric": r["metric"],
             "accuracy": r["accuracy"], "macro_f1": r["macro_f1"], "note": r["note"]} for r in refs]
    best = data.best()
    if best is not None:
        rows.append({"result": f"this sweep, best trial {best.number}", "split": "validation",
                     "metric": "accuracy and macro-F1", "accuracy": best.last("val_accuracy"),
                     "macro_f1": best.last("val_macro_f1"), "note": ""})
        if data.test_metrics:
            rows.append({"result": f"this sweep, best trial {best.number}", "split": "held-out test",
                         "metric": "accuracy and macro-F1", "accuracy": data.test_metrics["test_accuracy"],
                         "macro_f1": data.test_metrics["test_macro_f1"], "note": "evaluated once"})
    return ["## Reference results",
            "Each seed document's own figure, with its split and metric; the documents trained other networks "
            "on other pipelines, so these are landmarks, not replays.", pd.DataFrame(rows)]


def _replayed(data: StudyData, baseline: str) -> TrialRow:
    """The trial that replays a baseline: its last complete one (a retried baseline has several), else its last."""
    trials = [t for t in data.trials if t.baseline == baseline and t.repeat_of is None]
    complete = [t for t in trials if t.state == "COMPLETE"]
    return max(complete or trials, key=lambda t: t.number)


def _metric(t: TrialRow, data: StudyData, metric: str):
    """A replayed trial's last validation figure; its objective's value when no curve was logged."""
    value = t.last(metric)
    return t.value if value is None and metric == data.metric else value


LOGIT_RELU = "model.logit_relu"


def _without_logit_relu(data: StudyData, replay: TrialRow):
    """For a replay of a network with the logit ReLU (the CIFAR-100 notebook's bug), a trial of the same
    configuration without it, if the study has one: the row that shows what removing the bug alone buys."""
    if not replay.values.get(LOGIT_RELU):
        return None
    same = {k: v for k, v in replay.values.items() if k != LOGIT_RELU}
    found = [u for u in data.trials if u.repeat_of is None and not u.values.get(LOGIT_RELU)
             and {k: v for k, v in u.values.items() if k != LOGIT_RELU} == same]
    return max(found, key=lambda u: (u.state == "COMPLETE", u.number)) if found else None


def reported_blocks(data: StudyData, configs: list[Configuration]) -> list:
    baselines = list(dict.fromkeys(t.baseline for t in data.trials if t.baseline and t.reported))
    if not baselines:
        return []
    seeds = {c.number: c for c in configs if c.stats.n > 1}
    rows = []
    for name in baselines:
        t = _replayed(data, name)
        reported = next(r.reported for r in data.trials if r.baseline == name and r.reported)
        source = reported.get("source") or reported.get("note") or "its source document"
        rows.append({"baseline": name, "figures": f"reported ({source}, {reported.get('split', '?')} split)",
                     "accuracy": reported.get("accuracy"), "macro_f1": reported.get("macro_f1"),
                     "epochs": reported.get("epoch", reported.get("epochs")), "seeds": ""})
        for u, label in ((t, "replayed here"), (_without_logit_relu(data, t), "without the logit ReLU")):
            if u is None:
                continue
            repeated = seeds.get(u.number)
            rows.append({"baseline": name if u is t else u.baseline,
                         "figures": f"{label}: trial {u.number} ({u.state.lower()}), validation split",
                         "accuracy": _metric(u, data, "val_accuracy"), "macro_f1": _metric(u, data, "val_macro_f1"),
                         "epochs": len(u.curves.get("val_loss", [])) or (u.config.train.epochs if u.config else None),
                         "seeds": (f"{data.metric} {repeated.estimate.text()} (fresh seeds; with its own "
                                   f"{repeated.stats.mean:.4f})") if repeated else "1 seed"})
    return ["## Reported vs replayed",
            "Each baseline that replays a documented run: the figures its source reported, then this sweep's "
            "trial, and where the study trained the same configuration without the source network's ReLU on its "
            "logits (`model.logit_relu`, a bug), that trial too. The source measured its own split (often the "
            "test split); the replay is measured on this sweep's validation split, the test split being kept for "
            "the final best trial.",
            pd.DataFrame(rows)]
