"""``siffs pull [DEST.sif] SOURCE``: one command for every whole-file stage.

SOURCE picks the stage (``siffs.pull``): a ``.caibx`` index or ``.zsync`` control file (path or
URL; delta transfer reusing local seeds), ``oras://`` (a SIF artifact), or ``docker://``, ``oci:``
and ``oci-archive:`` (an image converted to SIF). Whatever the stage, the result passes the trust
policy before it replaces DEST, unless ``--allow-unsigned``. Only parsing and printing live here.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from siffs.cli import encrypted, output, trust
from siffs.cli.common import interrupt_on_sigterm, print_json
from siffs.cli.progress import ProgressBar
from siffs.cli.registry import connection_arguments, prompted_credentials
from siffs.open.trust import keys_from

if TYPE_CHECKING:
    from siffs.pull import Result


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "pull",
        help="fetch an image: .caibx/.zsync (delta), oras:// (SIF), docker:// or oci[-archive]: (converted)",
    )
    p.add_argument("dest", nargs="?", metavar="DEST.sif", help="image to write (default: named after SOURCE)")
    p.add_argument(
        "source",
        metavar="SOURCE",
        help=".caibx or .zsync (path or URL), oras://…, docker://…, oci:DIR[:TAG], oci-archive:FILE[:TAG]",
    )
    p.add_argument("--json", action="store_true", help="print the transfer report as JSON")
    trust.add_arguments(p)
    delta = p.add_argument_group("delta transfer (.caibx, .zsync)")
    delta.add_argument(
        "--seed",
        action="append",
        default=[],
        metavar="FILE",
        help="a local file to reuse chunks from (repeatable; DEST's previous version always is one)",
    )
    delta.add_argument(
        "--store", metavar="URL", help="chunk store URL or directory (default: default.castr by the index)"
    )
    encrypted.add_arguments(p)
    registry = p.add_argument_group("registries and OCI images (oras://, docker://, oci:, oci-archive:)")
    registry.add_argument("--arch", default="amd64", help="architecture to take from an index")
    registry.add_argument("--force", action="store_true", help="overwrite an existing DEST")
    registry.add_argument("--disable-cache", action="store_true", help="keep nothing in siffs' blob cache")
    connection_arguments(registry)
    registry.add_argument(
        "--keep-owners", action="store_true", help="keep the layers' file owners (default: all owned by root)"
    )
    p.set_defaults(func=cmd_pull)


def _human(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def cmd_pull(args: argparse.Namespace) -> None:
    from siffs import pull  # noqa: PLC0415 -- the stages load only for pull
    from siffs.registry.pull import RegistryPull  # noqa: PLC0415

    interrupt_on_sigterm()
    source = args.source
    stage = pull.stage_for(source)
    dest = args.dest or pull.default_dest(source)
    keys = None if args.allow_unsigned else keys_from(args.key, required=False)
    registry = RegistryPull(
        arch=args.arch,
        force=args.force,
        cache=not args.disable_cache,
        no_https=args.no_https,
        ca_file=args.ca_file,
        authfile=args.authfile,
        credentials=prompted_credentials(args),
        keep_owners=args.keep_owners,
    )
    with ProgressBar("pulling") as progress:
        choice = encrypted.KeyChoice.from_args(args)
        request = pull.PullRequest(
            source, dest, tuple(args.seed), args.store, keys, progress, registry, choice.material
        )
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
