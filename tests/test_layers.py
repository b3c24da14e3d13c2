"""The house rules of ARCHITECTURE.md: every module imports alone, packages import only the
layers below them, and the module graph has no cycle, counting imports inside functions."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "src" / "sparsegrain"

# Lowest first. A package may import its own modules and any package of a lower layer; the
# packages of one layer do not import each other.
LAYERS = [
    {"core"},
    {"structures", "graph"},
    {"methods", "models", "data"},
    {"recipe"},
    {"sparsity"},
    {"runs"},
    {"analysis"},
    {"train", "deploy"},
    {"cli"},
    {"compact", "__main__", "__init__"},  # the public facades and ``python -m sparsegrain``
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def module_names() -> list[str]:
    names = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = ("sparsegrain", *path.relative_to(ROOT).with_suffix("").parts)
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = module_names()


def source(module: str) -> Path:
    rel = Path(*module.split(".")[1:])
    return ROOT / rel / "__init__.py" if (ROOT / rel).is_dir() else ROOT / f"{rel}.py"


def _type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports(module: str) -> set[str]:
    """The sparsegrain modules ``module`` imports anywhere in its code (functions included),
    but not under ``if TYPE_CHECKING:``."""
    path = source(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                continue
            if isinstance(child, ast.ImportFrom):
                found.update(_targets(child, package))
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("sparsegrain"))
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m != module}


def _targets(node: ast.ImportFrom, package: str) -> set[str]:
    if node.level:
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("sparsegrain"):
        return set()
    out = {target}
    out.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES)
    return out


def package_of(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


GRAPH = {m: imports(m) for m in MODULES}


def test_every_package_is_in_a_layer():
    assert {package_of(m) for m in MODULES} <= set(RANK)


@pytest.mark.parametrize("module", MODULES)
def test_imports_go_down_the_layers(module):
    here = package_of(module)
    wrong = sorted(
        target
        for target in GRAPH[module]
        if package_of(target) != here
        and (RANK[package_of(target)] >= RANK[here] and package_of(target) != "__init__")
    )
    assert wrong == [], f"{module} (layer {RANK[here]}) imports from its layer or above"


def test_no_package_imports_the_top_level_package():
    """``sparsegrain/__init__.py`` imports the handle: a module that imported it back would
    close a cycle."""
    assert sorted(m for m in MODULES if "sparsegrain" in GRAPH[m]) == []


def test_the_module_graph_has_no_cycle():
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def walk(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(GRAPH.get(m, ())):
            if state.get(t) == 1:
                cycle = path[path.index(t) :] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t in GRAPH and not state.get(t):
                walk(t)
        path.pop()
        state[m] = 2

    for m in MODULES:
        if not state.get(m):
            walk(m)


IMPORT_ALONE = """
import os, sys
# third-party modules, loaded once before the forks: each child then runs sparsegrain's code only
import numpy, safetensors, torch, yaml, PIL.Image, tqdm
import torch.distributed, torch.fx.passes.shape_prop, torch.nn.utils.parametrize, torch.utils.data
running, failed = {}, []


def wait_one():
    pid, status = os.wait()
    if os.waitstatus_to_exitcode(status) != 0:
        failed.append(running[pid])
    del running[pid]


for name in sys.argv[1:]:
    if len(running) == 2:  # two at a time, one per core
        wait_one()
    pid = os.fork()
    if pid == 0:
        try:
            __import__(name)
        except BaseException as e:
            print(f"{name}: {type(e).__name__}: {e}", flush=True)
            os._exit(1)
        os._exit(0)
    running[pid] = name
while running:
    wait_one()
sys.exit(1 if failed else 0)
"""


ALONE = [m for m in MODULES if m != "sparsegrain.__main__"]  # that one runs the command line


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_process():
    """Each module is imported in a process of its own, where no other sparsegrain module
    was loaded before: an import cycle kept open by import order shows up here."""
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_ALONE, *ALONE], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def closure(modules: list[str]) -> set[str]:
    """Every sparsegrain module loaded by importing ``modules`` (their packages' too)."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        m = todo.pop()
        parts = m.split(".")
        for k in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
            name = ".".join(parts[:k])
            if name in GRAPH and name not in seen:
                seen.add(name)
                todo.extend(GRAPH[name])
    return seen


def test_the_verbs_load_no_training_analysis_deploy_or_file_code():
    """``from sparsegrain import sparsify_`` in a user's script loads the handle and what it
    stands on, not the trainer, the analyses, compaction or safetensors files (``core.io``)."""
    loaded = closure(["sparsegrain.sparsity.handle", "sparsegrain.recipe.load"])
    heavy = ("sparsegrain.train", "sparsegrain.analysis", "sparsegrain.deploy", "sparsegrain.runs")
    assert sorted(m for m in loaded if m.startswith(heavy) or m == "sparsegrain.core.io") == []
    assert "sparsegrain.methods.campfire" in loaded  # the closure does follow the imports


def test_public_names_still_work():
    import sparsegrain
    import sparsegrain.analysis.analyze

    assert callable(sparsegrain.sparsify_) and callable(sparsegrain.finalize_)
    assert callable(sparsegrain.compact.compact) and callable(sparsegrain.compact.load_compact)
    assert "filter" in sparsegrain.structures.STRUCTURES.names()
    assert "campfire" in sparsegrain.methods.METHODS.names()
    assert "resnet20" in sparsegrain.models.MODELS.names()
    assert callable(sparsegrain.analysis.analyze.analyze)
