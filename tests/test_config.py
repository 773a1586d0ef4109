"""TrainConfig: the reference defaults and schedule, the Dell C4140 learning rates and decay points
as SPEC.md publishes them (literals, not the formulas of ssdwb/config.py again), config.json; its
typed fields: every way in converts and validates each value to its declared type (constructor,
presets, config.json, --set overrides, the training notebook's papermill parameters); and
``runtime.resolve_amp`` and the CPU classes."""

import json
import re
from pathlib import Path

import pytest
import torch

from ssdwb import runtime
from ssdwb.apps.notebooks import notebook_path
from ssdwb.config import TrainConfig, preset

# --- the reference and Dell's C4140 configs (SPEC.md), as published literals ------------------
TRAIN_IMAGES = 117_266  # COCO 2017 train images with annotations

# SPEC.md's Dell C4140 table: GPUs, batch per GPU, base-LR flag; then the global batch, Dell's
# effective base LR after its rounding 2.5e-3 * max(1, round(flag / 2.5e-3 * gbs / 32)), and the
# two LR decays at iterations 160k * 32 / gbs and 200k * 32 / gbs (rounded), all written out.
# 16x: Dell shipped no config; batch 1536 (NVIDIA's 64-GPU v0.6 run) with Dell's 4x/8x flag
# 3.2e-3: 3.2e-3 / 2.5e-3 = 1.28, 1.28 * 1536 / 32 = 1.28 * 48 = 61.44, rounded 61,
# 61 * 2.5e-3 = 0.1525. The others: 1x 1.168 * 15 = 17.52 -> 18; 2x 1.168 * 30 = 35.04 -> 35;
# 4x 1.28 * 28 = 35.84 -> 36; 8x 1.28 * 32 = 40.96 -> 41.
C4140 = {
    "1xC4140": (4, 120, 2.92e-3, 480, 0.045, (10_667, 13_333)),
    "2xC4140": (8, 120, 2.92e-3, 960, 0.0875, (5_333, 6_667)),
    "4xC4140": (16, 56, 3.2e-3, 896, 0.09, (5_714, 7_143)),
    "8xC4140": (32, 32, 3.2e-3, 1024, 0.1025, (5_000, 6_250)),
    "16xC4140": (64, 24, 3.2e-3, 1536, 0.1525, (3_333, 4_167)),
}


def test_reference_defaults_and_eval_epochs():
    c = TrainConfig()
    assert (c.batch_size, c.lr, c.momentum, c.weight_decay, c.target_map) == (32, 2.5e-3, 0.9,
                                                                               5e-4, 0.23)
    assert (c.lr_scaling, c.warmup, c.lr_decay_factor, c.epochs) == ("linear", 300, 0.1, 70)
    # SPEC.md: evaluation at epochs 33, 44, 50, 55, 61, 66; decays at iterations 160k and 200k
    # at the reference's global batch of 32
    assert c.eval_epochs(TRAIN_IMAGES) == [33, 44, 50, 55, 61, 66]
    assert c.decay_iterations(1, 1000) == [160_000, 200_000]
    assert c.base_lr(1) == 2.5e-3


@pytest.mark.parametrize("system", list(C4140))
def test_c4140_learning_rates(system):
    gpus, bs, flag, gbs, base, (d1, d2) = C4140[system]
    c = TrainConfig(batch_size=bs, lr=flag, weight_decay=1.3e-4, warmup=650, lr_scaling="dell")
    assert c.global_batch(gpus) == gbs
    # float arithmetic: 2.5e-3 * 35 is 0.08750000000000001
    assert c.base_lr(gpus) == pytest.approx(base, rel=1e-12)
    ipe = TRAIN_IMAGES // gbs
    assert c.lr_at(0, gpus, ipe) == 0.0
    assert c.lr_at(325, gpus, ipe) == pytest.approx(base / 2, rel=1e-12)  # half-way up the warmup
    assert c.lr_at(650, gpus, ipe) == pytest.approx(base, rel=1e-12)
    assert c.decay_iterations(gpus, ipe) == [d1, d2]
    # SPEC.md: the decays fall at epochs ~44 and ~55 whatever the global batch
    assert (round(d1 * gbs / TRAIN_IMAGES), round(d2 * gbs / TRAIN_IMAGES)) == (44, 55)
    assert c.lr_at(d1 - 1, gpus, ipe) == pytest.approx(base, rel=1e-12)
    assert c.lr_at(d1, gpus, ipe) == pytest.approx(base * 0.1, rel=1e-12)
    assert c.lr_at(d2 - 1, gpus, ipe) == pytest.approx(base * 0.1, rel=1e-12)
    assert c.lr_at(d2, gpus, ipe) == pytest.approx(base * 0.01, rel=1e-12)
    assert c.eval_epochs(TRAIN_IMAGES) == [33, 44, 50, 55, 61, 66]  # epochs, not iterations


def test_dell_rounding_differs_from_the_linear_rule():
    # 4xC4140 with the linear rule: 3.2e-3 * 896 / 32 = 0.0896, not Dell's 0.09
    c = TrainConfig(batch_size=56, lr=3.2e-3)
    assert c.base_lr(16) == pytest.approx(0.0896, rel=1e-12)
    assert c.replace(lr_scaling="dell").base_lr(16) == pytest.approx(0.09, rel=1e-12)
    # a flag too small for one step of 2.5e-3 still gets one (the max(1, ...))
    assert TrainConfig(batch_size=1, lr=1e-5, lr_scaling="dell").base_lr(1) == 2.5e-3


def test_linear_rule():
    c = TrainConfig(batch_size=24, lr=2.5e-3)
    assert c.base_lr(64) == pytest.approx(0.12, rel=1e-12)  # 2.5e-3 * 1536 / 32


def test_config_json_round_trip_and_errors(tmp_path):
    c = preset("demo", seed=7)
    c.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == c
    (tmp_path / "bad.json").write_text(json.dumps({"batch_size": 4, "learning_rate": 1}))
    with pytest.raises(ValueError, match=r"bad.json: unknown config key\(s\) \['learning_rate'\]"):
        TrainConfig.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="amp must be one of"):
        TrainConfig(amp="fp8")
    o = c.with_overrides(["epochs=5", "eval_at=[1, 5]", "amp=bf16", "backbone_weights=null"])
    assert (o.epochs, o.eval_at, o.amp, o.backbone_weights) == (5, [1, 5], "bf16", None)
    with pytest.raises(ValueError, match="unknown config key 'nope'"):
        c.with_overrides(["nope=1"])


# --- conversion by declared type ----------------------------------------------------------------
@pytest.mark.parametrize("raw, expected", [
    ("False", False), ("false", False), ("0", False), ("no", False), ("NO", False), (False, False),
    (0, False), ("True", True), ("true", True), ("1", True), ("Yes", True), (True, True), (1, True),
])
def test_bool_fields_convert(raw, expected):
    assert TrainConfig(channels_last=raw).channels_last is expected
    assert TrainConfig().with_overrides([f"cudnn_benchmark={raw}"]).cudnn_benchmark is expected


@pytest.mark.parametrize("raw", ["maybe", "", 2, 0.5, None, [True]])
def test_bool_fields_refuse(raw):
    with pytest.raises(ValueError, match=r"^skip_bad_images: expected a boolean .*got "):
        TrainConfig(skip_bad_images=raw)


def test_overrides_are_typed():
    o = TrainConfig().with_overrides(["channels_last=False", "skip_bad_images=no", "epochs=5",
                                      "lr=1e-2", "warmup=5.0", "eval_at=1,5", "lr_decay_at=[3]",
                                      "backbone_weights=none", "run_id=123", "amp=auto"])
    assert o.channels_last is False and o.skip_bad_images is False
    assert o.epochs == 5 and type(o.epochs) is int
    assert o.lr == 0.01 and type(o.lr) is float
    assert o.warmup == 5 and type(o.warmup) is int
    assert o.eval_at == [1.0, 5.0] and all(type(x) is float for x in o.eval_at)
    assert o.lr_decay_at == [3.0]
    assert o.backbone_weights is None and o.run_id == "123" and o.amp == "auto"


@pytest.mark.parametrize("raw, message", [
    (5.5, "epochs: expected an integer, got 5.5 (float)"),
    ("5.5", "epochs: expected an integer, got '5.5' (str)"),
    ("five", "epochs: expected an integer, got 'five' (str)"),
    (True, "epochs: expected an integer, got True (bool)"),
    (float("inf"), "epochs: expected an integer, got inf (float)"),
])
def test_int_fields_refuse_non_integers(raw, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        TrainConfig(epochs=raw)


def test_int_fields_accept_integral_values():
    assert TrainConfig(epochs=5.0).epochs == 5 and type(TrainConfig(epochs=5.0).epochs) is int
    assert TrainConfig(epochs="5").epochs == 5
    assert TrainConfig(seed=" 7 ").seed == 7
    with pytest.raises(ValueError, match=r"^epochs: expected an integer, got '5.5' \(str\)$"):
        TrainConfig().with_overrides(["epochs=5.5"])


def test_float_fields():
    c = TrainConfig(lr=1, model_width="0.25", max_bad_image_share="0")
    assert (c.lr, c.model_width, c.max_bad_image_share) == (1.0, 0.25, 0.0)
    assert type(c.lr) is float
    for raw in ("fast", None, True, float("nan"), "inf", [1.0]):
        with pytest.raises(ValueError, match=r"^lr: expected a finite number, got "):
            TrainConfig(lr=raw)
    with pytest.raises(ValueError, match="^max_bad_image_share: expected a share from 0 to 1"):
        TrainConfig(max_bad_image_share=1.5)


@pytest.mark.parametrize("raw, expected", [
    ([1, 2.5], [1.0, 2.5]), ((1, 2), [1.0, 2.0]), ("[1, 2]", [1.0, 2.0]), ("1,2", [1.0, 2.0]),
    (" 1 , 2 ", [1.0, 2.0]), ("", []), ([], []), (5, [5.0]), ("5", [5.0]),
])
def test_float_list_fields(raw, expected):
    assert TrainConfig(eval_at=raw).eval_at == expected


@pytest.mark.parametrize("raw, message", [
    ("1,x", r"^eval_at\[1\]: expected a finite number, got 'x' \(str\)$"),
    ("[1, 2", r"^eval_at: expected a list of numbers, got '\[1, 2' \(str\)$"),
    ({"a": 1}, r"^eval_at: expected a list of numbers, got \{'a': 1\} \(dict\)$"),
    (None, r"^eval_at: expected a list of numbers, got None \(NoneType\)$"),
    ([1, True], r"^eval_at\[1\]: expected a finite number, got True \(bool\)$"),
])
def test_float_list_fields_refuse(raw, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(eval_at=raw)


def test_str_fields_and_none():
    for raw in ("null", "None", "none", None):
        assert TrainConfig(backbone_weights=raw).backbone_weights is None
    assert TrainConfig(backbone_weights="w.pt").backbone_weights == "w.pt"
    # "none" is None only where the field allows None
    assert TrainConfig(run_id="none").run_id == "none"
    with pytest.raises(ValueError, match=r"^run_id: expected a string, got None \(NoneType\)$"):
        TrainConfig(run_id=None)
    with pytest.raises(ValueError, match=r"^data_dir: expected a string, got \['a'\] \(list\)$"):
        TrainConfig(data_dir=["a"])
    with pytest.raises(ValueError, match="amp must be one of"):
        TrainConfig().with_overrides(["amp=none"])


def test_new_fields_defaults():
    c = TrainConfig()
    assert (c.skip_bad_images, c.max_bad_image_share, c.cudnn_benchmark, c.amp) == (
        True, 0.01, True, "off")
    assert TrainConfig(amp="auto").amp == "auto"


def test_every_field_has_its_declared_type():
    import dataclasses
    types = {"bool": bool, "int": int, "float": float, "str": str}
    for c in (TrainConfig(), preset("demo"), preset("reference")):
        for f in dataclasses.fields(c):
            value = getattr(c, f.name)
            if f.type == "list[float]":
                assert all(type(x) is float for x in value), f.name
            elif f.type == "str | None":
                assert value is None or type(value) is str, f.name
            else:
                assert type(value) is types[f.type], f.name


# --- files: the file name prefixes the message --------------------------------------------------
def test_load_converts_and_names_the_file(tmp_path):
    (tmp_path / "ok.json").write_text(json.dumps({"channels_last": "false", "epochs": 5.0}))
    c = TrainConfig.load(tmp_path / "ok.json")
    assert c.channels_last is False and c.epochs == 5
    (tmp_path / "bad.json").write_text(json.dumps({"epochs": 5.5}))
    with pytest.raises(ValueError, match=r"bad.json: epochs: expected an integer, got 5.5 \(float\)"):
        TrainConfig.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match=r"^ckpt.pt: channels_last: expected a boolean"):
        TrainConfig.from_dict({"channels_last": "nope"}, "ckpt.pt")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(ValueError, match="list.json: expected a JSON object"):
        TrainConfig.load(tmp_path / "list.json")


def test_preset_and_replace_convert():
    assert preset("demo", channels_last="False").channels_last is False
    assert preset("demo").replace(epochs="3").epochs == 3
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['nope'\]"):
        preset("demo", nope=1)


# --- the training notebook's parameters ---------------------------------------------------------
def _notebook_config(parameters: dict) -> TrainConfig:
    """Runs what notebooks/train.ipynb runs to make its config, without training: the parameters
    cell, the cell papermill injects for ``parameters`` (papermill's own translator), and the set-up
    cell's lines from ``changes = ...`` to the ``make_preset(...)`` call."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(notebook_path("train")))  # as papermill.execute_notebook reads it
    nb = parameterize_notebook(nb, parameters)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert "injected-parameters" in nb.cells[2].metadata.get("tags", [])
    setup = next(s for s in code if "make_preset(preset" in s).splitlines()
    start = next(i for i, line in enumerate(setup) if line.startswith("changes = "))
    end = next(i for i, line in enumerate(setup) if "make_preset(preset" in line)
    namespace = {"make_preset": preset}
    exec(code[0], namespace)  # defaults
    exec(code[1], namespace)  # papermill's injected values
    exec("\n".join(setup[start:end + 1]), namespace)
    return namespace["config"]


def test_notebook_parameters_are_typed():
    # papermill -p channels_last False gives a bool; -r channels_last False (and Slurm's
    # CHANNELS_LAST when it is not JSON) gives the string: both are False
    for value in (False, "False", "false", "0"):
        c = _notebook_config({"channels_last": value, "epochs": 3})
        assert c.channels_last is False and c.epochs == 3
    c = _notebook_config({"epochs": "4", "eval_at": "[1, 4]", "backbone_weights": "none",
                          "extra": ["cudnn_benchmark=no", "max_bad_image_share=0.05"]})
    assert (c.epochs, c.eval_at, c.backbone_weights) == (4, [1.0, 4.0], None)
    assert c.cudnn_benchmark is False and c.max_bad_image_share == 0.05


@pytest.mark.parametrize("parameters, message", [
    ({"epochs": 5.5}, r"^epochs: expected an integer, got 5.5 \(float\)$"),
    ({"channels_last": "maybe"}, r"^channels_last: expected a boolean .*got 'maybe' \(str\)$"),
    ({"extra": ["epochs=5.5"]}, r"^epochs: expected an integer, got '5.5' \(str\)$"),
])
def test_notebook_bad_parameter_is_a_clear_error(parameters, message):
    with pytest.raises(ValueError, match=message):
        _notebook_config(parameters)


# --- runtime.resolve_amp ------------------------------------------------------------------------
def test_resolve_amp_auto(monkeypatch):
    cpu = torch.device("cpu")
    assert runtime.resolve_amp("auto", "cuda") == "fp16"
    assert runtime.resolve_amp("auto", torch.device("cuda", 1)) == "fp16"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.resolve_amp("auto", cpu) == "bf16"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert runtime.resolve_amp("auto", cpu) == "off"
    for amp in ("off", "fp16", "bf16"):
        assert runtime.resolve_amp(amp, cpu) == amp
    with pytest.raises(ValueError, match="amp must be one of"):
        runtime.resolve_amp("fp8", cpu)


def _kernel_cpu_flags() -> set[str]:
    """This machine's CPU features as the Linux kernel lists them (x86 "flags", ARM
    "Features"), a source independent of torch's cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    m = re.search(r"^(?:flags|Features)\s*:(.*)$", text, re.M)
    if not m:
        pytest.skip("/proc/cpuinfo lists no CPU features")
    return set(m.group(1).split())


def test_this_cpu_class_agrees_with_the_kernel_flags():
    flags = _kernel_cpu_flags()
    native = bool(flags & {"avx512_bf16", "amx_bf16", "bf16", "svebf16"})
    assert runtime.cpu_has_native_bf16() is native, sorted(flags & {"avx512_bf16", "amx_bf16"})
    amx = native and {"amx_bf16", "amx_tile"} <= flags
    want = "amx" if amx else "bf16" if native else "fp32"
    assert runtime.cpu_class() == want
    from ssdwb.config import demo_preset

    assert demo_preset() == {"amx": "demo", "bf16": "demo-bf16", "fp32": "demo-fp32"}[want]


def test_cpu_has_native_bf16_reads_the_cpu_flags(monkeypatch):
    flags = {"avx2": True, "avx512_f": True, "avx512_bf16": False, "amx_bf16": False}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
    assert runtime.cpu_has_native_bf16() is False  # AVX512 without BF16: emulated, not native
    flags["avx512_bf16"] = True
    assert runtime.cpu_has_native_bf16() is True
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    assert runtime.cpu_has_native_bf16() is True


def test_demo_preset_follows_the_cpu_class(monkeypatch):
    from ssdwb.config import DEMO_PRESETS, PRESETS, demo_preset

    for flags, cls, name in (
            ({"avx2": True}, "fp32", "demo-fp32"),
            ({"avx512_f": True, "avx512_bf16": False}, "fp32", "demo-fp32"),
            ({"avx512_bf16": True}, "bf16", "demo-bf16"),
            ({"bf16": True}, "bf16", "demo-bf16"),  # ARM's BF16 extension
            ({"avx512_bf16": True, "amx_bf16": True, "amx_tile": True}, "amx", "demo"),
            ({"amx_bf16": True, "amx_tile": False}, "bf16", "demo-bf16")):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda f=flags: f)
        assert (runtime.cpu_class(), demo_preset()) == (cls, name), flags
    assert set(DEMO_PRESETS.values()) == {"demo", "demo-bf16", "demo-fp32"}
    # One recipe at three lengths: the same settings (batch, LR, warmup, ...) apart from
    # precision and schedule, the decays and evaluations inside each run, the last evaluation at
    # the last epoch.
    schedule = {"epochs", "lr_decay_at", "eval_at", "amp", "channels_last"}
    base = {k: v for k, v in PRESETS["demo"].items() if k not in schedule}
    assert (base["batch_size"], base["warmup"], base["lr"], base["grad_clip_norm"]) == (
        8, 240, 0.05, 10.0)
    assert TrainConfig().grad_clip_norm == 0.0 and "grad_clip_norm" not in PRESETS["reference"]
    for name in DEMO_PRESETS.values():
        p = PRESETS[name]
        assert {k: v for k, v in p.items() if k not in schedule} == base, name
        assert TrainConfig(**p).base_lr(1) == pytest.approx(0.0125), name  # linear: 0.05 * 8/32
        assert p["eval_at"][-1] == p["epochs"] and max(p["lr_decay_at"]) < p["epochs"], name
        assert p["amp"] == {"demo": "auto", "demo-bf16": "bf16", "demo-fp32": "off"}[name]


def test_resolve_amp_bf16_on_a_gpu_without_bf16(monkeypatch):
    asked = []

    def is_bf16_supported(including_emulation=True):
        asked.append(including_emulation)
        return including_emulation  # a V100: emulated bf16 only

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    with pytest.raises(ValueError, match=r"^amp=bf16 needs a GPU with bf16 \(compute capability "
                                         r"8\.0\+\); this is Tesla V100-SXM2-16GB: use amp=fp16$"):
        runtime.resolve_amp("bf16", torch.device("cuda"))
    assert asked == [False]
    assert runtime.resolve_amp("fp16", "cuda") == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert runtime.resolve_amp("bf16", "cuda") == "bf16"
