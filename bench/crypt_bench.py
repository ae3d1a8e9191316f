#!/usr/bin/env python3
"""Encrypted images against the same image unencrypted, both through siffs, in one run.

  nice bench/crypt_bench.py [IMAGE.sif ...] [--runs 1] [--kdf-memory MiB]

For each bench image (default: the harness' rootfs-gzip and bigfile-gzip in
/tmp/siffs-bench/images, made by ../shared/bench/mkimages.py), the primary partition is
encrypted twice with ``siffs create --encrypt`` (gocryptfs, and LUKS2 with 512-byte sectors,
the layout SingularityCE makes), then the harness' workloads.py runs cold and warm on siffs
mounts of all three, one workload at a time on the three variants back to back. Prints
throughput and the ratio to the unencrypted image (1.0 = as fast), the unlock cost (the "mount"
row), and the daemon's CPU time per row (a warm metadata row that costs the daemon nothing is
served by the kernel's caches, whatever the encryption). Needs root (cold runs drop the page cache).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SIFFS_SHARED", HERE.parent / "shared"))
IMAGES = Path(os.environ.get("SIFFS_BENCH_IMAGES", "/tmp/siffs-bench/images"))
WORK = Path(os.environ.get("SIFFS_BENCH_OUT", "/tmp/siffs-bench")) / "crypt"
SIFFS = [sys.executable, "-m", "siffs"]
PASSPHRASE = "bench passphrase"  # a benchmark's key: not a secret


def encrypted_variants(image: Path, kdf_memory: int) -> dict[str, Path]:
    """plain (the image itself), gocryptfs and luks2 copies of ``image``, made once."""
    sys.path.insert(0, str(HERE))
    from siffs.sif import Image  # noqa: PLC0415

    WORK.mkdir(parents=True, exist_ok=True)
    squashfs = WORK / f"{image.stem}.squashfs"
    if not squashfs.exists():
        with Image.open(image) as sif:
            d = sif.primary_partition()
            with open(squashfs, "wb") as out:
                for chunk in sif.iter_chunks(d):
                    out.write(chunk)
    variants = {"plain": image}
    env = dict(os.environ, SIFFS_ENCRYPTION_PASSPHRASE=PASSPHRASE)
    for fmt in ("gocryptfs", "luks2"):
        out = WORK / f"{image.stem}-{fmt}.sif"
        if not out.exists():
            print(f"[crypt_bench] encrypting {image.name} as {fmt}", file=sys.stderr)
            cmd = [
                *SIFFS,
                "create",
                "--encrypt",
                "--format",
                fmt,
                "--kdf-memory",
                str(kdf_memory),
                "--kdf-time",
                "4",
                "--passphrase",
            ]
            subprocess.run([*cmd, str(out), str(squashfs)], env=env, check=True, cwd=HERE)
        variants[fmt] = out
    return variants


ROOTFS = ["walk", "readall", "readall_par4", "readlink", "xattr"]
BIGFILE = ["seqread", "seqread_par4", "randread"]
KINDS = ("plain", "gocryptfs", "luks2")


def measure_one(sif: Path, kind: str, workload: str, lists: Path) -> dict[tuple[str, str], dict]:
    """One cold and one warm sample of ``workload`` (and the mount time) on a fresh mount of ``sif``."""
    mnt = WORK / "mnt"
    mnt.mkdir(exist_ok=True)
    siffs = " ".join(shlex.quote(a) for a in SIFFS)
    mount = f"{siffs} mount --allow-unsigned {shlex.quote(str(sif))} {mnt}"
    result = subprocess.run(
        [sys.executable, str(SHARED / "bench/workloads.py"), "--mnt", str(mnt), "--image", kind,
         "--runs", "1", "--mount", mount, "--umount", f"{siffs} umount {mnt}", "--only", workload,
         "--list-cache", str(lists), "--pid", "auto"],
        env=dict(os.environ, SIFFS_ENCRYPTION_PASSPHRASE=PASSPHRASE, PYTHONPATH=str(HERE)),
        capture_output=True, text=True, check=True, cwd=HERE,
    )  # fmt: skip
    rows = (json.loads(line) for line in result.stdout.splitlines())
    return {(row["workload"], row["mode"]): row for row in rows if "median" in row}


def measure(image: Path, kind: str, variants: dict[str, Path], runs: int) -> dict[str, dict]:
    """Every workload on the three variants back to back (rotating which goes first), ``runs`` times.

    Why interleaved: on a shared machine the load drifts over minutes; measuring the three
    variants of one workload within the same minute keeps the ratio about encryption, not load.
    """
    samples: dict[str, dict[tuple[str, str], list[dict]]] = {k: {} for k in KINDS}
    lists = WORK / f"{image.stem}.lists.json"
    for run in range(runs):
        for number, workload in enumerate(ROOTFS if kind == "rootfs" else BIGFILE):
            turn = (run + number) % len(KINDS)
            for name in KINDS[turn:] + KINDS[:turn]:
                for key, row in measure_one(variants[name], kind, workload, lists).items():
                    samples[name].setdefault(key, []).append(row)
    return {
        name: {
            key: {
                "value": statistics.median(r["median"] for r in rows),
                "daemon_cpu_s": statistics.median(r.get("daemon_cpu_s", float("nan")) for r in rows),
            }
            for key, rows in found.items()
        }
        for name, found in samples.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("images", nargs="*", type=Path)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument(
        "--kdf-memory", type=int, default=1024, help="LUKS2 Argon2id memory in MiB (default 1024)"
    )
    args = ap.parse_args()
    images = args.images or [IMAGES / "rootfs-gzip.sif", IMAGES / "bigfile-gzip.sif"]
    print(f"load average at the start: {os.getloadavg()}")
    print(
        "| image | workload | mode | plain | gocryptfs | ratio | luks2 (512-byte sectors) | ratio "
        "| daemon CPU s plain / gocryptfs / luks2 |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for image in images:
        if not image.exists():
            print(f"[crypt_bench] {image} missing: build it with {SHARED}/bench/mkimages.py", file=sys.stderr)
            continue
        kind = "bigfile" if image.name.startswith("bigfile") else "rootfs"
        results = measure(image, kind, encrypted_variants(image, args.kdf_memory), args.runs)
        for key, base_row in sorted(results["plain"].items(), key=lambda item: item[0] != ("mount", "cold")):
            base = base_row["value"]
            cells = []
            for fmt in ("gocryptfs", "luks2"):
                found = results[fmt].get(key)
                value = None if found is None else found["value"]
                ratio = (
                    "" if value is None or not base else (base / value if key[0] == "mount" else value / base)
                )
                cells += [
                    f"{value:.3g}" if value is not None else "-",
                    f"{ratio:.2f}" if ratio != "" else "-",
                ]
            nan = {"daemon_cpu_s": float("nan")}
            cpu = " / ".join(f"{results[k].get(key, nan)['daemon_cpu_s']:.2f}" for k in KINDS)
            print(
                f"| {image.stem} | {key[0]} | {key[1]} | {base:.3g} | " + " | ".join(cells) + f" | {cpu} |",
                flush=True,
            )
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
