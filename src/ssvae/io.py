"""Output files: written whole or not at all, and a write that cannot succeed said in one line."""

import fcntl
import hashlib
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py

from ssvae.errors import InputError, UserError


class OutputError(UserError):
    """An output that cannot be written (permissions, a directory in its place, a full disk)."""


def _cannot_write(path: Path, err: OSError) -> OutputError:
    return OutputError(f"cannot write {path}: {err.strerror or err}")


def check_writable(path: Path) -> None:
    """Refuse, before any work, an output that could not be written at the end: a directory
    in its place, or a directory that cannot be created or written to."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: a directory is in its place")
    with atomic_output(path, publish=False):
        pass  # a file can be created beside it, and so renamed onto it


@contextmanager
def atomic_output(path: Path, publish: bool = True) -> Iterator[Path]:
    """Yield a new empty temporary file beside `path`; rename it to `path` if the block succeeds
    (and `publish`) and delete it otherwise, so a failed or interrupted write never leaves a
    plausible file. Failing to create or rename it is an OutputError naming `path`; the block's
    own errors pass through (it may read as well as write: see `write_atomic`)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.open("xb").close()  # created with the usual umask-derived permissions
    except OSError as err:
        raise _cannot_write(path, err) from None
    try:
        yield tmp
        if publish:
            try:
                os.replace(tmp, path)
            except OSError as err:
                raise _cannot_write(path, err) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, content: bytes) -> None:
    """Write `content` as `path`, whole or not at all; a failed write (a full disk) is an
    OutputError naming `path` and leaves any previous file there untouched."""
    with atomic_output(path) as tmp:
        try:
            tmp.write_bytes(content)
        except OSError as err:
            raise _cannot_write(path, err) from None


def sha256(content: bytes) -> str:
    """The digest every file that the pipeline reads back to avoid work is checked against."""
    return hashlib.sha256(content).hexdigest()


class DamagedFile(InputError):
    """A file whose content no longer matches the digest recorded when it was written."""

    def __init__(self, path: Path, why: str = "its content does not match its recorded digest"):
        super().__init__(f"{path}: damaged ({why})")


class Busy(UserError):
    """Another process holds the lock on files that one process at a time may write."""


@contextmanager
def hold_lock(path: Path, doing: str) -> Iterator[None]:
    """Hold the exclusive lock `path` for the block (the kernel releases it when the process
    ends, however it ends). If another process holds it, raise Busy naming that process and
    what it is `doing`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a+")
    except OSError as err:
        raise _cannot_write(path, err) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise Busy(f"{holder} is already {doing} (it holds {path})") from None
        except OSError as err:  # a filesystem without locks (NFS without its lock manager)
            raise OutputError(f"cannot lock {path}: {err.strerror or err}") from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()} on {socket.gethostname()}")
            handle.flush()
        except OSError as err:
            raise _cannot_write(path, err) from None
        yield


@contextmanager
def read_hdf5(path: Path) -> Iterator[h5py.File]:
    """An HDF5 file open for reading. A file missing, empty, truncated or not HDF5, or a group
    or dataset missing from it, is an InputError naming `path`."""
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as err:
        reason = "no such file" if not Path(path).exists() else str(err).splitlines()[0]
        raise InputError(f"{path}: cannot be read as HDF5 ({reason})") from None
    with f:
        try:
            yield f
        except KeyError as err:
            raise InputError(f"{path}: incomplete ({err.args[0] if err.args else err})") from None
        except OSError as err:  # truncated past the header: found when a dataset is read
            reason = str(err).splitlines()[0]
            raise InputError(f"{path}: cannot be read as HDF5 ({reason})") from None
