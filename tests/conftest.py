"""Shared fixtures."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_intra_op_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids oversubscription stalls."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
