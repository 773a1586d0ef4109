"""The command explains itself: one plain line per subcommand, and every config field with its
type, default and reason (from the dataclass's comments) in ``ssdwb train --help`` and
``ssdwb config``."""

import dataclasses
import json
import re
import subprocess
import sys

from ssdwb.cli import build_parser
from ssdwb.config import TrainConfig, describe_fields, field_reasons, preset


def run(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "ssdwb", *args], capture_output=True, text=True,
                         timeout=300, check=True)
    return out.stdout


def test_top_help_has_one_plain_line_per_subcommand():
    text = run("--help")
    commands = build_parser()._subparsers._group_actions[0].choices
    for name in commands:
        (line,) = [x for x in text.splitlines() if x.split()[:1] == [name]]
        help_text = line.split(None, 1)[1]
        assert help_text and not re.search(r"``|::|\*\*", help_text), line
    assert "``" not in text


def test_every_field_has_a_reason_from_its_comment():
    reasons = field_reasons()
    assert set(reasons) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert all(reasons.values()), [k for k, v in reasons.items() if not v]
    # a reason is the comment on the field's own lines, not a neighbour's
    assert reasons["grad_clip_norm"].startswith(">0: clip the global gradient norm")
    assert reasons["eval_at"].startswith("evaluations")


def test_train_help_lists_every_field_with_type_default_and_reason():
    text = run("train", "--help")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        (line,) = [x for x in text.splitlines() if x.split()[:1] == [f.name]]
        assert str(f.type) in line and json.dumps(getattr(defaults, f.name)) in line, line
        assert line.rstrip().endswith(field_reasons()[f.name]), line


def test_config_shows_a_presets_values_and_its_json_loads_back(tmp_path):
    assert describe_fields(preset("demo")) in run("config", "--preset", "demo")
    path = tmp_path / "demo.json"
    path.write_text(run("config", "--preset", "demo-fp32", "--json"))
    assert TrainConfig.load(path) == preset("demo-fp32")


def test_python_m_ssdwb_cli_is_the_same_command():
    out = subprocess.run([sys.executable, "-m", "ssdwb.cli", "config", "--json"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert json.loads(out) == TrainConfig().to_dict()


def test_notebook_passes_the_cell_timeout_on(monkeypatch):
    from ssdwb import cli

    calls = []
    monkeypatch.setattr(cli, "execute", lambda *a, **kw: calls.append(kw["cell_timeout"]))
    assert cli.main(["notebook", "anchors", "out.ipynb", "--cell-timeout", "5"]) == 0
    assert cli.main(["notebook", "anchors", "out.ipynb"]) == 0
    assert calls == [5.0, "default"]
