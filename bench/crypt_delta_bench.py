#!/usr/bin/env python3
"""Delta updates of encrypted images: bytes moved for a localised 1 % change, LUKS2 and gocryptfs.

    flock /tmp/siffs-bench.lock .venv/bin/python bench/crypt_delta_bench.py [--work DIR]

Uses bench/delta_bench.py's trees (v1: the bench rootfs; v2: consecutive files totalling 1 % of
the tree's bytes rewritten in a 4 KiB region each), made there if missing. Each tree becomes a
zstd SquashFS (fixed times), then an encrypted SIF with ``siffs create --encrypt`` (a fresh random
key per build, as real builds); v1 and v2 are published with ``siffs delta make`` into one
encrypted store on an nginx of the script's own, and a copy of v1 is updated to v2 with
``siffs pull``. Prints bytes moved (from nginx's log, index included) as a share of v2, the
times, and whether the result is byte-identical; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from delta_bench import (  # the delta bench's trees, nginx and helpers
    EPOCH,
    SIFFS,
    Nginx,
    Rows,
    clean,
    fresh_env,
    log,
    pct,
    timed,
    unpacked,
    variant,
)

PASSPHRASE = "bench horse"


def encrypted_sif(tree: Path, out: Path, kind: str, env: dict[str, str]) -> Path:
    if out.exists():
        return out
    squash = out.with_suffix(".squashfs")
    log(f"mksquashfs {tree.name} -> {squash.name}")
    subprocess.run(
        ["mksquashfs", str(tree), str(squash), "-noappend", "-comp", "zstd", "-all-root",
         "-all-time", EPOCH, "-mkfs-time", EPOCH, "-no-progress", "-quiet"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    cost = (
        ["--kdf-memory", "64", "--kdf-time", "4"] if kind == "luks2" else []
    )  # the KDF cost changes no byte counts
    log(f"siffs create --encrypt --format {kind} -> {out.name}")
    subprocess.run(
        [SIFFS, "-q", "create", "--encrypt", "--format", kind, *cost, "--passphrase", str(out), str(squash)],
        check=True, env=env,
    )  # fmt: skip
    squash.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default="/tmp/siffs-bench/images-own/rootfs-zstd.sif")  # bench/mkimages.py
    ap.add_argument("--delta-work", default="/tmp/siffs-bench/delta", help="bench/delta_bench.py's trees")
    ap.add_argument("--work", default="/tmp/siffs-bench/crypt-delta")
    ap.add_argument("--kinds", default="luks2,gocryptfs")
    a = ap.parse_args()
    work, trees = Path(a.work), Path(a.delta_work)
    work.mkdir(parents=True, exist_ok=True)
    trees.mkdir(parents=True, exist_ok=True)
    tree1 = unpacked(a.image, trees / "tree-v1")
    tree2 = variant(tree1, trees / "tree-localised-reverse", "localised", "reverse")
    env = {k: v for k, v in os.environ.items() if "ENCRYPTION" not in k} | {
        "SIFFS_ENCRYPTION_PASSPHRASE": PASSPHRASE
    }
    nginx = Nginx(work)
    load = os.getloadavg()
    print(f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    rows = Rows()
    try:
        for kind in a.kinds.split(","):
            v1 = encrypted_sif(tree1, work / f"{kind}-v1.sif", kind, env)
            v2 = encrypted_sif(tree2, work / f"{kind}-v2.sif", kind, env)
            store = nginx.root / f"{kind}.castr"
            clean(store)
            t_make = 0.0
            for v in (v1, v2):
                index = str(nginx.root / f"{v.name}.caibx")
                seconds, _ = timed([SIFFS, "-q", "delta", "make", str(v), "--store", str(store), "--index",
                                    index, "--passphrase"], env=env)  # fmt: skip
                t_make = seconds
            out = work / "out.sif"
            clean(out)
            for partial in work.glob(".out.sif.partial*"):
                partial.unlink()
            shutil.copy(v1, out)
            mark = nginx.mark()
            url = f"{nginx.url}/{v2.name}.caibx"
            t_pull, rss = timed([SIFFS, "-q", "pull", "--allow-unsigned", "--passphrase", "--store",
                                 f"{nginx.url}/{store.name}", str(out), url],
                                env=fresh_env(work, kind) | env)  # fmt: skip
            requests, moved = nginx.since(mark)
            same = out.read_bytes() == v2.read_bytes()
            index_size = (nginx.root / f"{v2.name}.caibx").stat().st_size
            size = v2.stat().st_size
            rows.append((f"{kind}: image v2", f"{size} bytes"))
            rows.append(
                (f"{kind}: moved, localised 1 % change", f"{pct(moved, size)} ({moved} B, {requests} req)")
            )
            rows.append((f"{kind}: of which the index", pct(index_size, size)))
            rows.append(
                (f"{kind}: make v2 / pull (s)", f"{t_make:.2f} / {t_pull:.2f} (peak {rss >> 10} MiB)")
            )
            rows.append((f"{kind}: byte-identical", str(same)))
            clean(out)
    finally:
        nginx.stop()
    load = os.getloadavg()
    print(f"load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
