"""Eight readers hammer one verified mount: no error, the kernel's bytes, and flat daemon memory.

Runs for SIFFS_SOAK_SECONDS (default 120). The longer soak is the same test with a larger
value, e.g. ``SIFFS_SOAK_SECONDS=3600 .venv/bin/pytest tests/fs/test_soak.py``.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time

from tests.fs.test_mount import partition_offset
from tests.support.mounts import daemons_for, kernel_mount, siffs_mount

READERS = 8


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_parallel_readers_soak(verified_image, signing_key, tmp_path):
    seconds = float(os.environ.get("SIFFS_SOAK_SECONDS", "120"))
    image = verified_image
    # The expected bytes come from the kernel's mount of the same partition, never from siffs.
    with kernel_mount(image, tmp_path / "kernel", partition_offset(image)) as k:
        expected = {
            p.relative_to(k): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in k.rglob("*")
            if p.is_file() and not p.is_symlink()
        }
    # The default path (every read checked against the block table), with a small cache so
    # the readers evict each other's blocks all the time.
    with siffs_mount(image, tmp_path / "soak", "-o", "cache_size=4", key=signing_key.public) as m:
        files = [p for p in m.rglob("*") if p.is_file() and not p.is_symlink()]
        assert sorted(p.relative_to(m) for p in files) == sorted(expected)
        digests = {p: expected[p.relative_to(m)] for p in files}
        (pid,) = daemons_for(m)
        errors: list[str] = []
        counts = [0] * READERS
        stop = time.monotonic() + seconds

        def reader(n: int) -> None:
            rng = random.Random(n)
            while time.monotonic() < stop and not errors:
                path = rng.choice(files)
                try:
                    if rng.random() < 0.5:
                        ok = hashlib.sha256(path.read_bytes()).hexdigest() == digests[path]
                    else:  # a random slice, checked against a full read
                        size = path.stat().st_size
                        offset = rng.randrange(size + 1)
                        with open(path, "rb") as f:
                            part = os.pread(f.fileno(), rng.randrange(1, 300_000), offset)
                            whole = f.read()
                        ok = part == whole[offset : offset + len(part)]
                    if not ok:
                        errors.append(f"wrong bytes from {path}")
                    os.listdir(path.parent)
                    counts[n] += 1
                except OSError as exc:
                    errors.append(f"{path}: {exc}")

        def dropper() -> None:  # drop the page cache now and then so reads keep reaching the daemon
            while time.monotonic() < stop and not errors:
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("1")
                time.sleep(1)

        samples: list[int] = []
        threads = [threading.Thread(target=reader, args=(n,)) for n in range(READERS)]
        threads.append(threading.Thread(target=dropper))
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            samples.append(rss_kib(pid))
            time.sleep(seconds / 40)
        for t in threads:
            t.join()
    assert not errors, errors[:5]
    assert min(counts) > 0
    settled = samples[len(samples) // 4 :]  # after the caches have filled
    growth = max(settled) - min(settled)
    assert growth < 16 * 1024, f"daemon RSS grew by {growth} KiB while serving: {samples}"
