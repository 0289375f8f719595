import pytest
import torch


@pytest.fixture(autouse=True)
def _threads_and_seed():
    """Two threads (the CI machine's cores) and a fixed global seed for every test."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    yield


QUICK_STUDIES = None  # None: every available study


@pytest.fixture(scope="session")
def quick_results(tmp_path_factory):
    """One quick run of the studies into a results directory, shared by the report tests."""
    import deepdiag as dd

    out = tmp_path_factory.mktemp("results")
    torch.set_num_threads(2)
    for name in QUICK_STUDIES or [n for n in dd.list_studies() if n in dd.study.ORDER]:
        dd.run_study(name, quick=True, out=out)
    return out
