#!/usr/bin/env python3
"""Start latency: ``siffs mount`` and ``siffs run`` of a small image, from exec to exit.

    .venv/bin/python bench/start_bench.py [IMAGE] [--runs 10] [--exec-image SIF] [--baseline DIR]

Without IMAGE, builds the README's 1 MB busybox example image in a temporary directory
(contrib/example/mkrootfs.py, mksquashfs, ``siffs create``). Each run, in turn:

* ``python3 -c pass``, ``python3 -c 'import trio, pyfuse3'`` and ``import pyfuse3`` alone: the
  interpreter and the FUSE stack's imports, the floor under any Python daemon (the patched
  pyfuse3 imports trio only for its event loop, which siffs does not use);
* ``squashfuse_ll`` mounting the same partition (then ``fusermount3 -u``, not timed);
* ``siffs mount`` (then ``siffs umount``, not timed);
* ``siffs run IMAGE true`` (mount, run the runscript in the container, unmount);
* both siffs commands again with ``SIFFS_EARLY_MOUNT=0``: the daemon mounts after importing
  pyfuse3, as before the early mount (``siffs.fs.kernelmount``);
* ``siffs run`` with the daemon on trio's event loop (every pyfuse3 patch but 0007's
  ``main_sync``): what serving without trio saves;
* with ``--exec-image SIF`` (issue 17's second comparison: the bench's rootfs-zstd image),
  ``siffs exec SIF python3 -c 'import json, email, http.client, asyncio, unittest, sqlite3'``;
  the page cache is not dropped, so after the first run the image and the container's files
  are warm (Apptainer's 533 ms in the issue was measured the same way, 8 runs);
* with ``--baseline DIR`` (the ``siffs`` and ``runtime`` packages of another commit, e.g.
  ``git archive BASE siffs runtime | tar -x -C DIR``), the ``siffs mount``, ``siffs run`` and
  ``siffs exec`` rows again with ``PYTHONPATH=DIR``: the same interpreter and pyfuse3 running the older code,
  so a change is measured against it in one run.

Prints the median and the spread of each, the median CPU time (``timed``), and the 1-minute load
average: compare figures of one run only (the ratios), the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

here = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(here))

from siffs.fs import binding  # noqa: E402
from siffs.sif import Image  # noqa: E402

PY = str(here / ".venv/bin/python")
#: Every pyfuse3 patch but 0007: the daemon imports trio and serves in its event loop.
TRIO_LOOP = ",".join(name for name in binding.Features.names() if name != "sync_loop")
SIFFS = str(here / ".venv/bin/siffs")
#: Issue 17's second start comparison: a python3 in the container importing a few stdlib packages.
WORKLOAD = "import json, email, http.client, asyncio, unittest, sqlite3"


def build_example(work: Path) -> Path:
    rootfs, squash, sif = work / "rootfs", work / "rootfs.squashfs", work / "small.sif"
    subprocess.run(
        [PY, str(here / "contrib/example/mkrootfs.py"), str(rootfs)], check=True, capture_output=True
    )
    subprocess.run(
        ["mksquashfs", str(rootfs), str(squash), "-all-root", "-noappend", "-quiet", "-no-progress"],
        check=True,
        capture_output=True,
    )
    subprocess.run([SIFFS, "create", str(sif), str(squash)], check=True, capture_output=True)
    return sif


def _cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def timed(cmd: list[str]) -> tuple[float, float]:
    """Seconds from exec to exit, and the CPU seconds of the command and of every process it waited
    for (not the mount daemon, which outlives it); leading ``NAME=value`` words set the environment.

    On a shared machine the CPU figure moves far less than the wall-clock one, so it tells whether
    a change removed work or only moved it (a daemon's imports overlapping the command's)."""
    env = dict(os.environ)
    while "=" in cmd[0]:
        name, value = cmd[0].split("=", 1)
        env[name], cmd = value, cmd[1:]
    cpu, t = _cpu(), time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t, _cpu() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image", nargs="?", type=Path)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--exec-image", type=Path, metavar="SIF", help="add the python3 import workload rows")
    ap.add_argument("--baseline", type=Path, metavar="DIR", help="add rows running this copy's code")
    args = ap.parse_args()
    # Bytecode as an installed package has it: where PYTHONDONTWRITEBYTECODE is set (this project's
    # sandbox sets it), every start would compile siffs' modules again (~50-70 ms of the figures).
    for tree in [here] + ([args.baseline] if args.baseline else []):
        subprocess.run([PY, "-m", "compileall", "-q", "siffs", "runtime"], cwd=tree, check=True,
                       capture_output=True)  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="siffs-start-"))
    try:
        image = args.image or build_example(work)
        with Image.open(image) as img:
            offset = img.primary_partition().offset
        mnt = work / "mnt"
        mnt.mkdir()
        cases: dict[str, tuple[list[str], list[str] | None]] = {
            "python3 -c pass": ([PY, "-c", "pass"], None),
            "import trio, pyfuse3": ([PY, "-c", "import trio, pyfuse3"], None),
            "import pyfuse3": ([PY, "-c", "import pyfuse3"], None),
            "squashfuse_ll mount": (
                ["squashfuse_ll", "-o", f"offset={offset}", str(image), str(mnt)],
                ["fusermount3", "-u", str(mnt)],
            ),
            "siffs mount": (
                [SIFFS, "mount", "--allow-unsigned", str(image), str(mnt)],
                [SIFFS, "umount", str(mnt)],
            ),
            "siffs run … true": ([SIFFS, "run", "--allow-unsigned", str(image), "true"], None),
            "siffs mount, old path": (
                ["SIFFS_EARLY_MOUNT=0", SIFFS, "mount", "--allow-unsigned", str(image), str(mnt)],
                [SIFFS, "umount", str(mnt)],
            ),
            "siffs run, old path": (
                ["SIFFS_EARLY_MOUNT=0", SIFFS, "run", "--allow-unsigned", str(image), "true"],
                None,
            ),
            "siffs run, trio loop": (
                [f"{binding.ENV}={TRIO_LOOP}", SIFFS, "run", "--allow-unsigned", str(image), "true"],
                None,
            ),
        }
        if args.exec_image:
            cases["siffs exec … python3"] = (
                [SIFFS, "exec", "--allow-unsigned", str(args.exec_image), "python3", "-c", WORKLOAD],
                None,
            )
        if args.baseline:
            again = ("siffs mount", "siffs run … true", "siffs exec … python3")
            for name in [n for n in again if n in cases]:
                cmd, undo = cases[name]
                cases[f"{name}, baseline"] = ([f"PYTHONPATH={args.baseline.resolve()}", *cmd], undo)
        if not shutil.which("squashfuse_ll"):
            del cases["squashfuse_ll mount"]
        times: dict[str, list[float]] = {name: [] for name in cases}
        cpus: dict[str, list[float]] = {name: [] for name in cases}
        load = os.getloadavg()[0]
        for _ in range(args.runs):
            for name, (cmd, undo) in cases.items():
                wall, cpu = timed(cmd)
                times[name].append(wall)
                cpus[name].append(cpu)
                if undo:
                    subprocess.run(undo, check=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{image}: {args.runs} runs, load average {load:.2f} before, {os.getloadavg()[0]:.2f} after")
    for name, ts in times.items():
        ms = sorted(t * 1000 for t in ts)
        cpu = statistics.median(cpus[name]) * 1000
        print(
            f"{name:<32} median {statistics.median(ms):7.1f} ms   min {ms[0]:7.1f}   max {ms[-1]:7.1f}"
            f"   cpu {cpu:7.1f}"
        )


if __name__ == "__main__":
    main()
