"""``siffs cache list|clean``: what siffs' per-user caches hold, and emptying them."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from siffs import cache
from siffs.cli.common import CommandError, print_json
from siffs.cli.exitcodes import ExitCode


@dataclass(frozen=True)
class Cache:
    name: str
    what: str
    directory: Callable[[], Path]
    limit_mib: int


def _caches() -> list[Cache]:
    """Every cache siffs keeps, with its directory and default size limit."""
    from siffs.delta import seeds  # noqa: PLC0415
    from siffs.integrity import blockcache  # noqa: PLC0415 -- only the command that lists caches needs it
    from siffs.registry import cache as registry  # noqa: PLC0415

    return [
        Cache(
            "blocktables",
            "verified block tables: re-mounting an unchanged signed image skips hashing",
            blockcache.default_directory,
            blockcache.LIMIT_MIB,
        ),
        Cache(
            "registry",
            "verified blobs pulled from registries: a repeated or interrupted pull fetches nothing twice",
            registry.blob_directory,
            registry.LIMIT_MIB,
        ),
        Cache(
            "seeds",
            "how delta seeds are cut (encrypted images' sealed): a seed is read in full once",
            seeds.cache_directory,
            seeds.LIMIT_MIB,
        ),
    ]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("cache", help="list or empty siffs' caches")
    what = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    ls = what.add_parser("list", help="each cache's directory, size and limit")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_list)
    clean = what.add_parser("clean", help="empty the caches (all, or those named)")
    clean.add_argument("names", nargs="*", metavar="NAME", help="caches to empty (see 'siffs cache list')")
    clean.set_defaults(func=cmd_clean)


def cmd_list(args: argparse.Namespace) -> None:
    rows = []
    for c in _caches():
        used, directory, limit = cache.usage(c.directory()), c.directory(), cache.limit(c.limit_mib)
        if not args.json:
            print(f"{c.name}: {used.files} files, {_mib(used.bytes)} of {_mib(limit)} in {directory}")
            print(f"  {c.what}")
        rows.append(
            {
                "name": c.name,
                "directory": str(directory),
                "files": used.files,
                "bytes": used.bytes,
                "limit_bytes": limit,
                "what": c.what,
            }
        )
    if args.json:
        print_json(rows)


def cmd_clean(args: argparse.Namespace) -> None:
    caches = {c.name: c for c in _caches()}
    unknown = [n for n in args.names if n not in caches]
    if unknown:
        raise CommandError(f"no cache named {unknown[0]!r}; caches: {', '.join(caches)}", ExitCode.USAGE)
    for name in args.names or list(caches):
        freed = cache.clean(caches[name].directory())
        print(f"{name}: removed {freed.files} files ({_mib(freed.bytes)})")


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"
