"""siffs on stock and patched pyfuse3: the same tree either way, fewer requests when patched.

The stock path is forced on a patched build with ``SIFFS_PYFUSE3_FEATURES=none``; each patch
is also tried alone. The request counts come from strace on the daemon (each request is one
successful read of /dev/fuse), not from siffs itself.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyfuse3
import pytest

from siffs.fs import binding
from siffs.sif import Image
from tests.support.mounts import daemons_for, is_mounted, kernel_mount, siffs, siffs_mount
from tests.support.trees import assert_same_tree, snapshot

HAVE = binding.available()


def test_selected_narrows_the_available_features():
    assert binding.selected({}) == HAVE
    assert binding.selected({binding.ENV: "none"}) == binding.Features()
    only = binding.selected({binding.ENV: "no_open, unknown_future_name"})
    assert only == binding.Features(no_open=HAVE.no_open)


def test_version_still_known():
    # Patch 0005 looks it up on first use instead of at import.
    assert pyfuse3.__version__ == importlib.metadata.version("pyfuse3")


def test_available_matches_the_installed_binding():
    patched = hasattr(pyfuse3.Operations, "enable_no_open")
    # contrib/build-pyfuse3.sh installs all patches or none.
    assert set(HAVE) == {patched}


@pytest.mark.parametrize("features", ["none", *binding.Features.names(), "all"])
def test_same_tree_with_each_feature_set(features, image, tmp_path, monkeypatch):
    if features not in ("none", "all") and not getattr(HAVE, features):
        pytest.skip(f"this pyfuse3 has no {features} patch (contrib/build-pyfuse3.sh)")
    if features != "all":
        monkeypatch.setenv(binding.ENV, features)
    with Image.open(image) as img:
        offset = img.primary_partition().offset
    with kernel_mount(image, tmp_path / "kernel", offset) as k:
        expected = snapshot(k)
    with siffs_mount(image, tmp_path / "fuse") as m:
        cold = snapshot(m)
        warm = snapshot(m)  # now from whatever the kernel was allowed to cache
    assert_same_tree(cold, expected)
    assert_same_tree(warm, expected)


#: The event-loop path on a patched build: every feature but the loop without trio (0007).
WITH_TRIO = ",".join(
    name for name in binding.Features.names() if name not in ("sync_loop", "blocking_receive")
)
#: The loop without trio waiting in ppoll (0007) rather than in a blocking read (0010).
WITH_PPOLL = ",".join(name for name in binding.Features.names() if name != "blocking_receive")


@pytest.mark.parametrize("loop", ["sync", "ppoll", "trio"])
@pytest.mark.parametrize("busy", [True, False], ids=["busy", "idle"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_the_receive_loop(sig, busy, loop, image, tmp_path, monkeypatch):
    # Busy: a reader keeps the daemon's loop answering one request after another, so the signal
    # arrives while a request is served (blocked there by main_sync, patch 0007, and delivered
    # between requests), while the loop waits in a blocking read (0010: a watcher thread takes
    # the signal and wakes the loop with a request), in its ppoll(2) (0007), or while the trio
    # loop waits in poll(2) (0006) or is parked in trio (stock). Idle: the loop waits for a
    # request. Either way the daemon unmounts and exits.
    if loop == "sync" and not HAVE.blocking_receive:
        pytest.skip("this pyfuse3 has no blocking receive (contrib/build-pyfuse3.sh)")
    if loop == "ppoll" and not HAVE.sync_loop:
        pytest.skip("stock pyfuse3 has no main_sync (contrib/build-pyfuse3.sh)")
    if loop == "trio":
        monkeypatch.setenv(binding.ENV, WITH_TRIO)
    if loop == "ppoll":
        monkeypatch.setenv(binding.ENV, WITH_PPOLL)
    with siffs_mount(image, tmp_path / "mnt") as m:
        pid = _daemon_pid(m)
        stop = threading.Event()
        answered = [] if busy else [1] * 200

        def ask() -> None:
            while not stop.is_set():
                try:
                    os.listxattr(m / "data" / "one", follow_symlinks=False)
                except OSError:
                    return  # unmounted under the reader
                answered.append(1)

        reader = threading.Thread(target=ask if busy else stop.wait)
        reader.start()
        try:
            while len(answered) < 200:
                time.sleep(0.01)
            os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while (is_mounted(m) or daemons_for(m)) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            reader.join(timeout=30)
        assert not is_mounted(m)
        assert not daemons_for(m)


def test_patched_daemon_never_imports_trio(image, tmp_path, monkeypatch):
    # With main_sync (0007) the daemon serves without an event loop, so trio, most of its
    # start-up time, is never imported: here a trio that cannot be imported stops any daemon
    # (or command) that tries.
    if not HAVE.sync_loop:
        pytest.skip("stock pyfuse3 needs trio (contrib/build-pyfuse3.sh)")
    poison = tmp_path / "poison"
    poison.mkdir()
    (poison / "trio.py").write_text("raise ImportError('trio imported')\n")
    monkeypatch.setenv("PYTHONPATH", str(poison))
    with siffs_mount(image, tmp_path / "mnt") as m:
        assert os.listxattr(m / "data" / "one", follow_symlinks=False) is not None
        assert (m / "data" / "one").read_bytes() == b"x"


def test_patched_binding_imports_pickle_and_queue_only_when_used():
    # Patch 0008: pickle (for the error a pickled request context raises) and queue (for the
    # notification worker) are imported where they are used, not by ``import pyfuse3``: 2-4 ms
    # of every daemon's way to its first answer. Pickling still fails as it did.
    if not HAVE.sync_loop:
        pytest.skip("stock pyfuse3 imports both (contrib/build-pyfuse3.sh)")
    code = (
        "import sys, pyfuse3\n"
        "print(sorted({'pickle', 'queue'} & set(sys.modules)))\n"
        "import pickle\n"
        "try:\n"
        "    pickle.dumps(pyfuse3.RequestContext())\n"
        "except pickle.PicklingError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["[]", "RequestContext instances can't be pickled"]


def _daemon_pid(mount_point: Path) -> int:
    rows = json.loads(siffs("mounts", "--json", check=True).stdout)
    return next(r["pid"] for r in rows if r["mount_point"] == str(mount_point))


def _requests_for(mount_point: Path, work: Callable[[], None]) -> int:
    """Requests the daemon of ``mount_point`` received while ``work()`` ran (strace on the daemon)."""
    log = mount_point.parent / "strace.out"
    tracer = subprocess.Popen(
        ["strace", "-f", "-e", "trace=read", "-o", str(log), "-p", str(_daemon_pid(mount_point))],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert tracer.stderr is not None
    for line in tracer.stderr:  # attached once it says so, for every thread
        if "attached" in line:
            break
    try:
        work()
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
    # A request is a successful read of a FUSE request header (40 bytes or more).
    return sum(1 for line in log.read_text().splitlines() if re.search(r"\) = (\d{2,})$", line))


def _repeat_small_things(m: Path) -> None:
    for _ in range(50):
        (m / "singularity").readlink()
        sorted(p.name for p in (m / "data").iterdir())
        # os-level: Python's open() would add an isatty ioctl, a request no binding can avoid
        fd = os.open(m / "data" / "one", os.O_RDONLY)
        try:
            assert os.read(fd, 10) == b"x"
        finally:
            os.close(fd)


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_patched_binding_lets_the_kernel_answer(image, tmp_path, monkeypatch):
    if not (HAVE.cache_symlinks and HAVE.no_open and HAVE.no_opendir):
        pytest.skip("stock pyfuse3: build the patched one with contrib/build-pyfuse3.sh")
    counts = {}
    for features in ("none", "all"):
        if features == "none":
            monkeypatch.setenv(binding.ENV, "none")
        else:
            monkeypatch.delenv(binding.ENV)
        (tmp_path / features).mkdir()
        with siffs_mount(image, tmp_path / features / "mnt") as m:
            _repeat_small_things(m)  # first round: lookups, the first open, the first listing
            counts[features] = _requests_for(m, lambda m=m: _repeat_small_things(m))
    # Stock: every readlink, every listing (opendir, readdir x2, releasedir), every open and
    # release (the page cache answers the read): about 7 requests a round.
    assert counts["none"] >= 50 * 6, counts
    # Patched: the kernel answers all of it from its caches.
    assert counts["all"] <= 5, counts


def test_terminate_after_close_is_harmless():
    # A stop signal can reach a daemon after its session is closed (an external unmount ended
    # the loop first); stock pyfuse3's terminate() then dereferences the closed session.
    if not HAVE.sync_loop:
        pytest.skip("stock pyfuse3 crashes here (contrib/build-pyfuse3.sh)")
    done = subprocess.run([sys.executable, "-c", "import pyfuse3; pyfuse3.terminate()"], check=False)
    assert done.returncode == 0
