"""The Apptainer definition, checked with spython (Apptainer itself cannot run here)."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEF = ROOT / "containers" / "ssdwb.def"


@pytest.fixture(scope="module")
def recipe():
    from spython.main.parse.parsers import SingularityParser

    recipes = SingularityParser(str(DEF)).recipe
    assert len(recipes) == 1
    return next(iter(recipes.values()))


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req.strip().strip('"'), maxsplit=1)[0].lower()


def test_pinned_ngc_pytorch_base(recipe):
    assert re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", recipe.fromHeader)
    assert DEF.read_text().startswith("Bootstrap: docker\nFrom: ")


def test_installs_the_same_requirements_as_pyproject(recipe):
    install = " ".join(line.rstrip("\\").strip() for line in recipe.install)
    m = re.search(r"pip install --no-cache-dir ((?:\"[^\"]+\"\s*)+)", install)
    assert m, install
    in_def = sorted(re.findall(r'"([^"]+)"', m.group(1)))
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    # torch/torchvision are the NGC image's CUDA builds (the .def says why); the rest must match
    # pyproject.toml exactly, version bounds included.
    expected = sorted(d for d in deps if _name(d) not in ("torch", "torchvision"))
    assert in_def == expected
    assert "--no-deps /opt/ssdwb" in install  # the package itself, without replacing NGC's torch


def test_files_runscript_and_test_sections(recipe):
    copied = {f.split()[0] for f in recipe.files}
    assert {"pyproject.toml", "ssdwb", "notebooks", "slurm"} <= copied
    for src in copied:
        assert (ROOT / src).exists(), f"%files copies {src}, which is not in the checkout"
    # %runscript runs notebooks with papermill through `python -m ssdwb notebook`
    assert re.fullmatch(r'exec python -m ssdwb notebook "\$@"', recipe.cmd.strip()), recipe.cmd
    r = subprocess.run([sys.executable, "-m", "ssdwb", "notebook", "--help"], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0 and "--parameter NAME VALUE" in r.stdout, r.stdout + r.stderr
    text = DEF.read_text()
    test_section = text.split("%test", 1)[1]
    assert "19972534" in test_section and "papermill" in test_section
    assert "SSDWB_ROOT=/opt/ssdwb" in recipe.environ


def _test_section() -> list[str]:
    """containers/ssdwb.def's %test lines (commands), continuation lines joined."""
    text = DEF.read_text().split("\n%test\n", 1)[1].split("\n%", 1)[0]
    return [line.strip() for line in text.replace("\\\n", " ").splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_test_section_imports_modules_that_exist():
    """Every module a %test line imports (``python -c``, ``python -m``) exists, with the names it
    takes from it; the notebook it runs is in the checkout; the command it calls is
    pyproject.toml's console script. Apptainer cannot run the section here; this catches a %test
    left behind by a renamed module, which only failed at container build time."""
    import ast
    import importlib
    import importlib.util
    import shlex

    lines = _test_section()
    modules: dict[str, set[str]] = {}
    for line in lines:
        words = shlex.split(line)
        if words[0] != "python":
            continue
        if words[1] == "-m":
            modules.setdefault(words[2], set())
            continue
        assert words[1] == "-c", line
        for node in ast.walk(ast.parse(words[2])):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    modules.setdefault(alias.name, set())
            elif isinstance(node, ast.ImportFrom):
                modules.setdefault(node.module, set()).update(a.name for a in node.names)
    assert {"ssdwb.ssd.model", "ssdwb.engine.loop", "torch"} <= set(modules), modules
    for name, names in modules.items():
        if name.split(".")[0] == "ssdwb":
            spec = importlib.util.find_spec(name)
            assert spec is not None, f"%test imports {name}, which does not exist"
            assert Path(spec.origin).is_relative_to(ROOT / "ssdwb"), spec.origin
        else:
            assert importlib.util.find_spec(name) is not None, name
        module = importlib.import_module(name)
        missing = {n for n in names if not hasattr(module, n)}
        assert not missing, f"%test takes {sorted(missing)} from {name}, which has none"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for line in lines:
        words = shlex.split(line)
        if words[0] == "papermill":
            for word in words:
                if word.startswith("/opt/ssdwb/"):
                    assert (ROOT / word[len("/opt/ssdwb/"):]).exists(), word
        elif words[0] not in ("set", "python"):
            assert words[0] in scripts, f"%test calls {words[0]}, not a console script of ssdwb"
