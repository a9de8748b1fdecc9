"""The registry's data directory: a snapshot plus an append-only change log, owned by one process.

Layout of ``DATA_DIR``:

- ``registry.log``: one JSON line per change (``{"seq": n, "changes": [...]}``), appended and
  fsynced before the change is acknowledged. A write costs one small append whatever the size
  of the registry (a change record holds one schema, or one subject's version list, or one
  setting), where rewriting a whole document grew with every subject. A change is one line,
  so it is applied whole or not at all: a line torn by a crash (no final newline, or not JSON)
  can only be the last one and is cut off when the directory is opened.
- ``registry.json``: a snapshot of the whole state and the ``seq`` of the last change it holds.
  When the log has grown past the snapshot (and past :data:`COMPACT_AT_BYTES`), the state is
  written to ``registry.json.tmp``, fsynced, renamed over the snapshot, the directory fsynced,
  and only then is the log emptied. Changes whose ``seq`` the snapshot already holds are
  skipped on replay, so a crash between the rename and the truncation loses and repeats
  nothing. Compaction is linear in the registry, but happens once per log's worth of writes,
  so its cost per write stays constant.
- ``registry.lock``: held with an exclusive ``fcntl.flock`` for as long as a process owns the
  directory; a second process gets :class:`DataDirLocked` instead of a split brain. The lock
  dies with its process, so a crashed registry never leaves a stale lock behind.

Directories written by earlier versions (a ``registry.json`` alone, format 1) open unchanged.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import structlog

from app.embedded.registry.exceptions import DataDirLocked, StoreError

log = structlog.get_logger(__name__)

STATE_FILE: Final = "registry.json"
LOG_FILE: Final = "registry.log"
LOCK_FILE: Final = "registry.lock"
COMPACT_AT_BYTES: Final = 4 << 20

Change = dict[str, Any]


@dataclass
class Saved:
    """What a data directory holds: the snapshot (None if none) and the changes after it."""

    snapshot: dict[str, Any] | None
    changes: list[Change] = field(default_factory=list)


class DataDir:
    """Exclusive owner of a registry data directory. Use :meth:`open`, then :meth:`close`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock: IO[str] | None = None
        self._seq = 0  # seq of the last change written (or loaded)
        self._snapshot_bytes = 0
        self._log_bytes = 0
        self._broken = False  # a failed append could not be cut back: refuse more

    @classmethod
    def open(cls, path: Path) -> DataDir:
        data_dir = cls(path)
        data_dir._acquire()
        return data_dir

    @property
    def state_path(self) -> Path:
        return self.path / STATE_FILE

    @property
    def log_path(self) -> Path:
        return self.path / LOG_FILE

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

    # -- reading ------------------------------------------------------------------------

    def load(self) -> Saved:
        """The snapshot and the logged changes after it (a torn last line is cut off)."""
        snapshot = self._load_snapshot()
        base = int(snapshot.get("seq", 0)) if snapshot is not None else 0
        self._seq = base
        changes: list[Change] = []
        for seq, entry in self._read_log():
            if seq <= base:
                continue  # already in the snapshot (a crash before the log was emptied)
            if seq != self._seq + 1:
                raise StoreError(
                    f"{self.log_path} skips from change {self._seq} to {seq}; it was left untouched"
                )
            changes.extend(entry)
            self._seq = seq
        return Saved(snapshot, changes)

    def _load_snapshot(self) -> dict[str, Any] | None:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {self.state_path}: {exc}") from exc
        self._snapshot_bytes = len(raw)
        try:
            document = json.loads(raw)
        except ValueError as exc:
            raise StoreError(
                f"{self.state_path} is not valid JSON ({exc}); it was left untouched"
            ) from exc
        if not isinstance(document, dict):
            raise StoreError(f"{self.state_path} does not hold a registry document")
        return document

    def _read_log(self) -> list[tuple[int, list[Change]]]:
        try:
            raw = self.log_path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot read {self.log_path}: {exc}") from exc
        entries: list[tuple[int, list[Change]]] = []
        pos = 0
        while pos < len(raw):
            end = raw.find(b"\n", pos)
            if end < 0:
                break  # no newline: the last append did not finish
            try:
                entry = json.loads(raw[pos:end])
                seq, changes = int(entry["seq"]), entry["changes"]
                if not isinstance(changes, list):
                    raise TypeError("changes is not a list")
            except (ValueError, KeyError, TypeError) as exc:
                if not raw[end + 1 :].strip():
                    break  # the final line is garbage: a torn append, cut it off below
                raise StoreError(
                    f"{self.log_path} holds a corrupt change at byte {pos} ({exc}); "
                    "it was left untouched"
                ) from exc
            entries.append((seq, changes))
            pos = end + 1
        good_end = pos
        if good_end < len(raw):
            log.warning("registry_log_torn_tail_dropped", bytes=len(raw) - good_end)
            self._truncate(good_end)
        self._log_bytes = good_end
        return entries

    # -- writing ------------------------------------------------------------------------

    def append(self, changes: list[Change]) -> None:
        """Append one change (several records applied together) durably, or raise StoreError.

        On failure the log is cut back to where it was, so a half-written line never stays.
        """
        if self._broken:
            raise StoreError(
                f"{self.log_path} ends with a change that failed and could not be removed; "
                "restart the registry to repair it"
            )
        seq = self._seq + 1
        line = json.dumps(
            {"seq": seq, "changes": changes}, separators=(",", ":"), ensure_ascii=False
        ).encode()
        try:
            with open(self.log_path, "ab") as fh:
                start = fh.tell()
                try:
                    fh.write(line + b"\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                except OSError:
                    self._cut(fh, start)
                    raise
            if start == 0:
                self._fsync_dir()  # a new log file: make its directory entry durable too
        except OSError as exc:
            raise StoreError(f"cannot write {self.log_path}: {exc}") from exc
        self._seq = seq
        self._log_bytes = start + len(line) + 1

    @property
    def wants_compaction(self) -> bool:
        return self._log_bytes > max(COMPACT_AT_BYTES, self._snapshot_bytes)

    def compact(self, document: dict[str, Any]) -> None:
        """Replace the snapshot with *document* (the state after the last change), empty the log."""
        document = {**document, "seq": self._seq}
        payload = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
        tmp = self.path / (STATE_FILE + ".tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.state_path)
            self._fsync_dir()
        except OSError as exc:
            raise StoreError(f"cannot write {self.state_path}: {exc}") from exc
        self._snapshot_bytes = len(payload)
        self._truncate(0)
        self._log_bytes = 0

    def _truncate(self, size: int) -> None:
        try:
            with open(self.log_path, "r+b") as fh:
                fh.truncate(size)
                fh.flush()
                os.fsync(fh.fileno())
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot truncate {self.log_path}: {exc}") from exc

    def _cut(self, fh: IO[bytes], size: int) -> None:
        try:
            fh.truncate(size)
            os.fsync(fh.fileno())
        except OSError:
            self._broken = True
            log.error("registry_log_cannot_cut_back", hint="restart the registry to repair it")

    def _fsync_dir(self) -> None:
        dir_fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
