"""Fixtures shared by every suite: a real S3 server (moto_server on loopback)."""

from __future__ import annotations

import pytest

from lvr_localcluster.s3 import S3Server

# The local Kubernetes fixtures (kube_cluster, kube_api, k8s_client, kube_namespace, kopf_operator).
pytest_plugins = ["lvr_localcluster.pytest_plugin"]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A running S3 server with bucket `lvr-test`; yields an S3Endpoint (endpoint, keys, bucket)."""
    with S3Server(log_dir=tmp_path_factory.mktemp("s3")) as endpoint:
        yield endpoint
