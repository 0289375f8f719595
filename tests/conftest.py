import pytest
import torch


@pytest.fixture(autouse=True)
def _threads_and_seed():
    """One torch thread (the models under test are small: Python overhead, not FLOPs, dominates, and
    a second thread only adds contention on a shared 2-core machine) and a fixed seed for every test."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


QUICK_STUDIES = None  # None: every available study


@pytest.fixture(scope="session")
def quick_results(tmp_path_factory):
    """One quick run of the studies into a results directory, shared by the report tests."""
    import deepdiag as dd

    out = tmp_path_factory.mktemp("results")
    for name in QUICK_STUDIES or [n for n in dd.list_studies() if n in dd.study.ORDER]:
        dd.run_study(name, quick=True, out=out)
    return out


# ------------------------------------------------------------------ cluster engines (optional extras)

def require_extra(engine: str, module: str) -> None:
    """Skip (or, with REQUIRE_ENGINES=1 as CI sets it, fail) when an engine's optional extra is missing."""
    import importlib.util
    import os

    if importlib.util.find_spec(module) is None:
        hint = f'pip install "deepdiag[{engine}]"'
        if os.environ.get("REQUIRE_ENGINES") == "1":
            pytest.fail(f"REQUIRE_ENGINES=1 but engine {engine!r} is missing {module!r}: {hint}")
        pytest.skip(f"engine {engine!r} needs its extra: {hint}")


@pytest.fixture(scope="session")
def dask_address(tmp_path_factory):
    """A two-worker dask LocalCluster (one thread per worker) for the whole session: its address."""
    require_extra("dask", "distributed")
    from distributed import LocalCluster

    cluster = LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None,
                           scheduler_kwargs={"dashboard_address": ":0"},  # no fixed port 8787
                           local_directory=str(tmp_path_factory.mktemp("dask")))
    yield cluster.scheduler_address
    cluster.close()


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with two CPUs started once in this process (the ray engine uses it and leaves it up)."""
    require_extra("ray", "ray")
    import os
    import shutil
    import tempfile

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    temp = tempfile.mkdtemp(prefix="ddray", dir="/tmp")  # short: Ray's unix sockets live under it
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", _temp_dir=temp)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


# ------------------------------------------------------------------ framework adapters (optional extras)

def require_integration(extra: str, module: str) -> None:
    """At the top of a test module: skip the module (or, with REQUIRE_INTEGRATIONS=1 as CI sets it, fail)
    when the framework an adapter needs is not installed."""
    import importlib.util
    import os

    if importlib.util.find_spec(module) is None:
        hint = f"pip install 'deepdiag[{extra}]'"
        if os.environ.get("REQUIRE_INTEGRATIONS") == "1":
            pytest.fail(f"REQUIRE_INTEGRATIONS=1 but {module!r} is missing: {hint}", pytrace=False)
        pytest.skip(f"the {extra} integration needs its extra: {hint}", allow_module_level=True)
