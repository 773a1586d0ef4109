"""ssdwb.data.synthetic: the demo set made once under concurrency, and `ssdwb data synth`'s
profiles."""

import json


def test_ensure_shapes_makes_the_demo_profile_once_under_concurrency(tmp_path):
    """Two ranks (or notebooks) asking for the demo set at once get one copy, in the demo profile;
    an existing dataset is left as it is."""
    from concurrent.futures import ProcessPoolExecutor

    from PIL import Image

    from ssdwb.data.synthetic import DEMO_SHAPES, ensure_shapes

    target = tmp_path / "shapes"
    with ProcessPoolExecutor(2) as pool:
        outs = list(pool.map(ensure_shapes, [target] * 2, [6] * 2, [3] * 2))
    assert outs == [target, target]
    ann = json.loads((target / "annotations" / "instances_train.json").read_text())
    assert len(ann["images"]) == 6 and len(list((target / "train").iterdir())) == 6
    assert {(i["width"], i["height"]) for i in ann["images"]} == {DEMO_SHAPES["size"]}
    assert Image.open(next((target / "val").iterdir())).size == DEMO_SHAPES["size"]
    sides = [min(a["bbox"][2:]) for a in ann["annotations"]]
    assert min(sides) >= DEMO_SHAPES["min_side"] * 0.7 - 1  # aspect jitter is 0.7-1.3
    mtime = (target / "annotations" / "instances_val.json").stat().st_mtime
    ensure_shapes(target, 50, 50)  # present: not regenerated, whatever the sizes asked
    assert (target / "annotations" / "instances_val.json").stat().st_mtime == mtime


def test_data_synth_profiles(tmp_path):
    from ssdwb.cli import main
    from ssdwb.data.synthetic import DEMO_SHAPES

    def sizes(out):
        ann = json.loads((out / "annotations" / "instances_train.json").read_text())
        return ({(i["width"], i["height"]) for i in ann["images"]},
                max(len([a for a in ann["annotations"] if a["image_id"] == i["id"]])
                    for i in ann["images"]))

    assert main(["data", "synth", str(tmp_path / "d"), "--train", "12", "--val", "2",
                 "--profile", "demo"]) == 0
    got, most = sizes(tmp_path / "d")
    assert got == {DEMO_SHAPES["size"]} and most <= DEMO_SHAPES["max_objects"]
    assert main(["data", "synth", str(tmp_path / "f"), "--train", "12", "--val", "2"]) == 0
    got, _ = sizes(tmp_path / "f")
    assert len(got) > 1 and all(320 <= s <= 640 for wh in got for s in wh)
