"""A response cache below the orchestrator: a rerun after a crash or a metric-only change regenerates nothing, and
a change of anything that shapes a reply regenerates everything it touches.

Keyed by (the agent's full config hash, the backend's model id incl. adapter digest, the messages, the reply
format, the generation settings incl. the seed, the request key = negotiation, turn and attempt). One SQLite file,
safe for several processes (WAL, short transactions). The cache never decides a result: a corrupt row is a miss, a
corrupt file is set aside (renamed ``*.corrupt-<time>``) and replaced by an empty one, a failed write (a full disk)
is reported and the replies are returned all the same; every such event is counted and told through ``log``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from agreemate_lib.backends.base import ChatBackend, ChatRequest, Completion, GenerationSettings


def request_key(model_id: str, req: ChatRequest, settings: GenerationSettings, namespace: str = "") -> str:
    payload = {
        "agent": namespace,
        "model": model_id,
        "messages": req.messages,
        "format": asdict(req.reply_format),
        "settings": asdict(settings),
        "key": req.key,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class ResponseCache:
    def __init__(self, path: str | Path, log: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.log = log or (lambda msg: None)
        self.events: list[str] = []
        self.disabled = False
        try:
            self._init()
        except sqlite3.OperationalError as exc:  # cannot write (read-only, disk full): run without the cache
            self.disabled = True
            self._note(f"response cache {self.path} cannot be written ({exc}): could not store replies in this "
                       "run; they are used all the same, and a rerun regenerates them")
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            self.path.replace(aside)
            for suffix in ("-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            self._note(f"response cache {self.path} is not a readable SQLite database ({exc}); set aside as {aside} "
                       "(delete it once you no longer need it) and started an empty cache: replies are regenerated")
            self._init()

    def _note(self, msg: str) -> None:
        self.events.append(msg)
        self.log(msg)

    def _init(self) -> None:
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, completion TEXT NOT NULL)")
            db.execute("SELECT COUNT(*) FROM responses").fetchone()

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60)

    def get_many(self, keys: list[str]) -> dict[str, Completion]:
        out: dict[str, Completion] = {}
        if self.disabled:
            return out
        try:
            with self._connect() as db:
                for i in range(0, len(keys), 500):
                    chunk = keys[i : i + 500]
                    q = f"SELECT key, completion FROM responses WHERE key IN ({','.join('?' * len(chunk))})"
                    for k, v in db.execute(q, chunk):
                        try:
                            out[k] = Completion(**json.loads(v))
                        except (ValueError, TypeError) as exc:
                            self._note(f"response cache row {k[:12]} is corrupt ({exc}); regenerating it")
        except sqlite3.Error as exc:
            self._note(f"response cache {self.path} could not be read ({exc}); regenerating {len(keys)} replies")
            return {}
        return out

    def put_many(self, items: dict[str, Completion]) -> None:
        if self.disabled:
            return
        try:
            with self._connect() as db:
                db.executemany("INSERT OR REPLACE INTO responses VALUES (?, ?)",
                               [(k, json.dumps(asdict(c))) for k, c in items.items()])
        except sqlite3.Error as exc:
            self._note(f"response cache {self.path}: could not store {len(items)} replies ({exc}); they are used "
                       "for this run but a rerun regenerates them")

    def __len__(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]


class CachedBackend(ChatBackend):
    """Wraps a backend for one agent: hits come from the cache, misses go to the backend in one batch and are
    stored (failed replies are not stored, so they are tried again). ``namespace``: the agent's config hash, so two
    agents sharing one loaded model never share replies, and a config change never replays old ones."""

    def __init__(self, inner: ChatBackend, cache: ResponseCache, namespace: str = ""):
        self.inner = inner
        self.cache = cache
        self.namespace = namespace
        self.model_id = inner.model_id
        self.hits = 0
        self.misses = 0

    def release(self, prefix_keys: list[str]) -> None:
        self.inner.release(prefix_keys)

    def batcher(self):
        return self.inner.batcher()

    def generate(self, requests: list[ChatRequest], settings: GenerationSettings) -> list[Completion]:
        keys = [request_key(self.model_id, r, settings, self.namespace) for r in requests]
        found = self.cache.get_many(keys)
        missing = [i for i, k in enumerate(keys) if k not in found]
        self.hits += len(requests) - len(missing)
        self.misses += len(missing)
        fresh: dict[str, Completion] = {}
        if missing:
            comps = self.inner.generate([requests[i] for i in missing], settings)
            for i, c in zip(missing, comps):
                found[keys[i]] = c
                if not c.error:
                    fresh[keys[i]] = c
            if fresh:
                self.cache.put_many(fresh)
        return [found[k] for k in keys]
