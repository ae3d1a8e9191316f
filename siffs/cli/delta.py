"""``siffs delta make``: publish an image as a casync store + index, or a zsync control file.

Only argument parsing and printing live here; the work is in ``siffs.delta``, and ``siffs pull``
(siffs/cli/pull.py) is the other end.
"""

from __future__ import annotations

import argparse
import os

from siffs.cli import encrypted
from siffs.cli.common import CommandError, print_json
from siffs.cli.exitcodes import ExitCode
from siffs.cli.progress import ProgressBar

DEFAULT_CHUNK_SIZE = 16384


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
    encrypted.add_arguments(m)
    m.set_defaults(func=cmd_make)


def _bar(label: str) -> ProgressBar:
    return ProgressBar(label)


def cmd_make(args: argparse.Namespace) -> None:
    from siffs.open.decrypt import is_encrypted  # noqa: PLC0415
    from siffs.sif import Image  # noqa: PLC0415 -- a quick check that IMAGE is a SIF

    with Image.open(args.image) as image:  # publish SIF images only: catches a wrong file early
        primary = next((d for d in image.descriptors if d.is_primary_partition), None)
        encrypted_image = primary is not None and is_encrypted(primary)
    if args.zsync:
        if encrypted_image:
            raise CommandError(
                "an encrypted image is published as an encrypted casync store: use --store DIR, not --zsync",
                ExitCode.UNSUPPORTED,
            )
        _make_zsync(args)
        return
    from siffs.delta.chunker import ChunkSizes  # noqa: PLC0415 -- numpy only for delta commands
    from siffs.delta.make import make_store  # noqa: PLC0415

    index = args.index or os.path.join(
        os.path.dirname(os.path.abspath(args.store.rstrip("/"))), os.path.basename(args.image) + ".caibx"
    )
    if encrypted_image:
        _make_encrypted(args, index)
        return
    with _bar("chunking") as progress:
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
    with _bar("checksumming") as progress:
        report = zsync.make(args.image, out, url=args.url, block_size=args.block_size, progress=progress)
    if args.json:
        print_json(vars(report))
        return
    print(f"{report.path}: {report.blocks} blocks of {report.block_size} bytes for {report.length} bytes")


def _make_encrypted(args: argparse.Namespace, index: str) -> None:
    """Publish the plaintext of an encrypted image into an encrypted store (needs its key)."""
    from siffs.crypt.keys import keep_out_of_core_dumps  # noqa: PLC0415 -- loads only when needed
    from siffs.delta.chunker import ChunkSizes  # noqa: PLC0415
    from siffs.delta.encrypted import make_encrypted  # noqa: PLC0415

    keep_out_of_core_dumps()  # before the key is read, not only before what it unlocks
    material = encrypted.KeyChoice.from_args(args).material()
    with _bar("chunking the plaintext") as progress:
        report = make_encrypted(
            args.image,
            args.store,
            index,
            ChunkSizes.from_average(args.chunk_size),
            material,
            progress=progress,
            notice=encrypted.notice,
        )
    if args.json:
        print_json(vars(report))
        return
    print(
        f"{report.index_path}: encrypted index of a {report.kind} image, {report.chunks} chunks "
        f"({report.plaintext_chunks} sealed), {report.blob_size} bytes; "
        f"{report.new_chunks} new chunks ({report.stored_bytes} bytes) added to {report.store}"
    )
