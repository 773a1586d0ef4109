"""The Apptainer definition, checked with spython (Apptainer itself cannot run here)."""

import re
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
    assert "ssdwb.apps.notebooks" in recipe.cmd  # %runscript runs notebooks with papermill
    text = DEF.read_text()
    test_section = text.split("%test", 1)[1]
    assert "19972534" in test_section and "papermill" in test_section
    assert "SSDWB_ROOT=/opt/ssdwb" in recipe.environ
