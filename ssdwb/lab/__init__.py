"""Research instruments built on the maths and on finished runs: fitting default boxes to a dataset
(``anchor_fit``), which default boxes detections come from (``attribution``), and the
time-to-train planner for C4140 clusters (``plan``)."""
