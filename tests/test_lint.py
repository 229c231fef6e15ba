"""The code's lint (ruff, configured in pyproject.toml at the code's own width) runs with the tests, so CI
runs it: an unused import, an unsorted import block or a line past 120 characters fails here."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    ruff = str(Path(sys.executable).with_name("ruff"))  # the venv's, pinned by the `test` extra
    ruff = ruff if Path(ruff).exists() else (shutil.which("ruff") or ruff)
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (it comes with the `test` extra: pip install -e \".[test]\")")
    done = subprocess.run([ruff, "check", "--no-cache", "alexnet_exp", "tests"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_every_test_marked_slow_by_name_exists():
    """A slow test renamed or removed must not leave its old name in conftest's list (and its new name fast)."""
    from conftest import SLOW_FILES, SLOW_TESTS

    for name in SLOW_FILES:
        assert (ROOT / "tests" / name).is_file(), f"tests/conftest.py SLOW_FILES: {name} is gone"
    for name in SLOW_TESTS:
        path, test = name.split("::")
        assert f"\ndef {test}(" in (ROOT / path).read_text(), f"tests/conftest.py SLOW_TESTS: {name} is gone"
