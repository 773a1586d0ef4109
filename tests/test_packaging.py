"""pyproject.toml and environment.yml list the same dependencies; `import ssdwb` stays cheap."""

import re
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
