"""TensorBoard event files of a run (through RunFolder), read back
with tensorboard's own EventAccumulator: the scalars, the 12 COCO stats, the val images with
detections, a resumed run without duplicated steps, and no files when it is turned off."""

import json

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ssdwb.config import TrainConfig, preset
from ssdwb.evaluation.coco_eval import STAT_KEYS
from ssdwb.runs.folder import RunFolder
from ssdwb.runs.tensorboard import TensorBoardLog, render_detections


def read_events(path):
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def scalar(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from ssdwb.data.synthetic import make_shapes_coco

    root = tmp_path_factory.mktemp("tb")
    make_shapes_coco(root / "data", num_train=8, num_val=4, seed=0)
    return root


def _stats(value):
    return {k: value + i / 100 for i, k in enumerate(STAT_KEYS)}


def test_run_folder_writes_scalars_stats_and_val_images(shapes, tmp_path):
    config = TrainConfig(data_dir=str(shapes / "data"))
    folder = RunFolder.create(tmp_path / "run", config)
    for it in (5, 10):
        folder.step_window(iteration=it, epoch=it / 10, loss=10.0 - it, lr=1e-3 * it,
                           images_per_s=50.0 + it)
    ann = json.loads((shapes / "data" / "annotations" / "instances_val.json").read_text())
    first = ann["images"][0]
    cat = ann["categories"][1]["id"]
    # one confident detection on the first val image, one below min_score (not drawn)
    results = np.array([[first["id"], 10.0, 20.0, 80.0, 60.0, 0.9, cat],
                        [first["id"], 0.0, 0.0, 5.0, 5.0, 0.1, cat]])
    folder.eval_end(1, 10, _stats(0.2), 0.2, results, [1, 2])
    folder.stop("success", {"status": "success"})
    assert list((tmp_path / "run").glob("events.out.tfevents.*"))

    acc = read_events(tmp_path / "run")
    assert scalar(acc, "train/loss") == [(5, 5.0), (10, 0.0)]
    assert [s for s, _ in scalar(acc, "train/lr")] == [5, 10]
    assert scalar(acc, "train/images_per_s") == [(5, 55.0), (10, 60.0)]
    for i, key in enumerate(STAT_KEYS):  # all 12 COCO stats at the eval's iteration
        assert scalar(acc, f"eval/{key}") == [(10, pytest.approx(0.2 + i / 100))]
    image_tags = acc.Tags()["images"]
    assert len(image_tags) == 4 and f"val/{first['file_name']}" in image_tags
    (img,) = acc.Images(f"val/{first['file_name']}")
    assert img.step == 10 and (img.width, img.height) == (first["width"], first["height"])


def test_render_detections_draws_the_boxes():
    from PIL import Image

    image = Image.new("RGB", (200, 100), (40, 40, 40))
    blank = render_detections(image, np.zeros((0, 7)))
    drawn = render_detections(image, np.array([[1, 20.0, 10.0, 100.0, 50.0, 0.8, 3]]),
                              {3: "cat"}, gt=np.array([[150.0, 20.0, 190.0, 90.0]]))
    assert blank.shape == drawn.shape == (100, 200, 3) and blank.dtype == np.uint8
    assert (blank == 40).all()  # the image itself, nothing drawn
    changed = (drawn != blank).any(axis=2)
    assert changed[10:60, 20:121].any() and not changed[:, 130:145].any()  # boxes where they are
    assert changed[20:91, 150:191].any()  # the GT box


def test_resume_replaces_what_the_killed_run_logged_after_its_checkpoint(tmp_path):
    """A run logs steps 1..6, is checkpointed at 4 and killed at 6; the resumed run logs 5..8
    again with other values. TensorBoard then shows one value per step, the resumed run's."""
    config = TrainConfig()
    folder = RunFolder.create(tmp_path / "run", config)
    for it in range(1, 7):
        folder.step_window(iteration=it, epoch=0.1, loss=float(it), lr=0.1, images_per_s=1.0)
    folder.tensorboard.close()  # what a kill leaves: the events written so far
    resumed = RunFolder.resume(tmp_path / "run", {"iteration": 4, "metrics_offset": 0,
                                                  "mlperf_offset": 0}, config)
    for it in range(5, 9):
        resumed.step_window(iteration=it, epoch=0.1, loss=100.0 + it, lr=0.1, images_per_s=1.0)
    resumed.stop("success", {})
    assert len(list((tmp_path / "run").glob("events.out.tfevents.*"))) == 2
    got = scalar(read_events(tmp_path / "run"), "train/loss")
    assert got == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 105.0), (6, 106.0), (7, 107.0),
                   (8, 108.0)]


def test_off_in_config_and_on_other_ranks_writes_nothing(tmp_path):
    for name, config, enabled in (("off", TrainConfig(tensorboard=False), True),
                                  ("rank1", TrainConfig(), False)):
        folder = RunFolder.create(tmp_path / name, config, enabled=enabled)
        folder.step_window(iteration=1, epoch=0.5, loss=1.0, lr=0.1, images_per_s=1.0)
        folder.eval_end(1, 1, _stats(0.1), 0.1, np.zeros((0, 7)), [1])
        folder.stop("success", {})
        assert not list(tmp_path.glob(f"{name}/events.out.tfevents.*"))
    assert TrainConfig().tensorboard is True
    assert TrainConfig().with_overrides(["tensorboard=false"]).tensorboard is False


def test_missing_val_images_are_left_out_not_fatal(tmp_path, caplog):
    writer = TensorBoardLog(tmp_path, TrainConfig(data_dir=str(tmp_path / "nowhere")))
    writer.eval_end(3, _stats(0.3), np.zeros((0, 7)))
    writer.eval_end(6, _stats(0.4), np.zeros((0, 7)))
    writer.close()
    assert "val images left out" in caplog.text and caplog.text.count("left out") == 1
    assert scalar(read_events(tmp_path), "eval/mAP") == [(3, pytest.approx(0.3)),
                                                          (6, pytest.approx(0.4))]


@pytest.mark.slow
def test_training_loop_writes_events_and_a_resume_keeps_one_value_per_step(shapes):
    """The real loop (ssdwb.engine.loop): cut after 3 of 8 iterations, resume, and the event files hold
    each logged iteration once with the value metrics.jsonl holds, and every eval's stats."""
    from ssdwb.engine.loop import train

    def config(run_id, **kw):
        return preset("demo", data_dir=str(shapes / "data"), run_dir=str(shapes / "runs"),
                      run_id=run_id, batch_size=2, epochs=2, eval_at=[1, 2], num_workers=0,
                      log_interval=1, eval_batch_size=4, warmup=2, lr=5e-3,
                      amp="off", channels_last=False, lr_decay_at=[2], **kw)

    first = train(config("cut", max_iters=3))
    assert first["status"] == "aborted"
    assert train(resume=shapes / "runs" / "cut", overrides=["max_iters=0"])["status"] == "success"
    run = shapes / "runs" / "cut"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "loss" in x]
    evals = [x for x in lines if x.get("eval")]
    acc = read_events(run)
    loss = scalar(acc, "train/loss")
    assert [s for s, _ in loss] == [x["iteration"] for x in steps] == list(range(1, 9))
    assert [v for _, v in loss] == pytest.approx([x["loss"] for x in steps], rel=1e-6)
    assert scalar(acc, "eval/AP50") == [(e["iteration"], pytest.approx(e["AP50"], abs=1e-7))
                                        for e in evals]
    assert len(acc.Tags()["images"]) == 4
