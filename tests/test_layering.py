"""The import graph follows the layers of docs/ARCHITECTURE.md and has no cycle.

Every import statement counts, also those inside functions (they run too). A module may
import from its own layer or a lower one, never a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("detector", "proposals", "eval", "benchmarks")

# (layer, module-name prefixes), lowest first. A module takes the layer of its longest prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("detector.core",)),
    ("datasets, proposals", ("detector.datasets", "proposals")),
    (
        "detector stages",
        (
            "detector.warp",
            "detector.classifier",
            "detector.ensemble",
            "detector.openvino_members",
            "detector.nms",
            "detector.heads",
            "detector.detector",
            "detector.build",
            "detector.batch",
            "detector.outputs",
            "detector.log_parts",
            "detector.visualize",
        ),
    ),
    ("training, eval", ("detector.training", "eval")),
    (
        "command line",
        (
            "detector",  # the package facade: from detector import Detector, resolve_config
            "detector.resolve",
            "detector.run",
            "detector.run_checks",
            "detector.train",
            "detector.demo",
            "eval.map",
            "eval.recall",
            "eval.cascade",
            "proposals.multibox.__main__",
            "proposals.precompute",
            "detector.datasets.__main__",
            "benchmarks",
        ),
    ),
]
# Names that decide or locate "the demo": only the command line (and where they are defined).
DEMO_NAMES = ("ensure_demo_dataset", "demo_models_dir", "is_demo", "with_demo_defaults")
DEMO_HOMES = ("detector.datasets.demo", "detector.core.paths")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules imported anywhere in the file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def layer_of(name: str) -> int:
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise AssertionError(f"{name}: in no layer of tests/test_layering.py")
    return best


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_no_arrow_points_up():
    bad = []
    for name, targets in graph().items():
        for target in sorted(targets):
            if layer_of(target) > layer_of(name):
                up = LAYERS[layer_of(target)][0]
                bad.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({up})")
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    edges = graph()
    cycles = strongly_connected(edges)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in cycles)


def test_only_the_command_line_decides_demo():
    found = modules()
    cli = len(LAYERS) - 1
    bad = []
    for name, path in found.items():
        if layer_of(name) == cli or name in DEMO_HOMES:
            continue
        text = path.read_text()
        bad += [f"{name} uses {n}" for n in DEMO_NAMES if n in text]
        if 'data.root == ""' in text or "not cfg.data.root" in text:
            bad.append(f"{name} tests data.root for the demo")
    assert not bad, "\n".join(bad)


def strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm: the components of more than one module (the cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}}, [{"a", "b"}]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [{"a", "b", "c"}]),
    ],
)
def test_cycle_finder_on_hand_made_graphs(edges, expected):
    assert strongly_connected(edges) == expected


def test_relative_and_function_level_imports_are_seen(tmp_path):
    pkg = tmp_path / "p"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    f = pkg / "m.py"
    f.write_text("def g():\n    from . import n\n    import p.k\n")
    assert imports_of("p.m", f, {"p", "p.m", "p.n", "p.k"}) == {"p", "p.n", "p.k"}
