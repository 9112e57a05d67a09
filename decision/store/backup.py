"""Backup and restore of the profile store, while servers keep serving and writing.

``backup`` copies the LMDB environment inside one read transaction (``mdb_env_copy2``
with compaction): the copy is the store as of one commit, so every event acknowledged
before the backup started is in it, and counters, identifiers, the event-id log and
the trigger log agree with one another. Writers are never blocked (MVCC); they only
keep the pages of that snapshot alive until the copy ends. Compaction writes live
pages only, so the copy holds none of the freed pages in which erased customers'
bytes can linger in ``data.mdb``.

The copy is written to a temporary directory beside ``out`` and renamed into place
once it has been checked, so ``out`` either is a complete, verified backup or does
not exist.

``restore`` checks a backup, then puts it in place as ``data.mdb`` of a data
directory that no process has open.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import lmdb
import msgpack

from decision.errors import DecisionError, StoreError
from decision.store.database import SUB_DATABASES
from decision.store.layout import LAYOUT_VERSION

SUB_DBS = tuple(name.encode() for name in SUB_DATABASES)  # a backup holds every one
DATA_FILE = "data.mdb"
LOCK_FILE = "lock.mdb"


class BackupError(DecisionError):
    """A backup or restore that cannot be done; the message says why and what to do."""

    status = "FAILED_PRECONDITION"


@dataclass(frozen=True)
class StoreSummary:
    """What a (copy of a) store holds: shown by the CLI, compared after a restore."""

    path: Path
    profiles: int
    identifiers: int
    events: int
    triggers: int
    catalog_version: str | None
    features: tuple[str, ...]
    bytes: int

    def line(self) -> str:
        return (f"{self.profiles} profiles, {self.identifiers} identifiers, {self.events} "
                f"event ids, {self.triggers} triggers, catalog "
                f"{self.catalog_version or '(none recorded)'}, {self.bytes:,} bytes")

    def same_content(self, other: "StoreSummary") -> bool:
        fields = ("profiles", "identifiers", "events", "triggers", "catalog_version",
                  "features")
        return all(getattr(self, f) == getattr(other, f) for f in fields)


def backup(data_dir: str | Path, out: str | Path) -> StoreSummary:
    """Copy the store in ``data_dir`` to the new directory ``out`` (compacted, one
    consistent snapshot); servers may keep running. Returns what the copy holds."""
    data_dir, out = Path(data_dir), Path(out)
    if not (data_dir / DATA_FILE).is_file():
        raise BackupError(f"{data_dir}: no profile store here (no {DATA_FILE})")
    if out.exists():
        raise BackupError(f"{out}: already exists; back up to a new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        env = _open(data_dir, readonly=True)
        try:
            _check_sub_dbs(env, data_dir)
            while True:
                try:  # one read transaction, begun inside: a snapshot of one commit
                    env.copy(str(partial), compact=True)
                    break
                except lmdb.MapResizedError:  # a server grew the map: adopt, retry
                    env.set_mapsize(0)
        finally:
            env.close()
        _fsync(partial / DATA_FILE)
        summary = inspect(partial)
        os.rename(partial, out)
        _fsync(out.parent)
    except lmdb.Error as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise BackupError(f"{data_dir}: backup failed: {exc}") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return replace(summary, path=out)


def restore(backup_dir: str | Path, data_dir: str | Path, force: bool = False) -> StoreSummary:
    """Put the backup in ``backup_dir`` in place as the store of ``data_dir``.

    Refused while any process has the store open, and when a store is already there
    unless ``force``. The backup is checked first and the restored store after."""
    backup_dir, data_dir = Path(backup_dir), Path(data_dir)
    expected = inspect(backup_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    target = data_dir / DATA_FILE
    with _exclusive(data_dir):  # a server starting now waits until the restore is done
        if target.exists() and not force:
            raise BackupError(f"{data_dir}: a profile store is already there; pass --force "
                              "to replace it (it is lost) or restore into a new directory")
        staged = data_dir / f".{DATA_FILE}.restoring"
        try:
            shutil.copyfile(backup_dir / DATA_FILE, staged)
            _fsync(staged)
            os.replace(staged, target)
            _fsync(data_dir)
        finally:
            staged.unlink(missing_ok=True)
    restored = inspect(data_dir, lock=True)
    if not restored.same_content(expected):
        raise BackupError(f"{data_dir}: the restored store does not match the backup "
                          f"({restored.line()} vs {expected.line()})")
    return restored


def inspect(path: str | Path, lock: bool = False) -> StoreSummary:
    """Open the store (or backup) at ``path`` read-only and check it is one of ours:
    every sub-database present, a schema recorded with this server's layout."""
    path = Path(path)
    if not (path / DATA_FILE).is_file():
        raise BackupError(f"{path}: not a profile store or backup (no {DATA_FILE})")
    env = _open(path, readonly=True, lock=lock)
    try:
        dbs = _check_sub_dbs(env, path)
        with env.begin() as txn:
            stat = {name: txn.stat(db)["entries"] for name, db in dbs.items()}
            raw = txn.get(b"schema", db=dbs[b"meta"])
            version = txn.get(b"catalog_version", db=dbs[b"meta"])
        try:
            schema = msgpack.unpackb(raw) if raw is not None else None
            features = tuple(schema["features"])
            layout = schema["layout"]
        except (ValueError, TypeError, KeyError, msgpack.UnpackException):
            raise BackupError(f"{path}: no valid schema record in meta; not a "
                              "decision profile store") from None
        if layout != LAYOUT_VERSION:
            raise BackupError(f"{path}: profile layout {layout}, this server reads layout "
                              f"{LAYOUT_VERSION}")
        return StoreSummary(
            path=path, profiles=stat[b"profiles"], identifiers=stat[b"identity"],
            events=stat[b"events"], triggers=stat[b"triggers"],
            catalog_version=None if version is None else version.decode("utf-8", "replace"),
            features=features, bytes=(path / DATA_FILE).stat().st_size)
    except lmdb.Error as exc:
        raise BackupError(f"{path}: the store cannot be read: {exc}") from None
    finally:
        env.close()


# ------------------------------------------------------------------ helpers
def _open(path: Path, readonly: bool, lock: bool = True) -> lmdb.Environment:
    # map_size 0 (LMDB: "the size the file was last given"); a map too small for the
    # file is raised to its used size by LMDB itself.
    try:
        return lmdb.open(str(path), readonly=readonly, lock=lock, max_dbs=16,
                         max_readers=1024, readahead=False, create=False, map_size=0)
    except lmdb.Error as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise BackupError(f"{path}: not a readable LMDB store: {reason}") from None


def _check_sub_dbs(env: lmdb.Environment, path: Path) -> dict:
    dbs = {}
    for name in SUB_DBS:
        try:
            dbs[name] = env.open_db(name, create=False)
        except lmdb.NotFoundError:
            raise StoreError(f"{path}: sub-database {name.decode()!r} is missing; not a "
                             "complete decision profile store") from None
    return dbs


class _exclusive:
    """Hold LMDB's own "nobody else has this environment open" lock on ``lock.mdb``
    (byte 0; every process with the store open holds it shared), or refuse."""

    def __init__(self, data_dir: Path):
        self.path = data_dir / LOCK_FILE
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0, os.SEEK_SET)
        except OSError as exc:
            os.close(self.fd)
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise BackupError(
                    f"{self.path.parent}: the store is open in a running process (a "
                    "server?); stop it before restoring over it") from None
            raise

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # closing the descriptor releases the lock


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
