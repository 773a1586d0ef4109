"""Writes the notebooks as ``make test`` runs them under nbval: each with small parameters
injected by papermill (after its ``parameters`` cell, as ``papermill -p`` would), a tiny synthetic
dataset, and run folders of their own, all under OUT_DIR.

    python tests/nbval_prepare.py build/nbval && pytest --nbval-lax build/nbval

``interactive`` keeps its default (True): nbval, like papermill, is no front end, so the notebooks
leave their widgets out by themselves (``ssdwb.apps.notebooks.live_front_end``), the path every
batch run takes. The widgets are exercised for real in JupyterLab by tests/test_browser.py.
"""

import sys
from pathlib import Path

import nbformat
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from ssdwb.apps.notebooks import NOTEBOOKS, notebook_path
from ssdwb.data.synthetic import make_shapes_coco


def small_parameters(out: Path) -> dict[str, dict]:
    data = str(out / "shapes")
    return {
        "anchors": {"data_dir": data},
        "augmentations": {"data_dir": data, "num_draws": 40},
        "train": {"data_dir": data, "run_dir": str(out / "runs-train"), "run_id": "nbval",
                  "epochs": 2, "eval_at": [1, 2], "batch_size": 8, "eval_batch_size": 8,
                  "num_workers": 0, "log_interval": 1},
        "results": {"run_root": str(out / "runs-results"), "data_dir": data},
        # it trains two runs to compare: on 8 images, 1 step an epoch
        "compare_runs": {"runs": str(out / "runs-compare") + "/*",
                         "data_dir": str(out / "shapes-compare")},
        "plan": {},
    }


def main(out_dir: str) -> None:
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "shapes" / "annotations" / "instances_val.json").exists():
        make_shapes_coco(out / "shapes", num_train=32, num_val=8, seed=0)
    if not (out / "shapes-compare" / "annotations" / "instances_val.json").exists():
        make_shapes_coco(out / "shapes-compare", num_train=8, num_val=4, seed=0)
    for name, params in small_parameters(out).items():
        assert name in NOTEBOOKS
        nb = load_notebook_node(str(notebook_path(name)))
        nb = parameterize_notebook(nb, params)
        nbformat.write(nb, out / f"{name}.ipynb")
    print(f"notebooks with test parameters in {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "build/nbval")
