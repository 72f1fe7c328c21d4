"""The I/O adapter: reads what `reconcile_*` needs and applies a Plan. The only module here that talks to
Kubernetes (besides kopf itself). Every call is counted, for bench/operator.py.

Reads come from the watch-fed cache (cache.py) when the running operator has bound one (`cache`), else from
the API server: a get of the object and its dependencies and a list of its pods (and other children) per
reconcile. Every write is told to the cache, so a reconcile right after it reads what it wrote."""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from lvr_operator.api.common import GROUP, VERSION
from lvr_operator.api.kinds import kind_by_name
from lvr_operator.api.phases import ConditionType as C
from lvr_operator.api.phases import Reason as R
from lvr_operator.cache import WatchCache
from lvr_operator.manifests.common import (PODGROUP_API, PODGROUP_PLURAL, PODGROUP_VERSION, namespace_of,
                                           owner_selector)
from lvr_operator.reconcile.model import (Create, CreateFailure, Delete, DeleteOwner, Event, Plan, set_condition,
                                          status_patch)

log = logging.getLogger("lvr_operator")
CHILD_KINDS = ("ConfigMap", "Service", "ServiceAccount", "Role", "RoleBinding")
CHILD_WRITERS = 16      # threads per adapter creating children other than pods together
EVENT_WRITERS = 2       # threads per adapter posting Events, which no reconcile waits for (as client-go's recorder)
CONNECTIONS = 32        # HTTP connections kept to the API server: reconciles, creates and events at once
_SNAKE = {"ConfigMap": "config_map", "Service": "service", "ServiceAccount": "service_account",
          "Role": "role", "RoleBinding": "role_binding", "Pod": "pod"}


class RetryLater(Exception):
    """The apiserver asked us to come back (429/5xx, e.g. a new ServiceAccount whose token does not exist
    yet); the handler turns it into kopf.TemporaryError(delay)."""

    def __init__(self, message: str, delay: float):
        super().__init__(message)
        self.delay = delay


class CreateFailed(Exception):
    """A child create the API server refused, or whose name another controller's object holds; `created`
    lists the (kind, name) this apply created before it (a partly created gang the caller deletes)."""

    def __init__(self, failure: CreateFailure, created: list[tuple[str, str]] | None = None):
        super().__init__(failure.describe())
        self.failure, self.created = failure, created or []


def _refusal(kind: str, name: str, err: ApiException) -> CreateFailure:
    """The API server's message and the first field it names, from its Status body."""
    try:
        body = json.loads(err.body or "{}")
    except ValueError:
        body = {}
    causes = (body.get("details") or {}).get("causes") or []
    field = next((c.get("field") for c in causes if c.get("field")), None)
    return CreateFailure(kind, name, err.status, str(body.get("message") or err.reason)[:1024], field)


def _retry_after(err: ApiException) -> float | None:
    if err.status not in (429, 500, 503):
        return None
    try:
        return max(1.0, float((err.headers or {}).get("Retry-After") or 1))
    except ValueError:
        return 1.0


def load_client(kubeconfig: str | None = None) -> client.ApiClient:
    """A client for the operator: in-cluster config, else the kubeconfig; CONNECTIONS kept open."""
    configuration = client.Configuration()
    try:
        if kubeconfig is not None:
            raise config.ConfigException("a kubeconfig was given")
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    configuration.connection_pool_maxsize = CONNECTIONS
    return client.ApiClient(configuration)


class Cluster:
    def __init__(self, api: client.ApiClient | None = None):
        self.api = api or load_client()
        self.core, self.rbac = client.CoreV1Api(self.api), client.RbacAuthorizationV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.calls: Counter[str] = Counter()
        self.cache: WatchCache | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=CHILD_WRITERS, thread_name_prefix="lvr-create")
        self._events = ThreadPoolExecutor(max_workers=EVENT_WRITERS, thread_name_prefix="lvr-event")

    def _count(self, what: str) -> None:
        with self._lock:
            self.calls[what] += 1

    def _raw(self, what: str, fn, *args, **kw) -> Any:
        self._count(what)
        resp = fn(*args, _preload_content=False, **kw)
        return json.loads(resp.data)

    def get_cr(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        if self.cache is not None:
            return self.cache.resource(kind, namespace, name)
        try:
            return self._raw("get", self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace,
                             kind_by_name(kind).plural, name)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def pods(self, owner: dict[str, Any]) -> list[dict[str, Any]]:
        if self.cache is not None:
            return self.cache.pods(owner)
        return self._list_pods(owner)

    def _list_pods(self, owner: dict[str, Any]) -> list[dict[str, Any]]:
        return self._raw("list", self.core.list_namespaced_pod, namespace_of(owner),
                         label_selector=owner_selector(owner))["items"]

    def children(self, owner: dict[str, Any]) -> set[tuple[str, str]]:
        if self.cache is not None:
            return self.cache.children(owner)
        return self._list_children(owner)

    def _list_children(self, owner: dict[str, Any]) -> set[tuple[str, str]]:
        ns, sel, found = namespace_of(owner), owner_selector(owner), set()
        for kind in CHILD_KINDS:
            api = self.rbac if kind.startswith("Role") else self.core
            items = self._raw("list", getattr(api, f"list_namespaced_{_SNAKE[kind]}"), ns, label_selector=sel)
            found |= {(kind, i["metadata"]["name"]) for i in items["items"]}
        return found

    def nodes_and_active_pods(self) -> tuple[list[dict], list[dict]]:
        nodes = self._raw("list", self.core.list_node)["items"]
        pods = self._raw("list", self.core.list_pod_for_all_namespaces,
                         field_selector="status.phase!=Succeeded,status.phase!=Failed")["items"]
        return nodes, pods

    def has_pod_groups(self) -> bool:
        """Whether the scheduler-plugins PodGroup API (scheduling.x-k8s.io/v1alpha1) is served."""
        try:
            self._count("get")
            resources = self.api.call_api(f"/apis/{PODGROUP_API}/{PODGROUP_VERSION}", "GET", response_type="object",
                                          _return_http_data_only=True, auth_settings=["BearerToken"])
        except ApiException:
            return False
        return any(r.get("name") == PODGROUP_PLURAL for r in (resources or {}).get("resources") or [])

    def pod_log(self, namespace: str, name: str, container: str, lines: int) -> str:
        try:
            self._count("log")
            return self.core.read_namespaced_pod_log(name, namespace, container=container, tail_lines=lines)
        except ApiException:
            return ""

    def apply(self, owner: dict[str, Any], plan: Plan) -> None:
        """The status patch (it records the intent: restarts, start time) goes together with the first wave
        of children other than pods; then the RoleBindings (the API server checks a binding against its
        Role), then the pods, one by one in rank order (a pod needs its ServiceAccount,
        its ConfigMap and, for its trainer, its RoleBinding). One round trip per step, not per object.

        A refused status patch stops the apply before any RoleBinding or pod: nothing acts on an unrecorded
        intent (the first wave's children are idempotent, and the next reconcile writes them again if they
        differ). Events are posted in the background once the status is recorded, even when a child write
        fails (e.g. a retryable 500 while a new ServiceAccount gets its token): the status patch recorded
        the transition, so the next reconcile would not post them again."""
        patch = status_patch(owner.get("status"), plan.status)
        waves = _child_create_waves(plan.actions)
        created: list[tuple[str, str]] = []
        first = self._submit(owner, waves[0]) if waves else []
        if patch:
            try:
                self._patch_status(owner, patch)
            except ApiException as err:
                _settle(first)
                if err.status not in (400, 422):
                    raise
                self._report_refused_status(owner, err)       # nothing else acts on an unrecorded intent
                return
            except BaseException:
                _settle(first)
                raise
        for event in plan.events:
            self._events.submit(self.post_event, owner, event)
        try:
            self._collect(first, created)
            for wave in waves[1:]:
                self._collect(self._submit(owner, wave), created)
            for action in plan.actions[sum(map(len, waves)):]:
                self._act(owner, action)
                if isinstance(action, Create):
                    created.append(action.key)
        except CreateFailed as err:
            err.created = created
            raise

    def _submit(self, owner: dict[str, Any], creates: list[Create]) -> list[tuple[Create, Future]]:
        """Start creating independent children at once (one round trip instead of one each)."""
        return [(action, self._pool.submit(self._act, owner, action)) for action in creates]

    @staticmethod
    def _collect(pending: list[tuple[Create, Future]], created: list[tuple[str, str]]) -> None:
        """Wait for `pending`; the first failure, in the plan's order, is raised after all have finished."""
        errors = _settle(pending)
        created += [action.key for (action, _), err in zip(pending, errors) if err is None]
        first = next((err for err in errors if err is not None), None)
        if first is not None:
            raise first

    def _patch_status(self, owner: dict[str, Any], patch: dict[str, Any]) -> None:
        self._count("patch")
        written = self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace_of(owner),
                                                                    kind_by_name(owner["kind"]).plural,
                                                                    owner["metadata"]["name"], {"status": patch})
        if self.cache is not None and isinstance(written, dict) and written.get("metadata"):
            self.cache.wrote(written)

    def _report_refused_status(self, owner: dict[str, Any], err: ApiException) -> None:
        """The API server refused the status patch: say so in one condition (a small patch of text only), once
        per reconcile; the next reconcile computes the status afresh, so nothing is retried in a loop."""
        message = f"the API server refused the status update: {_refusal(owner['kind'], '', err).message}"
        log.warning("%s %s/%s: %s", owner["kind"], namespace_of(owner), owner["metadata"]["name"], message)
        old = list((owner.get("status") or {}).get("conditions") or [])
        conditions = set_condition(old, C.status_update_refused.value, True, R.STATUS_UPDATE_REFUSED, message[:1024],
                                   datetime.now(timezone.utc), owner["metadata"].get("generation"))
        try:
            self._patch_status(owner, {"conditions": conditions})
        except ApiException as again:
            log.warning("%s %s/%s: the condition saying so was refused too: %s %s", owner["kind"],
                        namespace_of(owner), owner["metadata"]["name"], again.status, again.reason)

    def _act(self, owner: dict[str, Any], action: Create | Delete | DeleteOwner) -> None:
        ns = namespace_of(owner)
        if isinstance(action, Create) and action.replace and self._replaced_from_cache(owner, action.obj):
            return
        try:
            if isinstance(action, Create) and action.obj["kind"] == "PodGroup":
                self._count("create")
                self.custom.create_namespaced_custom_object(PODGROUP_API, PODGROUP_VERSION, ns, PODGROUP_PLURAL,
                                                            action.obj)
            elif isinstance(action, Create):
                kind = action.obj["kind"]
                api = self.rbac if kind.startswith("Role") else self.core
                self._count("create")
                getattr(api, f"create_namespaced_{_SNAKE[kind]}")(ns, action.obj)
                self._created(owner, action.obj)
            elif isinstance(action, Delete):
                api = self.rbac if action.kind.startswith("Role") else self.core
                self._count("delete")
                getattr(api, f"delete_namespaced_{_SNAKE[action.kind]}")(action.name, ns)
            elif isinstance(action, DeleteOwner):
                self._count("delete")
                self.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, kind_by_name(owner["kind"]).plural,
                                                            owner["metadata"]["name"])
        except ApiException as err:
            if isinstance(action, Create) and err.status == 409:
                if self._check_owner(owner, action.obj) is not None:
                    self._created(owner, action.obj)
                if action.replace:
                    self._replace(ns, action.obj)
                return
            if isinstance(action, Create) and err.status in (400, 403, 422):
                raise CreateFailed(_refusal(*action.key, err)) from err
            if isinstance(action, Create) and err.status == 404:    # what it refers to is not there yet
                raise RetryLater(f"creating {action.obj['kind']} {action.obj['metadata']['name']} in {ns}: "
                                 f"{_refusal(*action.key, err).message}; retrying", 1.0) from err
            if err.status in (404, 409):      # gone already: the goal is met
                return
            delay = _retry_after(err)
            if delay is not None:
                raise RetryLater(f"{type(action).__name__} in {ns}: {err.status} {err.reason}; retrying", delay) from err
            log.warning("%s %s/%s: %s %s", type(action).__name__, ns, owner["metadata"]["name"], err.status,
                        err.reason)
            raise

    def _read(self, namespace: str, obj: dict[str, Any]) -> dict[str, Any] | None:
        kind, name = obj["kind"], obj["metadata"]["name"]
        try:
            if kind == "PodGroup":
                return self._raw("get", self.custom.get_namespaced_custom_object, PODGROUP_API, PODGROUP_VERSION,
                                 namespace, PODGROUP_PLURAL, name)
            api = self.rbac if kind.startswith("Role") else self.core
            return self._raw("get", getattr(api, f"read_namespaced_{_SNAKE[kind]}"), name, namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def _replace(self, namespace: str, obj: dict[str, Any]) -> None:
        api = self.rbac if obj["kind"].startswith("Role") else self.core
        self._count("replace")
        getattr(api, f"replace_namespaced_{_SNAKE[obj['kind']]}")(obj["metadata"]["name"], namespace, obj)

    def _created(self, owner: dict[str, Any], obj: dict[str, Any]) -> None:
        if self.cache is not None and obj["kind"] in (*CHILD_KINDS, "Pod"):
            self.cache.created(owner, obj)

    def _replaced_from_cache(self, owner: dict[str, Any], obj: dict[str, Any]) -> bool:
        """A child to create or replace that the cache shows as ours: replaced when its content differs,
        left alone when it is the same (no call at all); False when the cache cannot tell (then created)."""
        if self.cache is None or obj["kind"] not in CHILD_KINDS:
            return False
        cached = self.cache.child(owner, obj["kind"], obj["metadata"]["name"])
        if cached is None or not _controlled_by(cached, owner):
            return False
        if any(cached.get(k) != v for k, v in obj.items() if k not in ("metadata", "apiVersion", "kind")):
            self._replace(namespace_of(owner), obj)
            self._created(owner, obj)
        return True

    def _check_owner(self, owner: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any] | None:
        """An object of the child's name exists: ours (this owner's UID as its controller) is success (it
        is returned); any other is a conflict, never adopted."""
        existing = self._read(namespace_of(owner), obj)
        if existing is None:                  # deleted meanwhile: the next reconcile creates it
            return None
        if _controlled_by(existing, owner):
            return existing
        refs = existing["metadata"].get("ownerReferences") or []
        controller = next((r for r in refs if r.get("controller")), None)
        holder = (f"is controlled by {controller.get('kind')} '{controller.get('name')}'" if controller
                  else "has no controller")
        raise CreateFailed(CreateFailure(obj["kind"], obj["metadata"]["name"], 409, holder, conflict=True))

    def delete_children(self, owner: dict[str, Any]) -> int:
        """Delete every owned object by label (works without a garbage collector). Listed from the API
        server, not the cache: what another process created just before it stopped is found too."""
        n = 0
        for pod in self._list_pods(owner):
            self._act(owner, Delete("Pod", pod["metadata"]["name"]))
            n += 1
        for kind, name in sorted(self._list_children(owner)):
            self._act(owner, Delete(kind, name))
            n += 1
        return n

    def post_event(self, owner: dict[str, Any], event: Event) -> None:
        now = datetime.now(timezone.utc)
        meta = owner["metadata"]
        body = {"metadata": {"generateName": f"{meta['name']}.", "namespace": namespace_of(owner)},
                "involvedObject": {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"],
                                   "namespace": namespace_of(owner), "uid": meta.get("uid")},
                "type": event.type, "reason": event.reason, "message": event.message[:1024],
                "firstTimestamp": now.isoformat(), "lastTimestamp": now.isoformat(), "count": 1,
                "source": {"component": "lvr-operator"}, "reportingComponent": "lvr-operator"}
        try:
            self._count("event")
            self.core.create_namespaced_event(namespace_of(owner), body)
        except ApiException as err:
            log.warning("event for %s/%s not posted: %s", namespace_of(owner), meta["name"], err.reason)


def _controlled_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    refs = obj["metadata"].get("ownerReferences") or []
    controller = next((r for r in refs if r.get("controller")), None)
    return controller is not None and controller.get("uid") == owner["metadata"].get("uid")


_AFTER = {"RoleBinding": 1}      # creation wave of a child kind (default 0): a RoleBinding needs its Role


def _settle(pending: list[tuple[Create, Future]]) -> list[BaseException | None]:
    """Wait for every pending write; their exceptions (None for a success), in order."""
    return [future.exception() for _, future in pending]


def _child_create_waves(actions: list[Create | Delete | DeleteOwner]) -> list[list[Create]]:
    """The creates of children other than pods at the head of `actions`, in waves whose members need
    nothing from each other nor from the status. The pods that follow go one by one, in rank order."""
    head: list[Create] = []
    for action in actions:
        if not isinstance(action, Create) or action.obj["kind"] == "Pod":
            break
        head.append(action)
    waves = [[a for a in head if _AFTER.get(a.obj["kind"], 0) == w] for w in range(max(_AFTER.values()) + 1)]
    return [wave for wave in waves if wave]


def native_sidecars_in(version: dict[str, Any]) -> bool:
    """Kubernetes >= 1.29 runs init containers with `restartPolicy: Always` as sidecars (beta, on by
    default; GA in 1.33). `version` is the apiserver's /version (major "1", minor "29" or "29+")."""
    try:
        major, minor = int(version.get("major", "0")), int(str(version.get("minor", "0")).rstrip("+"))
    except ValueError:
        return False
    return (major, minor) >= (1, 29)


def supports_native_sidecars() -> bool:
    """Asks the apiserver it is connected to; False (the portable layout) when it cannot tell."""
    try:
        info = client.VersionApi(load_client()).get_code()
    except Exception as err:  # noqa: BLE001 - any failure means: use the layout every version runs
        log.warning("cannot read the API server's version (%s); rollout sidecars run as regular containers", err)
        return False
    return native_sidecars_in({"major": info.major, "minor": info.minor})
