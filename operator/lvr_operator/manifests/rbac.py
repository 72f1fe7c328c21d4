"""RBAC of the operator itself: the one source of the rules the Helm chart grants.

Every rule names a call the operator (or kopf on its behalf) makes; nothing else is granted. Notably the
operator never reads Secrets (pods reference the user's S3 Secret by name, which needs no read access),
never creates cluster-scoped objects, and needs no CRD or Namespace access because the runner disables
kopf's cluster scanning (the chart installs the CRDs first and names the watched namespaces exactly).

The trainer pods' narrow per-job Role is built in manifests/job.py (`trainer_rbac`). The operator holds
every permission it grants there (get/patch pods), as RBAC's escalation check requires.

`lvr crds` writes `chart_rules()` to charts/longvideo-rl/files/rbac-rules.yaml; the chart's templates
pick one variant from that file, so the rules are written here only.
"""

from __future__ import annotations

from typing import Any

import yaml

from lvr_operator.api.common import GROUP
from lvr_operator.api.kinds import KINDS
from lvr_operator.manifests.common import PODGROUP_API, PODGROUP_PLURAL

Rule = dict[str, Any]
RULES_FILE = "rbac-rules.yaml"
# kopf serves both peering groups when both CRDs exist (zalando.org is the legacy name); the chart ships
# kopf.dev. Granting both keeps a cluster that already has the legacy CRDs from failing the watch.
PEERING_GROUPS = ["kopf.dev", "zalando.org"]
_PEERING_VERBS = ["get", "list", "watch", "patch"]      # kopf: watch peers, patch its own keep-alive
# cluster.py: children() (listed, or watched by the cache's kopf indices), _act(Create/Delete), and the
# owner check of a child that already exists (get)
_CHILD_VERBS = ["get", "list", "watch", "create", "delete"]


def _rule(groups: list[str], resources: list[str], verbs: list[str]) -> Rule:
    return {"apiGroups": list(groups), "resources": list(resources), "verbs": list(verbs)}


def workload_rules() -> list[Rule]:
    """What the operator does inside each namespace it watches."""
    plurals = [k.plural for k in KINDS]
    return [
        # kopf lists/watches and patches finalizers and annotations; we get dependencies and delete on TTL.
        _rule([GROUP], plurals, ["get", "list", "watch", "patch", "delete"]),
        _rule([GROUP], [f"{p}/status" for p in plurals], ["patch"]),
        # Worker and preprocessing pods; get+patch because the per-job trainer Role grants them.
        _rule([""], ["pods"], ["get", "list", "watch", "create", "patch", "delete"]),
        _rule([""], ["pods/log"], ["get"]),                       # last log lines of a failed worker
        _rule([""], ["configmaps"], [*_CHILD_VERBS, "update"]),    # a new gang's config replaces the old one
        _rule([""], ["services", "serviceaccounts"], _CHILD_VERBS),
        _rule(["rbac.authorization.k8s.io"], ["roles", "rolebindings"], _CHILD_VERBS),
        _rule([""], ["events"], ["create"]),                      # our Events and kopf's warnings
        _rule([PODGROUP_API], [PODGROUP_PLURAL], ["get", "create", "delete"]),   # runPolicy.podGroup
    ]


def capacity_rules() -> list[Rule]:
    """Cluster-wide reads for GPU accounting: GPUs are shared by every namespace, so free slots are
    counted from all nodes and all active pods (read-only; listing only)."""
    return [_rule([""], ["nodes"], ["list"]), _rule([""], ["pods"], ["list"])]


def peering_rules(clusterwide: bool) -> list[Rule]:
    """kopf peering: ClusterKopfPeering for a cluster-wide operator, KopfPeering per watched namespace."""
    return [_rule(PEERING_GROUPS, ["clusterkopfpeerings" if clusterwide else "kopfpeerings"], _PEERING_VERBS)]


def operator_rules(namespaced: bool = False, peering: bool = True) -> list[Rule]:
    """The operator's rules: by default those of its ClusterRole (it watches every namespace); with
    `namespaced` those of the Role in each watched namespace (then `cluster_rules` stay cluster-wide)."""
    rules = workload_rules()
    if not namespaced:
        rules.append(_rule([""], ["nodes"], ["list"]))         # pods are listed cluster-wide already
    return rules + (peering_rules(clusterwide=not namespaced) if peering else [])


def cluster_rules(namespaced: bool = False, peering: bool = True) -> list[Rule]:
    """The ClusterRole's rules: everything when cluster-wide, only the capacity reads when namespaced."""
    return capacity_rules() if namespaced else operator_rules(namespaced=False, peering=peering)


def chart_rules() -> dict[str, dict[str, list[Rule]]]:
    """Every variant the chart can render, keyed `clusterwide|namespaced` then `peering|standalone`,
    each with the ClusterRole (`clusterRole`) and per-namespace Role (`role`) rules."""
    out: dict[str, dict[str, list[Rule]]] = {}
    for scope, namespaced in (("clusterwide", False), ("namespaced", True)):
        for mode, peering in (("peering", True), ("standalone", False)):
            out.setdefault(scope, {})[mode] = {
                "clusterRole": cluster_rules(namespaced, peering),
                "role": operator_rules(namespaced=True, peering=peering) if namespaced else [],
            }
    return out


def render_chart_rules() -> str:
    header = ("# Generated by `lvr crds` from operator/lvr_operator/manifests/rbac.py; do not edit.\n"
              "# The chart's templates/operator-rbac.yaml picks one variant: scope, then peering mode.\n")
    return header + yaml.dump(chart_rules(), Dumper=_PlainDumper, sort_keys=False, width=110,
                              default_flow_style=None)


class _PlainDumper(yaml.SafeDumper):
    """No `&id001` anchors: the file is read by people and by Helm's fromYaml."""

    def ignore_aliases(self, data: Any) -> bool:
        return True
