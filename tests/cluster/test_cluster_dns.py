"""The real nodes' cluster DNS records (`lvr_localcluster.clusterdns.hosts_lines`), as CoreDNS's kubernetes
plugin serves them: a Service's ClusterIP; a headless Service's ready addresses, and its pods with a
hostname under their own names (what torchrun's rendezvous resolves)."""

from __future__ import annotations

from lvr_localcluster.clusterdns import hosts_lines


def _svc(ns: str, name: str, cluster_ip: str) -> dict:
    return {"metadata": {"namespace": ns, "name": name}, "spec": {"clusterIP": cluster_ip}}


def test_services_and_the_pods_of_headless_services_get_a_records():
    services = [_svc("default", "kubernetes", "10.96.0.1"), _svc("team", "job-workers", "None"),
                _svc("team", "empty", "None")]
    endpoints = [{"metadata": {"namespace": "team", "name": "job-workers"}, "subsets": [{
        "addresses": [{"ip": "10.244.1.2", "hostname": "job-worker-0"}, {"ip": "10.244.2.2", "hostname": "job-worker-1"}],
        "notReadyAddresses": [{"ip": "10.244.1.9", "hostname": "job-worker-2"}]}]},
        {"metadata": {"namespace": "default", "name": "kubernetes"}, "subsets": [{"addresses": [{"ip": "10.244.0.1"}]}]}]
    assert sorted(hosts_lines(services, endpoints)) == sorted([
        "10.96.0.1 kubernetes.default.svc.cluster.local",
        "10.244.1.2 job-workers.team.svc.cluster.local",
        "10.244.1.2 job-worker-0.job-workers.team.svc.cluster.local",
        "10.244.2.2 job-workers.team.svc.cluster.local",
        "10.244.2.2 job-worker-1.job-workers.team.svc.cluster.local",
    ])
