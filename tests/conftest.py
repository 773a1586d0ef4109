import sys
from pathlib import Path

import pytest
import torch

# tests/reference.py is imported as `reference` by the test modules.
sys.path.insert(0, str(Path(__file__).parent))

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def dboxes():
    from ssdwb.ssd.anchors import dboxes300_coco

    return dboxes300_coco()
