"""A small client for OpenAI-compatible `POST /chat/completions` endpoints (vLLM, hosted APIs).

The retry policy follows openai-python's: a short connect timeout and a longer read timeout on every
attempt, a few retries of what may succeed later (408, 409, 429, any 5xx, timeouts, dropped
connections), exponential backoff with jitter, capped, and a server's `Retry-After` honoured when it is
reasonable. Other failures (a bad request, a wrong key) are raised at once as typed errors: retrying
them only burns quota. Standard library only (http.client), so a build pod needs no HTTP package.

Chat completions are idempotent here (the build journal keys each finished call by its request), so
retrying one is safe. The request body is sent as canonical JSON (`canonical_body`), the same bytes
the journal hashes.
"""

from __future__ import annotations

import http.client
import json
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

CONNECT_TIMEOUT_S = 5.0      # reaching the server: short, a dead host fails fast
READ_TIMEOUT_S = 120.0       # the longest wait for the server's next bytes (a long caption on a busy GPU)
MAX_RETRIES = 4              # retries after the first attempt
INITIAL_BACKOFF_S = 0.5      # first retry waits about this long, doubling after each
MAX_BACKOFF_S = 8.0          # cap of one backoff wait
MAX_RETRY_AFTER_S = 60.0     # a longer Retry-After is ignored in favour of our own backoff
JITTER = 0.25                # each backoff wait is shortened by up to this fraction, at random
RETRY_STATUSES = frozenset({408, 409, 429})  # plus every 5xx


class ChatError(Exception):
    """Any failed chat call; `url` names the endpoint."""

    def __init__(self, url: str, message: str):
        self.url = url
        super().__init__(f"{url}: {message}")


class APIConnectionError(ChatError):
    """The server could not be reached or dropped the connection (refused, reset, DNS)."""


class APITimeoutError(APIConnectionError):
    """No answer within the timeout (connect or read)."""


class BadResponseError(ChatError):
    """A 200 reply that is not a chat completion (a proxy's page, a truncated body)."""


class APIStatusError(ChatError):
    """The server answered with an error status; `status` and the server's `detail` are kept."""

    def __init__(self, url: str, status: int, detail: str, retry_after: float | None = None):
        self.status, self.detail, self.retry_after = status, detail, retry_after
        super().__init__(url, f"HTTP {status}: {detail}")


class BadRequestError(APIStatusError):
    """400/422: the server rejects the request itself (unknown model, unsupported field)."""


class AuthenticationError(APIStatusError):
    """401/403: a missing or wrong API key; check --api-key-env / --api-key-file."""


class NotFoundError(APIStatusError):
    """404: wrong URL (the base URL should end in /v1) or unknown model."""


class RateLimitError(APIStatusError):
    """429: slow down; retried after the server's Retry-After or our backoff."""


class InternalServerError(APIStatusError):
    """5xx: the server failed; retried."""


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError, 422: BadRequestError, 401: AuthenticationError, 403: AuthenticationError,
    404: NotFoundError, 429: RateLimitError}


@dataclass(frozen=True)
class RetryPolicy:
    """Per-client defaults; `ChatClient.chat` takes per-call overrides."""

    max_retries: int = MAX_RETRIES
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    read_timeout_s: float = READ_TIMEOUT_S
    initial_backoff_s: float = INITIAL_BACKOFF_S
    max_backoff_s: float = MAX_BACKOFF_S


@dataclass(frozen=True)
class Reply:
    """What the build keeps of a chat completion."""

    content: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    finish_reason: str = ""


@dataclass
class CallCounters:
    """Attempts and retries of one client, for the summary (thread-safe increments)."""

    attempts: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, attempts: int = 0, retries: int = 0) -> None:
        with self._lock:
            self.attempts += attempts
            self.retries += retries


def canonical_body(body: dict) -> bytes:
    """The request as sorted, compact JSON: the bytes sent and the bytes the journal hashes."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def is_retryable(err: ChatError) -> bool:
    if isinstance(err, APIStatusError):
        return err.status in RETRY_STATUSES or err.status >= 500
    return isinstance(err, APIConnectionError)


def parse_retry_after(headers: dict[str, str], now: float | None = None) -> float | None:
    """Seconds the server asks us to wait: `retry-after-ms`, `retry-after` in seconds or an HTTP date."""
    if "retry-after-ms" in headers:
        try:
            return float(headers["retry-after-ms"]) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return parsedate_to_datetime(value).timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError):
        return None


def backoff_delay(retry: int, policy: RetryPolicy, retry_after: float | None, rng: random.Random) -> float:
    """Seconds before retry number `retry` (0-based): the server's Retry-After when it is within
    [0, MAX_RETRY_AFTER_S], else initial x 2^retry capped at max, minus up to JITTER of it at random
    (so that many workers that failed together do not retry together)."""
    if retry_after is not None and 0 <= retry_after <= MAX_RETRY_AFTER_S:
        return retry_after
    base = min(policy.initial_backoff_s * 2 ** retry, policy.max_backoff_s)
    return base * (1 - JITTER * rng.random())


class ChatClient:
    """`chat(body)` -> Reply for one endpoint. Thread-safe: one connection per attempt."""

    def __init__(self, base_url: str, api_key: str | None = None, policy: RetryPolicy | None = None,
                 cancel: threading.Event | None = None, sleep: Callable[[float], None] | None = None):
        url = base_url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else f"{url}/chat/completions"
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint {base_url!r} is not an http(s) URL; give the server's base URL, "
                             "e.g. http://vllm:8000/v1")
        self._parts = parts
        self._api_key = api_key
        self.policy = policy or RetryPolicy()
        self.cancel = cancel or threading.Event()
        self.counters = CallCounters()
        self._rng = random.Random()
        self._sleep = sleep

    def __repr__(self) -> str:  # never shows the key
        return f"ChatClient({self.url!r})"

    def chat(self, body: dict, *, max_retries: int | None = None, read_timeout_s: float | None = None) -> Reply:
        """POST `body`; retries what may succeed later, raises a ChatError subclass otherwise."""
        retries = self.policy.max_retries if max_retries is None else max_retries
        data = canonical_body(body)
        for retry in range(retries + 1):
            self.counters.add(attempts=1)
            try:
                status, headers, raw = self._post("/chat/completions", data, read_timeout_s)
                return self._reply(status, headers, raw)
            except ChatError as err:
                if retry == retries or not is_retryable(err) or self.cancel.is_set():
                    raise
                delay = backoff_delay(retry, self.policy, getattr(err, "retry_after", None), self._rng)
                self.counters.add(retries=1)
                (self._sleep or self.cancel.wait)(delay)
                if self.cancel.is_set():  # the run is stopping: no new attempt
                    raise
        raise AssertionError("unreachable")

    def models(self) -> list[str]:
        """The model ids `GET /models` lists (vLLM serves one); one attempt, no retries."""
        status, headers, raw = self._post("/models", None, None)
        if status != 200:
            raise self._status_error(status, headers, raw)
        try:
            return [m["id"] for m in json.loads(raw)["data"]]
        except (ValueError, KeyError, TypeError):
            raise BadResponseError(self._sibling("/models"), "not a model list") from None

    def _sibling(self, path: str) -> str:
        return self.url.removesuffix("/chat/completions") + path

    def _post(self, path: str, data: bytes | None, read_timeout_s: float | None):
        """One attempt: (status, lower-case headers, body). Raises APIConnectionError/APITimeoutError."""
        p = self._parts
        target = p.path.removesuffix("/chat/completions") + path
        conn_cls = http.client.HTTPSConnection if p.scheme == "https" else http.client.HTTPConnection
        extra = {"context": ssl.create_default_context()} if p.scheme == "https" else {}
        conn = conn_cls(p.hostname, p.port, timeout=self.policy.connect_timeout_s, **extra)
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        try:
            conn.connect()
            conn.sock.settimeout(read_timeout_s or self.policy.read_timeout_s)
            conn.request("POST" if data is not None else "GET", target, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        except TimeoutError:
            raise APITimeoutError(self._sibling(path), "timed out (connect "
                                  f"{self.policy.connect_timeout_s:g}s, read "
                                  f"{read_timeout_s or self.policy.read_timeout_s:g}s)") from None
        except (OSError, http.client.HTTPException) as err:
            raise APIConnectionError(self._sibling(path), f"connection failed ({type(err).__name__}: "
                                     f"{str(err)[:200]})") from None
        finally:
            conn.close()

    def _reply(self, status: int, headers: dict[str, str], raw: bytes) -> Reply:
        if status != 200:
            raise self._status_error(status, headers, raw)
        try:
            doc = json.loads(raw)
            choice = doc["choices"][0]
            usage = doc.get("usage") or {}
            return Reply(content=choice["message"].get("content") or "",
                         prompt_tokens=int(usage.get("prompt_tokens") or 0),
                         completion_tokens=int(usage.get("completion_tokens") or 0),
                         model=str(doc.get("model", "")), finish_reason=str(choice.get("finish_reason") or ""))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise BadResponseError(self.url, f"200 reply is not a chat completion: {raw[:200]!r}") from None

    def _status_error(self, status: int, headers: dict[str, str], raw: bytes) -> APIStatusError:
        """The typed error, with the server's own message from the OpenAI error envelope when present."""
        try:
            detail = json.loads(raw)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            detail = raw[:300].decode("utf-8", "replace").strip() or http.client.responses.get(status, "")
        cls = _STATUS_ERRORS.get(status, InternalServerError if status >= 500 else APIStatusError)
        return cls(self.url, status, str(detail)[:500], parse_retry_after(headers))
