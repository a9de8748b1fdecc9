"""The registry's data directory: one JSON document, written atomically, owned by one process.

Layout of ``DATA_DIR``:

- ``registry.json``: the whole state (schemas, subjects, versions, deletion marks, configs).
  Every change rewrites it: write ``registry.json.tmp``, fsync it, ``os.replace`` it over the
  old file, fsync the directory. A crash leaves either the old or the new document, never a
  torn one. Rewriting the whole file is linear in the number of schemas, which is fine for a
  registry of thousands of schemas (the embedded registry's job), not millions.
- ``registry.lock``: held with an exclusive ``fcntl.flock`` for as long as a process owns the
  directory; a second process gets :class:`DataDirLocked` instead of a split brain. The lock
  dies with its process, so a crashed registry never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import IO, Any

from app.embedded.registry.exceptions import DataDirLocked, StoreError

STATE_FILE = "registry.json"
LOCK_FILE = "registry.lock"


class DataDir:
    """Exclusive owner of a registry data directory. Use :meth:`open`, then :meth:`close`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock: IO[str] | None = None

    @classmethod
    def open(cls, path: Path) -> DataDir:
        data_dir = cls(path)
        data_dir._acquire()
        return data_dir

    @property
    def state_path(self) -> Path:
        return self.path / STATE_FILE

    def _acquire(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            lock = open(self.path / LOCK_FILE, "a+")  # noqa: SIM115 - held until close()
        except OSError as exc:
            raise StoreError(f"cannot open registry data dir {self.path}: {exc}") from exc
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            owner = lock.read().strip() or "unknown"
            lock.close()
            raise DataDirLocked(
                f"registry data dir {self.path} is in use by another registry process "
                f"(pid {owner}); stop it or choose another --data-dir"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock

    def close(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def load(self) -> dict[str, Any] | None:
        """The saved document, or ``None`` for a new directory."""
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {self.state_path}: {exc}") from exc
        try:
            document = json.loads(raw)
        except ValueError as exc:
            raise StoreError(
                f"{self.state_path} is not valid JSON ({exc}); it was left untouched"
            ) from exc
        if not isinstance(document, dict):
            raise StoreError(f"{self.state_path} does not hold a registry document")
        return document

    def save(self, document: dict[str, Any]) -> None:
        """Replace the saved document atomically and durably."""
        tmp = self.path / (STATE_FILE + ".tmp")
        payload = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
        try:
            with open(tmp, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.state_path)
            dir_fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise StoreError(f"cannot write {self.state_path}: {exc}") from exc
