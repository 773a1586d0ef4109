"""The package's shape: subpackages by role whose imports only point down the layers, no import
cycle (function-level imports included), imports of ssdwb modules at module top, a loop that
reads in one screen and no function over 80 lines (../shared/ARCHITECTURE.md)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ssdwb"

# Bottom to top: a module may import its own layer's modules and the layers below.
LAYERS = (
    ("leaves", ("ssdwb.config", "ssdwb.runtime", "ssdwb.files")),
    ("ssd", ("ssdwb.ssd",)),
    ("data", ("ssdwb.data",)),
    ("plots", ("ssdwb.plots",)),  # un-normalises images with data's mean and std
    ("evaluation", ("ssdwb.evaluation",)),
    ("runs", ("ssdwb.runs",)),
    ("engine", ("ssdwb.engine",)),
    ("lab", ("ssdwb.lab",)),
    ("apps", ("ssdwb.apps",)),
    ("command", ("ssdwb.cli", "ssdwb.__main__", "ssdwb")),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    assert best is not None, f"{module} is in no layer of tests/test_layout.py"
    return best[0]


def imports(module: str) -> list[tuple[str, int, bool]]:
    """``(imported ssdwb module, line, at module top)`` of a module, ``__main__`` blocks left
    out."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    main = {id(x) for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)
            for x in ast.walk(n)}
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if id(node) in main or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            names = [a.name for a in node.names]
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.append((name, node.lineno, id(node) in top))
                break
    return out


def test_at_most_eight_modules_at_the_top_and_every_subpackage_has_an_init():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top
    for folder in PACKAGE.iterdir():
        if folder.is_dir() and folder.name != "__pycache__":
            assert (folder / "__init__.py").exists(), f"{folder} has no __init__.py"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_and_sit_at_the_top(module):
    for target, line, at_top in imports(module):
        assert at_top or module == "ssdwb", (
            f"{MODULES[module]}:{line}: imports {target} inside a function; ssdwb imports go at "
            f"module top")
        assert layer_of(target) <= layer_of(module), (
            f"{MODULES[module]}:{line}: {module} ({LAYERS[layer_of(module)][0]}) imports "
            f"{target} ({LAYERS[layer_of(target)][0]}), a layer above it")


def test_no_import_cycle():
    graph = {m: {t for t, _, _ in imports(m)} for m in MODULES if m != "ssdwb"}
    state: dict[str, str] = {}

    def visit(m, path):
        state[m] = "open"
        for t in sorted(graph.get(m, ())):
            if state.get(t) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t, path + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def test_no_function_over_80_lines_and_train_in_one_screen():
    long = [f"{p}:{line} {name}() {n} lines" for p in MODULES.values()
            for name, line, n in functions(p) if n > 80]
    assert not long, long
    (train,) = [n for name, _, n in functions(PACKAGE / "engine" / "loop.py") if name == "train"]
    assert train <= 60, f"train() is {train} lines"


def test_the_checks_see_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks above can fail: a fake package with a cycle and a maths module importing the
    engine."""
    fake = tmp_path / "ssdwb"
    (fake / "ssd").mkdir(parents=True)
    (fake / "engine").mkdir()
    for f in ("__init__.py", "ssd/__init__.py", "engine/__init__.py"):
        (fake / f).write_text("")
    (fake / "ssd" / "model.py").write_text("from ssdwb.engine.loop import train\n")
    (fake / "engine" / "loop.py").write_text("def train():\n    from ssdwb.ssd import model\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    monkeypatch.setattr(__import__(__name__), "MODULES",
                        {module_name(p): p for p in sorted(fake.rglob("*.py"))})
    with pytest.raises(AssertionError, match="a layer above it"):
        test_imports_point_down_and_sit_at_the_top("ssdwb.ssd.model")
    with pytest.raises(AssertionError, match="inside a function"):
        test_imports_point_down_and_sit_at_the_top("ssdwb.engine.loop")
    with pytest.raises(AssertionError, match="import cycle"):
        test_no_import_cycle()
