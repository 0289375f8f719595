import pytest
import torch


@pytest.fixture(autouse=True)
def _threads_and_seed():
    """Two threads (the CI machine's cores) and a fixed global seed for every test."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    yield
