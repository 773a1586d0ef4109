"""Tools built on finished runs: ``predict`` (a checkpoint on your images), ``export`` (ONNX),
``report`` (executed notebooks to HTML) and ``notebooks`` (papermill runner)."""
