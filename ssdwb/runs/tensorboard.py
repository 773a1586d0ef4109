"""TensorBoard event files for a training run: ``tensorboard --logdir runs`` while jobs run.

Rank 0's :class:`ssdwb.runs.folder.RunFolder` owns one :class:`TensorBoardLog` and calls it at its named
points; the event files go into the run folder itself (``runs/<id>/events.out.tfevents.*``), so
TensorBoard lists each run under its run id. What is written, at step = training iteration:

* ``train/loss``, ``train/lr``, ``train/images_per_s``, ``train/epoch``: every log interval (the
  values of the ``metrics.jsonl`` line);
* ``eval/<stat>`` for the 12 COCO stats of ``ssdwb.evaluation.coco_eval.STAT_KEYS``: at every evaluation;
* ``val/<file name>``: a few val images (the first ``num_images`` of the val annotation file)
  with the evaluation's detections (score >= ``min_score``, at most ``max_boxes``, labelled) and
  the ground truth dashed in white, drawn with ``ssdwb.plots.draw_boxes``.

Resume: the writer of a resumed run passes ``purge_step = checkpoint iteration + 1`` to
``SummaryWriter``, which writes a ``SessionLog.START`` event at that step into a new event file
beside the first run's. TensorBoard (and ``EventAccumulator``, whose ``purge_orphaned_data`` is
on by default) then drops every earlier event at that step or later: what the killed run logged
after its checkpoint, which the resumed run logs again. The events up to the checkpoint's
iteration (its last step window and the eval just before it) stay, as in ``metrics.jsonl``.

Nothing is created or imported until the first write, so a disabled writer (other ranks,
``TrainConfig.tensorboard = False``) costs nothing and leaves no file. Drawing the val images
reads image files a training run otherwise only reads in its loaders: a failure there (a file
moved away) is logged once and the images are left out; it never stops the run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ssdwb.data import resolve_data
from ssdwb.data.coco import read_coco_json, to_rgb
from ssdwb.evaluation.coco_eval import STAT_KEYS
from ssdwb.plots import draw_boxes, show_sample

log = logging.getLogger(__name__)

__all__ = ["TensorBoardLog", "render_detections"]


class TensorBoardLog:
    """One run's TensorBoard writer (a ``torch.utils.tensorboard.SummaryWriter``, made lazily).

    Args:
        path: the run folder (the event files go there).
        config: the run's ``TrainConfig`` (``data_dir`` locates the val images); None for a
            writer that only logs scalars.
        enabled: False on ranks other than 0 and when ``config.tensorboard`` is off.
        purge_step: for a resumed run, the first iteration it logs again (see the module
            docstring); None for a fresh run.
        num_images, min_score, max_boxes: the val images drawn at each evaluation.
    """

    def __init__(self, path: str | os.PathLike, config=None, enabled: bool = True,
                 purge_step: int | None = None, num_images: int = 4, min_score: float = 0.3,
                 max_boxes: int = 20):
        self.path = Path(path)
        self.config = config
        self.enabled = enabled
        self.purge_step = purge_step
        self.num_images, self.min_score, self.max_boxes = num_images, min_score, max_boxes
        self._writer = None
        self._val = None  # (ids, paths, gt boxes per image, category names) once read
        self._images_failed = False

    @property
    def writer(self):
        if self._writer is None:
            # lazy: TensorBoard's writer loads tensorboard: only when the run writes events
            from torch.utils.tensorboard import SummaryWriter

            # flush_secs 30: curves show up within half a minute while a job runs
            self._writer = SummaryWriter(str(self.path), purge_step=self.purge_step,
                                         flush_secs=30)
        return self._writer

    # --- what RunFolder calls ------------------------------------------------------------------
    def scalars(self, step: int, prefix: str, values: dict) -> None:
        """``prefix/name`` for each finite number in ``values`` (other entries are skipped)."""
        if not self.enabled:
            return
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and np.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{name}", float(value), step)

    def step_window(self, record: dict) -> None:
        """A ``metrics.jsonl`` training line: iteration, epoch, loss, lr, images_per_s (and,
        with gradient clipping, grad_norm and grad_norm_max)."""
        if not self.enabled or "iteration" not in record:
            return
        self.scalars(int(record["iteration"]), "train",
                     {k: record[k] for k in ("loss", "lr", "images_per_s", "epoch", "grad_norm",
                                             "grad_norm_max")
                      if k in record})

    def eval_end(self, iteration: int, stats: dict, results=None) -> None:
        """The 12 COCO stats and, when ``results`` (array [N, 7]: image_id, x, y, w, h, score,
        category_id in COCO pixels) is given, the val images with their detections."""
        if not self.enabled:
            return

        self.scalars(iteration, "eval", {k: stats[k] for k in STAT_KEYS if k in stats})
        if results is not None and self.num_images > 0 and not self._images_failed:
            try:
                self._add_val_images(iteration, np.asarray(results))
            except Exception as e:  # a drawing problem must not stop a training run
                self._images_failed = True
                log.warning("TensorBoard: val images left out from now on (%s: %s)",
                            type(e).__name__, e)
        self.writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # --- val images ------------------------------------------------------------------------------
    def _val_images(self):
        """The first ``num_images`` val images: ids, paths, GT boxes (x1, y1, x2, y2 pixels) and
        the category names by id. Read once: COCO's val file is 25 MB of JSON."""
        if self._val is None:
            if self.config is None:
                raise ValueError("no config: the val images are unknown")
            paths = resolve_data(self.config.data_dir)
            data, _ = read_coco_json(paths["val_ann"])
            images = data["images"][: self.num_images]
            ids = [int(im["id"]) for im in images]
            gt = {i: [] for i in ids}
            for a in data["annotations"]:
                if a["image_id"] in gt:
                    x, y, w, h = a["bbox"]
                    gt[a["image_id"]].append([x, y, x + w, y + h])
            names = {int(c["id"]): str(c["name"]) for c in data["categories"]}
            self._val = (ids, [paths["val_images"] / im["file_name"] for im in images],
                         [np.asarray(gt[i], dtype=np.float64).reshape(-1, 4) for i in ids], names)
        return self._val

    def _add_val_images(self, step: int, results: np.ndarray) -> None:
        ids, files, gts, names = self._val_images()
        for image_id, file, gt in zip(ids, files, gts):
            rows = results[results[:, 0] == image_id] if len(results) else results.reshape(0, 7)
            rows = rows[rows[:, 5] >= self.min_score]
            rows = rows[np.argsort(-rows[:, 5], kind="stable")][: self.max_boxes]
            with Image.open(file) as im:
                picture = render_detections(to_rgb(im), rows, names, gt)
            self.writer.add_image(f"val/{file.name}", picture, step, dataformats="HWC")


def render_detections(image, rows: np.ndarray, names: dict[int, str] | None = None,
                      gt: np.ndarray | None = None, max_side: int = 640) -> np.ndarray:
    """An image with detections drawn on it, as pixels.

    Args:
        image: PIL RGB image.
        rows (ndarray[K, 7]): COCO result rows (image_id, x, y, w, h, score, category_id), pixels
            of ``image``.
        names: category id -> name for the labels.
        gt (ndarray[G, 4]): ground-truth boxes (x1, y1, x2, y2 pixels), drawn dashed in white.
        max_side: the picture's longer side at most (TensorBoard keeps every image it is sent).

    Returns:
        uint8 ndarray [H, W, 3].
    """
    # lazy: only the figure helpers need matplotlib's pyplot or canvas
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure


    w, h = image.size
    scale = min(1.0, max_side / max(w, h))
    dpi = 100
    fig = Figure(figsize=(w * scale / dpi, h * scale / dpi), dpi=dpi)  # no pyplot: no leak
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    show_sample(ax, image)
    if gt is not None and len(gt):
        draw_boxes(ax, gt, fractions=False, colour="white", linestyle="--", linewidth=1.0,
                   text=False)
    rows = rows[np.isfinite(rows).all(axis=1)]  # an untrained model can decode inf/NaN boxes
    if len(rows):
        xyxy = np.concatenate([rows[:, 1:3], rows[:, 1:3] + rows[:, 3:5]], axis=1)
        draw_boxes(ax, xyxy, rows[:, 6].astype(np.int64), rows[:, 5], names=names,
                   fractions=False)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
