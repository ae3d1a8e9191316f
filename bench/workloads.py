#!/usr/bin/env python3
"""Run the mount benchmark's workloads against one mount point; one JSON line per workload and mode.

rootfs images (a container tree):
  walk             os.walk + lstat of every entry                      entries/s
  readall          every regular file read whole, one thread           MB/s
  readall_par4     the same, 4 threads sharing one file list           MB/s
  readlink         readlink of every symlink                           ops/s
  xattr            llistxattr + lgetxattr of every entry               entries/s
  container_start  ch-run MNT -- python3 -c 'import json, ...'         s (lower is better)
bigfile images (one file, /big.bin):
  seqread          front to back in 1 MiB reads                        MB/s
  seqread_par4     4 threads, each one contiguous quarter              MB/s
  randread         4 KiB preads at seeded offsets                      ops/s, p50/p99 µs

cold: sync, drop the page cache (root) and, given --mount/--umount, remount first, so that a
FUSE daemon's own caches start empty too; the remount time is the "mount" line. warm: the same
workload again at once on the same mount. Each line carries the daemon's CPU seconds during the
workload, its peak RSS (VmHWM) and threads: the daemon is the process whose command line names
the mount point. A workload stops after --limit seconds ("truncated": true). MB = 10^6 bytes.

  workloads.py --mnt /mnt/x --kind rootfs --mount 'squashfuse_ll -o offset=32768 a.sif /mnt/x' \\
               --umount 'fusermount3 -u /mnt/x' --label squashfuse_ll
  workloads.py --mnt /mnt/x --kind bigfile --warm-only          # an existing mount
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

IMPORTS = "import json, email, http.client, asyncio, unittest, sqlite3"
CHUNK = 1 << 20
BIG = "big.bin"
Measure = dict[str, float | int | bool | str]


@dataclass
class Settings:
    mnt: str
    limit: float
    seed: int = 7
    rand_ops: int = 2000
    warm_starts: int = 3


@dataclass
class Lists:
    """What the rootfs holds, listed once (outside any timing) and shared by the workloads."""

    entries: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    @classmethod
    def scan(cls, mnt: str) -> Lists:
        lists = cls()
        for dirpath, dirnames, filenames in os.walk(mnt):
            dirnames.sort()
            for name in sorted(filenames) + dirnames:
                path = os.path.join(dirpath, name)
                lists.entries.append(path)
                if os.path.islink(path):
                    lists.links.append(path)
                elif name in filenames and os.path.isfile(path):
                    lists.files.append(path)
        return lists


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def walk(s: Settings, _: Lists) -> Measure:
    start = time.perf_counter()
    n = 0
    for dirpath, dirnames, filenames in os.walk(s.mnt):
        for name in dirnames + filenames:
            os.lstat(os.path.join(dirpath, name))
            n += 1
    took = time.perf_counter() - start
    return {"value": rate(n, took), "seconds": took, "count": n}


def read_files(files: list[str], threads: int, limit: float) -> Measure:
    """Read whole files with ``threads`` workers taking the next file from a shared index."""
    position = iter(range(len(files)))
    lock = threading.Lock()
    totals = {"files": 0, "bytes": 0, "errors": 0}
    deadline = time.perf_counter() + limit

    def worker() -> None:
        buf = bytearray(CHUNK)
        done = {"files": 0, "bytes": 0, "errors": 0}
        while time.perf_counter() < deadline:
            with lock:
                i = next(position, None)
            if i is None:
                break
            try:
                with open(files[i], "rb", buffering=0) as f:
                    while got := f.readinto(buf):
                        done["bytes"] += got
                done["files"] += 1
            except OSError:
                done["errors"] += 1
        with lock:
            for k, v in done.items():
                totals[k] += v

    start = time.perf_counter()
    run_threads(worker, threads)
    took = time.perf_counter() - start
    return {"value": rate(totals["bytes"] / 1e6, took), "seconds": took, "count": totals["files"],
            "bytes": totals["bytes"], "errors": totals["errors"],
            "truncated": totals["files"] + totals["errors"] < len(files)}


def run_threads(target: Callable[[], None], n: int) -> None:
    threads = [threading.Thread(target=target) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def readall(s: Settings, lists: Lists) -> Measure:
    return read_files(lists.files, 1, s.limit)


def readall_par4(s: Settings, lists: Lists) -> Measure:
    return read_files(lists.files, 4, s.limit)


def per_entry(paths: list[str], action: Callable[[str], int], limit: float) -> Measure:
    """``action`` on each path until the time limit; the value is paths per second."""
    deadline = time.perf_counter() + limit
    start = time.perf_counter()
    n = errors = extra = 0
    for path in paths:
        if time.perf_counter() > deadline:
            break
        try:
            extra += action(path)
            n += 1
        except OSError:
            errors += 1
    took = time.perf_counter() - start
    return {"value": rate(n, took), "seconds": took, "count": n, "errors": errors, "found": extra,
            "truncated": n + errors < len(paths)}


def read_link(path: str) -> int:
    os.readlink(path)
    return 1


def readlink(s: Settings, lists: Lists) -> Measure:
    result = per_entry(lists.links, read_link, s.limit)
    del result["found"]
    return result


def all_xattrs(path: str) -> int:
    names = os.listxattr(path, follow_symlinks=False)
    for name in names:
        os.getxattr(path, name, follow_symlinks=False)
    return len(names)


def xattr(s: Settings, lists: Lists) -> Measure:
    result = per_entry(lists.entries, all_xattrs, s.limit)
    result["xattrs"] = result.pop("found")
    return result


def container_start(s: Settings, repeats: int) -> Measure:
    """Seconds for ch-run to start python3 in the image (median of ``repeats``). The
    environment is fixed: the host's PYTHON* or proxy variables would change what starts."""
    ch_run = shutil.which("ch-run")
    if not ch_run:
        return {"skipped": "ch-run not found (apt-get install charliecloud)"}
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "USER": os.environ.get("USER", "root")}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run([ch_run, s.mnt, "--", "python3", "-c", IMPORTS], env=env, cwd="/",
                              capture_output=True, text=True, timeout=max(s.limit, 60), check=False)
        times.append(time.perf_counter() - start)
        if done.returncode:
            reason = f"ch-run exited {done.returncode}: {done.stderr.strip()[-200:]}"
            return {"skipped": reason}
    times.sort()
    return {"value": times[len(times) // 2], "seconds": sum(times), "count": repeats}


def read_range(path: str, start: int, length: int, deadline: float) -> int:
    buf = bytearray(CHUNK)
    done = 0
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        while done < length and time.perf_counter() < deadline:
            got = f.readinto(memoryview(buf)[: min(CHUNK, length - done)])
            if not got:
                break
            done += got
    return done


def seqread_threads(s: Settings, threads: int) -> Measure:
    path = os.path.join(s.mnt, BIG)
    size = os.path.getsize(path)
    part = -(-size // threads)
    got = [0] * threads
    deadline = time.perf_counter() + s.limit
    index = iter(range(threads))

    def worker() -> None:
        k = next(index)
        got[k] = read_range(path, k * part, max(0, min(part, size - k * part)), deadline)

    start = time.perf_counter()
    run_threads(worker, threads)
    took = time.perf_counter() - start
    return {"value": rate(sum(got) / 1e6, took), "seconds": took, "bytes": sum(got),
            "truncated": sum(got) < size}


def seqread(s: Settings, _: Lists) -> Measure:
    return seqread_threads(s, 1)


def seqread_par4(s: Settings, _: Lists) -> Measure:
    return seqread_threads(s, 4)


def randread(s: Settings, _: Lists) -> Measure:
    path = os.path.join(s.mnt, BIG)
    size = os.path.getsize(path)
    rng = random.Random(s.seed)
    offsets = [rng.randrange(0, max(1, size - 4096)) for _ in range(s.rand_ops)]
    latencies: list[float] = []
    deadline = time.perf_counter() + s.limit
    fd = os.open(path, os.O_RDONLY)
    try:
        start = time.perf_counter()
        for offset in offsets:
            t0 = time.perf_counter()
            os.pread(fd, 4096, offset)
            latencies.append(time.perf_counter() - t0)
            if t0 > deadline:
                break
        took = time.perf_counter() - start
    finally:
        os.close(fd)
    latencies.sort()
    return {"value": rate(len(latencies), took), "seconds": took, "count": len(latencies),
            "p50_us": latencies[len(latencies) // 2] * 1e6,
            "p99_us": latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)] * 1e6,
            "truncated": len(latencies) < len(offsets)}


Workload = Callable[[Settings, Lists], Measure]
WORKLOADS: dict[str, tuple[str, Workload]] = {
    "walk": ("entries/s", walk), "readall": ("MB/s", readall), "readall_par4": ("MB/s", readall_par4),
    "readlink": ("ops/s", readlink), "xattr": ("entries/s", xattr),
    "container_start": ("s", lambda s, _: container_start(s, 1)),
    "seqread": ("MB/s", seqread), "seqread_par4": ("MB/s", seqread_par4), "randread": ("ops/s", randread),
}
KINDS = {"rootfs": ["walk", "readall", "readall_par4", "readlink", "xattr", "container_start"],
         "bigfile": ["seqread", "seqread_par4", "randread"]}


# ------------------------------------------------------------------------------------------
# the mount, the page cache and the daemon
# ------------------------------------------------------------------------------------------
def is_mounted(mnt: str) -> bool:
    target = os.path.realpath(mnt)
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == target for line in f)


def shell(cmd: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=timeout, check=False)


def mount(mnt: str, cmd: str, timeout: float = 300) -> float:
    """Seconds from running ``cmd`` until the mount point lists (the command may return early)."""
    start = time.monotonic()
    done = shell(cmd, timeout)
    if done.returncode:
        raise RuntimeError(f"mount command failed ({done.returncode}): {cmd}: {done.stderr.strip()[-500:]}")
    while not is_mounted(mnt):
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"{mnt} was not mounted {timeout:.0f} s after: {cmd}")
        time.sleep(0.002)
    os.listdir(mnt)
    return time.monotonic() - start


def unmount(mnt: str, cmd: str) -> None:
    """Unmount, retrying while the filesystem is busy (a closing file, a late ch-run)."""
    for _ in range(100):
        if not is_mounted(mnt):
            return
        shell(cmd, 60)
        time.sleep(0.05 if is_mounted(mnt) else 0)
    raise RuntimeError(f"{mnt} is still mounted after: {cmd}")


def drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def daemon_pid(mnt: str) -> int | None:
    """The oldest process whose command line names the mount point (not this one)."""
    wanted = {mnt, os.path.realpath(mnt), mnt.rstrip("/")}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.decode(errors="replace") in wanted for a in args[1:]):
            found.append(int(entry))
    return min(found) if found else None


def daemon_sample(pid: int | None) -> dict[str, int | float] | None:
    """CPU seconds, peak RSS (KiB) and threads of ``pid``, or None if it is gone."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except (OSError, ValueError):
        return None
    return {"cpu_s": (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK"),
            "rss_peak_kib": int(status["VmHWM"].split()[0]), "threads": int(status["Threads"])}


# ------------------------------------------------------------------------------------------
def measure(name: str, s: Settings, lists: Lists, mode: str) -> Measure:
    """One workload, with the daemon's use of the machine while it ran."""
    pid = daemon_pid(s.mnt)
    before = daemon_sample(pid)
    try:
        if name == "container_start":
            result = container_start(s, 1 if mode == "cold" else s.warm_starts)
        else:
            result = WORKLOADS[name][1](s, lists)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        result = {"skipped": f"{type(exc).__name__}: {exc}"}
    after = daemon_sample(pid)
    if before and after:
        result.update(daemon_cpu_s=round(after["cpu_s"] - before["cpu_s"], 3),
                      daemon_rss_peak_kib=after["rss_peak_kib"], daemon_threads=after["threads"])
    return result


def emit(line: dict[str, object]) -> None:
    print(json.dumps(line), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--mnt", required=True)
    ap.add_argument("--kind", required=True, choices=sorted(KINDS))
    ap.add_argument("--mount", help="shell command mounting the image on --mnt (cold runs remount)")
    ap.add_argument("--umount", help="shell command unmounting --mnt (default: umount MNT)")
    ap.add_argument("--label", default="", help="name of the filesystem, copied into every line")
    ap.add_argument("--only", default="", help="comma-separated workloads (default: all of the kind)")
    ap.add_argument("--skip", default="", help="comma-separated workloads to leave out")
    ap.add_argument("--limit", type=float, default=180, help="seconds per workload (default 180)")
    ap.add_argument("--warm-only", action="store_true", help="no cache drop, no remount")
    ap.add_argument("--keep-mounted", action="store_true", help="leave the filesystem mounted at the end")
    a = ap.parse_args()
    mnt = os.path.abspath(a.mnt)
    names = [n for n in (a.only.split(",") if a.only else KINDS[a.kind]) if n and n not in a.skip.split(",")]
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown:
        print(f"workloads: unknown {', '.join(unknown)}; known: {', '.join(WORKLOADS)}", file=sys.stderr)
        return 2
    umount_cmd = a.umount or f"umount {mnt}"
    if a.mount and not is_mounted(mnt):
        mount(mnt, a.mount)
    if not is_mounted(mnt):
        print(f"workloads: nothing is mounted on {mnt}; give --mount", file=sys.stderr)
        return 2
    s = Settings(mnt=mnt, limit=a.limit)
    lists = Lists.scan(mnt) if a.kind == "rootfs" else Lists()
    remount = bool(a.mount) and not a.warm_only
    common = {"label": a.label, "kind": a.kind}
    try:
        for name in names:
            for mode in ("warm",) if a.warm_only else ("cold", "warm"):
                dropped = False
                if mode == "cold":
                    if remount:
                        unmount(mnt, umount_cmd)
                    dropped = drop_caches()
                    if remount:
                        took = mount(mnt, a.mount)
                        emit({**common, "workload": "mount", "mode": "cold", "unit": "s", "value": took,
                              "seconds": took, "before": name, "cache_drop": dropped})
                result = measure(name, s, lists, mode)
                emit({**common, "workload": name, "mode": mode, "unit": WORKLOADS[name][0], **result,
                      "cache_drop": dropped, "remount": remount and mode == "cold"})
                shown = result.get("value", result.get("skipped"))
                print(f"[workloads] {a.label or mnt} {name} {mode}: {shown}", file=sys.stderr, flush=True)
    finally:
        if a.mount and not a.keep_mounted:
            unmount(mnt, umount_cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
