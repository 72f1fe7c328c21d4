"""values.yaml and values.schema.json agree and document every value; bad values fail with an error that
names the field; every rendered manifest validates (strict) against Kubernetes 1.29-1.35 schemas."""

from __future__ import annotations

import json
import re

import jsonschema
import kubernetes_validate
import pytest
import yaml
from chart_helpers import CHART, render_chart

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES_TEXT = (CHART / "values.yaml").read_text()
K8S_VERSIONS = [f"1.{minor}" for minor in range(29, 36)]
VALUE_SETS = {
    "defaults": {},
    "scoped, no minio, no peering": {"watchNamespaces": ["team-a", "team-b"], "minio": {"enabled": False},
                                     "peering": {"enabled": False}},
    "everything set": {
        "operator": {"imagePullSecrets": [{"name": "regcred"}], "priorityClassName": "system-cluster-critical",
                     "nodeSelector": {"pool": "system"}, "podAnnotations": {"a": "b"}, "podLabels": {"team": "ml"},
                     "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
                     "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                         "nodeSelectorTerms": [{"matchExpressions": [
                             {"key": "pool", "operator": "In", "values": ["system"]}]}]}}}},
        "serviceAccount": {"annotations": {"iam.example.com/role": "lvr"}},
        "minio": {"persistence": {"storageClass": "fast"}, "tolerations": [{"operator": "Exists"}]}},
}


def _resolve(node: dict) -> dict:
    ref = node.get("$ref")
    return SCHEMA["definitions"][ref.rsplit("/", 1)[-1]] if ref else node


def _key_paths(values: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in values.items():
        out.add(prefix + key)
        if isinstance(value, dict) and value:
            out |= _key_paths(value, f"{prefix}{key}.")
    return out


def _schema_paths(node: dict, prefix: str = "") -> dict[str, dict]:
    """Declared property path -> its schema node (maps with free keys, such as resources.requests, end it)."""
    out = {}
    for key, child in (_resolve(node).get("properties") or {}).items():
        out[prefix + key] = _resolve(child)
        out.update(_schema_paths(child, f"{prefix}{key}."))
    return out


def test_values_and_schema_declare_the_same_keys():
    values = yaml.safe_load(VALUES_TEXT)
    schema = _schema_paths(SCHEMA)
    schema.pop("global")
    closed = {""} | {p for p, node in schema.items() if "properties" in node}
    declared = {p for p in _key_paths(values) if (p.rsplit(".", 1)[0] if "." in p else "") in closed}
    assert declared - set(schema) == set(), "values.yaml keys missing from values.schema.json"
    assert set(schema) - declared == set(), "values.schema.json keys missing from values.yaml"
    jsonschema.validate(values, SCHEMA)                 # the defaults pass their own schema


def test_every_value_has_a_comment():
    """Each leaf value (or a map value such as `resources`) has a `# --` comment above it or above an
    enclosing key, like cert-manager's values.yaml."""
    covered: list[tuple[int, bool]] = []                # (indent, documented) of the enclosing keys
    previous = ""
    missing = []
    for line in VALUES_TEXT.splitlines():
        match = re.match(r"^(\s*)([A-Za-z][\w-]*):(.*)$", line)
        if not match:
            previous = line.strip() if line.strip() else previous
            continue
        indent, key, rest = len(match[1]), match[2], match[3].split("#")[0].strip()
        while covered and covered[-1][0] >= indent:
            covered.pop()
        documented = previous.startswith("# ") and _comment_block_is_doc(VALUES_TEXT, line)
        documented = documented or any(doc for _, doc in covered)
        if rest and not documented:
            missing.append(key)
        covered.append((indent, documented))
        previous = line.strip()
    assert not missing, f"values without a `# --` comment: {missing}"


def _comment_block_is_doc(text: str, key_line: str) -> bool:
    """The comment block right above key_line starts with `# --`."""
    lines = text.splitlines()
    i = lines.index(key_line) - 1
    while i >= 0 and lines[i].strip().startswith("#") and not lines[i].strip().startswith("# --"):
        i -= 1
    return i >= 0 and lines[i].strip().startswith("# --")


@pytest.mark.parametrize("values, path, words", [
    ({"operator": {"imge": {"tag": "x"}}}, "/operator", "additional properties 'imge' not allowed"),
    ({"operator": {"resyncSeconds": 0}}, "/operator/resyncSeconds", "minimum"),
    ({"operator": {"healthPort": 80}}, "/operator/healthPort", "minimum"),
    ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0", "does not match pattern"),
    ({"operator": {"image": {"digest": "md5:abc"}}}, "/operator/image/digest", "does not match pattern"),
    ({"operator": {"image": {"pullPolicy": "Sometimes"}}}, "/operator/image/pullPolicy", "must be one of"),
    ({"operator": {"resources": {"limits": {"cpu": "lots"}}}}, "/operator/resources/limits/cpu", "lots"),
    ({"peering": {"enabled": "yes"}}, "/peering/enabled", "boolean"),
    ({"minio": {"buckets": []}}, "/minio/buckets", "minItems"),
    ({"minio": {"image": {"tag": ""}}}, "/minio/image/tag", "minLength"),
    ({"minio": {"persistence": {"size": "big"}}}, "/minio/persistence/size", "big"),
    ({"replicaCount": 2}, "", "additional properties 'replicaCount' not allowed"),
])
def test_bad_values_are_rejected_readably(helm, values, path, words):
    proc = render_chart(helm, values, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert f"at '{path}'" in proc.stderr and words in proc.stderr, proc.stderr


def test_kubernetes_validate_bundles_every_target_version():
    bundled = {kubernetes_validate.utils.major_minor(v) for v in kubernetes_validate.utils.all_versions()}
    assert set(K8S_VERSIONS) <= bundled, f"kubernetes-validate lacks schemas for {set(K8S_VERSIONS) - bundled}"


def _crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> openAPIV3Schema of every CRD the chart ships."""
    out = {}
    for path in (CHART / "crds").glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            out[(f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])] = \
                version["schema"]["openAPIV3Schema"]
    return out


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_rendered_manifests_validate_strictly_on_current_kubernetes(helm, name):
    docs = render_chart(helm, VALUE_SETS[name])
    docs += [yaml.safe_load(p.read_text()) for p in sorted((CHART / "crds").glob("*.yaml"))]
    custom = _crd_schemas()
    for doc in docs:
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        if (doc["apiVersion"], doc["kind"]) in custom:      # our own CRs (kopf peering): the shipped CRD schema
            jsonschema.validate(doc, custom[(doc["apiVersion"], doc["kind"])])
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                path = ".".join(str(p) for p in err.path)
                pytest.fail(f"{name}: {what} is invalid on Kubernetes {version} at {path}: {err.message}")
            except kubernetes_validate.SchemaNotFoundError as err:
                pytest.fail(f"{name}: {what}: {err.message} (an API that Kubernetes {version} does not serve)")
