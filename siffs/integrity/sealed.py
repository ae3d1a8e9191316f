"""Work on secrets in a directory that cannot outlive the work, not even a SIGKILL of siffs.

GnuPG cannot sign from memory: it imports the secret key into a home directory, where its
agent writes it to ``private-keys-v1.d``. A temporary directory removed in a ``finally`` stays
on disk, key included, when siffs is killed with SIGKILL. So the work runs in a child process
in its own user, mount and PID namespaces, with a fresh tmpfs over ``/dev/shm`` that only it sees:

* the child is PID 1 of its PID namespace, so when it ends, the kernel kills everything
  started in there (the gpg-agent holding the key too);
* the child and the process between it and siffs die with their parent (``PR_SET_PDEATHSIG``
  SIGKILL), so a SIGKILL of siffs ends the namespace at once;
* a tmpfs lives in memory, and the last process of a mount namespace takes it along:
  nothing of the key ever reaches a disk, and nothing is left to remove.

Where the kernel refuses namespaces (user namespaces disabled, a seccomp filter), the work
runs in a temporary directory under ``/dev/shm`` (memory, but it would survive a SIGKILL
until the next reboot) and the caller is told so through ``on_fallback``.
"""

from __future__ import annotations

import os
import pickle
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from runtime import libc, namespaces
from runtime.errors import NamespacesUnavailable
from siffs.integrity.errors import SigningError

T = TypeVar("T")

#: Where the fallback keeps its directory: memory on every Linux system that has it.
_SHM = "/dev/shm"


def run_sealed(work: Callable[[Path], T], on_fallback: Callable[[str], None] | None = None) -> T:
    """``work(directory)`` in a child, with ``directory`` gone when the child is (see above).

    Returns what ``work`` returns, or raises what it raised (both must pickle).
    """

    def sealed() -> tuple[str, T]:
        try:
            namespaces.enter(pid=True, ipc=True)
        except NamespacesUnavailable as exc:
            base = _SHM if os.path.isdir(_SHM) else None
            with tempfile.TemporaryDirectory(prefix="siffs-", dir=base) as d:
                return f"{exc}; the secret key would stay in {base} if siffs were killed", work(Path(d))
        return "", _fork_call(lambda: _on_tmpfs(work), parent=None)  # PID 1 sees no parent

    fallback, value = _fork_call(sealed, parent=os.getpid())
    if fallback and on_fallback is not None:
        on_fallback(fallback)
    return value


def _on_tmpfs(work: Callable[[Path], T]) -> T:  # pragma: no cover - runs in the child
    # Over /dev/shm, which nothing the work runs needs to see (/tmp may hold the user's PATH).
    where = _SHM if os.path.isdir(_SHM) else "/tmp"
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)  # nothing propagates to the host
    libc.mount("tmpfs", where, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "mode=0700,size=64m")
    return work(Path(tempfile.mkdtemp(dir=where)))


def _fork_call(body: Callable[[], T], parent: int | None) -> T:
    """``body()`` in a forked child that dies with this process; its result or error comes back.

    ``parent`` is this process' pid as the child sees it (None where it cannot: a PID namespace).
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; what it does comes back through the pipe
        os.close(read_fd)
        try:
            libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
            if parent is not None and os.getppid() != parent:  # it died before prctl took effect
                os._exit(1)
            payload = _pickle((True, body()))
        except Exception as exc:
            payload = _pickle((False, exc))
        view = memoryview(payload)
        while view:
            view = view[os.write(write_fd, view) :]
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise SigningError(f"the signing process died (wait status {status})")
    ok, value = pickle.loads(data)
    if ok:
        return value  # type: ignore[no-any-return]
    raise value


def _pickle(result: tuple[bool, object]) -> bytes:
    try:
        return pickle.dumps(result)
    except Exception as exc:  # an error that does not pickle still comes back, as text
        return pickle.dumps((False, SigningError(f"{type(result[1]).__name__}: {result[1]} ({exc})")))
