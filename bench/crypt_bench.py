#!/usr/bin/env python3
"""Encrypted images against the same image unencrypted, both through siffs, in one run.

  nice bench/crypt_bench.py [IMAGE.sif ...] [--runs 1] [--kdf-memory MiB]

For each bench image (default: the harness' rootfs-gzip and bigfile-gzip in
/tmp/siffs-bench/images, made by ../shared/bench/mkimages.py), the primary partition is
encrypted twice with ``siffs create --encrypt`` (gocryptfs, and LUKS2 with 512-byte sectors,
the layout SingularityCE makes), then the harness' workloads.py runs cold and warm on siffs
mounts of all three. Prints throughput and the ratio to the unencrypted image (1.0 = as fast),
plus the unlock cost (the "mount" row). Needs root (cold runs drop the page cache).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
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


def measure(sif: Path, kind: str, runs: int) -> dict[tuple[str, str], float]:
    mnt = WORK / "mnt"
    mnt.mkdir(exist_ok=True)
    siffs = " ".join(shlex.quote(a) for a in SIFFS)
    mount = f"{siffs} mount --allow-unsigned {shlex.quote(str(sif))} {mnt}"
    result = subprocess.run(
        [sys.executable, str(SHARED / "bench/workloads.py"), "--mnt", str(mnt), "--image", kind,
         "--runs", str(runs), "--mount", mount, "--umount", f"{siffs} umount {mnt}",
         "--skip", "container_start", "--pid", "none"],
        env=dict(os.environ, SIFFS_ENCRYPTION_PASSPHRASE=PASSPHRASE, PYTHONPATH=str(HERE)),
        capture_output=True, text=True, check=True, cwd=HERE,
    )  # fmt: skip
    values = {}
    for line in result.stdout.splitlines():
        row = json.loads(line)
        if "median" in row:
            values[row["workload"], row["mode"]] = row["median"]
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("images", nargs="*", type=Path)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument(
        "--kdf-memory", type=int, default=1024, help="LUKS2 Argon2id memory in MiB (default 1024)"
    )
    args = ap.parse_args()
    images = args.images or [IMAGES / "rootfs-gzip.sif", IMAGES / "bigfile-gzip.sif"]
    print("| image | workload | mode | plain | gocryptfs | ratio | luks2 (512-byte sectors) | ratio |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for image in images:
        if not image.exists():
            print(f"[crypt_bench] {image} missing: build it with {SHARED}/bench/mkimages.py", file=sys.stderr)
            continue
        kind = "bigfile" if image.name.startswith("bigfile") else "rootfs"
        results = {
            name: measure(sif, kind, args.runs)
            for name, sif in encrypted_variants(image, args.kdf_memory).items()
        }
        for key, base in results["plain"].items():
            cells = []
            for fmt in ("gocryptfs", "luks2"):
                value = results[fmt].get(key)
                ratio = (
                    "" if value is None or not base else (base / value if key[0] == "mount" else value / base)
                )
                cells += [
                    f"{value:.3g}" if value is not None else "-",
                    f"{ratio:.2f}" if ratio != "" else "-",
                ]
            print(
                f"| {image.stem} | {key[0]} | {key[1]} | {base:.3g} | " + " | ".join(cells) + " |", flush=True
            )


if __name__ == "__main__":
    main()
