"""The three wings import one way (README, Layout): report -> sweep -> training core, and inside the sweep
cli/lifecycle/objective -> stores -> search. Read from the source (every import, however deep in a function),
so that a new import against the flow fails here and not as a circle found at run time."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "alexnet_exp"
BENCHES = {"alexnet_exp.bench", "alexnet_exp.search_bench", "alexnet_exp.image_bench"}  # time every wing


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, absolute (a relative import resolved against its package)."""
    module = _module(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}  # `from . import keys` imports a module
    return found


MODULES = {_module(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _wing(module: str) -> str:
    if module in BENCHES:
        return "bench"
    for wing in ("alexnet_exp.report", "alexnet_exp.sweep.search", "alexnet_exp.sweep.stores", "alexnet_exp.sweep"):
        if module == wing or module.startswith(wing + "."):
            return wing.removeprefix("alexnet_exp.")
    return "core"


# What each wing may import of this package (a wing may always import its own modules).
ALLOWED = {"core": {"core"},
           "sweep.search": {"core", "sweep"},
           "sweep.stores": {"core", "sweep", "sweep.search"},
           "sweep": {"core", "sweep.search", "sweep.stores"},
           "report": {"core", "sweep", "sweep.search", "sweep.stores"},
           "bench": {"core", "sweep", "sweep.search", "sweep.stores", "report"}}


def test_the_layout_is_what_the_readme_describes():
    wings = {_wing(m) for m in MODULES}
    assert wings == set(ALLOWED), wings
    assert "alexnet_exp.sweep.__main__" in MODULES and "alexnet_exp.sweep.cli" in MODULES


@pytest.mark.parametrize("wing", sorted(ALLOWED))
def test_each_wing_imports_only_the_wings_below_it(wing):
    against = []
    for module, imported in MODULES.items():
        if _wing(module) != wing:
            continue
        for target in imported:
            if target in MODULES and target != "alexnet_exp" and _wing(target) not in ALLOWED[wing] | {wing}:
                against.append(f"{module} imports {target}")
    assert not against, against


def test_the_sweeps_top_modules_that_search_and_stores_use_are_leaves():
    """search/ and stores/ import the sweep's keys, upstream and progress, which import nothing of the sweep
    above them: that is what keeps the sweep's top level from closing a circle with its sub-packages."""
    for leaf in ("alexnet_exp.sweep.keys", "alexnet_exp.sweep.upstream", "alexnet_exp.sweep.progress"):
        above = {t for t in MODULES[leaf] if t in MODULES and _wing(t) != "core"}
        assert not above, (leaf, above)


def test_the_training_core_imports_neither_optuna_nor_mlflow():
    uses = sorted(f"{module} imports {target}" for module, imported in MODULES.items() if _wing(module) == "core"
                  for target in imported if target.split(".")[0] in ("optuna", "mlflow", "optuna_integration"))
    assert not uses, uses
