"""The layering rule of docs/architecture.md, checked over the import graph of bigtrain/.

Every module is parsed with ``ast`` (imports inside functions count: a deferred import is still an
arrow), each ``bigtrain.*`` import is mapped to its package (``bigtrain/config/load.py`` -> ``config``,
``bigtrain/plan.py`` -> ``plan``), and the test fails, naming file:line, on

- an import of a package in a higher layer than the importer's;
- a cycle between packages (packages of one layer may import each other, one way only);
- torch, DeepSpeed or megatron imported by a torch-free package (config: validation and the plan run
  on login nodes without them).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "bigtrain"

# Lowest first. "bigtrain" is the package's own __init__ (version, warning filters).
LAYERS: list[set[str]] = [
    {"bigtrain", "errors"},
    {"config"},
    {"model", "data"},
    {"parallel", "checkpoint"},
    {"train"},
    {"convert", "launch", "bench", "plan", "evaluate", "generate", "plot"},
    {"cli", "pretrain"},
]
LAYER = {package: i for i, layer in enumerate(LAYERS) for package in layer}
TORCH_FREE = {"errors", "config"}
HEAVY = ("torch", "deepspeed", "megatron")


def package_of(module: str) -> str:
    """``bigtrain.config.load`` -> ``config``; ``bigtrain.plan`` -> ``plan``; ``bigtrain`` -> ``bigtrain``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, nested ones included; ``from a import b``
    yields ``a.b`` (b may be a module) so ``from bigtrain import plan`` is an import of ``plan``."""
    here = module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[:len(here) - node.level + 1] + [node.module or ""]).strip(".") if node.level \
                else node.module
            found += [(node.lineno, f"{base}.{alias.name}" if base == "bigtrain" else base) for alias in node.names]
    return found


def import_graph() -> list[tuple[str, int, str, str]]:
    """(file, line, importing package, imported bigtrain package or third-party module) for every import."""
    edges = []
    for path in sorted(ROOT.rglob("*.py")):
        src = package_of(module_name(path))
        for line, target in imports(path):
            if target.split(".")[0] == "bigtrain":
                edges.append((str(path.relative_to(ROOT.parent)), line, src, package_of(target)))
            else:
                edges.append((str(path.relative_to(ROOT.parent)), line, src, "3rd:" + target))
    return edges


def package_cycles(edges) -> list[list[str]]:
    graph = defaultdict(set)
    for _, _, src, dst in edges:
        if src != dst and not dst.startswith("3rd:"):
            graph[src].add(dst)
    cycles, done = [], set()

    def visit(node, path):
        if node in path:
            cycles.append(path[path.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, path + [node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    return cycles


def test_every_package_has_a_layer():
    packages = {package_of(module_name(p)) for p in ROOT.rglob("*.py")}
    assert packages - set(LAYER) == set(), "add the new package to LAYERS here and to docs/architecture.md"


def test_imports_only_point_down():
    wrong = [f"{file}:{line}: {src} (layer {LAYER[src]}) imports {dst} (layer {LAYER[dst]})"
             for file, line, src, dst in import_graph() if not dst.startswith("3rd:") and LAYER[dst] > LAYER[src]]
    assert not wrong, "imports of a higher layer (docs/architecture.md):\n" + "\n".join(wrong)


def test_no_cycles_between_packages():
    edges = [e for e in import_graph() if not e[3].startswith("3rd:")]
    cycles = package_cycles(edges)
    where = [f"{file}:{line}: {src} imports {dst}" for file, line, src, dst in edges
             if any(src in c and dst in c and c.index(dst) == c.index(src) + 1 for c in cycles)]
    assert not cycles, f"import cycles between packages: {cycles}\n" + "\n".join(where)


def test_torch_free_packages_import_no_torch():
    wrong = [f"{file}:{line}: {src} imports {dst[4:]}" for file, line, src, dst in import_graph()
             if src in TORCH_FREE and dst.startswith("3rd:") and dst[4:].split(".")[0] in HEAVY]
    assert not wrong, "torch-free packages (docs/architecture.md) import:\n" + "\n".join(wrong)


def test_the_check_sees_deferred_wrong_way_imports(tmp_path):
    """The checker itself: an import inside a function, from a lower layer upwards, is found."""
    bad = tmp_path / "bigtrain" / "model" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("def f():\n    from bigtrain.train.loop import Trainer\n    from bigtrain import plan\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path / "bigtrain"
    try:
        found = [(line, package_of(target)) for line, target in imports(bad)]
        cycles = package_cycles([("a", 1, "model", "train"), ("b", 2, "train", "model")])
    finally:
        ROOT = saved
    assert found == [(2, "train"), (3, "plan")]
    assert cycles == [["model", "train", "model"]]
