"""The binding's reply table (pyfuse3 patch 0008): answers given in C equal the handlers' own.

The oracle is the kernel's mount of the same image. The kernel only asks again what it dropped,
so each pass drops dentries and inodes (``drop_caches`` 2) and then asks by path, never through
a listing first: every pass is answered by lookups, getattr, readlink, listxattr and getxattr.
A counting harness (tests/support/counting_server.py) serves the image with siffs' handlers
and counts the reader calls, which tells the requests that reached Python from those the
binding answered itself. The same passes with the table switched off are the control.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyfuse3
import pytest

from siffs.fs import binding
from tests.support.mounts import is_mounted
from tests.support.trees import facts
from tests.support.users import TEST_USER, user_dir

HAVE = binding.available()
pytestmark = pytest.mark.skipif(
    not (HAVE.reply_table and HAVE.sync_loop),
    reason="stock pyfuse3 (contrib/build-pyfuse3.sh builds the patched one)",
)
REPO = Path(__file__).resolve().parents[2]
IMAGE = "mk-gzip"  # owners, devices, links, hard links, user/trusted/security xattrs, 1300-entry dir
#: Every pyfuse3 patch but the reply table.
WITHOUT_TABLE = ",".join(n for n in binding.Features.names() if n != "reply_table")


class Counting:
    """A counting server's mount: ``counts()`` asks it for the reader calls made so far."""

    def __init__(self, mnt: Path, server: subprocess.Popen[bytes], out: Path) -> None:
        self.mnt, self._server, self._out = mnt, server, out

    def counts(self) -> dict[str, Any]:
        self._out.unlink(missing_ok=True)
        self._server.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while not self._out.exists():
            assert time.monotonic() < deadline, "the counting server wrote no counts"
            time.sleep(0.01)
        counts: dict[str, Any] = json.loads(self._out.read_text())
        return counts


@contextlib.contextmanager
def counting_mount(
    image: Path, mnt: Path, *, reply_bytes: int | None = None, features: str | None = None
) -> Iterator[Counting]:
    """Serve ``image`` on ``mnt`` with siffs' handlers over a reader that counts its calls."""
    mnt.mkdir(parents=True, exist_ok=True)
    out = mnt.parent / f"{mnt.name}.counts.json"
    env = dict(os.environ)
    if features is not None:
        env[binding.ENV] = features
    argv = [sys.executable, "-m", "tests.support.counting_server", str(image), str(mnt), str(out)]
    if reply_bytes is not None:
        argv.append(str(reply_bytes))
    server = subprocess.Popen(argv, cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mnt):
            assert server.poll() is None, "the counting server ended before mounting"
            assert time.monotonic() < deadline, "the counting server did not mount"
            time.sleep(0.02)
        yield Counting(mnt, server, out)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", str(mnt)], check=False)


def drop_dentries() -> None:
    """Make the kernel forget entries and inodes (not just pages), so it asks the daemon again."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("2")


def ask_by_path(root: Path, paths: list[str]) -> dict[str, Any]:
    """What each path's lstat/readlink/xattr calls say, plus a name the directory lacks."""
    seen: dict[str, Any] = {}
    for rel in paths:
        path = str(root) + rel
        seen[rel] = facts(path, False)[1]
        try:
            os.lstat(path + ".absent")
            seen[rel + ".absent"] = "exists"
        except OSError as exc:
            seen[rel + ".absent"] = errno.errorcode[exc.errno or 0]
    return seen


def all_paths(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            found.append("/" + os.path.relpath(os.path.join(dirpath, name), root))
    return found


@pytest.fixture
def oracle(corpus, kernel) -> Iterator[tuple[Path, list[str], dict[str, Any]]]:
    with kernel(IMAGE) as k:
        paths = all_paths(k)
        drop_dentries()
        yield corpus.image(IMAGE), paths, ask_by_path(k, paths)


def test_reply_table_rules():
    table = pyfuse3.ReplyTable(negative_timeout=1.0)
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = 7
    table.set_entry(1, b"name", entry)
    table.set_entry(1, b"name", entry)  # replacing an answer does not count twice
    table.set_attr(7, entry)
    table.set_link(7, b"target")
    table.set_xattrs(7, {b"user.a": b"1", b"trusted.b": b"2"}, (b"trusted.",))
    table.set_xattrs(8, {})
    table.set_complete(1)
    assert len(table) == 5
    with pytest.raises(ValueError, match="NUL"):
        table.set_link(9, b"a\0b")
    with pytest.raises(TypeError):
        table.set_xattrs(9, {"user.a": b"1"})
    with pytest.raises(TypeError):
        table.set_entry(1, "str", entry)
    table.clear()
    assert len(table) == 0


@pytest.mark.parametrize("reply_bytes", [None, 64 * 256], ids=["default", "tiny-table"])
def test_answers_equal_the_kernel_on_every_pass(oracle, tmp_path, reply_bytes):
    image, paths, expected = oracle
    with counting_mount(image, tmp_path / "mnt", reply_bytes=reply_bytes) as served:
        for _ in range(3):
            assert ask_by_path(served.mnt, paths) == expected
            drop_dentries()
        assert served.counts()["table"] > 0


def test_answers_for_an_unprivileged_caller(oracle, tmp_path):
    # trusted.* is listed to root only: the table keeps both answers (passes 2 and 3 use it).
    image, paths, expected = oracle
    script = (
        "import json, os, sys\n"
        "out = {}\n"
        "for p in sys.argv[2:]:\n"
        "    try: out[p] = sorted(os.listxattr(sys.argv[1] + p, follow_symlinks=False))\n"
        "    except OSError as e: out[p] = e.errno\n"
        "print(json.dumps(out))\n"
    )
    top = [p for p in paths if p.count("/") == 1]
    with counting_mount(image, Path(user_dir(tmp_path, "user")) / "mnt") as served:
        seen = []
        for _ in range(3):
            argv = ["runuser", "-u", TEST_USER, "--", sys.executable, "-c", script, str(served.mnt), *top]
            done = subprocess.run(argv, check=True, capture_output=True, text=True)
            seen.append(json.loads(done.stdout))
            drop_dentries()
    assert seen[0] == seen[1] == seen[2]
    for path in top:
        if isinstance(expected[path]["xattrs"], dict):
            assert seen[0][path] == sorted(n for n in expected[path]["xattrs"] if not n.startswith("trusted."))
    assert "trusted.siffs" in expected["/xattrs"]["xattrs"]


def _second_pass_calls(served: Counting, paths: list[str], expected: dict[str, Any]) -> dict[str, int]:
    assert ask_by_path(served.mnt, paths) == expected
    drop_dentries()
    first = served.counts()
    assert ask_by_path(served.mnt, paths) == expected
    second = served.counts()
    return {k: second.get(k, 0) - first.get(k, 0) for k in second if k != "table"}


def test_second_pass_reaches_almost_no_handler(oracle, tmp_path):
    image, paths, expected = oracle
    with counting_mount(image, tmp_path / "table") as served:
        table = _second_pass_calls(served, paths, expected)
    with counting_mount(image, tmp_path / "control", features=WITHOUT_TABLE) as served:
        control = _second_pass_calls(served, paths, expected)
    # Without the table every request of the second pass reaches the handlers: a lookup per
    # path and per absent name (but names too long to search), an xattr listing per path, a
    # readlink per link.
    assert control["lookup"] >= 2 * len(paths) - 10, control
    assert control["listxattr"] >= len(paths) and control["readlink"] > 0, control
    # With it, the first pass completed every directory it asked about: only names in
    # directories asked about once (one entry) still reach a handler.
    assert sum(table.values()) < sum(control.values()) / 20, (table, control)
