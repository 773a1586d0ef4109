"""COCO box evaluation: distributed inference (``inference``), the COCO results format and
``coco_eval`` on two backends (``coco_eval``), and COCO's error analysis (``error_analysis``)."""
