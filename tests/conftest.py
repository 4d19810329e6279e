"""Shared test set-up."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread():
    """The tests use small tensors: one intra-op thread avoids synchronisation cost and the
    stalls that OpenMP spin-waiting causes on a busy 2-core machine, and keeps timings stable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
