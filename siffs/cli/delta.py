"""``siffs delta make`` (publish an image as a casync store + index, or a zsync control file) and
``siffs pull`` (fetch only what changed, verify, replace atomically).

Only argument parsing, printing and the error-to-exit-code map live here; the work is in
``siffs.delta`` and the choice of stage for a SOURCE in ``siffs.pull``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from siffs.cli import output, trust
from siffs.cli.common import CommandError, print_json
from siffs.cli.exitcodes import ExitCode
from siffs.cli.progress import ProgressBar
from siffs.delta import errors  # light: the stage's numpy and crypto load only when it runs
from siffs.pull import UnknownSourceError

if TYPE_CHECKING:
    from siffs.pull import Result

DEFAULT_CHUNK_SIZE = 16384

#: The delta stage's errors and the dispatcher's, and the exit code of each.
_CODES: list[tuple[type[Exception], ExitCode]] = [
    (errors.NetworkError, ExitCode.NETWORK),  # includes a missing chunk, a server ignoring Range
    (errors.IndexFormatError, ExitCode.INVALID_IMAGE),
    (errors.UnsupportedFormatError, ExitCode.UNSUPPORTED),
    (errors.DigestMismatchError, ExitCode.DIGEST_MISMATCH),
    (errors.DeltaIOError, ExitCode.IO),
    (UnknownSourceError, ExitCode.USAGE),
]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("delta", help="publish an image for delta transfer (casync store or zsync file)")
    dsub = p.add_subparsers(dest="delta_command", metavar="SUBCOMMAND", required=True)
    m = dsub.add_parser("make", help="chunk an image into a casync store and index, or write a .zsync file")
    m.add_argument("image", help="SIF file to publish")
    kind = m.add_mutually_exclusive_group(required=True)
    kind.add_argument("--store", metavar="DIR", help="casync chunk store directory to add the chunks to")
    kind.add_argument("--zsync", action="store_true", help="write a zsync control file instead")
    m.add_argument(
        "--chunk-size",
        type=int,
        default=DEFAULT_CHUNK_SIZE,
        metavar="AVG",
        help=f"average chunk size (min AVG/4, max AVG*4; default {DEFAULT_CHUNK_SIZE}); as casync's",
    )
    m.add_argument(
        "--index", metavar="FILE", help="index to write (default: IMAGE-NAME.caibx beside the store)"
    )
    m.add_argument("--digest", choices=("sha512-256", "sha256"), default="sha512-256", help="chunk id digest")
    m.add_argument("--url", help="with --zsync: the URL clients fetch the image from (default: its name)")
    m.add_argument("-o", "--output", metavar="FILE", help="with --zsync: control file (default IMAGE.zsync)")
    m.add_argument(
        "--block-size", type=int, metavar="N", help="with --zsync: block size (default: zsyncmake's)"
    )
    m.add_argument("--json", action="store_true", help="print the result as JSON")
    m.set_defaults(func=cmd_make)

    p = sub.add_parser("pull", help="fetch an image, reusing local seeds: .caibx index or .zsync file")
    p.add_argument("dest", nargs="?", metavar="DEST.sif", help="image to write (default: named after SOURCE)")
    p.add_argument("source", metavar="SOURCE", help=".caibx index or .zsync control file (path or URL)")
    p.add_argument(
        "--seed",
        action="append",
        default=[],
        metavar="FILE",
        help="a local file to reuse chunks from (repeatable; DEST's previous version always is one)",
    )
    p.add_argument(
        "--store",
        metavar="URL",
        help="chunk store URL or directory (default: default.castr beside the index)",
    )
    p.add_argument("--json", action="store_true", help="print the transfer report as JSON")
    trust.add_arguments(p)
    p.set_defaults(func=cmd_pull)


@contextmanager
def _delta_errors() -> Iterator[None]:
    """Turn the delta stage's errors into one line and their documented exit code."""
    try:
        yield
    except (errors.DeltaError, UnknownSourceError) as exc:
        code = next(code for cls, code in _CODES if isinstance(exc, cls))
        raise CommandError(str(exc), code) from exc


def _bar(label: str) -> ProgressBar:
    return ProgressBar(label)


def cmd_make(args: argparse.Namespace) -> None:
    from siffs.sif import Image  # noqa: PLC0415 -- a quick check that IMAGE is a SIF

    with Image.open(args.image):  # publish SIF images only: catches a wrong file early
        pass
    if args.zsync:
        _make_zsync(args)
        return
    from siffs.delta.chunker import ChunkSizes  # noqa: PLC0415 -- numpy only for delta commands
    from siffs.delta.make import make_store  # noqa: PLC0415

    index = args.index or os.path.join(
        os.path.dirname(os.path.abspath(args.store.rstrip("/"))), os.path.basename(args.image) + ".caibx"
    )
    with _delta_errors(), _bar("chunking") as progress:
        sizes = ChunkSizes.from_average(args.chunk_size)
        report = make_store(
            args.image, args.store, index, sizes, sha512_256=args.digest == "sha512-256", progress=progress
        )
    if args.json:
        print_json(vars(report))
        return
    print(
        f"{report.index_path}: {report.chunks} chunks, {report.blob_size} bytes; "
        f"{report.new_chunks} new chunks ({report.stored_bytes} bytes) added to {report.store}"
    )


def _make_zsync(args: argparse.Namespace) -> None:
    from siffs.delta import zsync  # noqa: PLC0415 -- MD4 (pycryptodome) only for zsync

    out = args.output or os.path.basename(args.image) + ".zsync"
    with _delta_errors(), _bar("checksumming") as progress:
        report = zsync.make(args.image, out, url=args.url, block_size=args.block_size, progress=progress)
    if args.json:
        print_json(vars(report))
        return
    print(f"{report.path}: {report.blocks} blocks of {report.block_size} bytes for {report.length} bytes")


def _human(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def cmd_pull(args: argparse.Namespace) -> None:
    from siffs import pull  # noqa: PLC0415 -- the stages load only for pull

    source = args.source
    dest = args.dest or pull.default_dest(source)
    keys = None
    if not args.allow_unsigned:
        keys = trust.keys_from(args.key, required=False)
    with _delta_errors():
        stage = pull.stage_for(source)
        with _bar("pulling") as progress:
            request = pull.PullRequest(source, dest, tuple(args.seed), args.store, keys, progress)
            report = stage(request)
    if args.allow_unsigned:
        output.warn(f"{dest}: signatures not verified (--allow-unsigned)")
    for line in report.warnings:
        output.warn(line)
    if args.json:
        print_json(report.as_dict())
        return
    _print_report(report)


def _print_report(r: Result) -> None:
    share = f" ({100 * r.fetched_bytes / r.size:.2f} % of the image)" if r.size else ""
    print(f"{r.dest}: {_human(r.size)}; fetched {_human(r.fetched_bytes)}{share} in {r.requests} requests")
    for seed, n in r.reused.items():
        print(f"  reused {_human(n)} from {seed}")
    if r.resumed_bytes:
        print(f"  resumed {_human(r.resumed_bytes)} from an interrupted pull")
    if r.signers:
        print("  verified: signed by " + "; ".join(r.signers))
