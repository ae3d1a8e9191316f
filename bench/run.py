#!/usr/bin/env python3
"""Mount SIF images with every peer in turn, run bench/workloads.py on each, print the comparison.

Built-in peers (one that is not installed is skipped, and the report says so):
  kernel         mount -t squashfs -o loop,ro,offset={offset} {sif} {mnt}   (root)
  squashfuse     squashfuse -o offset={offset} {sif} {mnt}                  (libfuse high-level API)
  squashfuse_ll  squashfuse_ll -o offset={offset} {sif} {mnt}               (low-level API; Apptainer's)
  ratarmount     ratarmount --index-file {work}/index.sqlite {sif} {mnt}    (Python)
  siffs          siffs mount --allow-unsigned {sif} {mnt}                   (this project)
--peer 'NAME=MOUNT_CMD::UMOUNT_CMD' adds any other mount command to the same run (repeatable), e.g.
  --peer 'sqfs-git=/opt/squashfuse/bin/squashfuse_ll -o offset={offset} {sif} {mnt}::fusermount3 -u {mnt}'
Placeholders: {sif} the image, {mnt} the mount point, {offset} the byte offset of the SIF's
primary partition (read by siffs' own SIF reader), {work} a scratch directory of the peer.

Each of --runs rounds mounts every peer in turn (the order rotates between rounds, so that
background load falls on all of them alike) and runs every workload cold, then warm. Before the
first round each peer is mounted once and unmounted (ratarmount builds its index then, siffs
records its block table): the rounds measure what a user sees from the second mount on.
The table holds medians over the rounds; ratio columns are peer ÷ kernel and peer ÷ squashfuse_ll
("times as fast": > 1 is faster). Results: DIR/results.jsonl and DIR/report.md (appended).
Run as root: cold runs drop the page cache, and the kernel peer needs mount(8).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from mkimages import rootfs_offset  # noqa: E402 - beside this script
from workloads import is_mounted  # noqa: E402

FUSE_UMOUNT = "fusermount3 -u {mnt}"
REFERENCES = ("kernel", "squashfuse_ll")
TIME_LIKE = {"mount", "container_start"}
ORDER = ["mount", "walk", "readall", "readall_par4", "readlink", "xattr", "container_start",
         "seqread", "seqread_par4", "randread"]


@dataclass(frozen=True)
class Peer:
    name: str
    mount: str
    umount: str


def builtin_peers(siffs: str, ratarmount: str) -> dict[str, Peer]:
    q = shlex.quote
    return {p.name: p for p in (
        Peer("kernel", "mount -t squashfs -o loop,ro,offset={offset} {sif} {mnt}", "umount {mnt}"),
        Peer("squashfuse", "squashfuse -o offset={offset} {sif} {mnt}", FUSE_UMOUNT),
        Peer("squashfuse_ll", "squashfuse_ll -o offset={offset} {sif} {mnt}", FUSE_UMOUNT),
        Peer("ratarmount", f"{q(ratarmount)} --index-file {{work}}/index.sqlite {{sif}} {{mnt}}",
             FUSE_UMOUNT),
        Peer("siffs", f"{q(siffs)} mount -q --allow-unsigned {{sif}} {{mnt}}", f"{q(siffs)} umount {{mnt}}"),
    )}


def missing(peer: str, commands: dict[str, str]) -> str | None:
    """Why a built-in peer cannot run here, or None."""
    if peer == "kernel":
        return "needs root" if os.geteuid() else None
    tool = commands.get(peer, peer)
    return None if shutil.which(tool) else f"{tool} not found"


def parse_peer(text: str) -> Peer:
    name, sep, commands = text.partition("=")
    mount_cmd, sep2, umount_cmd = commands.partition("::")
    if not (sep and sep2 and name and mount_cmd.strip() and umount_cmd.strip()):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=MOUNT_CMD::UMOUNT_CMD")
    return Peer(name, mount_cmd.strip(), umount_cmd.strip())


class Mounts:
    """Mount points this run may have mounted; all are unmounted on exit, Ctrl-C or SIGTERM."""

    def __init__(self) -> None:
        self.points: set[str] = set()
        atexit.register(self.clear)

    def clear(self) -> None:
        for mnt in sorted(self.points):
            for cmd in (["fusermount3", "-u", mnt], ["umount", mnt], ["umount", "-l", mnt]):
                if not is_mounted(mnt):
                    break
                subprocess.run(cmd, capture_output=True, check=False)
            if is_mounted(mnt):
                log(f"could not unmount {mnt}; unmount it by hand")


def on_signal(signum: int, _: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def log(msg: str) -> None:
    print(f"[run] {msg}", file=sys.stderr, flush=True)


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def image_kind(image: Path) -> str:
    return "bigfile" if image.name.startswith("bigfile") else "rootfs"


@dataclass
class Run:
    args: argparse.Namespace
    peers: list[Peer]
    mounts: Mounts
    results: Path

    def commands(self, peer: Peer, image: Path, offset: int) -> tuple[str, str, str]:
        work = self.args.work / peer.name
        mnt = work / "mnt"
        mnt.mkdir(parents=True, exist_ok=True)
        values = {"sif": shlex.quote(str(image)), "mnt": shlex.quote(str(mnt)), "offset": str(offset),
                  "work": shlex.quote(str(work))}
        mount_cmd, umount_cmd = (c.format(**values) for c in (peer.mount, peer.umount))
        if self.args.pin != "none":  # the daemon inherits the mount command's CPU set
            mount_cmd = f"taskset -c {1 if self.args.pin == 'split' else 0} {mount_cmd}"
        self.mounts.points.add(str(mnt))
        if is_mounted(str(mnt)):  # left over from an interrupted run
            subprocess.run(["sh", "-c", umount_cmd], capture_output=True, check=False)
        return str(mnt), mount_cmd, umount_cmd

    def prepare(self, peer: Peer, image: Path, offset: int) -> str | None:
        """Mount once and unmount: first-mount work (indexes, caches) stays out of the rounds."""
        mnt, mount_cmd, umount_cmd = self.commands(peer, image, offset)
        start = time.monotonic()
        done = subprocess.run(["sh", "-c", mount_cmd], capture_output=True, text=True, check=False)
        while done.returncode == 0 and not is_mounted(mnt) and time.monotonic() - start < 600:
            time.sleep(0.01)
        took = time.monotonic() - start
        subprocess.run(["sh", "-c", umount_cmd], capture_output=True, check=False)
        if done.returncode:
            return f"{peer.name}: mount failed ({done.returncode}): {done.stderr.strip()[-300:]}"
        return f"{peer.name} first mount: {took:.2f} s" if took > 1 else None

    def turn(self, peer: Peer, image: Path, offset: int, rnd: int) -> list[dict[str, object]]:
        """workloads.py on one peer; its JSON lines, tagged."""
        mnt, mount_cmd, umount_cmd = self.commands(peer, image, offset)
        pin = ["taskset", "-c", "0"] if self.args.pin != "none" else []
        cmd = [*pin, sys.executable, str(HERE / "workloads.py"), "--mnt", mnt, "--kind", image_kind(image),
               "--mount", mount_cmd, "--umount", umount_cmd, "--label", peer.name,
               "--limit", str(self.args.limit), *(["--skip", self.args.skip] if self.args.skip else [])]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        lines = []
        for text in done.stdout.splitlines():
            try:
                line = json.loads(text)
            except ValueError:
                continue
            line.update(peer=peer.name, sif=image.name, round=rnd)
            lines.append(line)
        if done.returncode:
            lines.append({"peer": peer.name, "workload": "(all)", "mode": "-",
                          "skipped": f"workloads.py exited {done.returncode}"})
        with open(self.results, "a") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)
        return lines

    def image(self, image: Path) -> str:
        offset = rootfs_offset(image)
        notes = [n for p in self.peers if (n := self.prepare(p, image, offset))]
        lines: list[dict[str, object]] = []
        loads = []
        for rnd in range(self.args.runs):
            k = rnd % len(self.peers)
            for peer in self.peers[k:] + self.peers[:k]:
                loads.append(load_average())
                log(f"{image.name} round {rnd + 1}/{self.args.runs}: {peer.name} (load {loads[-1]:.2f})")
                lines += self.turn(peer, image, offset, rnd + 1)
        notes.append(f"1-minute load average before each turn: {min(loads):.2f} to {max(loads):.2f} "
                     f"(the run itself is about 1; more means other work shared the {os.cpu_count()} CPUs)")
        return table(image, [p.name for p in self.peers], lines, notes)


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1000:,.0f} ms" if value < 10 else f"{value:.1f} s"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def table(image: Path, peers: list[str], lines: list[dict[str, object]], notes: list[str]) -> str:
    """The markdown table of medians over rounds, with the ratios to the references present."""
    values: dict[tuple[str, str, str], list[float]] = {}
    units: dict[str, str] = {}
    extras: list[str] = []
    truncated: dict[str, list[str]] = {}
    for line in lines:
        key = (str(line["workload"]), str(line["mode"]), str(line["peer"]))
        value = number(line, "value")
        if value is not None:
            values.setdefault(key, []).append(value)
            units[key[0]] = str(line["unit"])
        elif "skipped" in line:
            extras.append(f"skipped: {key[2]} {key[0]} {key[1]}: {line['skipped']}")
        if line.get("truncated"):
            truncated.setdefault(key[2], []).append(f"{key[0]} {key[1]}")
    refs = [r for r in REFERENCES if r in peers]
    compared = [(p, r) for r in refs for p in peers if p not in REFERENCES[: REFERENCES.index(r) + 1]]
    head = ["workload", "mode", "unit", *peers] + [f"{p}/{r}" for p, r in compared]
    align = "|" + "---|" * 3 + "---:|" * (len(head) - 3)
    out = [f"### {image.name}", "", "| " + " | ".join(head) + " |", align]
    rows = sorted({(w, m) for w, m, _ in values}, key=lambda k: (ORDER.index(k[0]), k[1]))
    for workload, mode in rows:
        med = {p: statistics.median(v) if (v := values.get((workload, mode, p))) else None for p in peers}
        cells = [workload, mode, units[workload]] + [fmt(med[p], units[workload]) for p in peers]
        cells += [ratio(med[p], med[r], workload in TIME_LIKE) for p, r in compared]
        out.append("| " + " | ".join(cells) + " |")
    extras += [f"{p} stopped at the time limit (figure covers what it did): {', '.join(sorted(set(w)))}"
               for p, w in truncated.items()]
    out += ["", *daemon_notes(peers, lines), *[f"- {n}" for n in notes + sorted(set(extras))]]
    return "\n".join(out) + "\n"


def number(line: dict[str, object], key: str) -> float | None:
    value = line.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def ratio(value: float | None, ref: float | None, lower_is_better: bool) -> str:
    if not value or not ref:
        return "-"
    return f"{ref / value if lower_is_better else value / ref:.2f}"


def daemon_notes(peers: list[str], lines: list[dict[str, object]]) -> list[str]:
    """Peak RSS, threads and total CPU of each peer's daemon over the whole run."""
    out = []
    for p in peers:
        mine = [ln for ln in lines if ln.get("peer") == p and "daemon_rss_peak_kib" in ln]
        if mine:
            rss = max(number(ln, "daemon_rss_peak_kib") or 0 for ln in mine)
            threads = max(number(ln, "daemon_threads") or 0 for ln in mine)
            cpu = sum(number(ln, "daemon_cpu_s") or 0 for ln in mine)
            out.append(f"- {p} daemon: peak RSS {rss / 1024:.0f} MiB, up to {threads:.0f} threads, "
                       f"{cpu:.1f} CPU s in all workloads")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("images", nargs="+", type=Path, help="rootfs-*.sif or bigfile-*.sif (bench/mkimages.py)")
    ap.add_argument("--peers", default="kernel,squashfuse,squashfuse_ll,ratarmount,siffs",
                    help="built-in peers, in this order (default: all)")
    ap.add_argument("--peer", type=parse_peer, action="append", default=[], metavar="NAME=MOUNT::UMOUNT",
                    help="one more peer (repeatable)")
    ap.add_argument("--siffs", default=str(Path(sys.executable).with_name("siffs")), help="siffs executable")
    ap.add_argument("--ratarmount", default="ratarmount", help="ratarmount executable")
    ap.add_argument("--runs", type=int, default=3, help="rounds; the table holds medians (default 3)")
    ap.add_argument("--limit", type=float, default=180, help="seconds per workload (default 180)")
    ap.add_argument("--skip", default="", help="comma-separated workloads to leave out")
    ap.add_argument("--pin", choices=["none", "same", "split"], default="none",
                    help="same: daemon and workloads on CPU 0; split: daemon on CPU 1; none: the scheduler")
    ap.add_argument("--out", type=Path, default=Path("/tmp/siffs-bench/results-own"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/siffs-bench/work-own"))
    a = ap.parse_args()
    for image in a.images:
        if not image.is_file():
            print(f"run: {image}: no such image; build it with bench/mkimages.py", file=sys.stderr)
            return 2
    builtin = builtin_peers(a.siffs, a.ratarmount)
    tools = {"ratarmount": a.ratarmount, "siffs": a.siffs}
    peers, notes = [], []
    for name in filter(None, a.peers.split(",")):
        if name not in builtin:
            print(f"run: unknown peer {name!r}; built in: {', '.join(builtin)} (add others with --peer)",
                  file=sys.stderr)
            return 2
        why = missing(name, tools)
        if why:
            notes.append(f"{name} skipped: {why}")
            log(notes[-1])
        else:
            peers.append(builtin[name])
    peers += a.peer
    if not peers:
        print("run: no peer to measure", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    a.out.mkdir(parents=True, exist_ok=True)
    run = Run(a, peers, Mounts(), a.out / "results.jsonl")
    header = (f"Medians of {a.runs} round(s); CPU placement: {a.pin}; limit {a.limit:g} s per workload; "
              f"ratio > 1 = faster than the reference. {'; '.join(notes)}")
    print(header + "\n", flush=True)
    reports = [header, ""]
    try:
        for image in a.images:
            text = run.image(image.resolve())
            print(text, flush=True)
            reports.append(text)
    except KeyboardInterrupt:
        log("interrupted; unmounting")
        return 130
    finally:
        run.mounts.clear()
        with open(a.out / "report.md", "a") as f:
            f.write("\n".join(reports) + "\n")
    log(f"results appended to {run.results} and {a.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
