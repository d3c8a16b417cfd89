"""Shared fixtures: the C engine (the installed `tinymp` package), the independent numpy
reference, and small model factories built with the low-level writer."""
import os
import sys
import zlib

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = os.path.join(ROOT, "host")
if HOST not in sys.path:
    sys.path.insert(0, HOST)


@pytest.fixture
def rng(request):
    # a per-test seed derived from the test name: reproducible (crc32, not the per-process salted
    # hash()), different across tests
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)
