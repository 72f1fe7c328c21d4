"""The chart as rendered by the real helm: lint, defaults, overrides, names, and the RBAC rules being
exactly those of operator/lvr_operator/manifests/rbac.py."""

from __future__ import annotations

import tomllib

import pytest
import yaml
from chart_helpers import CHART, ROOT, args_map, find, helm_run, one, operator_container, render_chart

from lvr_operator.manifests.rbac import cluster_rules, operator_rules
from lvr_operator.runner import kopf_run_kwargs
from lvr_trainer.cli import build_parser

OPERATOR = "lvr-longvideo-rl-operator"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.mark.parametrize("sets", [[], ["watchNamespaces={a,b}", "minio.enabled=false", "peering.enabled=false"]])
def test_helm_lint_strict(helm, sets):
    args = [a for s in sets for a in ("--set", s)]
    out = helm_run(helm, "lint", "--strict", str(CHART), *args).stdout
    assert "0 chart(s) failed" in out and "[WARNING]" not in out and "[ERROR]" not in out


def test_chart_version_is_the_project_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == chart["version"] == VERSION


def test_defaults_operator_deployment(render):
    docs = render()
    dep = one(docs, "Deployment", OPERATOR)
    pod = dep["spec"]["template"]["spec"]
    c = operator_container(docs)
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    assert c["image"] == f"longvideo-rl/operator:{VERSION}" and c["command"] == ["lvr", "operator", "run"]
    args = args_map(c)
    assert args["--trainer-image"] == [f"longvideo-rl/trainer:{VERSION}"]
    assert args["--rollout-image"] == [f"longvideo-rl/rollout:{VERSION}"] and args["--native-sidecars"] == ["auto"]
    assert args["--liveness"] == ["http://0.0.0.0:8080/healthz"] and args["--peering"] == ["longvideo-rl"]
    assert "--namespace" not in args and "--verbose" not in args
    probe = c["livenessProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {"name": "healthz", "containerPort": 8080, "protocol": "TCP"} in c["ports"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                  "capabilities": {"drop": ["ALL"]}}
    assert c["resources"]["limits"] == {"cpu": "1", "memory": "512Mi"} and c["resources"]["requests"]
    assert pod["serviceAccountName"] == OPERATOR
    assert {"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in c["env"]
    assert dep["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "longvideo-rl", "app.kubernetes.io/instance": "lvr",
        "app.kubernetes.io/component": "operator"}


def test_defaults_cluster_wide_rbac_is_operator_rules(render):
    docs = render()
    role = one(docs, "ClusterRole")
    assert role["rules"] == operator_rules() == cluster_rules()
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"] == f"lvr-system-{OPERATOR}"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": OPERATOR, "namespace": "lvr-system"}]
    assert not find(docs, "Role") and not find(docs, "RoleBinding")
    assert one(docs, "ServiceAccount", OPERATOR)
    assert one(docs, "ClusterKopfPeering", "longvideo-rl")


def test_rbac_never_reads_secrets_or_writes_cluster_objects():
    for namespaced in (False, True):
        for peering in (False, True):
            rules = operator_rules(namespaced, peering) + cluster_rules(namespaced, peering)
            resources = {r for rule in rules for r in rule["resources"]}
            assert "secrets" not in resources and "*" not in resources
            assert not resources & {"clusterroles", "clusterrolebindings", "customresourcedefinitions", "namespaces"}
            assert all("*" not in rule["verbs"] and "escalate" not in rule["verbs"] for rule in rules)
    # the namespaced install keeps only read-only listing cluster-wide
    assert all(rule["verbs"] == ["list"] for rule in cluster_rules(namespaced=True))


def test_watch_namespaces_render_a_role_per_namespace(render):
    docs = render({"watchNamespaces": ["team-a", "team-b"]})
    assert args_map(operator_container(docs))["--namespace"] == ["team-a", "team-b"]
    for ns in ("team-a", "team-b"):
        role = one(docs, "Role", OPERATOR, ns)
        assert role["rules"] == operator_rules(namespaced=True)
        binding = one(docs, "RoleBinding", OPERATOR, ns)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": OPERATOR}
        assert binding["subjects"][0]["namespace"] == "lvr-system"
        assert one(docs, "KopfPeering", "longvideo-rl", ns)
    assert one(docs, "ClusterRole")["rules"] == cluster_rules(namespaced=True)
    assert not find(docs, "ClusterKopfPeering")


def test_peering_off_runs_standalone(render):
    docs = render({"peering": {"enabled": False}})
    assert "--peering" not in args_map(operator_container(docs))
    assert not find(docs, "ClusterKopfPeering") and not find(docs, "KopfPeering")
    assert one(docs, "ClusterRole")["rules"] == operator_rules(peering=False)


def test_minio_on_by_default_and_off(render):
    docs = render()
    minio = one(docs, "Deployment", "lvr-longvideo-rl-minio")
    (c,) = minio["spec"]["template"]["spec"]["containers"]
    assert c["image"].startswith("quay.io/minio/minio:RELEASE.") and c["securityContext"]["readOnlyRootFilesystem"]
    secret = one(docs, "Secret", "lvr-longvideo-rl-minio-credentials")
    assert set(secret["data"]) == {"accessKey", "secretKey"}      # what a job's credentialsSecret needs
    assert {e["valueFrom"]["secretKeyRef"]["key"] for e in c["env"] if "valueFrom" in e} == {"accessKey", "secretKey"}
    pvc = one(docs, "PersistentVolumeClaim", "lvr-longvideo-rl-minio")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "200Gi"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert one(docs, "Service", "lvr-longvideo-rl-minio")["spec"]["ports"][0]["port"] == 9000
    job = one(docs, "Job", "lvr-longvideo-rl-minio-bucket-r1")
    assert {"name": "BUCKETS", "value": "lvr"} in job["spec"]["template"]["spec"]["containers"][0]["env"]
    off = render({"minio": {"enabled": False}})
    assert not [d for d in off if d["metadata"]["name"].startswith("lvr-longvideo-rl-minio")]
    assert {d["kind"] for d in off} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment",
                                        "ClusterKopfPeering", "Service"}        # the Service: the operator's metrics


def test_minio_overrides(render):
    docs = render({"minio": {"buckets": ["lvr-cache", "checkpoints"], "port": 9100,
                             "persistence": {"size": "1Ti", "storageClass": "fast", "keep": False}}})
    pvc = one(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["storageClassName"] == "fast" and "annotations" not in pvc["metadata"]
    assert "annotations" not in one(docs, "Secret")["metadata"]
    env = one(docs, "Job")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "BUCKETS", "value": "lvr-cache checkpoints"} in env
    assert {"name": "ENDPOINT", "value": "http://lvr-longvideo-rl-minio.lvr-system.svc:9100"} in env


def test_custom_images_and_resources(render):
    digest = "sha256:" + "ab" * 32
    docs = render({"operator": {"image": {"repository": "registry.example.com/lvr/operator", "tag": "1.2.3"},
                                "resources": {"requests": {"cpu": "250m", "memory": "1Gi"},
                                              "limits": {"cpu": None, "memory": "2Gi"}},  # null drops a default
                                "nodeSelector": {"pool": "system"}, "resyncSeconds": 30, "verbose": True,
                                "healthPort": 9090, "podLabels": {"team": "ml", "app.kubernetes.io/component": "x"}},
                   "trainer": {"image": {"repository": "registry.example.com/lvr/trainer", "digest": digest}},
                   "rollout": {"image": {"repository": "registry.example.com/lvr/rollout", "tag": "v9"},
                               "nativeSidecars": "off"}})
    c = operator_container(docs)
    assert c["image"] == "registry.example.com/lvr/operator:1.2.3"
    assert c["resources"] == {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    args = args_map(c)
    assert args["--trainer-image"] == [f"registry.example.com/lvr/trainer@{digest}"]
    assert args["--resync"] == ["30"] and "--verbose" in args
    assert args["--rollout-image"] == ["registry.example.com/lvr/rollout:v9"] and args["--native-sidecars"] == ["off"]
    assert args["--liveness"] == ["http://0.0.0.0:9090/healthz"] and c["ports"][0]["containerPort"] == 9090
    template = one(docs, "Deployment", OPERATOR)["spec"]["template"]
    assert template["spec"]["nodeSelector"] == {"pool": "system"}
    labels = template["metadata"]["labels"]
    assert labels["team"] == "ml" and labels["app.kubernetes.io/component"] == "operator"   # selector wins


def test_existing_service_account(render, helm):
    docs = render({"serviceAccount": {"create": False, "name": "ops-sa"}})
    assert not find(docs, "ServiceAccount")
    assert one(docs, "Deployment", OPERATOR)["spec"]["template"]["spec"]["serviceAccountName"] == "ops-sa"
    assert one(docs, "ClusterRoleBinding")["subjects"][0]["name"] == "ops-sa"
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} & {d["kind"] for d in render({
        "rbac": {"create": False}, "watchNamespaces": ["a"]})}
    proc = render_chart(helm, {"serviceAccount": {"create": False}}, check=False)
    assert proc.returncode != 0 and "serviceAccount.name is required" in proc.stderr


def test_names_fit_63_characters(render):
    release = "a-long-release-name-that-a-user-might-pick-for-a-team"   # helm allows 53
    docs = render(release=release, namespace="a-long-namespace-name-for-the-operator-release-x")
    for d in docs:
        assert len(d["metadata"]["name"]) <= 63, d["metadata"]["name"]
    names = {d["metadata"]["name"] for d in docs}
    assert any(n.endswith("-operator") for n in names) and any(n.endswith("-minio-credentials") for n in names)


def test_upgrade_values_change_the_pod_template(render):
    """A changed value reaches the pod template (args), so `helm upgrade` rolls the operator."""
    def template(values):
        return one(render(values), "Deployment", OPERATOR)["spec"]["template"]
    assert template({}) == template({})
    assert template({}) != template({"operator": {"resyncSeconds": 20}})
    assert template({}) != template({"trainer": {"image": {"tag": "0.2.0"}}})


@pytest.mark.parametrize("values, kwargs", [
    ({}, {"clusterwide": True, "namespaces": [], "standalone": False, "peering_name": "longvideo-rl"}),
    ({"watchNamespaces": ["a", "b"], "peering": {"enabled": False}},
     {"clusterwide": False, "namespaces": ["a", "b"], "standalone": True}),
])
def test_chart_args_parse_with_the_real_cli_into_kopf_run(render, values, kwargs):
    """The Deployment's command line means to `lvr operator run` (and to kopf.run) what the chart says."""
    c = operator_container(render(values))
    args = build_parser().parse_args([*c["command"][1:], *c["args"]])
    got = kopf_run_kwargs(args.namespace, args.liveness, args.peering)
    assert got == {**kwargs, "liveness_endpoint": "http://0.0.0.0:8080/healthz"}
    assert args.metrics_port == 8081
    assert args.trainer_image == f"longvideo-rl/trainer:{VERSION}" and args.resync == 10


def test_metrics_are_served_and_exposed_and_a_service_monitor_is_optional(render):
    docs = render({})
    c = operator_container(docs)
    assert "--metrics-port=8081" in c["args"]
    assert {"name": "metrics", "containerPort": 8081, "protocol": "TCP"} in c["ports"]
    svc = one(docs, "Service", "lvr-longvideo-rl-operator-metrics")
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 8081, "targetPort": "metrics", "protocol": "TCP"}]
    dep = one(docs, "Deployment", "lvr-longvideo-rl-operator")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert not find(docs, "ServiceMonitor")
    docs = render({"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}}}})
    mon = one(docs, "ServiceMonitor")
    assert mon["metadata"]["labels"]["release"] == "kube-prometheus"
    assert mon["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()   # it finds the Service
