"""A response cache below the orchestrator: a rerun after a crash or a metric-only change regenerates nothing.

Keyed by (model id incl. adapter hash, messages, reply format, generation settings, seed, request key = negotiation,
turn and attempt). Stored in one SQLite file; safe for several processes (WAL, short transactions).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import asdict
from pathlib import Path

from agreemate_lib.backends.base import ChatBackend, ChatRequest, Completion, GenerationSettings


def request_key(model_id: str, req: ChatRequest, settings: GenerationSettings) -> str:
    payload = {
        "model": model_id,
        "messages": req.messages,
        "format": asdict(req.reply_format),
        "settings": asdict(settings),
        "key": req.key,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class ResponseCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, completion TEXT NOT NULL)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60)

    def get_many(self, keys: list[str]) -> dict[str, Completion]:
        out: dict[str, Completion] = {}
        with self._connect() as db:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                q = f"SELECT key, completion FROM responses WHERE key IN ({','.join('?' * len(chunk))})"
                for k, v in db.execute(q, chunk):
                    out[k] = Completion(**json.loads(v))
        return out

    def put_many(self, items: dict[str, Completion]) -> None:
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO responses VALUES (?, ?)",
                           [(k, json.dumps(asdict(c))) for k, c in items.items()])

    def __len__(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]


class CachedBackend(ChatBackend):
    """Wraps a backend: hits come from the cache, misses go to the backend in one batch and are stored
    (replies that failed with an error are not stored, so they are tried again)."""

    def __init__(self, inner: ChatBackend, cache: ResponseCache):
        self.inner = inner
        self.cache = cache
        self.model_id = inner.model_id
        self.hits = 0
        self.misses = 0

    def release(self, prefix_keys: list[str]) -> None:
        self.inner.release(prefix_keys)

    def generate(self, requests: list[ChatRequest], settings: GenerationSettings) -> list[Completion]:
        keys = [request_key(self.model_id, r, settings) for r in requests]
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
