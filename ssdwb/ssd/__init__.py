"""The SSD maths, tensors only: default boxes (``anchors``), matching and the box parametrisation
(``box_coder``), the MultiBox loss (``loss``), decoding and NMS (``postprocess``) and SSD300-ResNet34
(``model``). Nothing here reads files of a dataset, a run or a loop."""
