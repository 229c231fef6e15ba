import os
import sys
from pathlib import Path

import pytest
import torch

# Tests run on 2 CPU cores in CI; keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


# The fast loop, `python -m pytest -m "not slow"` (about a minute on 2 cores): what it leaves out is marked slow
# here, in one place. Whole files that start process trees or servers, tests that share a module's sweep or
# the servers, and the tests measured at 2 s or more on 2 cores (2026-12-01, --durations) elsewhere.
SLOW_FILES = {"test_parallel.py", "test_workers.py", "test_distributed.py", "test_slurm.py", "test_faults.py",
              "test_repeats.py"}
SLOW_FIXTURES = {"swept", "noisy", "in_swept", "servers"}
SLOW_TESTS = {
    "tests/test_bench.py::test_a_failing_benchmark_worker_is_an_error_not_a_figure",
    "tests/test_bench.py::test_image_benchmark_decodes_jpegs_and_trains_resident_and_streamed",
    "tests/test_bench.py::test_processes_sharing_a_device_report_their_rates",
    "tests/test_bench.py::test_search_benchmark_compares_strategies_at_equal_epochs",
    "tests/test_deploy.py::test_the_wait_script_returns_once_the_port_answers_and_waits_while_it_does_not",
    "tests/test_handtuned_replay.py::test_progress_lines_show_each_trials_own_epochs",
    "tests/test_imagefolder.py::test_a_sweep_on_a_folder_of_photos_names_its_classes_in_the_report",
    "tests/test_imagefolder.py::test_processes_started_at_once_build_the_cache_once",
    "tests/test_mlflow_ecosystem.py::test_every_trial_run_of_a_sweep_has_system_metrics",
    "tests/test_mlflow_ecosystem.py::test_optuna_dashboard_serves_a_finished_study",
    "tests/test_mlflow_ecosystem.py::test_unusable_registry_is_a_clear_error_before_any_trial",
    "tests/test_pruning.py::test_hyperband_runs_per_budget_with_the_trials_own_epochs_as_resource",
    "tests/test_pruning.py::test_no_trial_is_pruned_at_its_last_epoch",
    "tests/test_pruning.py::test_percentile_and_successive_halving_rank_within_the_budget",
    "tests/test_report.py::test_every_sampled_parameter_is_a_column",
    "tests/test_report.py::test_html_report_renders_markdown_in_chromium",
    "tests/test_report.py::test_report_from_a_real_sweep",
    "tests/test_report.py::test_report_without_arguments_covers_every_study",
    "tests/test_report.py::test_running_study_gives_a_snapshot",
    "tests/test_report.py::test_study_with_no_finished_trial",
    "tests/test_report.py::test_the_dashboard_copy_shows_a_parameter_with_branches_once",
    "tests/test_report.py::test_the_page_reads_at_1400_px_without_sideways_scrolling",
    "tests/test_report.py::test_the_pages_trials_table_leaves_out_what_every_trial_shares",
    "tests/test_report.py::test_two_studies_side_by_side",
    "tests/test_storage.py::test_a_queued_trial_is_taken_by_one_worker_only",
    "tests/test_storage.py::test_many_processes_can_open_one_fresh_storage_at_once",
    "tests/test_sweep.py::test_a_study_from_before_a_new_option_resumes_at_its_default",
    "tests/test_sweep.py::test_baselines_run_first_with_exact_values",
    "tests/test_sweep.py::test_changed_study_is_refused",
    "tests/test_sweep.py::test_resume_respects_the_budget_and_repeats_nothing",
    "tests/test_sweep.py::test_smoke_sweep_end_to_end",
    "tests/test_sweep.py::test_states_map_to_mlflow_status_with_reasons",
    "tests/test_train.py::test_resume_from_a_checkpoint_gives_the_uninterrupted_result",
    "tests/test_train.py::test_same_config_and_seed_give_the_same_metrics_on_cpu",
    "tests/test_train_cli.py::test_bad_config_fails_before_any_work",
    "tests/test_train_cli.py::test_smoke_config_trains_and_prints_a_table",
    "tests/test_train_cli.py::test_the_training_core_imports_no_command_line",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if (item.path.name in SLOW_FILES or SLOW_FIXTURES & set(item.fixturenames)
                or item.nodeid.split("[")[0] in SLOW_TESTS):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_data():
    """Synthetic 10-class data, small enough to train on in a second or two."""
    from alexnet_exp.data import load_dataset

    return load_dataset("synthetic", synthetic_classes=10, synthetic_train_size=800, synthetic_test_size=200,
                        val_fraction=0.25)


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    """A real PostgreSQL server (databases optuna and mlflow) and an MLflow tracking server backed by it, on
    loopback, shared by the distributed and Slurm tests: (optuna URL, tracking URL, restart_pg, port,
    artifacts folder)."""
    from servers import PASSWORD, start_mlflow_server, start_postgres

    port, stop_pg, restart_pg = start_postgres()
    base = f"postgresql://alex:{PASSWORD}@127.0.0.1:{port}"
    artifacts = tmp_path_factory.mktemp("artifacts")
    try:
        url, mlflow_proc = start_mlflow_server(f"{base}/mlflow", artifacts)
    except Exception:
        stop_pg()
        raise
    yield f"{base}/optuna", url, restart_pg, port, artifacts
    mlflow_proc.terminate()
    mlflow_proc.finish()
    stop_pg()
