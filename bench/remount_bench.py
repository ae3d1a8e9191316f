"""Wall time of ``siffs mount`` re-mounting an unchanged, signed, trusted image (target < 0.2 s).

    .venv/bin/python bench/remount_bench.py [--size-mib 500] [--runs 10] [--dir /tmp] [--baseline DIR]

Builds a SquashFS of SIZE MiB (random, stored uncompressed so the build is quick), wraps it in
a SIF, signs it with a fresh OpenPGP key and trusts that key, all in a private home. The first
mount fills the block-table cache and the cached keyring export; then ``--runs`` timed mounts
(each unmounted again, untimed). For scale it also times the interpreter alone and ``siffs
--version``, the floor any siffs command pays. ``--baseline DIR`` (the ``siffs`` and ``runtime``
packages of another commit, as for bench/start_bench.py) adds the re-mount row again with
``PYTHONPATH=DIR``. Prints medians; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIFFS = Path(sys.executable).parent / "siffs"


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def prepare(work: Path, size_mib: int) -> tuple[Path, dict[str, str]]:
    env = dict(os.environ, HOME=str(work), GNUPGHOME=str(work / "gnupg"))
    for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        env[name] = str(work / name.lower())
    tree = work / "tree"
    tree.mkdir()
    with open(tree / "data.bin", "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(1 << 20))
    squash = work / "root.squashfs"
    subprocess.run(["mksquashfs", tree, squash, "-quiet", "-noI", "-noD", "-noF", "-all-root"], check=True)
    image = work / "image.sif"
    (work / "gnupg").mkdir(mode=0o700)
    gpg = ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run(
        [*gpg, "--quick-gen-key", "Bench <bench@example.org>", "ed25519", "sign"], env=env, check=True
    )
    for args, name in ((["--export-secret-keys"], "secret.asc"), (["--export"], "public.asc")):
        (work / name).write_bytes(subprocess.run([*gpg, "--armor", *args], env=env, check=True,
                                                 capture_output=True).stdout)  # fmt: skip
    for argv in (["create", image, squash], ["sign", image, "--key", work / "secret.asc"],
                 ["key", "import", work / "public.asc"]):  # fmt: skip
        subprocess.run([SIFFS, "-q", *map(str, argv)], env=env, check=True, stdout=subprocess.DEVNULL)
    return image, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=500)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--dir", default=None, help="where to build the image (default: a temp dir)")
    parser.add_argument(
        "--baseline", type=Path, metavar="DIR", help="add a re-mount row running this copy's code"
    )
    args = parser.parse_args()
    # Bytecode as an installed package has it (see bench/start_bench.py).
    repo = Path(__file__).resolve().parent.parent
    for tree in [repo] + ([args.baseline] if args.baseline else []):
        subprocess.run([sys.executable, "-m", "compileall", "-q", "siffs", "runtime"], cwd=tree, check=True,
                       capture_output=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="siffs-remount-", dir=args.dir) as tmp:
        work = Path(tmp)
        image, env = prepare(work, args.size_mib)
        mnt = work / "mnt"
        mnt.mkdir()
        mount, umount = [str(SIFFS), "mount", str(image), str(mnt)], [str(SIFFS), "umount", str(mnt)]
        subprocess.run(mount, env=env, check=True)  # first mount: verifies, fills the caches
        subprocess.run(umount, env=env, check=True)
        samples: dict[str, list[float]] = {
            "python -c pass": [],
            "siffs --version": [],
            "siffs mount (re-mount)": [],
            "re-mount, old path": [],  # SIFFS_EARLY_MOUNT=0: mounted after pyfuse3+trio imports
        }
        old = dict(env, SIFFS_EARLY_MOUNT="0")
        baseline = dict(env, PYTHONPATH=str(args.baseline.resolve())) if args.baseline else None
        if baseline is not None:
            samples["re-mount, baseline"] = []
        for _ in range(args.runs):
            samples["python -c pass"].append(timed([sys.executable, "-c", "pass"], env))
            samples["siffs --version"].append(timed([str(SIFFS), "--version"], env))
            samples["siffs mount (re-mount)"].append(timed(mount, env))
            subprocess.run(umount, env=env, check=True)
            samples["re-mount, old path"].append(timed(mount, old))
            subprocess.run(umount, env=env, check=True)
            if baseline is not None:
                samples["re-mount, baseline"].append(timed(mount, baseline))
                subprocess.run(umount, env=env, check=True)
    load = os.getloadavg()[0]
    print(f"re-mount of an unchanged verified {args.size_mib} MiB image, {args.runs} runs, load {load:.1f}")
    for name, values in samples.items():
        print(f"  {name:24} median {statistics.median(values) * 1000:6.0f} ms  "
              f"(min {min(values) * 1000:.0f}, max {max(values) * 1000:.0f})")  # fmt: skip
    remount = statistics.median(samples["siffs mount (re-mount)"])
    print(f"target < 200 ms: {'met' if remount < 0.2 else 'missed'} ({remount * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
