import pytest

from alexnet_exp.bench import train_macs
from alexnet_exp.model import build_model


def test_mac_count_matches_the_paper_network():
    # The paper's two-GPU network: about 0.72 GMAC per 227x227 image (~4.3 GFLOP per trained image).
    grouped = train_macs(build_model("alexnet", 1000, groups=2), 227)
    assert grouped == pytest.approx(0.72e9, rel=0.03)
    # One GPU, no grouping: conv2/4/5 see all channels, about 1.13 GMAC.
    assert train_macs(build_model("alexnet", 1000, groups=1), 227) == pytest.approx(1.13e9, rel=0.03)


def test_processes_sharing_a_device_report_their_rates():
    # The plumbing of the --trials-per-gpu measurement (worker processes, their output), on the CPU and tiny.
    from alexnet_exp.bench import shared_device

    result = shared_device([2], images_per_worker=64, device="cpu", batch=32)
    rates = result["K=2"]["per_worker_img_s"]
    assert len(rates) == 2 and all(rate > 0 for rate in rates)


def test_a_failing_benchmark_worker_is_an_error_not_a_figure():
    from alexnet_exp.bench import shared_device

    with pytest.raises(RuntimeError, match="a benchmark worker failed"):
        shared_device([1], images_per_worker=64, device="no-such-device", batch=32)


def test_search_benchmark_compares_strategies_at_equal_epochs(tmp_path, monkeypatch):
    """`python -m alexnet_exp.bench search` on a tiny glyphs task: each strategy runs real sweeps until its
    epoch budget is spent, and the summary, the JSON and the figure say what each reached."""
    import json

    from sweep_helpers import write_config

    from alexnet_exp import bench

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = write_config(tmp_path / "g.yaml", data={"dataset": "glyphs", "glyph_classes": 4,
                                                     "glyph_train_per_class": 40, "glyph_test_per_class": 10},
                          train={"epochs": 2}, study={"name": "g", "n_trials": 3, "pruner": "median",
                                                      "sampler": "tpe", "seed": 0})
    assert bench.main(["search", "--config", str(config), "--gpu-scale", "--seeds", "0", "--epoch-budget", "5",
                       "--startup", "1", "--out", str(tmp_path / "out")]) == 0
    (found,) = (tmp_path / "out").glob("search-cpu-*.json")
    result = json.loads(found.read_text())
    assert set(result["summary"]) == {"default", "random", "before"}
    for study in result["studies"]:
        spent = [t["cumulative_epochs"] for t in study["trials"]]
        assert spent == sorted(spent) and spent[-1] >= 5  # one trial at a time until the budget is spent
        assert spent[-2] < 5 if len(spent) > 1 else True  # and no trial started after it was
        assert study["test_accuracy"] is not None and study["chosen_trial"] is not None
    assert list((tmp_path / "out").glob("search-cpu-*.png"))
    assert not (tmp_path / "sweeps").exists()  # the studies' state stays in a temporary folder


def test_a_trial_that_ended_diverged_counts_the_epoch_it_trained():
    import optuna

    from alexnet_exp.search_bench import epochs_trained
    from alexnet_exp.sweep import keys

    study = optuna.create_study()
    trial = study.ask()
    trial.report(0.5, 1)
    trial.set_user_attr(keys.FAIL_KIND, keys.DIVERGED)  # fit ended on epoch 2, before its report
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    pruned = study.ask()
    for epoch in (1, 2, 3):
        pruned.report(0.1, epoch)
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    assert [epochs_trained(t) for t in study.trials] == [2, 3]


def test_image_benchmark_decodes_jpegs_and_trains_resident_and_streamed(tmp_path):
    """`python -m alexnet_exp.bench images`, tiny: real JPEGs decoded into the cache, the same training from it
    resident and streamed, and the documents' ImageFolder pipeline on the same files."""
    import json

    from alexnet_exp import bench

    assert bench.main(["images", "--device", "cpu", "--photos", "24", "--decode-files", "70", "--arch",
                       "alexnet_cifar", "--width", "0.25", "--out", str(tmp_path)]) == 0
    (found,) = tmp_path.glob("bench-images-cpu-*.json")
    result = json.loads(found.read_text())
    assert result["photos"] == 24 and result["jpeg_kb_mean"] > 5  # photo-like files, not flat ones
    assert result["decode_img_s_one_core"] > 0 and result["decode_img_s_all_cores"] > 0
    cores = result["cores"]  # 70 files a core: over one chunk of 64, so the all-core build runs threads
    assert result["decode_files"] == {"one_core": 70, "all_cores": 70 * cores}
    assert result["decode_function_img_s"] > 0
    assert not result["resident"]["streamed"] and result["streamed"]["streamed"]
    assert result["resident"]["train_img_s"] > 0 and result["documents_train_img_s"] > 0
    assert result["streamed_over_resident"] == result["streamed"]["train_img_s"] / result["resident"]["train_img_s"]
