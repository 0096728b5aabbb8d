"""A real HTTP server on 127.0.0.1 speaking the OpenAI chat-completions protocol, with scripted faults.

Each request pops the next behaviour from ``script`` (the last one repeats): ``ok``, ``429``, ``500``, ``slow``
(sleeps past the client's timeout), ``empty`` (empty content), ``truncated`` (finish_reason=length, cut JSON),
``garbage`` (a reply that is no turn at all). ``die_after=N``: the server stops listening after N requests (a server
that goes away mid-run: later connections are refused).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAI:
    def __init__(self, script, reply=None, slow_s=2.0, die_after: int | None = None):
        self.script = list(script)
        self.reply = reply or {"action": "offer", "utterance": "Would you take $150?", "price": 150}
        self.slow_s = slow_s
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.die_after = die_after
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with outer.lock:
                    outer.requests.append(body)
                    step = outer.script.pop(0) if len(outer.script) > 1 else outer.script[0]
                if step in ("429", "500"):
                    self._send(int(step), {"error": {"message": f"scripted {step}"}})
                    return
                if step == "slow":
                    time.sleep(outer.slow_s)
                content, finish = json.dumps(outer.reply), "stop"
                if step == "garbage":
                    content = "lol ok whatever you say, haggle haggle"
                elif step == "empty":
                    content = ""
                elif step == "truncated":
                    content, finish = content[: len(content) // 2], "length"
                self._send(200, {"id": "x", "object": "chat.completion", "model": body.get("model"),
                                 "choices": [{"index": 0, "finish_reason": finish,
                                              "message": {"role": "assistant", "content": content}}],
                                 "usage": {"prompt_tokens": 10, "completion_tokens": 5}})
                if outer.die_after is not None and len(outer.requests) >= outer.die_after:
                    outer.die()

            def _send(self, code, payload):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def die(self) -> None:
        """Stop listening now (from a request thread: the socket closes, so new connections are refused)."""
        threading.Thread(target=self.server.shutdown, daemon=True).start()
        self.server.socket.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
