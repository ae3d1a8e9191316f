"""What the installed pyfuse3 lets siffs ask the kernel for.

Stock pyfuse3 cannot request the kernel caches that remove whole classes of requests;
contrib/build-pyfuse3.sh builds it with siffs' patches (contrib/pyfuse3-patches), which add
them. Each patch is detected here by the attribute it adds, so siffs serves the same bytes
on either build: slower on the stock one, because more requests reach the daemon.

``SIFFS_PYFUSE3_FEATURES`` narrows the set for measuring one patch at a time and for testing
the stock path on a patched build: a comma-separated list of feature names, or ``none``.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import pyfuse3

ENV = "SIFFS_PYFUSE3_FEATURES"


class Features(NamedTuple):
    """One flag per patch; True when the binding has it and it is not switched off."""

    #: The kernel caches symlink targets (``FUSE_CAP_CACHE_SYMLINKS``): one readlink per link.
    cache_symlinks: bool = False
    #: opendir can answer ``FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE``: the kernel keeps listings.
    cache_dir: bool = False
    #: No open/release requests; read gets the inode (``FUSE_CAP_NO_OPEN_SUPPORT``).
    no_open: bool = False
    #: No opendir/releasedir requests; readdir gets the inode, and listings are cached.
    no_opendir: bool = False
    #: The receive loop reads queued requests before polling: 2 system calls per request, not 5.
    receive_first: bool = False
    #: With receive_first (implied), an idle loop waits for the next request in poll(2) outside the
    #: event loop before parking in trio (a lock, an epoll registration and a scheduler pass
    #: per request, more than a cheap request costs): one reader at a time is served faster.
    poll_wait: bool = False
    #: ``pyfuse3.main_sync``: serve in the main thread without an event loop, so the daemon never
    #: imports trio (most of its start-up time) and a request costs no scheduler pass.
    sync_loop: bool = False
    #: ``Operations.fast_ops``: C request handlers (``siffs.fs._fast``) answer lookup, getattr,
    #: read, readlink and xattr requests inside the binding, without its coroutine, request
    #: context and reply objects (more than the reader's own work for a cached request).
    fast_ops: bool = False
    #: ``main_sync(wake_path=…)``: the sync loop waits in a blocking read (one system call per
    #: request instead of an empty read and a ppoll); a watcher thread takes the stop signals
    #: and wakes it with a ``statfs`` of the mount point.
    blocking_receive: bool = False
    #: ``FAST_OPS_VERSION`` 2: the C handlers answer readdirplus too (a listing with each entry's
    #: attributes), which the Python path built an ``EntryAttributes`` per entry for.
    fast_readdir: bool = False

    @classmethod
    def names(cls) -> list[str]:
        return list(cls._fields)


#: What ``main_sync.__code__`` is taken to be where the binding has no ``main_sync``.
_NO_CODE = (lambda: None).__code__


def available() -> Features:
    """The features the installed pyfuse3 has."""
    ops = pyfuse3.Operations
    return Features(
        cache_symlinks=hasattr(ops, "enable_cache_symlinks"),
        cache_dir=hasattr(pyfuse3.FileInfo(), "cache_readdir"),
        no_open=hasattr(ops, "enable_no_open"),
        no_opendir=hasattr(ops, "enable_no_opendir"),
        receive_first=hasattr(ops, "receive_before_poll"),
        poll_wait=hasattr(ops, "receive_poll_ms"),
        sync_loop=hasattr(pyfuse3, "main_sync"),
        fast_ops=hasattr(ops, "fast_ops"),
        blocking_receive="wake_path"
        in getattr(getattr(pyfuse3, "main_sync", None), "__code__", _NO_CODE).co_varnames,
        fast_readdir=getattr(pyfuse3, "FAST_OPS_VERSION", 1) >= 2,
    )


def selected(environ: dict[str, str] | None = None) -> Features:
    """The available features, narrowed by ``SIFFS_PYFUSE3_FEATURES`` when it is set.

    Unknown names are ignored (a name from a newer siffs must not stop a mount).
    """
    have = available()
    raw = (os.environ if environ is None else environ).get(ENV)
    if raw is None:
        return have
    wanted = {name.strip() for name in raw.split(",")}
    return Features(**{name: getattr(have, name) and name in wanted for name in Features.names()})
