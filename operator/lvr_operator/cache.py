"""The watch-fed cache: what the operator owns (pods and the other children of each job or dataset) and our
custom resources, read from memory instead of listed or fetched on every reconcile.

kopf feeds it. Each watched kind has a kopf index (`@kopf.index`, registered in handlers.py; one watch
per kind, filtered by our managed-by label on the server): `pod_entry`, `child_entry` and
`resource_entry` below file every object under its owner, an update replaces the object's entry and a
deletion drops it. kopf fills every index from an initial listing before it runs any handler, so after
an operator restart the cache is complete before the first reconcile reads it.

A watch event arrives some milliseconds after the write that caused it. Our own writes cover that gap:
a child this operator created (or found already there on AlreadyExists) is answered from the API
server's reply until the watch shows it (or says it was deleted, or `PENDING_SECONDS` pass); a pod it
deleted is answered as being deleted until the watch says so. A reconcile that runs between a create
and its watch event therefore does not create the child again; and the API server stays the last
guard, since child names are deterministic: a second create is refused with AlreadyExists.

The object being reconciled is read from here only when the watched copy is the newest version this
operator has seen (`known`: the reply to its last read or status write of it): its status decides what
to do (which gang attempt is current), and an older copy could undo a decision already written. When
anyone else changed it since (kopf's annotations, a user's spec), the versions differ and `Cluster`
reads it from the API server. A dependency (a job's dataset) is read from here as the watch has it.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from lvr_operator.manifests.common import LABEL_KIND, LABEL_OWNER, meta, namespace_of
from lvr_operator.reconcile.model import rfc3339

OwnerKey = tuple[str, str, str]           # (namespace, owner kind in lower case, owner name): the labels' words
# kopf index ids: each is a handler's keyword argument, and the name the cache reads it by
POD_INDEX = "lvr_pods"
CHILD_INDEXES = {"ConfigMap": "lvr_configmaps", "Service": "lvr_services", "ServiceAccount": "lvr_serviceaccounts",
                 "Role": "lvr_roles", "RoleBinding": "lvr_rolebindings"}
RESOURCE_INDEXES = {"LongVideoDataset": "lvr_longvideodatasets", "SFTJob": "lvr_sftjobs", "RLJob": "lvr_rljobs"}
INDEXES = (POD_INDEX, *CHILD_INDEXES.values(), *RESOURCE_INDEXES.values())
PENDING_SECONDS = 30.0    # an own write the watch never confirmed (created and deleted at once) is dropped then


def owner_key(owner: Mapping[str, Any]) -> OwnerKey:
    """The key a custom resource's children are filed under."""
    return namespace_of(owner), owner["kind"].lower(), meta(owner)["name"]


def _filed_under(body: Mapping[str, Any]) -> OwnerKey | None:
    labels = meta(body).get("labels") or {}
    if LABEL_KIND not in labels or LABEL_OWNER not in labels:
        return None
    return namespace_of(body), labels[LABEL_KIND], labels[LABEL_OWNER]


def pod_entry(body: Mapping[str, Any]) -> dict[OwnerKey, dict[str, Any]] | None:
    """kopf index function of pods: the whole pod (a private copy), under its owner."""
    key = _filed_under(body)
    return None if key is None else {key: copy.deepcopy(dict(body))}


def child_entry(body: Mapping[str, Any]) -> dict[OwnerKey, tuple[str, str, str, str]] | None:
    """kopf index function of the other children: (kind, name, uid, its controller's uid), under its owner."""
    key = _filed_under(body)
    return None if key is None else {key: (body["kind"], meta(body)["name"], meta(body).get("uid", ""),
                                           controller_uid(body))}


def controller_uid(obj: Mapping[str, Any]) -> str:
    """The uid of the object's controller (its ownerReference with controller: true); "" when none."""
    refs = meta(obj).get("ownerReferences") or []
    return next((r.get("uid") or "" for r in refs if r.get("controller")), "")


def resource_entry(body: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """kopf index function of our custom resources: the object, by (namespace, name)."""
    return {(namespace_of(body), meta(body)["name"]): copy.deepcopy(dict(body))}


def _values(index: Mapping[Any, Iterable[Any]], key: Any) -> list[Any]:
    """The values filed under `key`, copied out of a store the watch may be changing at the same time."""
    for _ in range(3):
        try:
            return list(index.get(key, ()))
        except RuntimeError:          # changed during the copy (another thread's event): copy again
            continue
    return list(index.get(key, ()))


@dataclass
class _Own:
    """A write of ours that the watch has not shown yet."""

    owner: OwnerKey
    kind: str
    obj: dict[str, Any]       # the API server's reply (its uid, resourceVersion) or the deleted pod
    at: float


class WatchCache:
    """Reads of pods, children and dependencies from kopf's indices, plus our writes the watch has not shown.

    `follow(indices)` binds the running operator's indices (every handler passes them; a restarted operator
    passes new ones). Thread-safe: reconciles run in kopf's worker threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._indices: dict[str, Mapping[Any, Iterable[Any]]] = {}
        self._created: dict[str, _Own] = {}      # uid -> a child we created
        self._deleting: dict[str, _Own] = {}     # uid -> a pod we deleted
        self._known: dict[tuple[str, str, str], str] = {}   # (kind, namespace, name) -> newest resourceVersion seen
        self._lock = threading.Lock()
        self._clock = clock

    def follow(self, indices: Mapping[str, Any]) -> None:
        found = {name: indices[name] for name in INDEXES if name in indices}
        if len(found) == len(INDEXES):
            self._indices = found

    @property
    def ready(self) -> bool:
        return bool(self._indices)

    # ---- our reads and writes ----
    def known(self, kind: str, namespace: str, name: str, obj: Mapping[str, Any] | None) -> None:
        """`obj` is the newest version of our custom resource (the API server's answer to a read or a write)."""
        with self._lock:
            if obj is None:
                self._known.pop((kind, namespace, name), None)
            else:
                self._known[(kind, namespace, name)] = meta(obj).get("resourceVersion", "")

    def created(self, owner: Mapping[str, Any], obj: Mapping[str, Any]) -> None:
        """`obj` (the API server's reply) exists now: answer it until the watch shows it."""
        uid = meta(obj).get("uid")
        if uid:
            with self._lock:
                self._created[uid] = _Own(owner_key(owner), obj["kind"], copy.deepcopy(dict(obj)), self._clock())

    def deleted(self, owner: Mapping[str, Any], kind: str, name: str) -> None:
        """We deleted pod `name`: answer it as being deleted until the watch says so."""
        if kind != "Pod":
            return
        key = owner_key(owner)
        for pod in self.pods(owner):
            if meta(pod)["name"] == name and (uid := meta(pod).get("uid")):
                with self._lock:
                    if self._created.pop(uid, None) is None:
                        self._deleting[uid] = _Own(key, kind, pod, self._clock())

    def forget(self, uid: str) -> None:
        """The watch saw the object deleted."""
        with self._lock:
            self._created.pop(uid, None)
            self._deleting.pop(uid, None)

    # ---- reads ----
    def pods(self, owner: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The owner's pods (copies the caller may change)."""
        key = owner_key(owner)
        watched = {meta(p).get("uid"): p for p in _values(self._indices[POD_INDEX], key)}
        with self._lock:
            own = self._settle(key, set(watched), "Pod")
            stamp = {uid for uid, d in self._deleting.items() if d.owner == key}
        pods = [copy.deepcopy(p) for p in watched.values()] + own
        for pod in pods:
            if meta(pod).get("uid") in stamp and not meta(pod).get("deletionTimestamp"):
                pod["metadata"]["deletionTimestamp"] = rfc3339(datetime.now(timezone.utc))
        return pods

    def children(self, owner: Mapping[str, Any]) -> set[tuple[str, str]]:
        """(kind, name) of the owner's children other than pods."""
        key = owner_key(owner)
        watched = [v for name in CHILD_INDEXES.values() for v in _values(self._indices[name], key)]
        with self._lock:
            own = self._settle(key, {uid for _, _, uid, _ in watched}, None)
        return {(kind, name) for kind, name, _, _ in watched} | {(o["kind"], meta(o)["name"]) for o in own}

    def controlled(self, owner: Mapping[str, Any], kind: str, name: str) -> bool:
        """Whether child `kind`/`name` exists (watched, or created by us) with `owner` as its controller."""
        key, uid = owner_key(owner), meta(owner).get("uid")
        index = self._indices.get(CHILD_INDEXES.get(kind, ""))
        if index is not None and any(k == kind and n == name and c == uid for k, n, _, c in _values(index, key)):
            return True
        with self._lock:
            return any(o.owner == key and o.kind == kind and meta(o.obj)["name"] == name and controller_uid(o.obj) == uid
                       for o in self._created.values())

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One of our custom resources as the watch last showed it (a dependency: a few ms late is fine)."""
        found = _values(self._indices[RESOURCE_INDEXES[kind]], (namespace, name))
        return copy.deepcopy(found[0]) if found else None

    def current(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The watched copy when it is the newest version `known`; None when it is not (read the API server)."""
        found = _values(self._indices[RESOURCE_INDEXES[kind]], (namespace, name))
        with self._lock:
            newest = self._known.get((kind, namespace, name))
        if not found or newest is None or meta(found[0]).get("resourceVersion") != newest:
            return None
        return copy.deepcopy(found[0])

    def _settle(self, key: OwnerKey, watched: set[str], kind: str | None) -> list[dict[str, Any]]:
        """Drop our writes of this owner that the watch now shows (or that expired); the rest, as copies.
        `kind` "Pod" settles pods (created and deleted), None the other children. Under the lock."""
        now = self._clock()
        for uid, own in list(self._created.items()):
            if own.owner == key and (own.kind == "Pod") == (kind == "Pod") and (
                    uid in watched or now - own.at > PENDING_SECONDS):
                del self._created[uid]
        if kind == "Pod":
            for uid, own in list(self._deleting.items()):
                if own.owner == key and (uid not in watched or now - own.at > PENDING_SECONDS):
                    del self._deleting[uid]
        return [copy.deepcopy(o.obj) for o in self._created.values()
                if o.owner == key and (o.kind == "Pod") == (kind == "Pod")]
