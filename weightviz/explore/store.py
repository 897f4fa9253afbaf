"""The live server's cache: SQLite (stdlib ``sqlite3``) keyed by model hash, with compute-once per key.

One table ``entries(model, key, value, created)``; ``model`` is :func:`weightviz.models.model_hash`, so
one database file serves many models and a changed model never sees stale entries. Each thread uses its
own connection (WAL mode, so readers do not block the writer).

:meth:`SqliteCache.get_or_compute` computes a missing value once even under concurrent requests: the
first request for a key takes that key's lock and computes; the others wait on the same lock and then
read the stored value.

>>> cache = SqliteCache(":memory:", model_hash="0123456789abcdef")    # doctest: +SKIP
>>> cache.get_or_compute("fv|blocks.2.0|7", lambda: b"png bytes")      # doctest: +SKIP
b'png bytes'
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import WeightvizError

__all__ = ["KeyLocks", "SqliteCache"]


class KeyLocks:
    """One lock per key, created on demand and dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._locks: dict[str, list] = {}  # key -> [lock, users]

    def __call__(self, key: str):
        return _Held(self, key)

    def _acquire(self, key: str) -> threading.Lock:
        with self._mutex:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        entry[0].acquire()
        return entry[0]

    def _release(self, key: str) -> None:
        with self._mutex:
            entry = self._locks[key]
            entry[0].release()
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[key]

    def __len__(self) -> int:
        with self._mutex:
            return len(self._locks)


class _Held:
    def __init__(self, locks: KeyLocks, key: str):
        self.locks, self.key = locks, key

    def __enter__(self):
        self.locks._acquire(self.key)
        return self

    def __exit__(self, *exc):
        self.locks._release(self.key)


class SqliteCache:
    """Bytes values keyed by ``(model_hash, key)`` in an SQLite file (``":memory:"`` for a private
    in-memory database shared by this object's threads).

    ``hits`` / ``computed`` count :meth:`get_or_compute` outcomes (for tests and the benchmark).
    """

    def __init__(self, path: str | os.PathLike, model_hash: str):
        self.model = str(model_hash)
        self._memory = str(path) == ":memory:"
        if self._memory:
            # one shared connection, serialized by a lock (an in-memory db is private to its connection)
            self.path = ":memory:"
            self._shared = sqlite3.connect(":memory:", check_same_thread=False)
            self._shared_lock = threading.Lock()
        else:
            self.path = str(Path(path).expanduser())
            parent = Path(self.path).parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise WeightvizError(f"cannot create cache directory {str(parent)!r}: {e.strerror}") from None
        self._local = threading.local()
        self._locks = KeyLocks()
        self._count_lock = threading.Lock()
        self.hits = 0
        self.computed = 0
        try:
            with self._conn() as c:
                if not self._memory:
                    c.execute("PRAGMA journal_mode=WAL")
                c.execute(
                    "CREATE TABLE IF NOT EXISTS entries (model TEXT NOT NULL, key TEXT NOT NULL, "
                    "value BLOB NOT NULL, created REAL NOT NULL, PRIMARY KEY (model, key))"
                )
        except sqlite3.DatabaseError as e:
            raise WeightvizError(
                f"cannot use {self.path!r} as the explorer cache ({e}); delete it or choose another file (--db)"
            ) from None

    # ------------------------------------------------------------------------------ connections
    class _Shared:
        def __init__(self, outer: SqliteCache):
            self.outer = outer

        def __enter__(self):
            self.outer._shared_lock.acquire()
            return self.outer._shared.__enter__()

        def __exit__(self, *exc):
            try:
                return self.outer._shared.__exit__(*exc)
            finally:
                self.outer._shared_lock.release()

    def _conn(self):
        if self._memory:
            return SqliteCache._Shared(self)
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60)
            self._local.conn = conn
        return conn

    # ---------------------------------------------------------------------------------- access
    def get(self, key: str) -> bytes | None:
        with self._conn() as c:
            row = c.execute("SELECT value FROM entries WHERE model=? AND key=?", (self.model, key)).fetchone()
        return bytes(row[0]) if row else None

    def put(self, key: str, value: bytes) -> None:
        with self._conn() as c:
            c.execute("INSERT OR REPLACE INTO entries (model, key, value, created) VALUES (?, ?, ?, ?)",
                      (self.model, key, sqlite3.Binary(value), time.time()))

    def put_many(self, items: dict[str, bytes]) -> None:
        now = time.time()
        with self._conn() as c:
            c.executemany("INSERT OR REPLACE INTO entries (model, key, value, created) VALUES (?, ?, ?, ?)",
                          [(self.model, k, sqlite3.Binary(v), now) for k, v in items.items()])

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        with self._conn() as c:
            return int(c.execute("SELECT COUNT(*) FROM entries WHERE model=?", (self.model,)).fetchone()[0])

    def get_or_compute(self, key: str, compute: Callable[[], bytes | dict[str, bytes]]) -> bytes:
        """The value for ``key``; if missing, ``compute()`` runs once (concurrent callers for the same key
        wait for it). ``compute`` may return a dict ``{key: value}`` holding ``key`` and other entries
        computed along the way (e.g. a whole batch of renders); all are stored."""
        value = self.get(key)
        if value is not None:
            self._count("hits")
            return value
        with self._locks(key):
            value = self.get(key)
            if value is not None:
                self._count("hits")
                return value
            out = compute()
            self._count("computed")
            if isinstance(out, dict):
                self.put_many(out)
                if key not in out:
                    raise RuntimeError(f"compute for {key!r} did not produce it")
                return out[key]
            self.put(key, out)
            return out

    def lock(self, key: str):
        """The per-key lock (a context manager), for callers that group several keys under one."""
        return self._locks(key)

    def _count(self, name: str) -> None:
        with self._count_lock:
            setattr(self, name, getattr(self, name) + 1)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        if self._memory:
            self._shared.close()
