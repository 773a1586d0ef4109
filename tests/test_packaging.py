"""pyproject.toml and environment.yml list the same dependencies; `import ssdwb` stays cheap; a
non-editable install (the container's) has every module and the package data."""

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def names(requirements):
    return {re.split(r"[<>=!\s\[]", r.strip(), maxsplit=1)[0].lower() for r in requirements}


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = names(project["dependencies"] + project["optional-dependencies"]["dev"])
    text = (ROOT / "environment.yml").read_text()
    env = text[text.index("dependencies:"):].splitlines()
    listed = set()
    for line in env:
        m = re.match(r"\s+-\s+([A-Za-z0-9_.\-]+)", line)
        if m and m.group(1) not in ("pip", "python", "-e"):
            listed.add(m.group(1).lower())
    assert listed == wanted
    for pin in ("torch==2.14.1", "torchvision==0.29.1"):
        assert pin in text and pin in project["dependencies"]


def test_import_is_lazy():
    code = "import sys, ssdwb; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# Run in a fresh interpreter (-I: no PYTHONPATH, no cwd, no user site) with the installed copy
# first on sys.path: every module of it, each from that folder (the venv's editable install
# must not serve the checkout instead), then the system table through the planner.
_INSTALLED = r"""
import contextlib, importlib, io, json, pkgutil, sys
target = sys.argv[1]
sys.path.insert(0, target)
import ssdwb
names = ["ssdwb"] + [m.name for m in pkgutil.walk_packages(ssdwb.__path__, "ssdwb.")]
files = {name: importlib.import_module(name).__file__ for name in names}
from ssdwb.cli import main
from ssdwb.lab import plan
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = main(["plan", "--system", "16xC4140", "--json"])
print(json.dumps({"files": files, "table": plan.read_system_table(),
                  "systems": {k: [s.nodes, s.gpus_per_node, s.batch_per_gpu]
                              for k, s in plan.SYSTEMS.items()},
                  "plan_rc": rc, "plan": json.loads(out.getvalue())}))
"""


def _def_files() -> list[tuple[str, str]]:
    """containers/ssdwb.def's %files lines: (source in the checkout, destination in the image)."""
    text = (ROOT / "containers" / "ssdwb.def").read_text()
    section = text.split("\n%files\n", 1)[1].split("\n%", 1)[0]
    return [tuple(line.split()) for line in section.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_a_wheel_install_has_every_module_and_the_system_table(tmp_path):
    """The container installs ssdwb without -e (containers/ssdwb.def: ``pip install --no-deps
    /opt/ssdwb``): a wheel built from what the .def copies, installed into a folder, must import
    every module the checkout has and read the C4140 table (package data), from that folder."""
    import csv
    import json
    import os
    import time
    import zipfile

    t0 = time.perf_counter()
    image = tmp_path / "opt-ssdwb"  # /opt/ssdwb as %files fills it
    for src, dest in _def_files():
        assert dest.startswith("/opt/ssdwb/"), dest
        to = image / dest[len("/opt/ssdwb/"):]
        if (ROOT / src).is_dir():
            shutil.copytree(ROOT / src, to, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            to.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / src, to)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    r = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w",
                        str(wheels), str(image)], capture_output=True, text=True, env=env,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = wheels.glob("ssdwb-*.whl")
    assert "ssdwb/lab/c4140_systems.csv" in zipfile.ZipFile(wheel).namelist()
    r = subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target),
                        str(wheel)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    r = subprocess.run([sys.executable, "-I", "-c", _INSTALLED, str(target)], capture_output=True,
                       text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.splitlines()[-1])
    checkout = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                for p in (ROOT / "ssdwb").rglob("*.py")}
    assert set(got["files"]) == checkout
    for name, file in got["files"].items():
        assert Path(file).is_relative_to(target), (name, file)  # not the checkout's copy
    lines = [x for x in (ROOT / "ssdwb" / "lab" / "c4140_systems.csv").read_text().splitlines()
             if x.strip() and not x.startswith("#")]
    assert got["table"] == list(csv.DictReader(lines))
    assert got["systems"]["16xC4140"] == [16, 4, 24] and len(got["systems"]) == 5
    assert got["plan_rc"] == 0 and got["plan"][0]["global_batch"] == 1536
    print(f"wheel built, installed and imported in {time.perf_counter() - t0:.1f} s")
