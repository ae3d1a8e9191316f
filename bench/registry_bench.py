"""Registry throughput: ``siffs pull oras://`` against curl, ``siffs pull docker://`` against the
skopeo + umoci + mksquashfs pipeline, on the same loopback registry, in one run.

    .venv/bin/python bench/registry_bench.py [--sif IMAGE.sif] [--rootfs IMAGE.sif] [--runs 3] [--oras-only]

Starts Debian's docker-registry on a free loopback port (no auth, storage in a temp directory).
``--sif`` (default: the harness' bigfile-gzip.sif, ~480 MB) is pushed with ``siffs push``; then,
per run, curl fetches the blob to a file (alone; with the file fsynced; with coreutils' sha256sum
or OpenSSL on the stream or on the file), and ``siffs pull --disable-cache --allow-unsigned`` fetches,
verifies and writes it (spliced, and with ``SIFFS_NO_SPLICE=1``); the floor under siffs' time is
printed too: hashing the blob in this process, and the interpreter starting ``siffs pull``. With
``--oras-only`` that is all. Otherwise ``--rootfs`` (default: rootfs-zstd.sif) is unpacked and pushed
as a two-layer OCI image; per run ``siffs pull docker://`` (conversion, signing) is timed against
``skopeo copy`` to an OCI layout + ``umoci unpack --rootless`` + ``mksquashfs -all-root``. Prints
medians and ratios (> 1: siffs faster); asserts nothing.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.mounts import siffs  # noqa: E402
from tests.support.registry import registry  # noqa: E402 -- the tests' registry starter

IMAGES = Path(os.environ.get("SIFFS_BENCH_IMAGES", "/tmp/siffs-bench/images-own"))  # bench/mkimages.py


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def oras_rows(host: str, sif: Path, work: Path, runs: int, env: dict[str, str]) -> list[str]:
    siffs("push", sif, f"oras://{host}/bench/sif:1", env=env, check=True, timeout=600)
    manifest = subprocess.run(
        [
            "curl",
            "-sf",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
            f"http://{host}/v2/bench/sif/manifests/1",
        ],
        capture_output=True,
        check=True,
    ).stdout
    digest = json.loads(manifest)["layers"][0]["digest"]
    url = f"http://{host}/v2/bench/sif/blobs/{digest}"
    out = work / "blob.sif"
    # Each peer as a shell line ($1 = output file, $2 = URL): curl alone, curl with the result
    # made durable (as siffs makes its result: fsync before the rename), and curl with the
    # SHA-256 check siffs does (streamed, or of the written file; the first without a file).
    peers = {
        "curl": 'curl -sfL -o "$1" "$2"',
        "curl+fsync": 'curl -sfL -o "$1" "$2" && sync "$1"',
        "curl|sha256sum": 'curl -sfL "$2" | sha256sum >/dev/null',  # no file written
        "curl|tee|sha256": 'curl -sfL "$2" | tee "$1" | sha256sum >/dev/null',
        "curl;sha256sum": 'curl -sfL -o "$1" "$2" && sha256sum "$1" >/dev/null',
        # coreutils' sha256sum has no SHA-NI code; OpenSSL's (siffs' through hashlib) has.
        "curl|openssl": 'curl -sfL "$2" | tee "$1" | openssl dgst -sha256 >/dev/null',
        "curl;openssl": 'curl -sfL -o "$1" "$2" && openssl dgst -sha256 "$1" >/dev/null',
    }
    names = [*peers, "siffs", "siffs no splice", "sha256 alone", "siffs start"]
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(runs):
        for name, line in peers.items():
            times[name].append(timed(["sh", "-c", line, "sh", str(out), url]))
            out.unlink(missing_ok=True)
        pull = ["pull", "--disable-cache", "--allow-unsigned", str(out), f"oras://{host}/bench/sif:1"]
        times["siffs"].append(timed([sys.executable, "-m", "siffs", *pull], env))
        out.unlink()
        # The fallback for https or chunked bodies: socket, hash and file in user space.
        times["siffs no splice"].append(
            timed([sys.executable, "-m", "siffs", *pull], {**env, "SIFFS_NO_SPLICE": "1"})
        )
        out.unlink()
        # The floor under siffs' figure: hashing the blob (in the page cache) in this process,
        # and the interpreter starting siffs' pull command.
        start = time.perf_counter()
        with sif.open("rb") as f:
            hashlib.file_digest(f, "sha256")
        times["sha256 alone"].append(time.perf_counter() - start)
        times["siffs start"].append(timed([sys.executable, "-m", "siffs", "pull", "--help"], env))
    mb = sif.stat().st_size / 1e6
    t = {name: statistics.median(values) for name, values in times.items()}
    s = t["siffs"]
    rows = [f"oras pull of {mb:.0f} MB (median s, MB/s, time / siffs' time = siffs' speed against it; "
            "target >= 0.9):"]  # fmt: skip
    rows += [f"  {name:15} {t[name]:6.3f} s {mb / t[name]:6.0f} MB/s  {t[name] / s:5.2f}" for name in t]
    floor = t["siffs start"] + t["sha256 alone"]
    rows.append(f"  floor: start + sha256 alone = {floor:.3f} s: at most {t['curl'] / floor:.2f}x curl, "
                f"{t['curl+fsync'] / floor:.2f}x curl+fsync")  # fmt: skip
    return rows


def push_rootfs(host: str, rootfs_sif: Path, work: Path) -> None:
    """The bench rootfs as a two-layer OCI image: everything but /usr/share, then /usr/share."""
    from siffs.registry.http import Session  # noqa: PLC0415
    from siffs.sif import Image  # noqa: PLC0415

    tree, squash = work / "tree", work / "root.sqfs"
    with Image.open(rootfs_sif) as image:
        offset = image.primary_partition().offset
    with rootfs_sif.open("rb") as src, squash.open("wb") as dst:
        src.seek(offset)
        shutil.copyfileobj(src, dst)
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(tree), str(squash)], check=True)
    squash.unlink()

    def not_share(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if info.name.startswith("usr/share/") else info

    blobs, diff_ids = [], []
    for part in ("base", "share"):
        raw = work / f"{part}.tar"
        with tarfile.open(raw, "w", format=tarfile.PAX_FORMAT) as tar:
            if part == "base":
                for entry in sorted(os.listdir(tree)):
                    tar.add(tree / entry, entry, filter=not_share)
            else:
                tar.add(tree / "usr/share", "usr/share")
        data = raw.read_bytes()
        raw.unlink()
        diff_ids.append("sha256:" + hashlib.sha256(data).hexdigest())
        blobs.append(gzip.compress(data, compresslevel=6, mtime=0))
    shutil.rmtree(tree)
    rootfs = {"type": "layers", "diff_ids": diff_ids}
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": rootfs, "config": {"Cmd": ["/bin/sh"]}}
    )
    session = Session(host, local=True)
    descriptors = []
    for data in [config.encode(), *blobs]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        opened = session.request(
            "POST", "/v2/bench/rootfs/blobs/uploads/", scope="", body=b"", ok=frozenset({202})
        )
        opened.raw.read()
        url = f"{opened.header('Location')}&digest={digest}"
        session.request("PUT", url, scope="", body=data, ok=frozenset({201})).raw.read()
        descriptors.append({"digest": digest, "size": len(data)})
    layer = "application/vnd.oci.image.layer.v1.tar+gzip"
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **descriptors[0]},
        "layers": [{"mediaType": layer, **d} for d in descriptors[1:]],
    }
    headers = {"Content-Type": manifest["mediaType"]}
    body = json.dumps(manifest).encode()
    session.request("PUT", "/v2/bench/rootfs/manifests/1", scope="", body=body, headers=headers,
                    ok=frozenset({201})).raw.read()  # fmt: skip
    session.close()


def docker_rows(host: str, work: Path, runs: int, env: dict[str, str]) -> list[str]:
    ours, theirs = [], []
    for n in range(runs):
        out = work / f"docker-{n}.sif"
        ours.append(timed([sys.executable, "-m", "siffs", "pull", "--disable-cache", str(out),
                           f"docker://{host}/bench/rootfs:1"], env))  # fmt: skip
        out.unlink()
        layout, bundle, squash = work / f"layout-{n}", work / f"bundle-{n}", work / f"pipe-{n}.sqfs"
        start = time.perf_counter()
        subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{host}/bench/rootfs:1",
                        f"oci:{layout}:1"], check=True, capture_output=True)  # fmt: skip
        subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:1", str(bundle)], check=True,
                       capture_output=True)  # fmt: skip
        subprocess.run(["mksquashfs", str(bundle / "rootfs"), str(squash), "-all-root", "-noappend", "-quiet",
                        "-no-progress"], check=True)  # fmt: skip
        theirs.append(time.perf_counter() - start)
        for path in (layout, bundle):
            shutil.rmtree(path)
        squash.unlink()
    s, t = statistics.median(ours), statistics.median(theirs)
    return [f"docker pull + convert: skopeo+umoci+mksquashfs {t:6.1f} s, siffs {s:6.1f} s  ->  "
            f"siffs time / pipeline time {s / t:.2f} (target <= 1.0)"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sif", type=Path, default=IMAGES / "bigfile-gzip.sif")
    parser.add_argument("--rootfs", type=Path, default=IMAGES / "rootfs-zstd.sif")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--oras-only", action="store_true", help="skip the docker:// conversion")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="siffs-registry-bench-") as tmp:
        work = Path(tmp)
        env = dict(os.environ, HOME=str(work / "home"), XDG_CONFIG_HOME=str(work / "config"),
                   XDG_CACHE_HOME=str(work / "cache"))  # fmt: skip
        # siffs runs with its bytecode cached, as an installed package has it (``siffs push``, the
        # first command, writes the cache); without, each run compiles ~60 modules (~0.04 s).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        with registry(work / "registry") as reg:
            rows = oras_rows(reg.host, args.sif, work, args.runs, env)
            if not args.oras_only:
                push_rootfs(reg.host, args.rootfs, work)
                rows += docker_rows(reg.host, work, args.runs, env)
    print(f"registry bench, {args.runs} runs, medians, load {os.getloadavg()[0]:.1f}")
    for row in rows:
        print("  " + row)


if __name__ == "__main__":
    main()
