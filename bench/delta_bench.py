#!/usr/bin/env python3
"""Delta transfer, measured in one run against casync and zsync on the same images and the same nginx.

    .venv/bin/python bench/delta_bench.py [--image /tmp/siffs-bench/images-own/rootfs-zstd.sif] [--work DIR]

From IMAGE's root filesystem (unsquashfs) it builds, with the options of bench/mkimages.py
(-all-root, fixed times; by default ``--comp none``: uncompressed, no deduplication, so the
407 MB tree gives a 398 MB image, the ~400 MB rootfs SIF of the issue; ``--comp zstd`` gives
the 116 MB image of earlier runs), three SIFs: v1 (the tree as is), v2 (a localised change:
consecutive files, i.e. one area of the tree, totalling 1 % of the tree's bytes, rewritten as
``--edit`` says: by default every byte of them) and v3 (scattered edits: 25 files spread over
the tree rewritten the same way, one file added, two deleted). v2 and v3 are published with
``casync make --chunk-size=16384`` on an nginx of the script's own, and pulled with v1 as seed.
Prints bytes moved and time ratios, all in one run; asserts nothing. ``--prepare`` only builds
the images (run it before taking the bench lock).
Peak memory is measured on a 1 GiB SIF (the bench bigfile wrapped as a data object).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
SIFFS = str(HERE / ".venv/bin/siffs")
EPOCH = "1700000000"
PATCH = 4096


def log(msg: str) -> None:
    print(f"[delta-bench] {msg}", file=sys.stderr, flush=True)


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB, from GNU time: this script's own size does not count)."""
    with tempfile.NamedTemporaryFile("r") as rss:
        start = time.monotonic()
        done = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd],
            check=False,
            stdout=subprocess.DEVNULL,
            env=env,
        )
        seconds = time.monotonic() - start
        if done.returncode:
            raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}")
        return seconds, int(rss.read().split()[-1])


def primary_offset(sif: str) -> int:
    sys.path.insert(0, str(HERE))
    from siffs.sif import Image  # noqa: PLC0415

    with Image.open(sif) as image:
        return image.primary_partition().offset


def unpacked(image: str, tree: Path) -> Path:
    """The tree of ``image``'s primary partition at ``tree`` (unpacked once, kept for later runs)."""
    if not tree.exists():
        log(f"unsquashfs {image}")
        subprocess.run(
            ["unsquashfs", "-q", "-n", "-d", str(tree), "-o", str(primary_offset(image)), image],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return tree


def build_sif(tree: Path, out: Path, comp: str) -> Path:
    squash = out.with_suffix(".squashfs")
    if not out.exists():
        log(f"mksquashfs {tree.name} -> {out.name}")
        # Uncompressed and without deduplication: the 407 MB tree gives a 398 MB image.
        raw = ["-noI", "-noId", "-noD", "-noF", "-noX", "-no-duplicates"]
        how = raw if comp == "none" else ["-comp", comp]
        subprocess.run(
            ["mksquashfs", str(tree), str(squash), "-noappend", *how, "-all-root",
             "-all-time", EPOCH, "-mkfs-time", EPOCH, "-no-progress", "-quiet"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        subprocess.run([SIFFS, "-q", "create", str(out), str(squash)], check=True)
        squash.unlink()
    return out


def regular_files(tree: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(tree):
        dirs.sort()
        for name in sorted(files):
            p = Path(root, name)
            if p.is_file() and not p.is_symlink():
                found.append(p)
    return found


def rewrite(path: Path, rng: random.Random, edit: str) -> int:
    """Change the file's content; keeps mode and xattrs.

    ``whole`` writes the whole file's bytes backwards (every byte of the file changes, to new
    content of the same kind, as an update brings); ``reverse`` does that to a 4 KiB region in
    the middle only (the whole file when smaller); ``random`` writes random bytes into that region
    (incompressible: the worst case for a compressed squashfs).
    """
    data = bytearray(path.read_bytes())
    st = path.stat()
    xattrs = {
        k: os.getxattr(path, k, follow_symlinks=False) for k in os.listxattr(path, follow_symlinks=False)
    }
    start = 0 if edit == "whole" else max(0, len(data) // 2 - PATCH // 2)
    end = len(data) if edit == "whole" else min(len(data), start + PATCH)
    data[start:end] = rng.randbytes(end - start) if edit == "random" else data[start:end][::-1]
    path.unlink()  # the tree is a hard-link copy of v1's: never write through to it
    path.write_bytes(bytes(data))
    os.chmod(path, st.st_mode & 0o7777)
    for k, v in xattrs.items():
        os.setxattr(path, k, v, follow_symlinks=False)
    return len(data)


def variant(base: Path, out: Path, kind: str, edit: str) -> Path:
    if out.exists():
        return out
    log(f"making the {kind} tree")
    subprocess.run(["cp", "-al", str(base), str(out)], check=True)
    rng = random.Random(kind)
    files = regular_files(out)
    total = sum(f.stat().st_size for f in files)
    if kind == "localised":
        start = len(files) // 3
        touched = 0
        for f in files[start:]:
            touched += rewrite(f, rng, edit)
            if touched >= total // 100:
                break
        log(f"localised: {touched} bytes = {100 * touched / total:.2f} % of {total}")
    else:
        big = [f for f in files if f.stat().st_size > 2 * PATCH]
        touched = sum(rewrite(big[i * len(big) // 25], rng, edit) for i in range(25))
        (out / "added-file.bin").write_bytes(rng.randbytes(20000))
        for i in (1, 2):
            big[i * len(big) // 3 + 1].unlink()
        log(f"scattered: 25 files ({touched} bytes, {100 * touched / total:.2f} %), 1 added, 2 deleted")
    return out


class Nginx:
    def __init__(self, work: Path) -> None:
        self.root = work / "www"
        self.root.mkdir(exist_ok=True)
        conf_dir = work / "nginx"
        conf_dir.mkdir(exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = conf_dir / "access.log"
        self.log.write_text("")
        user = "user root;" if os.geteuid() == 0 else ""
        conf = conf_dir / "nginx.conf"
        conf.write_text(
            f"""{user}
worker_processes 2;
pid {conf_dir}/nginx.pid;
error_log {conf_dir}/error.log;
events {{ worker_connections 256; }}
http {{
    log_format bytes '$request_method $uri $status $body_bytes_sent';
    access_log {self.log} bytes;
    client_body_temp_path {conf_dir}/body;
    types {{ }}
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
    server {{ listen 127.0.0.1:{self.port}; root {self.root}; }}
}}
"""
        )
        subprocess.run(
            ["nginx", "-c", str(conf), "-p", str(conf_dir), "-e", str(conf_dir / "error.log")], check=True
        )
        self.pid = int((conf_dir / "nginx.pid").read_text())
        self.url = f"http://127.0.0.1:{self.port}"

    def mark(self) -> int:
        return self.log.stat().st_size

    def since(self, mark: int) -> tuple[int, int]:
        """(requests, body bytes) logged after ``mark``."""
        with open(self.log, "rb") as f:
            f.seek(mark)
            lines = f.read().decode().splitlines()
        return len(lines), sum(int(line.split()[-1]) for line in lines if re.search(r" \d+$", line))

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGQUIT)


def fresh_env(work: Path, name: str) -> dict[str, str]:
    cache = work / "cache" / name
    shutil.rmtree(cache, ignore_errors=True)
    return {**os.environ, "XDG_CACHE_HOME": str(cache)}


def clean(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        for partial in p.parent.glob(f".{p.name}.partial*"):
            shutil.rmtree(partial, ignore_errors=True)


class Rows:
    """Each figure printed as soon as it is measured (a later failure loses nothing)."""

    def append(self, row: tuple[str, str]) -> None:
        print(f"{row[0]:<52}  {row[1]}", flush=True)


def big_image(work: Path, bigfile: str) -> Path:
    """A 1 GiB SIF: the bench's bigfile (or 1 GiB of seeded random bytes) as a data object."""
    big = work / "big.sif"
    if big.exists() and big.stat().st_size > 1 << 30:
        return big
    source = Path(bigfile)
    if not source.exists():
        source = work / "big.bin"
        rng = random.Random(1)
        with open(source, "wb") as f:
            for _ in range(16):
                f.write(rng.randbytes(64 << 20))
    subprocess.run([SIFFS, "-q", "new", str(big)], check=True)
    subprocess.run([SIFFS, "-q", "add", "--datatype", "7", str(big), str(source)], check=True)
    if source.parent == work:
        source.unlink()
    return big


def native_modules() -> str:
    """Which native hot paths the measured siffs uses (SIFFS_NO_NATIVE=1 measures the Python ones)."""
    code = (
        "from siffs.delta import chunker, zsync; print(chunker.native_available(), zsync.native_available())"
    )
    out = subprocess.run(
        [str(HERE / ".venv/bin/python"), "-c", code], capture_output=True, text=True, check=True
    )
    return " / ".join("yes" if word == "True" else "no" for word in out.stdout.split())


def pct(n: int, of: int) -> str:
    return f"{100 * n / of:.2f} %"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default="/tmp/siffs-bench/images-own/rootfs-zstd.sif")  # bench/mkimages.py
    ap.add_argument("--bigfile", default="/tmp/siffs-bench/images/bigfile.tree/big.bin")
    ap.add_argument("--work", default="/tmp/siffs-bench/delta")
    ap.add_argument(
        "--edit", choices=("whole", "reverse", "random"), default="whole", help="how files are changed"
    )
    ap.add_argument("--prepare", action="store_true", help="only build the images (outside the bench lock)")
    ap.add_argument(
        "--comp", choices=("none", "lz4", "zstd", "gzip"), default="none", help="squashfs compression"
    )
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    tree1 = unpacked(a.image, work / "tree-v1")
    e, comp = a.edit, a.comp
    suffix = "" if comp == "zstd" else f"-{comp}"  # zstd: the names of earlier runs
    v1 = build_sif(tree1, work / f"v1{suffix}.sif", comp)
    v2 = build_sif(
        variant(tree1, work / f"tree-localised-{e}", "localised", e), work / f"v2-{e}{suffix}.sif", comp
    )
    v3 = build_sif(
        variant(tree1, work / f"tree-scattered-{e}", "scattered", e), work / f"v3-{e}{suffix}.sif", comp
    )
    if a.prepare:
        big_image(work, a.bigfile)
        return
    nginx = Nginx(work)
    www = nginx.root
    rows = Rows()
    rows.append(("load average at start", os.getloadavg().__repr__()))
    rows.append(("native chunker / zsync scan", native_modules()))
    try:
        # -- publishing: siffs delta make against casync make (fresh stores, same sizes) ---------------
        for p in (www / "default.castr", www / "siffs.castr"):
            clean(p)
        t_casync, _ = timed(["casync", "make", "--chunk-size=16384", f"--store={www}/default.castr",
                             str(www / "v2.caibx"), str(v2)])  # fmt: skip
        t_siffs, _ = timed([SIFFS, "-q", "delta", "make", str(v2), "--store", str(www / "siffs.castr"),
                            "--index", str(www / "v2-siffs.caibx")])  # fmt: skip
        same = (www / "v2.caibx").read_bytes() == (www / "v2-siffs.caibx").read_bytes()
        size2 = v2.stat().st_size
        rows.append(("image v2 / v3", f"{size2} / {v3.stat().st_size} bytes"))
        rows.append(("make: casync / siffs (s)", f"{t_casync:.2f} / {t_siffs:.2f}"))
        rows.append(
            ("make throughput ratio siffs/casync", f"{t_casync / t_siffs:.2f}x (index identical: {same})")
        )
        subprocess.run(["casync", "make", "--chunk-size=16384", f"--store={www}/default.castr",
                        str(www / "v3.caibx"), str(v3)], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        shutil.copy(v2, www / "v2.sif")
        subprocess.run([SIFFS, "-q", "delta", "make", str(www / "v2.sif"), "--zsync", "-o",
                        str(www / "v2.sif.zsync")], check=True, stdout=subprocess.DEVNULL)  # fmt: skip

        out = work / "out.sif"
        # -- pull without seed ----------------------------------------------------------------------------
        clean(out)
        t_cx, _ = timed(
            ["casync", "extract", f"--store={nginx.url}/default.castr", f"{nginx.url}/v2.caibx", str(out)]
        )
        clean(out)
        m = nginx.mark()
        t_sx, _ = timed([SIFFS, "-q", "pull", "--allow-unsigned", str(out), f"{nginx.url}/v2.caibx"],
                        env=fresh_env(work, "noseed"))  # fmt: skip
        reqs, moved = nginx.since(m)
        rows.append(("pull, no seed: casync extract / siffs (s)", f"{t_cx:.2f} / {t_sx:.2f}"))
        rows.append(("pull, no seed: speed ratio", f"{t_cx / t_sx:.2f}x ({reqs} requests, {moved} bytes)"))

        # -- pull with v1 as seed: localised and scattered ---------------------------------------------------
        for name, image, path in (("localised", "v2", v2), ("scattered", "v3", v3)):
            size = path.stat().st_size
            clean(out)
            m = nginx.mark()
            t_cs, _ = timed(["casync", "extract", f"--seed={v1}", f"--store={nginx.url}/default.castr",
                             f"{nginx.url}/{image}.caibx", str(out)])  # fmt: skip
            c_reqs, c_moved = nginx.since(m)
            clean(out)
            m = nginx.mark()
            env = fresh_env(work, f"seed-{name}")
            t_ss, _ = timed([SIFFS, "-q", "pull", "--allow-unsigned", "--seed", str(v1), str(out),
                             f"{nginx.url}/{image}.caibx"], env=env)  # fmt: skip
            reqs, moved = nginx.since(m)
            assert out.read_bytes() == path.read_bytes()
            clean(out)
            t_warm, _ = timed([SIFFS, "-q", "pull", "--allow-unsigned", "--seed", str(v1), str(out),
                               f"{nginx.url}/{image}.caibx"], env={**env})  # fmt: skip
            rows.append(
                (
                    f"{name}: bytes moved incl. index (siffs / casync)",
                    f"{moved} = {pct(moved, size)} / {c_moved} = {pct(c_moved, size)} "
                    f"({reqs} / {c_reqs} req.)",
                )
            )
            rows.append(
                (
                    f"{name}: casync extract --seed / siffs pull --seed (s)",
                    f"{t_cs:.2f} / {t_ss:.2f} (seed index cached: {t_warm:.2f})",
                )
            )
            rows.append(
                (
                    f"{name}: speed ratio with seed",
                    f"{t_cs / t_ss:.2f}x (cached seed index: {t_cs / t_warm:.2f}x)",
                )
            )

        # -- zsync with the same seed ------------------------------------------------------------------------
        clean(out)
        m = nginx.mark()
        t_z, _ = timed(["zsync", "-q", "-i", str(v1), "-o", str(out), f"{nginx.url}/v2.sif.zsync"])
        z_reqs, z_moved = nginx.since(m)
        for leftover in work.glob("out.sif.zs-old"):
            leftover.unlink()
        clean(out)
        m = nginx.mark()
        t_sz, _ = timed([SIFFS, "-q", "pull", "--allow-unsigned", "--seed", str(v1), str(out),
                         f"{nginx.url}/v2.sif.zsync"], env=fresh_env(work, "zsync"))  # fmt: skip
        s_reqs, s_moved = nginx.since(m)
        assert out.read_bytes() == v2.read_bytes()
        rows.append(
            ("zsync -i v1: bytes / s", f"{z_moved} = {pct(z_moved, size2)} / {t_z:.2f} ({z_reqs} req.)")
        )
        rows.append(
            (
                "siffs pull .zsync --seed v1: bytes / s",
                f"{s_moved} = {pct(s_moved, size2)} / {t_sz:.2f} ({s_reqs} req.)",
            )
        )
        rows.append(("siffs (.zsync) vs zsync: speed ratio", f"{t_z / t_sz:.2f}x"))

        # -- peak memory on a 1 GiB image ---------------------------------------------------------------
        big = big_image(work, a.bigfile)
        clean(www / "big.castr", out)
        t_bm, rss_make = timed([SIFFS, "-q", "delta", "make", str(big), "--store", str(www / "big.castr"),
                                "--index", str(www / "big.caibx")])  # fmt: skip
        t_bp, rss_pull = timed([SIFFS, "-q", "pull", "--allow-unsigned", "--store", f"{nginx.url}/big.castr",
                                str(out), f"{nginx.url}/big.caibx"], env=fresh_env(work, "big"))  # fmt: skip
        rows.append(
            (
                f"1 GiB image ({big.stat().st_size} bytes): peak RSS make / pull",
                f"{rss_make / 1024:.0f} / {rss_pull / 1024:.0f} MiB ({t_bm:.1f} s / {t_bp:.1f} s)",
            )
        )
        clean(out)
    finally:
        nginx.stop()
        rows.append(("load average at end", os.getloadavg().__repr__()))


if __name__ == "__main__":
    main()
