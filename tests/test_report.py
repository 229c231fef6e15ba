import base64
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import optuna
import pandas as pd
import pytest
from sweep_helpers import mlflow_runs, run_sweep, write_config

from alexnet_exp import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One small real sweep with complete, pruned and failed trials, shared by the tests here."""
    root = tmp_path_factory.mktemp("report")
    old = os.getcwd()
    os.chdir(root)
    try:
        baselines = [
            {"name": "good", "train.optimizer": "sgd", "train.lr": 0.03, "train.momentum": 0.9},
            {"name": "slow", "train.optimizer": "sgd", "train.lr": 1e-7, "train.momentum": 0.0},
            {"name": "boom", "train.optimizer": "sgd", "train.lr": 10.0, "train.momentum": 0.9, "model.norm": "none"},
        ]
        cfg = write_config(root / "s.yaml", baselines=baselines, train={"epochs": 3, "stall_epochs": 5},
                           study={"name": "tiny", "n_trials": 5, "sampler": "random", "pruner": "median",
                                  "pruner_options": {"n_startup_trials": 1, "min_warmup_epochs": 1,
                                                     "warmup_fraction": 0.0}})
        assert run_sweep(root, cfg) == 0
        yield root
    finally:
        os.chdir(old)


@pytest.fixture
def in_swept(swept, monkeypatch):
    monkeypatch.chdir(swept)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{swept / 'mlflow.db'}")
    return swept


def test_report_from_a_real_sweep(in_swept, capsys):
    assert report.main(["--study", "tiny"]) == 0
    out_dir = in_swept / "reports" / "tiny"
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{in_swept / 'sweeps/tiny/optuna.db'}")
    trials = study.get_trials()

    table = pd.read_csv(out_dir / "trials.csv")
    assert sorted(table["trial"]) == [t.number for t in trials]
    by_number = table.set_index("trial")
    for t in trials:
        assert by_number.loc[t.number, "state"] == t.state.name
    named = {t.user_attrs.get("baseline"): t.number for t in trials}
    # which epoch is the pruner's (pruning.py's fair-share rule); the note names the one it stopped at
    slow = study.trials[named["slow"]]
    assert by_number.loc[named["slow"], "note"] == f"pruned at epoch {slow.user_attrs['pruned_at_epoch']}"
    assert by_number.loc[named["boom"], "note"].startswith("diverged")
    complete = table[table["state"] == "COMPLETE"]["val_accuracy"].tolist()
    assert complete == sorted(complete, reverse=True) and table.iloc[0]["state"] == "COMPLETE"
    assert table.iloc[0]["trial"] == study.best_trial.number

    page = (out_dir / "report.html").read_text()
    pngs = sorted(out_dir.glob("*.png"))
    assert {p.name for p in pngs} >= {"loss_curves.png", "metric_curves.png", "history.png", "learning_rate.png",
                                      "confusion_matrix.png", "per_class_f1.png", "first_layer_kernels.png",
                                      "parallel_coordinates.png", "slices_1.png", "timeline.png"}
    for png in pngs:
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
        assert base64.b64encode(data).decode() in page  # embedded: the HTML stands alone
        assert f'alt="{png.name}"' in page
    markdown = (out_dir / "report.md").read_text()
    assert all(f"]({png.name})" in markdown for png in pngs)
    assert f"Best trial {study.best_trial.number}" in markdown and "Held-out test split" in markdown
    assert "Command: `python -m alexnet_exp.sweep" in markdown
    assert "Ten worst classes" in markdown

    # and the report went to the study's parent run
    client, parents, _ = mlflow_runs(in_swept)
    logged = {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}
    assert "report/report.html" in logged and "report/trials.csv" in logged


def test_report_without_arguments_covers_every_study(in_swept, capsys):
    assert report.main(["--no-mlflow"]) == 0
    assert "tiny: reports/tiny/report.html" in capsys.readouterr().out


def test_running_study_gives_a_snapshot(in_swept):
    storage = f"sqlite:///{in_swept / 'sweeps/tiny/optuna.db'}"
    study = optuna.load_study(study_name="tiny", storage=storage)
    running = study.ask()  # a trial some worker is in the middle of
    try:
        assert report.main(["--study", "tiny", "--no-mlflow"]) == 0
        markdown = (in_swept / "reports/tiny/report.md").read_text()
        assert "still running: this report is a snapshot" in markdown
        table = pd.read_csv(in_swept / "reports/tiny/trials.csv")
        assert table.set_index("trial").loc[running.number, "state"] == "RUNNING"
    finally:
        study.tell(running, state=optuna.trial.TrialState.FAIL)


def test_study_with_no_finished_trial(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path / "s.yaml", baselines=[{"name": "bad", "train.nesterov": True,
                                                         "train.momentum": 0.0, "train.optimizer": "sgd"}],
                       study={"name": "tiny", "n_trials": 1, "sampler": "random", "pruner": "none"})
    assert run_sweep(tmp_path, cfg) == 0
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert report.main(["--study", "tiny"]) == 0
    markdown = (tmp_path / "reports/tiny/report.md").read_text()
    assert "No trial has completed yet" in markdown
    assert "invalid: train: nesterov" in markdown
    assert len(pd.read_csv(tmp_path / "reports/tiny/trials.csv")) == 1


def test_two_studies_side_by_side(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("alpha", "beta"):
        cfg = write_config(tmp_path / f"{name}.yaml", study={"name": name, "n_trials": 1, "sampler": "random",
                                                             "pruner": "none", "experiment": "tiny"},
                           train={"epochs": 1})
        assert run_sweep(tmp_path, cfg) == 0
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert report.main(["--study", "alpha", "--study", "beta", "--no-mlflow"]) == 0
    folder = tmp_path / "reports" / "compare-alpha-beta"
    table = pd.read_csv(folder / "trials.csv")
    assert sorted(table["study"]) == ["alpha", "beta"]
    page = (folder / "report.html").read_text()
    assert re.search(r"<td>alpha</td>", page) and re.search(r"<td>beta</td>", page)
    assert (folder / "history.png").read_bytes().startswith(PNG_MAGIC)


def test_missing_study_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert report.main([]) == 2
    assert "no study under sweeps/" in capsys.readouterr().err
    assert report.main(["--study", "nope"]) == 2
    assert "run the sweep first" in capsys.readouterr().err


# ---- issue 12 (part 5): the report answers the notebook's question -------------------------------------------

WIDE_SPACE = {  # a few of cifar100.yaml's dimensions, a conditional one included; lr kept at chance on purpose
    "train.lr": {"type": "float", "low": 1e-7, "high": 1e-6, "log": True},
    "train.optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
    "train.momentum": {"type": "float", "low": 0.5, "high": 0.9, "when": {"train.optimizer": "sgd"}},
    "train.weight_decay": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
    "train.label_smoothing": {"type": "categorical", "choices": [0.0, 0.1]},
    "train.schedule": {"type": "categorical", "choices": ["none", "cosine"]},
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
}
WIDE_COLUMNS = {"lr", "optimizer", "momentum", "weight_decay", "label_smoothing", "schedule", "dropout"}
REPORTED = {"accuracy": 0.4823, "macro_f1": 0.4727, "split": "test", "epoch": 20,
            "source": "CIFAR-100 notebook, run 7", "note": "its printed accuracy divides by 10,016"}
# Objective values chosen so the ties are known (binary fractions: the means are exact). The first value is a
# configuration's search seed, the others its fresh seeds (repeats), on which repeated configurations are
# compared. Configuration A is the best by its fresh mean (0.671875); B overlaps it within its seeds' spread; C
# is far below; D (one seed) equals A's fresh mean; E (one seed) is outside the 150-image split's binomial noise
# of A, F (one seed) inside it; G's lucky search seed (0.9375) puts the mean of all its seeds (0.6875) above A's
# (0.65625), but its fresh seeds (0.5625) are below: ranked on them, it is not the best.
SEEDS = {"A": [0.625, 0.6875, 0.65625], "B": [0.59375, 0.6875, 0.625], "C": [0.25, 0.28125, 0.3125],
         "D": [0.671875], "E": [0.5], "F": [0.59375], "G": [0.9375, 0.5625, 0.5625]}


def _add_configuration(study, template, index, values):
    """A configuration (its search trial and, past the first value, repeats of it with other seeds) added to the
    real study as finished trials with chosen objective values, the user attributes the sweep writes."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    params = dict(template.params)
    for name, dist in template.distributions.items():  # a configuration of its own: other floats
        if isinstance(dist, FloatDistribution):
            params[name] = dist.low + (dist.high - dist.low) * (0.1 + 0.8 * (index % 7) / 7)
    sampled = dict(json.loads(template.user_attrs["values"]), **params)
    numbers = []
    for seed, value in enumerate(values):
        attrs = {"values": json.dumps(dict(sampled, **({"train.seed": seed} if seed else {})))}
        if seed:
            attrs.update(repeat_of=numbers[0], fixed=json.dumps({"train.seed": seed}))
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=value, params=params,
                                     distributions=template.distributions, user_attrs=attrs))
        numbers.append(study.get_trials(deepcopy=False)[-1].number)
    return numbers


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """A real sweep over a wider space (its one sampled trial, then an enqueued baseline that carries the
    figures its source reported), then configurations with chosen values and repeated seeds added to the same
    study. Reports are written after the first configuration (5 complete trials) and at the end."""
    root = tmp_path_factory.mktemp("noisy")
    old = os.getcwd()
    os.chdir(root)
    try:
        cfg = write_config(root / "s.yaml", space=WIDE_SPACE, train={"epochs": 1},
                           study={"name": "noisy", "n_trials": 1, "sampler": "random", "pruner": "none"})
        assert run_sweep(root, cfg) == 0
        storage = f"sqlite:///{root / 'sweeps/noisy/optuna.db'}"
        study = optuna.load_study(study_name="noisy", storage=storage)
        first = study.trials[0]
        study.enqueue_trial(first.params, user_attrs={"baseline": "nb-run-7", "reported": json.dumps(REPORTED),
                                                      "fixed": "{}"})
        assert run_sweep(root, cfg, "--trials", "2") == 0
        template = study.trials[0]
        numbers = {"A": _add_configuration(study, template, 1, SEEDS["A"])}
        tracking = ["--tracking-uri", f"sqlite:///{root / 'mlflow.db'}", "--no-mlflow"]
        assert report.main(["--study", "noisy", "--out", "early", *tracking]) == 0
        for i, name in enumerate("BCDEFG", start=2):
            numbers[name] = _add_configuration(study, template, i, SEEDS[name])
        # the plan the sweep writes for repeats: the configurations trained with more seeds, and their seeds
        repeated = {numbers[n][0]: [1, 2] for n in "ABCG"}
        study.set_user_attr("repeats_plan", json.dumps({"after_trial": max(repeated), "seeds": repeated,
                                                        "n_trials": 2, "top_k": 4, "n_seeds": 2}))
        assert report.main(["--study", "noisy", *tracking]) == 0
        yield root, study, numbers
    finally:
        os.chdir(old)


def test_every_sampled_parameter_is_a_column(noisy, in_swept):
    from alexnet_exp.report.render import fmt

    root, study, _ = noisy
    table = pd.read_csv(root / "reports/noisy/trials.csv").set_index("trial")
    assert WIDE_COLUMNS <= set(table.columns)
    markdown = (root / "reports/noisy/report.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| trial |"))
    shared = next(line for line in markdown.splitlines() if line.startswith("Same in every trial"))
    for column in WIDE_COLUMNS:  # a column of the page's table, or one value for all in the sentence above it
        assert column in {c.strip() for c in header.split("|")} or f"`{column}={fmt(table[column].iloc[0])}`" in shared
    for t in study.trials:  # each cell is what the trial trained with; inactive parameters are blank
        values = json.loads(t.user_attrs["values"])
        assert table.loc[t.number, "lr"] == pytest.approx(values["train.lr"])
        assert table.loc[t.number, "dropout"] == pytest.approx(values["model.dropout"])
        assert table.loc[t.number, "schedule"] == values["train.schedule"]
        if "train.momentum" in values:
            assert table.loc[t.number, "momentum"] == pytest.approx(values["train.momentum"])
        else:
            assert pd.isna(table.loc[t.number, "momentum"])

    # the small real sweep: its conditional momentum too (missing from the fixed columns before)
    assert report.main(["--study", "tiny", "--no-mlflow"]) == 0
    tiny = pd.read_csv(in_swept / "reports/tiny/trials.csv").set_index("trial")
    swept = optuna.load_study(study_name="tiny", storage=f"sqlite:///{in_swept / 'sweeps/tiny/optuna.db'}")
    momenta = {t.number: json.loads(t.user_attrs["values"]).get("train.momentum") for t in swept.trials
               if "values" in t.user_attrs}  # (a trial another test asked for and failed has none)
    assert any(m is not None for m in momenta.values())
    for number, momentum in momenta.items():
        assert pd.isna(tiny.loc[number, "momentum"]) if momentum is None else \
            tiny.loc[number, "momentum"] == pytest.approx(momentum)


def test_reported_figures_beside_the_replayed_baseline(noisy):
    root, study, _ = noisy
    replay = next(t for t in study.trials if t.user_attrs.get("baseline") == "nb-run-7")
    markdown = (root / "reports/noisy/report.md").read_text()
    section = markdown.split("## Reported vs replayed", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| nb-run-7 |")]
    assert len(rows) == 2
    assert "reported (CIFAR-100 notebook, run 7, test split)" in rows[0]
    assert "| 0.4823 | 0.4727 | 20 |" in rows[0]
    assert f"replayed here: trial {replay.number} (complete), validation split" in rows[1]
    assert f"{replay.value:.4g}" in rows[1]  # its own validation accuracy, the objective here
    page = (root / "reports/noisy/report.html").read_text()
    assert "reported (CIFAR-100 notebook, run 7, test split)" in page


def test_repeated_seeds_and_ties(noisy):
    from alexnet_exp.sweep.search.seed_stats import seed_stats

    root, _, numbers = noisy
    markdown = (root / "reports/noisy/report.md").read_text()
    for name in "ABCG":  # mean ± std and the 95% interval over the fresh seeds, then the search seed and all
        fresh, every = seed_stats(SEEDS[name][1:]), seed_stats(SEEDS[name])
        row = next(line for line in markdown.splitlines() if line.startswith(f"| trial {numbers[name][0]} |"))
        assert fresh.text() in row and "±" in row
        assert f"| {', '.join(map(str, numbers[name]))} | 2 |" in row
        assert f"| {SEEDS[name][0]:.4g} | {every.mean:.4g} |" in row
    assert seed_stats(SEEDS["G"]).mean > seed_stats(SEEDS["A"]).mean  # the old ranking would have chosen G
    assert f"trial {numbers['A'][0]}, val_accuracy {seed_stats(SEEDS['A'][1:]).text()}; its search seed gave" \
        in markdown
    assert "binomial noise of a share" in markdown and "the split's noise, not the seed's" in markdown
    table = pd.read_csv(root / "reports/noisy/trials.csv").set_index("trial")
    expected = {"A": "best", "B": "within noise of the best", "C": None, "D": "tied with the best (equal value)",
                "E": None, "F": "within noise of the best", "G": "within noise of the best"}  # 2 fresh seeds: wide
    for name, label in expected.items():
        for number in numbers[name]:  # every seed of a configuration carries its label
            cell = table.loc[number, "vs_best"]
            assert cell == label if label else pd.isna(cell)
        assert (table.loc[numbers[name][1:], "repeat_of"] == numbers[name][0]).all()
    assert "150 validation images" in markdown  # F's tie comes from the split's binomial noise
    tied = markdown.split("cannot be told apart from the best**: ", 1)[1].split(".", 1)[0]
    assert all(f"trial {numbers[n][0]}, " in tied for n in "BDF") and f"trial {numbers['C'][0]}, " not in tied


def test_importance_warning_under_ten_trials(noisy):
    root, _, _ = noisy
    early = (root / "early/noisy/report.md").read_text()  # the real trials and configuration A: 5 complete
    assert "importance.png" in early
    assert "these importances rest on 5 complete trial(s), fewer than 10" in early
    late = (root / "reports/noisy/report.md").read_text()  # 14 complete
    assert "importance.png" in late and "these importances rest on" not in late


def test_reference_rows_name_their_own_source(in_swept):
    import dataclasses

    from alexnet_exp.report.data import load_study_data
    from alexnet_exp.report.references import reference_blocks

    data = load_study_data("tiny", f"sqlite:///{in_swept / 'sweeps/tiny/optuna.db'}")
    for dataset, expected in {"cifar10": {0.7082: "seed document 000", 0.6436: "seed document 004"},
                              "cifar100": {0.4831: "seed document 003"}}.items():
        blocks = reference_blocks(dataclasses.replace(data, config=data.config.with_values({"data.dataset": dataset})))
        table = blocks[-1]
        reported = table[table["result"].str.startswith("reported")]
        assert sorted(reported["accuracy"]) == sorted(expected)
        for _, row in reported.iterrows():  # one document's own figure per row, with its split and metric
            assert expected[row["accuracy"]] in row["result"] and row["split"].startswith("test")
            assert row["metric"]
        if dataset == "cifar10":  # neither CIFAR-10 document reports a macro-F1
            assert reported["macro_f1"].isna().all()
        else:
            assert list(reported["macro_f1"]) == [0.4727] and "10,016" in reported["note"].iloc[0]


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
                 if shutil.which(n)), None)


class _Text(HTMLParser):
    """The text a reader sees: text nodes outside <style> and <script>."""

    def __init__(self):
        super().__init__()
        self.parts, self._hidden = [], 0

    def handle_starttag(self, tag, attrs):
        self._hidden += tag in ("style", "script")

    def handle_endtag(self, tag):
        self._hidden -= tag in ("style", "script")

    def handle_data(self, data):
        if not self._hidden:
            self.parts.append(data)


def test_html_report_renders_markdown_in_chromium(in_swept, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary on PATH (CI installs Debian's `chromium`, see .ci/run)")
    assert report.main(["--study", "tiny", "--no-mlflow"]) == 0
    page = in_swept / "reports/tiny/report.html"
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    text = _Text()
    text.feed(dom)
    shown = "".join(text.parts)
    assert "Study tiny" in shown and "synthetic" in shown  # the page did render
    assert "**" not in shown and "`" not in shown
    assert "<strong>synthetic</strong>" in dom and "<code>python -m alexnet_exp.sweep" in dom


def test_a_replay_with_the_logit_relu_is_shown_beside_its_twin_without_it():
    from types import SimpleNamespace

    from alexnet_exp.report.data import TrialRow
    from alexnet_exp.report.references import _without_logit_relu

    def row(number, state, **values):
        return TrialRow(number, state, 0.5, "", "", None, values, None, None)

    replay = row(6, "COMPLETE", **{"train.lr": 0.005, "model.logit_relu": True})
    twin = row(8, "COMPLETE", **{"train.lr": 0.005})
    other = row(9, "COMPLETE", **{"train.lr": 0.01})
    data = SimpleNamespace(trials=[replay, row(7, "FAIL", **{"train.lr": 0.005, "model.logit_relu": False}), twin,
                                   other])
    assert _without_logit_relu(data, replay) is twin  # the complete one, though a failed twin exists
    assert _without_logit_relu(data, other) is None  # not a network with the bug
    assert _without_logit_relu(SimpleNamespace(trials=[replay, other]), replay) is None


def test_a_parameter_with_branches_is_one_label_in_the_reports_views():
    """`train.lr` sampled per optimiser was two parameters in every importance, slice and parallel-coordinates
    view: "how much does the learning rate matter" had no answer."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from alexnet_exp.report.one_label import one_label_study

    study = optuna.create_study(direction="maximize")
    sgd, adam = FloatDistribution(0.01, 0.1, log=True), FloatDistribution(1e-3, 1e-2, log=True)
    opt = CategoricalDistribution(["sgd", "adam"])
    for i in range(12):
        name, lr, dist = (("sgd", 0.01 + 0.007 * i, sgd) if i % 2 else ("adam", 1e-3 + 7e-4 * i, adam))
        branch = f"train.lr[train.optimizer={name}]"
        study.add_trial(optuna.trial.create_trial(
            params={"train.optimizer": name, branch: lr}, distributions={"train.optimizer": opt, branch: dist},
            value=lr * (10 if name == "adam" else 1)))  # the objective follows the rate, whatever the optimiser
    view = one_label_study(study)
    assert {p for t in view.trials for p in t.params} == {"train.optimizer", "train.lr"}
    assert view.trials[0].distributions["train.lr"] == FloatDistribution(1e-3, 0.1, log=True)
    assert [t.params["train.lr"] for t in view.trials] == [next(iter(v for k, v in t.params.items() if "[" in k))
                                                           for t in study.trials]
    scores = optuna.importance.get_param_importances(
        view, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    assert set(scores) == {"train.optimizer", "train.lr"}


def _measured(browser, page, profile, width=1400) -> dict:
    """The page in Chromium at `width` px: its scroll width, the window's, and each table's box (scroll width,
    visible width), measured by a script added to a copy of it."""
    probe = ("<script>addEventListener('load', () => document.body.setAttribute('data-probe', JSON.stringify({"
             "page: document.documentElement.scrollWidth, window: innerWidth, tables: [...document.querySelectorAll("
             "'div.scroll')].map(e => [e.scrollWidth, e.clientWidth])})));</script>")
    copy = profile / "measured.html"
    copy.write_text(page.read_text().replace("</body>", probe + "</body>"))
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                           f"--window-size={width},1000", "--dump-dom", copy.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'data-probe="([^"]*)"', done.stdout)
    assert found, done.stdout[-2000:]
    import html

    return json.loads(html.unescape(found.group(1)))


def test_the_page_reads_at_1400_px_without_sideways_scrolling(in_swept, tmp_path):
    """The trials table was 1495 px in a 1200 px column at 1400 px (2133 px for a 12-parameter glyphs study):
    `epochs_run`, `duration_s` and `note` sat behind a sideways scroll, the note one word per line."""
    from alexnet_exp.report.render import Table, render_html

    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary on PATH (CI installs Debian's `chromium`, see .ci/run)")
    assert report.main(["--study", "tiny", "--no-mlflow"]) == 0
    pages = [in_swept / "reports/tiny/report.html"]
    # The table of a glyphs study with its twelve sampled parameters (search_spaces/glyphs.yaml), as its
    # page shows it (page_table.py): the widest space the project ships.
    row = {"trial": 2, "state": "COMPLETE", "val_accuracy": 0.065, "val_macro_f1": 0.04775,
           "vs_best": "within noise of the best", "lr": 0.0004482, "optimizer": "adamw", "batch_size": 256,
           "norm": "batchnorm", "normalize": "dataset", "lr_scale": 33.07, "schedule": "onecycle",
           "weight_decay_scale": 0.5932, "warmup_epochs": 1, "label_smoothing": 0.1, "dropout": 0.07179,
           "crop": False, "flip": True, "epochs": "2/3", "duration_s": 112.8,
           "note": "diverged: its training loss 1.2e+03 passed 10 x ln(classes); see the trial's run for its curves"}
    wide = in_swept / "wide.html"
    wide.write_text(render_html([Table(pd.DataFrame([row] * 6), below=("note",), wrap=("vs_best",))], "wide"))
    pages.append(wide)
    for i, page in enumerate(pages):
        profile = tmp_path / f"profile{i}"
        profile.mkdir()
        seen = _measured(browser, page, profile)
        assert seen["page"] <= seen["window"], (page, seen)
        assert seen["tables"] and all(scroll <= visible for scroll, visible in seen["tables"]), (page, seen)


def test_the_pages_trials_table_leaves_out_what_every_trial_shares(in_swept):
    import dataclasses

    from alexnet_exp.report.data import load_study_data, param_columns, trials_frame
    from alexnet_exp.report.page_table import page_table

    data = load_study_data("tiny", f"sqlite:///{in_swept / 'sweeps/tiny/optuna.db'}")
    frame = trials_frame(data)
    table, shared = page_table(data, frame, param_columns(data))
    shown = table.frame
    assert "run_id" not in shown and "epochs_run" not in shown
    assert list(shown["epochs"]) == [f"{r}/{b}" for r, b in zip(frame["epochs_run"], frame["epochs"])]
    for column in frame.columns.difference(list(shown.columns) + ["run_id", "epochs_run", "epochs"]):
        values = set(frame[column].map(str))
        assert len(values) == 1, column  # only a column with one value in every trial leaves the table ...
        assert not frame[column].iloc[0] or f"`{column}={frame[column].iloc[0]}`" in shared  # ... for the sentence
    assert "`batch_size=32`" in shared and "`augmentation=flip`" in shared  # fixed in the tiny space
    assert {"trial", "state", "lr", "optimizer", "momentum"} <= set(shown.columns)  # what varies stays
    assert table.links["trial"] == [None] * len(frame)  # a local store: no address to link to
    best_run = next(t.run_id for t in data.trials if t.number == data.best_number)
    assert report.main(["--study", "tiny", "--no-mlflow"]) == 0
    assert f"Its MLflow run id: `{best_run}`." in (in_swept / "reports/tiny/report.md").read_text()

    server = dataclasses.replace(data, tracking_uri="http://user:secret@mlflow.example:5000/")
    links = page_table(server, frame, param_columns(server))[0].links["trial"]
    assert any(frame["run_id"])
    for link, run_id in zip(links, frame["run_id"]):
        # a link without the password (the browser asks for it), never with one, nor with *** in its place;
        # none for a trial with no run (one another test here asked for and failed before it made one)
        assert link == (f"http://mlflow.example:5000/#/experiments/{data.experiment_id}/runs/{run_id}"
                        if run_id else None)


def test_the_dashboard_copy_shows_a_parameter_with_branches_once(in_swept):
    """optuna-dashboard read the study's storage, where `train.lr` is a parameter per optimiser branch: two
    axes in its importance, slice and parallel-coordinates views. The report's copy has one, trial for trial."""
    assert report.main(["--study", "tiny", "--no-mlflow"]) == 0
    own = optuna.load_study(study_name="tiny", storage=f"sqlite:///{in_swept / 'sweeps/tiny/optuna.db'}")
    copy = optuna.load_study(study_name="tiny", storage=f"sqlite:///{in_swept / 'reports/tiny/dashboard.db'}")
    assert [(t.number, t.state, t.values) for t in copy.trials] == [(t.number, t.state, t.values) for t in own.trials]
    assert any("train.lr[" in p for t in own.trials for p in t.params)  # the space does sample it per branch
    for mine, theirs in zip(own.trials, copy.trials):
        lr = [v for p, v in mine.params.items() if p.startswith("train.lr[")]
        assert "train.lr" in theirs.params if lr else True
        assert [v for p, v in theirs.params.items() if p.startswith("train.lr")] == lr
        assert theirs.intermediate_values == mine.intermediate_values
    assert copy.metric_names == own.metric_names == ["val_accuracy"] and copy.user_attrs == own.user_attrs
    assert "optuna-dashboard sqlite:///" in (in_swept / "reports/tiny/report.md").read_text()
