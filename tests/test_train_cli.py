import subprocess
import sys

from conftest import ROOT


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "alexnet_exp.train", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_smoke_config_trains_and_prints_a_table():
    proc = run_cli("search_spaces/smoke.yaml", "--quiet", "--test", "--set", "train.epochs=2",
                   "--set", "data.synthetic_train_size=600", "--set", "model.width=0.25")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["epoch", "train_loss"])
    assert [line.split()[0] for line in lines[header + 1:header + 3]] == ["1", "2"]
    assert "held-out test: accuracy" in proc.stdout


def test_bad_config_fails_before_any_work(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: fast\n  batchsize: 32\n")
    proc = run_cli(str(bad))
    assert proc.returncode == 2
    assert "train.lr" in proc.stderr and "train.batchsize" in proc.stderr and "batch_size" in proc.stderr
    assert "epoch" not in proc.stdout  # nothing trained


def test_the_training_core_imports_no_command_line():
    """`python -m alexnet_exp.train` runs the package's __main__.py; the core itself never imports the command
    that imports it (the old `if __name__ == "__main__"` block in train.py made a cycle)."""
    code = ("import sys, alexnet_exp.train, alexnet_exp.run_parts, alexnet_exp.sweep.objective; "
            "print(sorted(m for m in sys.modules if m.startswith('alexnet_exp.') and "
            "(m.split('.')[1] in ('single_run', 'report') or m == 'alexnet_exp.sweep.cli')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"  # neither the CLIs nor a report module on the training side
    # Nor anywhere in its source, however deep (an import inside `if __name__ == "__main__":` counts).
    import ast

    tree = ast.parse((ROOT / "alexnet_exp" / "train" / "__init__.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"single_run", "run_parts", "sweep.objective", "sweep"}, imported
