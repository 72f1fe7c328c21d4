"""pytest fixtures for suites that need the local cluster (tests/cluster, tests/operator, e2e).

Registered from tests/conftest.py with `pytest_plugins = ["lvr_localcluster.pytest_plugin"]`.

- `kube_cluster` (session): a started LocalCluster; KUBECONFIG points at its admin kubeconfig meanwhile.
- `kube_api` (session): its admin KubeApi (raw JSON client).
- `k8s_client` (session): a `kubernetes.client.ApiClient` for the admin identity.
- `kube_namespace` (function): a fresh namespace that accepts pods; deleted afterwards.
- `kopf_operator` (function): `with kopf_operator("lvr_operator.main", namespace=ns) as runner:` runs an
  operator (module name or .py path) with kopf.testing.KopfRunner against the cluster, and fails the test
  if kopf itself crashed.
- `wait_until(fn, timeout, what)`: poll `fn()` until truthy; the error names `what` and the last value.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lvr_localcluster.cluster import LocalCluster
from lvr_localcluster.kubeapi import ApiError, KubeApi


def wait_until(fn: Callable[[], Any], timeout: float = 30, what: str = "condition", interval: float = 0.2) -> Any:
    """Return fn()'s first truthy value; after `timeout` s raise with `what` and the last value seen."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last value: {last!r}")


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    """The real apiserver/scheduler/controller-manager + nodes + kubelet stand-in, for the whole session."""
    cluster = LocalCluster(tmp_path_factory.mktemp("kube"))
    with cluster, _kubeconfig_env(str(cluster.kubeconfig)):
        yield cluster


@contextlib.contextmanager
def _kubeconfig_env(path: str) -> Iterator[None]:
    """Point KUBECONFIG at `path`, also for the `kubernetes` package if it is already imported: it reads
    the variable once, at import, and kopf's default login (load_kube_config()) relies on it."""
    from kubernetes.config import kube_config

    old_env, old_default = os.environ.get("KUBECONFIG"), kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    os.environ["KUBECONFIG"] = kube_config.KUBE_CONFIG_DEFAULT_LOCATION = path
    try:
        yield
    finally:
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = old_default
        if old_env is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old_env


@pytest.fixture(scope="session")
def kube_api(kube_cluster: LocalCluster) -> KubeApi:
    return kube_cluster.api


@pytest.fixture(scope="session")
def k8s_client(kube_cluster: LocalCluster):
    """The official client, configured from the admin kubeconfig (what operators and users run)."""
    from kubernetes import config

    api_client = config.new_client_from_config(config_file=str(kube_cluster.kubeconfig))
    yield api_client
    api_client.close()


@pytest.fixture
def kube_namespace(kube_cluster: LocalCluster, request) -> Iterator[str]:
    """A namespace named after the test, ready for pods; deleted (with its pods) after the test."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = kube_cluster.create_namespace(f"{base}-{uuid.uuid4().hex[:5]}")
    yield name
    with contextlib.suppress(ApiError):
        kube_cluster.api.delete(f"/api/v1/namespaces/{name}")


@pytest.fixture
def kopf_operator(kube_cluster: LocalCluster):
    """Factory: a context manager running `module` under KopfRunner; re-raises kopf's own failure."""
    from kopf.testing import KopfRunner

    @contextlib.contextmanager
    def run(module: str, *, namespace: str | None = None, extra_args: list[str] | None = None,
            timeout: float = 60) -> Iterator[KopfRunner]:
        scope = ["--namespace", namespace] if namespace else ["--all-namespaces"]
        target = [module] if module.endswith(".py") else ["-m", module]  # a file path or an importable module
        args = ["run", "--standalone", "--verbose", *scope, *target, *(extra_args or [])]
        with KopfRunner(args, timeout=timeout) as runner:
            yield runner
        if runner.exception is not None:
            raise AssertionError(f"kopf run -m {module} failed:\n{runner.output[-4000:]}") from runner.exception
    return run
