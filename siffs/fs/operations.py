"""The pyfuse3 request handlers: a thin, read-only translation onto a tree reader.

The image is immutable, which licenses the kernel to cache everything: entries and
attributes get effectively infinite timeouts, unknown names are cached as negative
entries, and files keep their page cache across opens. Every FUSE request costs tens of
microseconds in pyfuse3 + trio, so requests the kernel never has to send are the cheapest.

Inode numbers are the image's own, except that FUSE insists on 1 for the root: the root
and inode 1 swap numbers (an involution, so the same map converts both ways).
"""

from __future__ import annotations

import bisect
import errno
import itertools
import logging
import os
import stat
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple, Protocol

import pyfuse3

from siffs import native
from siffs.fs import binding
from siffs.squashfs.inode import Stat

log = logging.getLogger("siffs.fs")

#: Effectively forever: nothing in an immutable image ever changes.
FOREVER = 365 * 24 * 3600.0
#: What the kernel's squashfs driver reports as the preferred I/O size (its device block size).
BLKSIZE = 1024
_DOT_COOKIE, _DOTDOT_COOKIE = 1, 2
#: Directory entries kept ready-made for readdir when the kernel cannot cache listings (stock
#: pyfuse3: every readdir reaches the daemon; answering from a prepared list halves its cost).
LISTING_CACHE_ENTRIES = 65536
#: How long an idle receive loop waits in poll(2) for the next request before parking in the
#: event loop (patched binding): long enough to span a reader's think time between requests,
#: short enough that an idle daemon soon sleeps where other tasks can run.
POLL_MS = 50

Listing = list[tuple[bytes, pyfuse3.EntryAttributes, int]]


class Attributes(Protocol):
    """What the tree reader says about an inode (``blocks`` in 512-byte units)."""

    @property
    def ino(self) -> int: ...
    @property
    def mode(self) -> int: ...
    @property
    def nlink(self) -> int: ...
    @property
    def uid(self) -> int: ...
    @property
    def gid(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def mtime(self) -> int: ...
    @property
    def rdev(self) -> int: ...
    @property
    def blocks(self) -> int: ...


class FsFigures(Protocol):
    @property
    def block_size(self) -> int: ...
    @property
    def blocks(self) -> int: ...
    @property
    def inodes(self) -> int: ...
    @property
    def name_max(self) -> int: ...


class Tree(Protocol):
    """The inode-based reader interface the FUSE layer needs (siffs.squashfs.SquashFS has it)."""

    @property
    def root_ino(self) -> int: ...
    def getattr(self, ino: int) -> Attributes: ...
    def lookup(self, parent: int, name: bytes) -> Attributes | None: ...
    def readdir(self, ino: int, start: int = 0) -> Iterator[tuple[bytes, Attributes, int]]: ...
    def read(self, ino: int, offset: int, size: int) -> bytes: ...
    def readlink(self, ino: int) -> bytes: ...
    def listxattr(self, ino: int) -> list[bytes]: ...
    def getxattr(self, ino: int, name: bytes) -> bytes: ...
    def statfs(self) -> FsFigures: ...


class Ownership(NamedTuple):
    """``-o uid=N,gid=N``: show every file as owned by N (what ch-run and desktops expect)."""

    uid: int | None = None
    gid: int | None = None


#: Every file shown with its own owner.
AS_STORED = Ownership()


class InternalErrors:
    """Exceptions no reader error explains: bugs in siffs, which EIO alone would hide.

    A reader's own errors (damage, tampering, I/O) carry the errno to answer (``errno``
    attribute, as ``SquashfsError``, ``OSError`` and the integrity layer's block errors do).
    Anything else is counted, logged with its traceback once per kind (type and place raised,
    so a bug hit a million times does not flood the log), and reported to ``listener``
    (the daemon publishes the count for ``siffs mounts --json``).
    """

    def __init__(self) -> None:
        self.count = 0
        self._kinds: set[tuple[str, str, int]] = set()
        self.listener: Callable[[int], None] | None = None

    def report(self, exc: Exception, what: str) -> None:
        self.count += 1
        frames = traceback.extract_tb(exc.__traceback__)
        where = frames[-1] if frames else None
        kind = (type(exc).__name__, where.filename if where else "", (where.lineno or 0) if where else 0)
        if kind not in self._kinds:
            self._kinds.add(kind)
            log.error("internal error (a bug in siffs; please report it) in %s", what, exc_info=exc)
        if self.listener is not None and (self.count <= 100 or self.count % 100 == 0):
            self.listener(self.count)


#: One daemon serves one mount per process, so one tally.
internal_errors = InternalErrors()


def fuse_error(exc: Exception, what: str) -> pyfuse3.FUSEError:
    """The errno to answer: a reader error's own (damage logged in one line), else EIO for a bug."""
    code = getattr(exc, "errno", None)
    if not isinstance(code, int) and not isinstance(exc, OSError):
        internal_errors.report(exc, what)
        return pyfuse3.FUSEError(errno.EIO)
    if not isinstance(code, int) or code in (0, errno.EIO):
        log.error("%s: %s", what, exc)
        code = errno.EIO
    return pyfuse3.FUSEError(code)


class ReadOnlyOperations(pyfuse3.Operations):
    """Serve ``tree`` read-only. Handlers call the reader inline: see the README's design notes."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self, tree: Tree, ownership: Ownership = AS_STORED, features: binding.Features | None = None
    ) -> None:
        super().__init__()
        self.tree = tree
        self.ownership = ownership
        # What a patched pyfuse3 can ask the kernel to cache (read by pyfuse3 at mount time).
        # Handles are inode numbers anyway, so read and readdir need no change when the
        # binding hands them the inode in place of a handle (no open / no opendir).
        self.features = binding.selected() if features is None else features
        self.enable_cache_symlinks = self.features.cache_symlinks
        self.enable_no_open = self.features.no_open
        self.enable_no_opendir = self.features.no_opendir
        # The poll wait is part of the non-blocking receive loop: asking for it asks for both.
        self.receive_before_poll = self.features.receive_first or self.features.poll_wait
        self.receive_poll_ms = POLL_MS if self.features.poll_wait else 0
        # When the kernel caches listings, a directory is read once per mount (or after the
        # kernel dropped it under memory pressure): keeping listings here too would only cost memory.
        self._kernel_keeps_listings = self.features.no_opendir or self.features.cache_dir
        self._root = tree.root_ino
        self._name_max = tree.statfs().name_max
        # Directory -> its parent, learned from lookups, so readdir can answer "..".
        self._parents: dict[int, int] = {self._root: self._root}
        self._listings: OrderedDict[int, Listing] = OrderedDict()
        self._listed_entries = 0
        self._too_large: set[int] = set()
        # Read by the patched binding at mount time: None sends every request to the handlers below.
        self.fast_ops = self._fast_ops() if self.features.fast_ops else None

    def _fast_ops(self) -> object | None:
        """The C handlers' capsule (siffs.fs._fast): the same answers as the handlers below."""
        fast = native.load("siffs.fs._fast", abi=3)
        if fast is None:
            return None
        handlers = fast.Handlers(
            tree=self.tree,
            stat_type=Stat,
            parents=self._parents,
            root=self._root,
            uid=-1 if self.ownership.uid is None else self.ownership.uid,
            gid=-1 if self.ownership.gid is None else self.ownership.gid,
            name_max=self._name_max,
            timeout=FOREVER,
            blksize=BLKSIZE,
        )
        self.fast_handlers = handlers  # for the tests, which call them without a mount
        capsule: object = handlers.capsule(2 if self.features.fast_readdir else 1)
        return capsule

    # -- numbering and attributes -------------------------------------------------------

    def _swap(self, ino: int) -> int:
        if ino == self._root:
            return pyfuse3.ROOT_INODE
        if ino == pyfuse3.ROOT_INODE:
            return self._root
        return ino

    def _entry(self, a: Attributes) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = self._swap(a.ino)
        e.generation = 0
        e.entry_timeout = FOREVER
        e.attr_timeout = FOREVER
        e.st_mode = a.mode
        e.st_nlink = a.nlink
        e.st_uid = a.uid if self.ownership.uid is None else self.ownership.uid
        e.st_gid = a.gid if self.ownership.gid is None else self.ownership.gid
        e.st_rdev = a.rdev
        e.st_size = a.size
        e.st_blksize = BLKSIZE
        e.st_blocks = a.blocks
        ns = a.mtime * 1_000_000_000
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = ns
        return e

    def _negative(self) -> pyfuse3.EntryAttributes:
        """A cacheable "no such entry": st_ino 0 with a timeout (an ENOENT error is not cached)."""
        e = pyfuse3.EntryAttributes()
        e.st_ino = 0
        e.entry_timeout = FOREVER
        return e

    # -- lookups and attributes ----------------------------------------------------------

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._swap(parent_inode)
        if len(name) > self._name_max:  # as the kernel's squashfs answers, before any search
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        try:
            if name == b".":
                a = self.tree.getattr(parent)
            elif name == b"..":
                a = self.tree.getattr(self._parents.get(parent, self._root))
            else:
                found = self.tree.lookup(parent, name)
                if found is None:
                    return self._negative()
                a = found
                if stat.S_ISDIR(a.mode):
                    self._parents[a.ino] = parent
        except Exception as exc:
            raise fuse_error(exc, f"lookup {name!r} in inode {parent}") from exc
        return self._entry(a)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        try:
            return self._entry(self.tree.getattr(self._swap(inode)))
        except Exception as exc:
            raise fuse_error(exc, f"getattr inode {inode}") from exc

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # The reader keeps what it learned about inodes; the image never changes, so there is
        # nothing to release per inode.
        return None

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        try:
            return self.tree.readlink(self._swap(inode))
        except Exception as exc:
            raise fuse_error(exc, f"readlink inode {inode}") from exc

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        # default_permissions makes the kernel check modes; writes are refused by "ro".
        return True

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        fig = self.tree.statfs()
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = fig.block_size
        s.f_blocks = fig.blocks
        s.f_bfree = s.f_bavail = 0
        s.f_files = fig.inodes
        s.f_ffree = s.f_favail = 0
        s.f_namemax = fig.name_max
        return s

    # -- directories ----------------------------------------------------------------------

    # Stock pyfuse3's stubs say opendir returns an int; the patched binding (0002) also takes a
    # FileInfo. The ignore holds for either stub, so type checks pass on both installs.
    async def opendir(  # type: ignore[override,unused-ignore]
        self, inode: int, ctx: pyfuse3.RequestContext
    ) -> int | pyfuse3.FileInfo:
        if not self.features.cache_dir:
            return inode
        # The kernel keeps the listing (FOPEN_CACHE_DIR) across opens (keep_cache).
        info = pyfuse3.FileInfo(fh=inode, keep_cache=True)
        info.cache_readdir = True  # type: ignore[attr-defined,unused-ignore]
        return info

    def _dots(self, ino: int) -> Listing:
        parent = self._parents.get(ino, self._root)
        return [
            (b".", self._entry(self.tree.getattr(ino)), _DOT_COOKIE),
            (b"..", self._entry(self.tree.getattr(parent)), _DOTDOT_COOKIE),
        ]

    def _entries(self, ino: int, start: int) -> Iterator[tuple[bytes, pyfuse3.EntryAttributes, int]]:
        """Entries after reader cookie ``start``, with cookies shifted past "." and ".."."""
        for name, a, cookie in self.tree.readdir(ino, start):
            if stat.S_ISDIR(a.mode):
                self._parents[a.ino] = ino
            yield name, self._entry(a), cookie + _DOTDOT_COOKIE

    def _listing(self, ino: int) -> Listing | None:
        """The whole listing of directory ``ino``, built once and kept (LRU); None if too large to keep."""
        listing = self._listings.get(ino)
        if listing is not None:
            self._listings.move_to_end(ino)
            return listing
        if ino in self._too_large or self._kernel_keeps_listings:
            return None
        listing = self._dots(ino)
        for entry in self._entries(ino, 0):
            listing.append(entry)
            if len(listing) > LISTING_CACHE_ENTRIES // 4:
                self._too_large.add(ino)
                return None
        self._listings[ino] = listing
        self._listed_entries += len(listing)
        while self._listed_entries > LISTING_CACHE_ENTRIES:
            _, dropped = self._listings.popitem(last=False)
            self._listed_entries -= len(dropped)
        return listing

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        ino = self._swap(fh)
        try:
            listing = self._listing(ino)
            if listing is None:  # a huge directory: stream it from the reader's index each time
                entries: Iterator[tuple[bytes, pyfuse3.EntryAttributes, int]] = itertools.chain(
                    self._dots(ino)[start_id:], self._entries(ino, max(start_id - _DOTDOT_COOKIE, 0))
                )
            else:
                # Cookies grow along the listing, so the resume point is found by bisection.
                start = bisect.bisect_right(listing, start_id, key=lambda item: item[2])
                entries = itertools.islice(listing, start, None)
            for name, attrs, cookie in entries:
                if not pyfuse3.readdir_reply(token, name, attrs, cookie):
                    return
        except Exception as exc:
            raise fuse_error(exc, f"readdir inode {ino}") from exc

    async def releasedir(self, fh: int) -> None:
        return None

    # -- files ----------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        try:
            return self.tree.read(self._swap(fh), off, size)
        except Exception as exc:
            raise fuse_error(exc, f"read inode {fh} at {off}+{size}") from exc

    async def release(self, fh: int) -> None:
        return None

    # -- extended attributes ------------------------------------------------------------------

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        try:
            names = self.tree.listxattr(self._swap(inode))
        except Exception as exc:
            raise fuse_error(exc, f"listxattr inode {inode}") from exc
        if ctx.uid != 0:  # as the kernel: trusted.* is listed only for CAP_SYS_ADMIN (root here)
            names = [n for n in names if not n.startswith(b"trusted.")]
        return names

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        try:
            return self.tree.getxattr(self._swap(inode), name)
        except Exception as exc:  # NoSuchAttribute carries ENODATA (= ENOATTR)
            raise fuse_error(exc, f"getxattr inode {inode}") from exc

    # -- everything that would modify the image ------------------------------------------------

    async def _read_only(self, *args: object) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _read_only  # type: ignore[assignment]
    write = create = setxattr = removexattr = _read_only  # type: ignore[assignment]
