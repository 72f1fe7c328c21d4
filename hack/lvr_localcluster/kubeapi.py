"""A small JSON client for the Kubernetes API, used by the cluster's own parts (nodes, kubelet stand-in).

Why not the `kubernetes` package: the stand-in works on raw manifests (dicts) end to end, watches with
plain chunked reads, and must stay importable by a bare `python -m lvr_localcluster`; the generated
client's model classes and snake_case would only be converted back and forth. Tests use the real client.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import requests

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


class ApiError(RuntimeError):
    """A non-2xx answer from the apiserver; `.status` is the HTTP code, `.reason` the Status reason."""

    def __init__(self, method: str, path: str, status: int, body: str):
        try:
            data = json.loads(body)
        except ValueError:
            data = {}
        self.status, self.reason = status, data.get("reason", "")
        super().__init__(f"{method} {path}: HTTP {status} {self.reason}: {data.get('message', body[:300])}")


class KubeApi:
    """`KubeApi(server, token, ca_file).get("/api/v1/nodes")` and friends; thread-safe."""

    def __init__(self, server: str, token: str, ca_file: str):
        self.server, self._token, self._ca = server.rstrip("/"), token, ca_file
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers["Authorization"] = f"Bearer {self._token}"
        return session

    def request(self, method: str, path: str, body: Any = None, *, params: dict | None = None,
                content_type: str = "application/json", timeout: float = 30) -> dict:
        data = None if body is None else json.dumps(body)
        # verify= per request: a session-level value loses to REQUESTS_CA_BUNDLE from the environment.
        resp = self._session().request(method, self.server + path, data=data, params=params, timeout=timeout,
                                       headers={"Content-Type": content_type}, verify=self._ca)
        if resp.status_code >= 300:
            raise ApiError(method, path, resp.status_code, resp.text)
        return resp.json() if resp.content else {}

    def get(self, path: str, **params) -> dict:
        return self.request("GET", path, params=params or None)

    def create(self, path: str, body: dict) -> dict:
        return self.request("POST", path, body)

    def patch(self, path: str, body: dict, content_type: str = MERGE) -> dict:
        return self.request("PATCH", path, body, content_type=content_type)

    def delete(self, path: str, body: dict | None = None) -> dict:
        return self.request("DELETE", path, body)

    def ensure(self, collection: str, body: dict) -> dict:
        """Create `body` in `collection`; if it already exists, return the stored object (idempotent)."""
        try:
            return self.create(collection, body)
        except ApiError as err:
            if err.status != 409:
                raise
            return self.get(f"{collection}/{body['metadata']['name']}")

    def watch(self, path: str, resource_version: str, stop: threading.Event, **params) -> Iterator[dict]:
        """Yield watch events ({type, object}) from `resource_version` until the server ends the stream.

        The read timeout is short so that `stop` is noticed within a few seconds; a quiet stream is
        re-opened by the caller, who keeps the last resourceVersion.
        """
        query = {"watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": "15", **params}
        with self._session().get(self.server + path, params=query, stream=True, timeout=(10, 30),
                                 verify=self._ca) as resp:
            if resp.status_code >= 300:
                raise ApiError("WATCH", path, resp.status_code, resp.text)
            for line in resp.iter_lines():
                if stop.is_set():
                    return
                if line:
                    yield json.loads(line)
