"""The watch-fed cache (the informer pattern): the operator reads its custom resources, their pods and their
other children from memory instead of asking the API server on every reconcile.

kopf feeds it through indices registered in the operator's own registry (handlers.build_registry): one
watch per kind, each object filed under a key by the index functions below, replaced on every update and
dropped on deletion. kopf lists every indexed kind before it runs any handler, so an operator that starts
(or restarts) reconciles from a complete cache.

A watch event arrives a little after the write that caused it; the operator's own writes cover that gap.
A status it wrote is answered until the watch brings that version (or a newer one), so a reconcile never
acts on a status older than its own last write (which gang attempt is current, when it restarted). A child
it created is answered until the watch shows it (or `PENDING_SECONDS` pass), so a reconcile between a
create and its event does not create the child again; and child names are deterministic, so a second
create would only meet AlreadyExists.

Stored objects are the watch's own parsed bodies, shared, never copied: readers must not change them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lvr_operator.api.kinds import KINDS
from lvr_operator.manifests.common import LABEL_KIND, LABEL_OWNER, meta, namespace_of

OwnerKey = tuple[str, str, str]      # (namespace, owner kind in lower case, owner name): the children's labels
ObjectKey = tuple[str, str]          # (namespace, name)
# kopf index ids (each is also a keyword argument of every handler)
POD_INDEX = "lvr_pods"
CHILD_INDEXES = {"ConfigMap": "lvr_configmaps", "Service": "lvr_services", "ServiceAccount": "lvr_serviceaccounts",
                 "Role": "lvr_roles", "RoleBinding": "lvr_rolebindings"}
RESOURCE_INDEXES = {k.kind: f"lvr_{k.plural}" for k in KINDS}
INDEXES = (POD_INDEX, *CHILD_INDEXES.values(), *RESOURCE_INDEXES.values())
PENDING_SECONDS = 60.0     # a created child the watch never showed (deleted at once) is forgotten then


def owner_key(owner: Mapping[str, Any]) -> OwnerKey:
    """The key an owner's children are filed under."""
    return namespace_of(owner), owner["kind"].lower(), meta(owner)["name"]


def child_entry(body: Mapping[str, Any]) -> dict[OwnerKey, dict[str, Any]] | None:
    """kopf index function of pods and other children: the object, under its owner's key (from its labels)."""
    labels = meta(body).get("labels") or {}
    if LABEL_KIND not in labels or LABEL_OWNER not in labels:
        return None
    return {(namespace_of(body), labels[LABEL_KIND], labels[LABEL_OWNER]): dict(body)}


def resource_entry(body: Mapping[str, Any]) -> dict[ObjectKey, dict[str, Any]]:
    """kopf index function of custom resources: the object under (namespace, name)."""
    return {(namespace_of(body), meta(body)["name"]): dict(body)}


def _version(obj: Mapping[str, Any] | None) -> int:
    """The object's resourceVersion as a number (etcd's revision); -1 when absent or not a number."""
    try:
        return int(meta(obj)["resourceVersion"]) if obj else -1
    except (KeyError, TypeError, ValueError):
        return -1


def _values(index: Mapping[Any, Iterable[Any]], key: Any) -> list[Any]:
    """The values under `key`, copied out of a store that kopf's event loop may change meanwhile."""
    for _ in range(5):
        try:
            return list(index[key]) if key in index else []
        except (RuntimeError, KeyError):        # changed during the copy: copy again
            continue
    return []


class WatchCache:
    """Reads from kopf's indices of one running operator, plus the writes the watch has not shown yet.

    Thread-safe: reconciles run in kopf's worker threads while its event loop updates the indices."""

    def __init__(self, indices: Mapping[str, Any], clock: Callable[[], float] = time.monotonic):
        self.indices = indices
        self._clock = clock
        self._lock = threading.Lock()
        self._written: dict[tuple[str, str, str], dict[str, Any]] = {}            # (kind, ns, name) -> body
        self._created: dict[OwnerKey, dict[tuple[str, str], tuple[dict[str, Any], float]]] = {}

    def _index(self, kind: str) -> Mapping[Any, Iterable[Any]]:
        return self.indices[POD_INDEX if kind == "Pod" else CHILD_INDEXES.get(kind) or RESOURCE_INDEXES[kind]]

    # ---- the operator's own writes ----
    def wrote(self, obj: Mapping[str, Any]) -> None:
        """`obj` is the API server's answer to our write of a custom resource (its new version)."""
        key = (obj["kind"], namespace_of(obj), meta(obj)["name"])
        with self._lock:
            if _version(obj) > _version(self._written.get(key)):
                self._written[key] = dict(obj)

    def created(self, owner: Mapping[str, Any], obj: Mapping[str, Any]) -> None:
        """Child `obj` exists now (we created it, or found it ours): answer it until the watch shows it."""
        with self._lock:
            self._created.setdefault(owner_key(owner), {})[(obj["kind"], meta(obj)["name"])] = (dict(obj),
                                                                                               self._clock())

    # ---- reads ----
    def resource(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The newest version of a custom resource we have seen or written; None when the watch has none."""
        watched = _values(self._index(kind), (namespace, name))
        seen = watched[0] if watched else None
        key = (kind, namespace, name)
        with self._lock:
            own = self._written.get(key)
            if own is not None and _version(seen) >= _version(own):
                del self._written[key]
                own = None
        if seen is None:
            return None           # deleted (or never existed): an own write of a deleted object is no answer
        return own if own is not None else seen

    def children_of(self, owner: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
        """The owner's children of one kind: what the watch shows, plus what we created that it does not yet."""
        key = owner_key(owner)
        watched = _values(self._index(kind), key)
        names = {meta(o)["name"] for o in watched}
        now = self._clock()
        with self._lock:
            own = self._created.get(key, {})
            for ckey, (_, at) in list(own.items()):
                if ckey[1] in names and ckey[0] == kind or now - at > PENDING_SECONDS:
                    del own[ckey]
            pending = [obj for (k, _), (obj, _) in own.items() if k == kind]
            if not own:
                self._created.pop(key, None)
        return watched + pending

    def pods(self, owner: Mapping[str, Any]) -> list[dict[str, Any]]:
        return self.children_of(owner, "Pod")

    def children(self, owner: Mapping[str, Any]) -> set[tuple[str, str]]:
        """(kind, name) of the owner's children other than pods."""
        return {(kind, meta(o)["name"]) for kind in CHILD_INDEXES for o in self.children_of(owner, kind)}

    def child(self, owner: Mapping[str, Any], kind: str, name: str) -> dict[str, Any] | None:
        return next((o for o in self.children_of(owner, kind) if meta(o)["name"] == name), None)
