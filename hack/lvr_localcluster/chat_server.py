"""A scripted OpenAI-compatible chat server on loopback, for the `lvr data build` tests and bench.

It stands in for a VLM captioner and an LLM reasoner: `POST /v1/chat/completions` answers every request
deterministically from its body (same request, same reply, whichever server process answers), and
`GET /v1/models` lists one model. Requests are told apart by shape, not by our prompts' wording: images
-> caption; an assistant turn -> repair; "Captions:" in the user turn -> questions; else -> blind.

The questions it writes follow a fixed pattern, so that every filter has work (n = the count asked):
question 1 and 2 are ordinary; question 3 is, by category, an exact duplicate of question 1 (plot), a
near-duplicate of it (spatial), answerable without the video (goal: its right option says "obviously",
and the blind pass picks such an option), or ordinary (temporal). Every temporal answer is A (letter
balance has work); other answers follow a hash of the request. One wrong option in each question says
"decoy"; the blind pass picks that one when nothing is obvious, so it is always wrong then.

Faults are scripted per kind and arrival number (`{"kind": "caption", "nth": [2], "fault": "status",
"status": 429, "retry_after": 1}`): status, slow (sleep `seconds`, then answer), malformed, wrong_schema,
stubborn (wrong schema, and its repair too), bad_items (some invalid questions, and in its repair too),
empty, die (the process exits at once, answering nothing). `die_after` N: the Nth request kills it.

Every answered or failed request is logged as one JSON line: n, kind, key (SHA-256 of the body bytes,
the build journal's key), status, fault, t.

    python -m lvr_localcluster.chat_server --port P --log LOG [--config CONFIG.json]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LETTERS = "ABCD"


def request_kind(body: dict) -> str:
    messages = body.get("messages", [])
    if any(isinstance(m.get("content"), list) and any(p.get("type") == "image_url" for p in m["content"])
           for m in messages):
        return "caption"
    if any(m.get("role") == "assistant" for m in messages):
        return "repair"
    user = next((m["content"] for m in messages if m.get("role") == "user"), "")
    return "questions" if "Captions:" in str(user) else "blind"


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def caption_text(body: dict) -> str:
    text = next(p["text"] for m in body["messages"] if isinstance(m.get("content"), list)
                for p in m["content"] if p.get("type") == "text")
    clip = re.search(r"clip (\d+) of", text)
    images = [p["image_url"]["url"] for m in body["messages"] if isinstance(m.get("content"), list)
              for p in m["content"] if p.get("type") == "image_url"]
    return f"In clip {clip.group(1) if clip else '?'} a square of shade {_h(''.join(images)) % 97} moves across."


def questions(user: str) -> list[dict]:
    """The fixed pattern of the module docstring, for the category and count the prompt asks. Each
    question has its own made-up words, so that distinct questions share few words."""
    category = re.search(r"Category: (\w+)", user).group(1)
    n = int(re.search(r"Write (\d+) question", user).group(1))
    seed = _h(user)
    out = []
    for i in range(n):
        if i == 2 and category == "plot":
            out.append(dict(out[0]))
            continue
        if i == 2 and category == "spatial":
            out.append({**out[0], "question": out[0]["question"].replace("what did", "what exactly did")})
            continue
        w = [f"{'kzmptr'[j % 6]}{_h(f'{seed}-{i}-{j}') % 100000}" for j in range(10)]
        letter = "A" if category == "temporal" else LETTERS[(seed + i) % 4]
        opts = {k: f"{w[2 + 2 * j]} and {w[3 + 2 * j]}" for j, k in enumerate(LETTERS)}
        wrong = LETTERS[(LETTERS.index(letter) + 1) % 4]
        opts[wrong] = f"a decoy {opts[wrong]}"
        if i == 2 and category == "goal":
            opts[letter] = f"obviously {opts[letter]}"
        out.append({"question": f"In the {category} sense, what did {w[0]} do with {w[1]}?", "options": opts,
                    "answer": letter,
                    "reasoning": f"At 0:0{i} {w[0]} meets {w[1]}; later it leaves; so the answer is {letter}."})
    return out


def blind_letter(user: str) -> str:
    options = dict(re.findall(r"^([ABCD])\. (.*)$", user, flags=re.M))
    for want in ("obviously", "decoy"):
        hit = [k for k, v in sorted(options.items()) if want in v]
        if hit:
            return hit[0]
    return "A"


def content_for(kind: str, body: dict, fault: str | None) -> str:
    """The reply text for a request of `kind` under `fault` (None: a good reply)."""
    messages = body["messages"]
    user = next(m["content"] for m in messages if m.get("role") == "user")
    history = json.dumps(messages)
    if kind == "caption":
        return "" if fault == "empty" else caption_text(body)
    if kind == "blind":
        return json.dumps({"answer": blind_letter(user)})
    if fault == "malformed":
        return '{"questions": [{"question": "unfinished'
    if fault == "wrong_schema":
        return json.dumps({"items": ["not", "the", "schema"]})
    if fault == "stubborn" or (kind == "repair" and "STUBBORN" in history):
        return json.dumps({"items": [], "note": "STUBBORN"})
    qs = questions(user)
    if fault == "bad_items" or (kind == "repair" and "BADITEMS" in history):
        qs = qs[:1] + [{**qs[0], "question": "BADITEMS answer out of range", "answer": "E"},
                       {k: v for k, v in qs[0].items() if k != "reasoning"} | {"question": "BADITEMS no reasoning"}]
    return json.dumps({"questions": qs})


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatHTTPServer

    def log_message(self, *args) -> None:  # quiet: the JSONL log is the record
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, {"object": "list", "data": [{"id": self.server.config.get("model", "fake-model"),
                                                         "object": "model"}]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        srv = self.server
        key = hashlib.sha256(raw).hexdigest()
        body = json.loads(raw)
        kind = request_kind(body)
        n, nth = srv.count(kind)
        fault = srv.fault_for(kind, nth)
        late = srv.config.get("die_after") is not None and n > srv.config["die_after"]
        if late or srv.dying.is_set():  # the process is about to end: nothing more is answered
            time.sleep(60)
        if fault.get("fault") == "die" or n == srv.config.get("die_after"):
            srv.stop_answering()        # replies already on their way are logged before the process ends
            srv.log({"n": n, "kind": kind, "key": key, "status": None, "fault": "die"})
            os._exit(3)
        want = srv.config.get("require_key")
        if want and self.headers.get("Authorization") != f"Bearer {want}":
            return self._answer(n, kind, key, 401, {"error": {"message": "invalid API key", "type": "auth"}}, None)
        time.sleep(float(srv.config.get("latency", 0.0)))
        if fault.get("fault") == "status":
            headers = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else {}
            return self._answer(n, kind, key, fault["status"], {"error": {"message": "scripted failure",
                                                                          "type": "scripted"}}, "status", headers)
        if fault.get("fault") == "slow":
            time.sleep(float(fault["seconds"]))
        content = content_for(kind, body, fault.get("fault"))
        reply = {"id": f"chatcmpl-{key[:12]}", "object": "chat.completion", "model": body.get("model"),
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": content}}],
                 "usage": {"prompt_tokens": len(raw) // 4, "completion_tokens": len(content) // 4,
                           "total_tokens": len(raw) // 4 + len(content) // 4}}
        self._answer(n, kind, key, 200, reply, fault.get("fault"))

    def _answer(self, n, kind, key, status, payload, fault, headers=None) -> None:
        with self.server.answering():
            try:
                self._send(status, payload, headers)
            except OSError:  # the client gave up (a slow reply past its timeout)
                status = "client_gone"
            self.server.log({"n": n, "kind": kind, "key": key, "status": status, "fault": fault})

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


class ChatHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # bursts of concurrent connects must not overflow the listen backlog

    def __init__(self, port: int, log_path: str, config: dict):
        super().__init__(("127.0.0.1", port), ChatHandler)
        self.config = config
        self._lock = threading.Lock()
        self._answers = threading.Condition()
        self.dying = threading.Event()
        self._in_flight = 0
        self._total = 0
        self._kinds: Counter = Counter()
        self._log = open(log_path, "a", encoding="utf-8")

    def count(self, kind: str) -> tuple[int, int]:
        """(requests so far including this one, this kind's so far including this one)."""
        with self._lock:
            self._total += 1
            self._kinds[kind] += 1
            return self._total, self._kinds[kind]

    def fault_for(self, kind: str, nth: int) -> dict:
        return next((f for f in self.config.get("faults", []) if f["kind"] == kind and nth in f["nth"]), {})

    @contextlib.contextmanager
    def answering(self):
        """A reply being sent and logged: `wait_for_answers` lets it finish first."""
        with self._answers:
            if self.dying.is_set():     # no reply starts once the process has decided to end
                self._answers.wait()    # (forever: the process exits)
            self._in_flight += 1
        try:
            yield
        finally:
            with self._answers:
                self._in_flight -= 1
                self._answers.notify_all()

    def stop_answering(self, timeout_s: float = 5.0) -> None:
        """No new reply starts from now on; the ones being sent are sent and logged first."""
        with self._answers:
            self.dying.set()
            self._answers.wait_for(lambda: self._in_flight == 0, timeout=timeout_s)

    def log(self, entry: dict) -> None:
        with self._lock:
            self._log.write(json.dumps({**entry, "t": round(time.time(), 4)}) + "\n")
            self._log.flush()


class ChatServer:
    """`with ChatServer(log, config) as url:` runs the server in a child process on a free port."""

    def __init__(self, log_path: str | Path, config: dict | None = None, port: int | None = None):
        self.log_path, self.config, self.port = Path(log_path), config or {}, port
        self.proc: subprocess.Popen | None = None

    def start(self) -> str:
        from lvr_localcluster.ports import free_port, wait_for_port

        self.port = self.port or free_port()
        cfg = self.log_path.with_suffix(f".{self.port}.config.json")
        cfg.write_text(json.dumps(self.config))
        self.proc = subprocess.Popen([sys.executable, "-m", "lvr_localcluster.chat_server", "--port",
                                      str(self.port), "--log", str(self.log_path), "--config", str(cfg)],
                                     stdin=subprocess.DEVNULL)
        wait_for_port(self.port, 30, self.proc, "chat server")
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def requests(self) -> list[dict]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log", required=True, help="JSONL request log (appended)")
    p.add_argument("--config", default=None, help="JSON: faults, latency, die_after, require_key, model")
    args = p.parse_args()
    config = json.loads(Path(args.config).read_text()) if args.config else {}
    ChatHTTPServer(args.port, args.log, config).serve_forever()


if __name__ == "__main__":
    main()
