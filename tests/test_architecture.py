"""The import rule of ARCHITECTURE.md, read from the source with ``ast`` (nothing is imported): every module
has a layer, no import goes to a higher layer, there is no import circle, and generator/ stands alone."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("totalgen_eval", "generator", "benchmarks")

# module prefix -> layer (ARCHITECTURE.md, "Packages and modules"); the longest matching prefix decides.
# A module may import lower layers and its own entry's modules (its own package), nothing else.
LAYERS: dict[str, int] = {
    "totalgen_eval.errors": 0,
    "totalgen_eval.organs": 1, "totalgen_eval.demographics": 1, "totalgen_eval.cache": 1,
    "totalgen_eval.provenance": 1,
    "totalgen_eval.volumes": 2,
    "totalgen_eval.cohort": 3,
    "totalgen_eval.parallel": 4,
    "totalgen_eval.segment": 5,
    "totalgen_eval.metrics": 6, "totalgen_eval.images": 6, "totalgen_eval.phantom": 6,
    "totalgen_eval.stats": 7, "totalgen_eval.plots": 7,
    "totalgen_eval.report": 8, "totalgen_eval.synthesis": 8, "totalgen_eval.training_data": 8,
    "totalgen_eval.segmenter_training": 8,
    "totalgen_eval.pipeline": 9,
    "totalgen_eval.cli": 10,
    "totalgen_eval.__main__": 11, "totalgen_eval": 11,
    "benchmarks": 12,
    # generator/: its own stack; totalgen_eval and benchmarks may use it, it uses neither
    "generator.config": 0, "generator.intensity": 0, "generator.precision": 0, "generator.sampling": 0,
    "generator.distributed": 0, "generator.memory": 0,
    "generator.networks": 1,
    "generator.diffusion": 2, "generator.stages": 2,
    "generator.checkpoints": 3, "generator.data": 3, "generator.previews": 3, "generator.train_config": 3,
    "generator.population": 4,
    "generator.cascade": 5, "generator.training": 5,
    "generator": 6,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name an import statement of the file may refer to (top level, in functions, under
    TYPE_CHECKING), relative imports made absolute: ``from .x import y`` gives ``pkg.x`` and ``pkg.x.y``."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            prefix = ".".join(base + ([node.module] if node.module else []))
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return names


def import_edges() -> set[tuple[str, str]]:
    """(importer, imported) pairs between the project's modules; an import of one's own ancestor package
    (``from .. import __version__``) is no edge: Python has imported it already."""
    modules = source_modules()
    edges = set()
    for module, path in modules.items():
        for name in imported_names(module, path):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                edges.add((module, name))
    return edges


def entry(module: str) -> str | None:
    """The LAYERS key of ``module``: its longest prefix there."""
    keys = [k for k in LAYERS if module == k or module.startswith(k + ".")]
    return max(keys, key=len) if keys else None


def find_circle(edges: set[tuple[str, str]]) -> list[str] | None:
    """One import circle (a list of modules, first repeated last) or None; depth-first search."""
    graph: dict[str, list[str]] = {}
    for a, b in sorted(edges):
        graph.setdefault(a, []).append(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


@pytest.fixture(scope="module")
def edges() -> set[tuple[str, str]]:
    return import_edges()


def test_the_reader_sees_lazy_relative_and_type_checking_imports(edges):
    """The checks below see every kind of import (else they could pass on a graph with arrows missing)."""
    assert ("totalgen_eval.metrics.cohort", "totalgen_eval.segment") in edges  # inside a function
    assert ("totalgen_eval.metrics.cohort", "totalgen_eval.cohort") in edges  # under TYPE_CHECKING
    assert ("totalgen_eval.report", "totalgen_eval.plots") in edges  # `from .. import plots`
    assert ("totalgen_eval.cohort", "totalgen_eval.cohort.case") in edges  # `from .case import ...`
    assert not any(a.startswith("totalgen_eval.") and b == "totalgen_eval" for a, b in edges)  # own ancestor


def test_the_circle_finder_finds_circles():
    assert find_circle({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == ["a", "b", "c", "a"]
    assert find_circle({("a", "b"), ("b", "c"), ("a", "c")}) is None


def documented_layers() -> dict[str, int]:
    """ARCHITECTURE.md's table rows ``| layer | `module.py` or `package/` | job |`` as LAYERS keys."""
    found = {}
    for line in (ROOT / "ARCHITECTURE.md").read_text().splitlines():
        m = re.match(r"^\| (\d+) \| `(\w+)(?:/|\.py)` \|", line)
        if m:
            name = m.group(2)
            key = name if name == "benchmarks" else "totalgen_eval" if name == "__init__" else f"totalgen_eval.{name}"
            found[key] = int(m.group(1))
    return found


def test_every_module_has_a_layer_and_architecture_md_agrees():
    for module in source_modules():
        assert entry(module) is not None, f"{module}: give it a layer in LAYERS and ARCHITECTURE.md"
    ours = {k: v for k, v in LAYERS.items() if not k.startswith("generator")}
    assert documented_layers() == ours


def test_no_import_goes_to_a_higher_layer(edges):
    upward = [(a, b, LAYERS[entry(a)], LAYERS[entry(b)]) for a, b in sorted(edges)
              if a.split(".")[0] == b.split(".")[0] and entry(a) != entry(b)
              and LAYERS[entry(b)] >= LAYERS[entry(a)]]
    assert not upward, "imports to a layer not below the importer's (importer, imported, layers): " + repr(upward)


def test_no_import_circle(edges):
    assert find_circle(edges) is None, f"import circle: {' -> '.join(find_circle(edges))}"


def test_generator_stands_alone_and_nothing_imports_the_benchmarks(edges):
    assert not [(a, b) for a, b in edges if a.startswith("generator") and not b.startswith("generator")]
    assert not [(a, b) for a, b in edges if b.startswith("benchmarks") and not a.startswith("benchmarks")]
    # below the layer that makes volumes (synthesis, training), totalgen_eval does not need the generator
    low = [(a, b) for a, b in edges if a.startswith("totalgen_eval") and b.startswith("generator")
           and LAYERS[entry(a)] < LAYERS["totalgen_eval.synthesis"]]
    assert not low, low


def documented_columns(table: str) -> list[str]:
    """The column list of ARCHITECTURE.md's bullet ``- <table>: `a, b, c` ...`` (it may wrap over lines)."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    m = re.search(rf"^- {table}: `([^`]+)`", text, re.MULTILINE)
    assert m, f"ARCHITECTURE.md lists no columns of {table}"
    return [c.strip() for c in m.group(1).split(",")]


def test_documented_columns_are_the_code_constants():
    from totalgen_eval.images.memorization import COLUMNS as MEMORIZATION_COLUMNS
    from totalgen_eval.images.metrics import COLUMNS as IMAGE_COLUMNS
    from totalgen_eval.metrics.cohort import TABLE_COLUMNS
    from totalgen_eval.parallel import EXCLUDED_COLUMNS
    from totalgen_eval.stats.concordance import CONCORDANCE_COLUMNS

    organ = documented_columns("organ_metrics")
    assert list(TABLE_COLUMNS[: len(organ)]) == organ
    assert set(documented_columns("concordance")) <= set(CONCORDANCE_COLUMNS)
    assert documented_columns("image_metrics") == list(IMAGE_COLUMNS)
    assert documented_columns("memorization") == list(MEMORIZATION_COLUMNS)
    assert documented_columns("excluded") == list(EXCLUDED_COLUMNS)
