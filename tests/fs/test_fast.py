"""The C request handlers (siffs/fs/_fast.c) against the Python handlers they stand in for.

The Python handlers (``ReadOnlyOperations``) are the oracle: every lookup, getattr, read,
readlink, listxattr and getxattr a walk of each corpus image makes must be answered by the C
handler exactly as the Python one answers it (attributes, bytes or errno), or declined (the
binding then calls the Python handler). On a healthy image only "." and ".." are declined, so
the C path is the one taken; on damaged images any answer it gives must still be the Python one.
The handlers are called directly (``Handlers.call``, as the binding calls them), so this needs
no mount and no patched binding; one test mounts through the patched binding and counts the
Python handler calls that are left.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest

from siffs.fs import binding
from siffs.fs.operations import FOREVER, Ownership, ReadOnlyOperations
from siffs.sif import Image
from siffs.squashfs import SquashFS, SquashfsError
from siffs.squashfs.inode import Stat
from siffs.squashfs.superblock import NO_TABLE, SIZE, Superblock
from tests.support.images import mksquashfs
from tests.support.mounts import is_mounted
from tests.support.squashfs_corpus import SPECS, damaged_copies

fast_module = pytest.importorskip("siffs.fs._fast", reason="native handlers not built (pip install -e .)")
pytestmark = pytest.mark.skipif(
    os.environ.get("SIFFS_NO_NATIVE", "") not in ("", "0"), reason="SIFFS_NO_NATIVE is set"
)

#: The handlers are built whatever the binding (they are only handed to it when it has the hook).
FAST = binding.Features(fast_ops=True)
DECLINED = -1
ABSENT_XATTR = b"user.siffs-absent"


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a handler's coroutine: siffs' handlers never suspend."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("a handler suspended")


def fields(e: pyfuse3.EntryAttributes) -> tuple[int, ...]:
    """An entry as ``Handlers.call`` shows one: the attributes the binding sends."""
    return (
        e.st_ino,
        e.generation,
        e.attr_timeout,
        e.entry_timeout,
        e.st_mode,
        e.st_nlink,
        e.st_uid,
        e.st_gid,
        e.st_rdev,
        e.st_size,
        e.st_blksize,
        e.st_blocks,
        e.st_mtime_ns // 1_000_000_000,
    )


def python_answer(
    ops: ReadOnlyOperations, op: str, ino: int, name: bytes, off: int, size: int, uid: int
) -> Any:
    """("ok", value) or ("err", errno), as the Python handler answers."""
    ctx = SimpleNamespace(uid=uid, gid=uid, pid=1, umask=0o022)
    if op == "readdir":
        return python_listing(ops, ino, off, size)
    calls = {
        "lookup": lambda: ops.lookup(ino, name, ctx),  # type: ignore[arg-type]
        "getattr": lambda: ops.getattr(ino, ctx),  # type: ignore[arg-type]
        "read": lambda: ops.read(ino, off, size),
        "readlink": lambda: ops.readlink(ino, ctx),  # type: ignore[arg-type]
        "listxattr": lambda: ops.listxattr(ino, ctx),  # type: ignore[arg-type]
        "getxattr": lambda: ops.getxattr(ino, name, ctx),  # type: ignore[arg-type]
    }
    try:
        value = drive(calls[op]())
    except pyfuse3.FUSEError as exc:
        return ("err", exc.errno)
    if isinstance(value, pyfuse3.EntryAttributes):
        return ("ok", fields(value))
    if op == "listxattr":
        return ("ok", b"".join(n + b"\0" for n in value))
    return ("ok", value)


def python_listing(ops: ReadOnlyOperations, ino: int, off: int, size: int) -> Any:
    """readdir's answer from cookie ``off``, at most ``size`` entries (0: all) as the binding takes
    them: (name up to its first NUL, as a C string, attributes, cookie)."""
    entries: list[tuple[bytes, tuple[int, ...], int]] = []

    def reply(token: object, name: bytes, attrs: pyfuse3.EntryAttributes, cookie: int) -> bool:
        if size and len(entries) >= size:
            return False
        entries.append((name.split(b"\0")[0], fields(attrs), cookie))
        return True

    real = pyfuse3.readdir_reply
    pyfuse3.readdir_reply = reply
    try:
        drive(ops.readdir(ino, off, None))  # type: ignore[arg-type]
    except pyfuse3.FUSEError as exc:
        return ("err", exc.errno)
    finally:
        pyfuse3.readdir_reply = real
    return ("ok", entries)


def pages(check: Checker, ino: int) -> None:
    """A directory's listing whole, then in pages of 3 resumed from each page's last cookie."""
    kind, whole = check("readdir", ino)
    off = 0
    while kind == "ok":
        kind, page = check("readdir", ino, off=off, size=3)
        if kind != "ok" or not page:
            break
        assert page == whole[: len(page)] if off == 0 else True
        off = page[-1][2]


class Checker:
    """Asks the C handler, then the Python one, and compares; counts what C answered."""

    def __init__(self, ops: ReadOnlyOperations) -> None:
        self.ops = ops
        self.handlers = ops.fast_handlers
        self.answered = 0
        self.answered_by_op: dict[str, int] = {}
        self.declined: list[tuple[str, int, bytes]] = []

    def __call__(
        self, op: str, ino: int, name: bytes = b"", off: int = 0, size: int = 0, uid: int = 0
    ) -> Any:
        res, value = self.handlers.call(op, ino, name, off, size, uid)
        expected = python_answer(self.ops, op, ino, name, off, size, uid)
        if res == DECLINED:
            self.declined.append((op, ino, name))
        else:
            got = ("err", res) if res > 0 else ("ok", value)
            assert got == expected, (op, ino, name, off, size, uid)
            self.answered += 1
            self.answered_by_op[op] = self.answered_by_op.get(op, 0) + 1
        return expected


def ranges(size: int, block_size: int) -> list[tuple[int, int]]:
    out = [(0, size + 1), (0, 1), (size // 2, 7000), (max(0, size - 3), 10), (size, 5)]
    if size > block_size:
        out += [(block_size - 1, 2), (block_size, 128 * 1024)]
    return out


def walk(check: Checker, fs: SquashFS) -> Iterator[None]:
    """Every request a client walking the whole tree makes (one step per entry, for damaged images)."""
    todo = [(pyfuse3.ROOT_INODE, fs.root_ino)]
    bs = fs.superblock.block_size
    while todo:
        parent, image_ino = todo.pop()
        pages(check, parent)
        check("lookup", parent, b"no-such-entry")
        check("lookup", parent, b"x" * 300)
        check("lookup", parent, b".")
        check("lookup", parent, b"..")
        for name, _, _ in fs.readdir(image_ino):
            kind, entry = check("lookup", parent, name)
            yield
            if kind != "ok":
                continue
            ino, mode, size = entry[0], entry[4], entry[9]
            check("getattr", ino)
            for uid in (0, 1000):
                kind, names = check("listxattr", ino, uid=uid)
            if kind == "ok":
                for xname in names.split(b"\0")[:-1]:
                    check("getxattr", ino, xname)
            check("getxattr", ino, ABSENT_XATTR)
            if stat.S_ISDIR(mode):
                todo.append((ino, fs.getattr(name_ino(fs, image_ino, name))[0]))
                check("read", ino, off=0, size=10)
                check("readlink", ino)
            elif stat.S_ISREG(mode):
                for off, length in ranges(size, bs):
                    check("read", ino, off=off, size=length)
                check("readlink", ino)
            elif stat.S_ISLNK(mode):
                check("readlink", ino)


def name_ino(fs: SquashFS, dir_ino: int, name: bytes) -> int:
    found = fs.lookup(dir_ino, name)
    assert found is not None
    return found.ino


class CountedMethods:
    """Counts the calls of the reader's methods the handlers take (their way without the capsule).

    Installed while the handlers are made (they keep the methods they find), then taken away
    again, so the Python handlers' calls (the oracle's) are not counted.
    """

    def __init__(self, fs: SquashFS) -> None:
        self.calls: dict[str, int] = {}
        self.fs = fs
        self.ops = ("lookup", "getattr", "readlink", "listxattr", "getxattr")
        for op in self.ops:
            setattr(fs, op, self.counted(op, getattr(fs, op)))

    def restore(self) -> None:
        for op in self.ops:
            setattr(self.fs, op, getattr(self.fs, op).__wrapped__)

    def counted(self, op: str, method: Any) -> Any:
        def call(*args: Any) -> Any:
            self.calls[op] = self.calls.get(op, 0) + 1
            return method(*args)

        call.__wrapped__ = method  # type: ignore[attr-defined]
        return call


@pytest.mark.parametrize("native", [True, False], ids=["c-values", "methods"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_request_of_a_walk_is_answered_as_python_answers_it(name, native, corpus):
    """Both ways: the reader's answers as C values (its native_tree's capsule, _tree.h), then its
    methods where the tree declines; and its methods alone (a tree without native_tree)."""
    with SquashFS.open(corpus.image(name)) as fs:
        if not native:
            fs.native_tree = None
        methods = CountedMethods(fs)
        check = Checker(ReadOnlyOperations(fs, features=FAST))
        methods.restore()
        for _ in walk(check, fs):
            pass
        check("getattr", 10**9)  # never seen: the reader's NotFound
    assert check.answered > 0
    # Only "." and ".." are left to Python on a healthy image, and, where the C values answer, the
    # first readdir of a directory whose listing has an index (the Python path reads the index).
    dots = {("lookup", b"."), ("lookup", b"..")}
    assert {(op, n) for op, _, n in check.declined if op != "readdir"} <= dots
    listed = [ino for op, ino, _ in check.declined if op == "readdir"]
    if native:
        assert len(listed) == len(set(listed))
        swapped = {1: fs.root_ino, fs.root_ino: 1}  # the kernel's numbers and the image's
        assert all(fs.inode(swapped.get(ino, ino)).dir.index_count for ino in listed)  # type: ignore[union-attr]
        assert check.answered_by_op["readdir"] > 0
    if native and SPECS[name].tree == "main":
        # The methods answered only what the C values do not (the first lookup in a directory
        # with an index, the never-seen inode, a readlink of what is no link, the first ask for
        # an attribute set not yet loaded): a small part.
        asked_c = methods.calls.get("lookup", 0) + methods.calls.get("getattr", 0)
        assert asked_c < check.answered / 50, methods.calls
        if fs.superblock.xattr_table != NO_TABLE:
            asked_x = methods.calls.get("listxattr", 0) + methods.calls.get("getxattr", 0)
            answered_x = check.answered_by_op["listxattr"] + check.answered_by_op["getxattr"]
            assert asked_x < answered_x / 20, methods.calls
    elif not native:  # every one, but "lookup" of a too long name (ENAMETOOLONG before any search)
        by_op = check.answered_by_op
        assert methods.calls["getattr"] == by_op["getattr"] and methods.calls["readlink"] == by_op["readlink"]
        assert methods.calls["lookup"] < by_op["lookup"]


def test_inodes_across_two_metadata_blocks_are_answered_in_c(tmp_path):
    """An inode record may straddle two metadata blocks (links of many lengths: about one in sixty
    here). The C values join its two parts; the named-tuple decoder leaves such a record to Python."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(600):
        os.symlink("t" * (1 + (i * 37) % 250), tree / f"link{i:04d}")
    image = mksquashfs(tree, tmp_path / "links.sqfs", "-comp", "gzip", "-all-root")
    with SquashFS.open(image) as fs:
        methods = CountedMethods(fs)
        check = Checker(ReadOnlyOperations(fs, features=FAST))
        methods.restore()
        for _ in walk(check, fs):
            pass
        refs = [ref & ((1 << 48) - 1) for ino, ref in fs._refs.items() if ino != fs.root_ino]
        across = [ref for ref in refs if fs._decode.decoder.decode_ref(ref) is None]  # type: ignore[attr-defined]
    assert len(refs) == 600 and len(across) >= 5  # the image has what this test is about
    assert check.answered_by_op["readlink"] == 600 and check.answered_by_op["getattr"] == 600
    # Every getattr, readlink and lookup answered as C values: the root's listing has an index,
    # which the Python path read for the walk's first readdir there (the one request the C values
    # leave to it). (The image has no xattr table: what that means for a link, EOPNOTSUPP, the
    # methods answer.)
    asked = {op: n for op, n in methods.calls.items() if op in ("lookup", "getattr", "readlink")}
    assert asked == {}
    assert [(op, ino) for op, ino, _ in check.declined if op != "lookup"] == [("readdir", 1)]


def test_the_last_four_inodes_asked_are_remembered_and_no_more(corpus):
    """The tree keeps the refs values of the last four inode numbers its C values were asked
    about (a client asks listxattr, then getxattr, of one file): a value changed in refs is not
    seen until four others were asked. (The reader never changes one: only the test does.)"""
    with SquashFS.open(corpus.image("mk-gzip")) as fs:
        h = ReadOnlyOperations(fs, features=FAST).fast_handlers
        names = [name for name, _, _ in fs.readdir(fs.root_ino)]
        inos = {name: h.call("lookup", pyfuse3.ROOT_INODE, name)[1][0] for name in names}
        x = inos.pop(b"xattrs")
        others = list(inos.values())[:4]
        listed = h.call("listxattr", x)
        assert listed[0] == 0 and b"user.on-a-dir\0" in listed[1]  # the image has what this is about
        fs._refs[x] = fs._refs[others[0]]  # an inode with no attributes
        for other in others[:3]:
            assert h.call("listxattr", other) == (0, b"")
        assert h.call("listxattr", x) == listed  # remembered
        assert h.call("listxattr", others[3]) == (0, b"")
        assert h.call("listxattr", x) == (0, b"")  # forgotten: refs asked again


def test_a_native_tree_that_is_not_one_is_declined(corpus):
    with SquashFS.open(corpus.image("mk-gzip")) as fs:
        fs.native_tree = "not a Tree"
        h = ReadOnlyOperations(fs, features=FAST).fast_handlers
        assert h.call("getattr", pyfuse3.ROOT_INODE)[0] == DECLINED  # TypeError: no errno of its own
        assert h.call("lookup", pyfuse3.ROOT_INODE, b"x")[0] == 0  # then the methods: no such entry
    assert sys.exc_info() == (None, None, None)


def test_owner_shown_as_asked(corpus):
    with SquashFS.open(corpus.image("mk-gzip")) as fs:
        ops = ReadOnlyOperations(fs, Ownership(uid=1234, gid=5678), features=FAST)
        check = Checker(ops)
        for _ in walk(check, fs):
            pass
        res, entry = ops.fast_handlers.call("getattr", pyfuse3.ROOT_INODE)
    assert res == 0
    assert entry[6:8] == (1234, 5678)
    assert entry[0] == pyfuse3.ROOT_INODE and entry[2] == entry[3] == FOREVER


@pytest.mark.parametrize("native", [True, False], ids=["c-values", "methods"])
def test_damaged_images_get_the_python_answer_or_go_to_python(native, corpus, tmp_path):
    pristine = corpus.image("mk-gzip").read_bytes()
    sb = Superblock.parse(pristine[:SIZE], len(pristine))
    regions = {
        "inodes": (sb.inode_table, sb.directory_table),
        "directories": (sb.directory_table, sb.fragment_table),
    }
    answered = 0
    for seed, region in enumerate(regions.values()):
        for path in damaged_copies(
            pristine, region, tmp_path / "damaged.sqfs", seed=seed, max_flips=4, cases=40
        ):
            try:
                fs = SquashFS.open(path)
            except SquashfsError:
                continue
            with fs:
                if not native:
                    fs.native_tree = None
                check = Checker(ReadOnlyOperations(fs, features=FAST))
                try:
                    for _ in walk(check, fs):
                        pass
                except SquashfsError:
                    pass  # the walk's own readdir met the damage: the requests before it were compared
                answered += check.answered
    assert answered > 0


class OddTree:
    """A tree whose answers are not the reader's records, or raise without an errno."""

    root_ino = 1

    def statfs(self) -> Any:
        return SimpleNamespace(name_max=255)

    def getattr(self, ino: int) -> Any:
        if ino == 2:
            raise RuntimeError("a bug")
        if ino == 3:
            raise OSError(errno.EIO, "damaged")
        if ino == 4:
            raise OSError(errno.ENOTDIR, "not a directory")
        return tuple(Stat(ino, stat.S_IFREG | 0o644, 1, 0, 0, 0, 0, 0, 0))  # a plain tuple

    def lookup(self, parent: int, name: bytes) -> Any:
        return Stat(7, stat.S_IFDIR | 0o755, 2, 0, 0, 1 << 70, 0, 0, 0)  # size beyond 64 bits

    def read(self, ino: int, offset: int, size: int) -> Any:
        return bytearray(b"not bytes")

    readlink = read

    def listxattr(self, ino: int) -> Any:
        return [b"user.a", "not bytes"]

    def getxattr(self, ino: int, name: bytes) -> bytes:
        return b"v"


def test_anything_unusual_goes_to_python():
    ops = ReadOnlyOperations(OddTree(), features=FAST)  # type: ignore[arg-type]
    h = ops.fast_handlers
    assert h.call("getattr", 5)[0] == DECLINED  # not a Stat record
    assert h.call("getattr", 2)[0] == DECLINED  # a bug: Python logs and counts it
    assert h.call("getattr", 3)[0] == DECLINED  # EIO: Python logs the damage
    assert h.call("getattr", 4) == (errno.ENOTDIR, None)  # an errno of its own: answered as Python does
    assert h.call("lookup", 1, b"big")[0] == DECLINED  # a value the kernel's types cannot hold
    assert h.call("read", 5, b"", 0, 10)[0] == DECLINED
    assert h.call("readlink", 5)[0] == DECLINED
    assert h.call("listxattr", 5)[0] == DECLINED
    assert h.call("lookup", 1, b"y" * 256) == (errno.ENAMETOOLONG, None)
    assert 7 not in ops._parents  # a declined lookup learns nothing
    # No exception was left set: the next call into Python works.
    assert h.call("getxattr", 5, b"user.a") == (0, b"v")
    assert sys.exc_info() == (None, None, None)


def test_the_capsule_is_the_bindings_abi_and_keeps_the_handlers_alive(corpus):
    with SquashFS.open(corpus.image("mk-gzip")) as fs:
        ops = ReadOnlyOperations(fs, features=FAST)
        capsule = ops.fast_ops
        is_valid = ctypes.pythonapi.PyCapsule_IsValid
        is_valid.argtypes = [ctypes.py_object, ctypes.c_char_p]
        assert is_valid(capsule, b"pyfuse3.fast_ops.v1")
        # v2 (with readdirplus) for a binding that reads it; one structure serves both names.
        readdir = ReadOnlyOperations(fs, features=binding.Features(fast_ops=True, fast_readdir=True))
        assert is_valid(readdir.fast_ops, b"pyfuse3.fast_ops.v2")
        with pytest.raises(ValueError, match="version 3"):
            readdir.fast_handlers.capsule(3)
        handlers = ops.fast_handlers
        before = sys.getrefcount(handlers)
        extra = handlers.capsule()
        assert sys.getrefcount(handlers) == before + 1
        del extra
        gc.collect()
        assert sys.getrefcount(handlers) == before
    assert ReadOnlyOperations(OddTree(), features=binding.Features()).fast_ops is None  # type: ignore[arg-type]


COUNTING_DAEMON = """
import json, sys
import pyfuse3
from siffs.fs.operations import ReadOnlyOperations
from siffs.squashfs import SquashFS

calls = {}

def counted(name):
    base = getattr(ReadOnlyOperations, name)
    async def handler(self, *args):
        calls[name] = calls.get(name, 0) + 1
        return await base(self, *args)
    return handler

Counting = type("Counting", (ReadOnlyOperations,), {
    n: counted(n) for n in ("lookup", "getattr", "read", "readlink", "listxattr", "getxattr", "readdir")})
tree = SquashFS.open(sys.argv[1], int(sys.argv[3]))
pyfuse3.init(Counting(tree), sys.argv[2], {"fsname=siffs-test", "ro", "default_permissions"})
print("ready", flush=True)
pyfuse3.main_sync()
pyfuse3.close(unmount=False)
print(json.dumps(calls), flush=True)
"""


def python_calls(image: Path, mnt: Path, features: str) -> dict[str, int]:
    """The Python handler calls a walk of the mounted image (entries, bytes, links, xattrs) makes."""
    with Image.open(image) as img:
        offset = img.primary_partition().offset
    mnt.mkdir()
    env = {**os.environ, binding.ENV: features}
    daemon = subprocess.Popen(
        [sys.executable, "-c", COUNTING_DAEMON, str(image), str(mnt), str(offset)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert daemon.stdout is not None and daemon.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 10
        while not is_mounted(mnt) and time.monotonic() < deadline:
            time.sleep(0.02)
        for top, dirs, files in os.walk(mnt):
            for n in dirs + files:
                p = os.path.join(top, n)
                os.listxattr(p, follow_symlinks=False)
                mode = os.lstat(p).st_mode
                if stat.S_ISLNK(mode):
                    os.readlink(p)
                elif stat.S_ISREG(mode):
                    with open(p, "rb") as f:
                        f.read()
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        out, _ = daemon.communicate(timeout=30)
    return json.loads(out)


def test_a_mount_through_the_patched_binding_leaves_python_nothing_to_answer(image, tmp_path):
    if not binding.available().fast_ops:
        pytest.skip("this pyfuse3 has no fast_ops hook (contrib/build-pyfuse3.sh)")
    everything = ",".join(binding.Features.names())
    without = ",".join(n for n in binding.Features.names() if n not in ("fast_ops", "fast_readdir"))
    slow = python_calls(image, tmp_path / "python", without)
    fast = python_calls(image, tmp_path / "fast", everything)
    assert min(slow.get(op, 0) for op in ("lookup", "read", "readlink", "listxattr", "readdir")) > 0, slow
    if not binding.available().fast_readdir:  # a binding before 0011: listings are Python's
        fast.pop("readdir")
    assert fast == {}, fast
