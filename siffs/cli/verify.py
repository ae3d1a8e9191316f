"""``siffs verify``, ``siffs sign`` and ``siffs key import|list|remove``.

Thin commands over ``siffs.integrity``: they choose the keys (``--key`` files, else the
trusted keyring), run the reference's verification algorithm and print, per signature, who
signed, what it covers and the result. Any verification failure exits NOT_TRUSTED (7); an
unusable key file exits KEY_ERROR (8).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from siffs.cli import output
from siffs.cli.common import CommandError, print_json
from siffs.cli.exitcodes import ExitCode
from siffs.cli.progress import ProgressBar
from siffs.integrity.keyring import Keyring
from siffs.integrity.keys import KeyKind, load_files, private_pem, read_key_file
from siffs.integrity.sign import DsseSigningKey, PgpSigningKey, SigningKey, sign
from siffs.integrity.verify import Mode, Report, verify
from siffs.open.trust import block_cache, keys_from, signer_text
from siffs.sif import Image


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("verify", help="verify an image's signatures (PGP, DSSE, legacy)")
    p.add_argument("image", help="SIF file")
    p.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="FILE",
        help="OpenPGP key (armored or binary, public or secret) or PEM public key; repeatable "
        "(default: the trusted keys, see 'siffs key list')",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--group", type=int, metavar="ID", help="verify this object group only")
    which.add_argument("--object", type=int, metavar="ID", help="verify this object only")
    which.add_argument("--all", action="store_true", help="with --legacy: every object (as --legacy-all)")
    legacy = p.add_mutually_exclusive_group()
    legacy.add_argument(
        "--legacy",
        action="store_true",
        help="verify pre-3.6 SIFHASH signatures (they protect object bytes only, not names or types)",
    )
    legacy.add_argument("--legacy-all", action="store_true", help="legacy signatures of every object")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("sign", help="sign an image's object groups (OpenPGP clear-sign or DSSE)")
    p.add_argument("image", help="SIF file to sign (modified in place)")
    p.add_argument(
        "--key", required=True, metavar="FILE", help="OpenPGP secret key (armored/binary) or PEM private key"
    )
    p.add_argument("--group", type=int, metavar="ID", help="sign this group only (default: every group)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--pgp", action="store_true", help="expect an OpenPGP key (default: by key content)")
    kind.add_argument("--dsse", action="store_true", help="expect a PEM key and write a DSSE envelope")
    p.add_argument("--passphrase-file", metavar="FILE", help="file holding the key's passphrase")
    p.set_defaults(func=cmd_sign)

    p = sub.add_parser("key", help="manage trusted keys (import, list, remove)")
    ksub = p.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    k = ksub.add_parser("import", help="trust the public key(s) in FILE (OpenPGP or PEM)")
    k.add_argument("file")
    k.set_defaults(func=cmd_key_import)
    k = ksub.add_parser("list", help="list trusted keys")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_key_list)
    k = ksub.add_parser("remove", help="stop trusting a key (fingerprint or DSSE key ID)")
    k.add_argument("fingerprint")
    k.set_defaults(func=cmd_key_remove)


# -- verify ---------------------------------------------------------------------------------


def _mode(args: argparse.Namespace) -> Mode:
    if args.legacy_all or (args.legacy and args.all):
        return Mode.LEGACY_ALL
    if args.all:
        raise CommandError(
            "--all goes with --legacy (all current signatures are checked by default)", ExitCode.USAGE
        )
    return Mode.LEGACY if args.legacy else Mode.NORMAL


def cmd_verify(args: argparse.Namespace) -> None:
    keys = keys_from(args.key)
    mode = _mode(args)
    with Image.open(args.image) as image:
        groups = [args.group] if args.group is not None else []
        objects = [args.object] if args.object is not None else []
        if mode is Mode.LEGACY and not groups and not objects:
            # As Singularity's --legacy-insecure: the primary partition unless told otherwise.
            objects = [image.primary_partition().id]
        with ProgressBar("verifying") as progress:
            report = verify(
                image,
                keys,
                groups=groups,
                objects=objects,
                mode=mode,
                cache=block_cache(),
                progress=progress,
            )
    for warning in report.warnings:
        output.warn(f"{args.image}: {warning}")
    if args.json:
        print_json(_report_json(report))
    else:
        _print_report(report)
    if report.error is not None:
        raise report.error


def _print_report(report: Report) -> None:
    out = sys.stdout
    for s in report.signatures:
        link = "" if s.link is None else f", {'group' if s.link.is_group else 'object'} {s.link.target}"
        out.write(f"signature {s.signature_id} ({s.format.upper()}{link}): ")
        out.write("verified\n" if s.ok else f"FAILED: {s.error}\n")
        out.write(f"  signer:  {signer_text(s)}\n")
        covered = s.verified if s.ok else s.covers
        out.write(f"  objects: {', '.join(str(i) for i in covered) or 'none'}\n")
    if report.ok:
        out.write(f"verified: objects {', '.join(str(i) for i in sorted(report.verified_objects))}\n")


def _report_json(report: Report) -> dict[str, Any]:
    sigs = []
    for s in report.signatures:
        sigs.append(
            {
                "id": s.signature_id,
                "format": s.format,
                "link": None if s.link is None else {"id": s.link.target, "is_group": s.link.is_group},
                "ok": s.ok,
                "error": None
                if s.error is None
                else {"kind": type(s.error).__name__, "message": str(s.error)},
                "covers": list(s.covers),
                "verified": list(s.verified),
                "signer": None
                if s.pgp_signer is None
                else {"fingerprint": s.pgp_signer.fingerprint, "user_id": s.pgp_signer.user_id},
                "dsse_keys": [{"keyid": k.key_id, "type": k.description} for k in s.dsse_keys],
            }
        )
    return {
        "ok": report.ok,
        "error": None
        if report.error is None
        else {"kind": type(report.error).__name__, "message": str(report.error)},
        "verified_objects": sorted(report.verified_objects),
        "signatures": sigs,
    }


# -- sign -----------------------------------------------------------------------------------


def _signing_key(args: argparse.Namespace) -> SigningKey:
    [f] = load_files([args.key])
    passphrase = read_key_file(args.passphrase_file).rstrip(b"\r\n") if args.passphrase_file else None
    if f.kind is KeyKind.PGP and not args.dsse:
        return PgpSigningKey(f.data, f.path, passphrase, output.warn)
    if f.kind is KeyKind.PEM_PRIVATE and not args.pgp:
        return DsseSigningKey((private_pem(f, passphrase),))
    want = "an OpenPGP secret key" if args.pgp or f.kind is KeyKind.PGP else "a PEM private key"
    raise CommandError(f"{args.key}: {want} is needed to sign", ExitCode.KEY_ERROR)


def cmd_sign(args: argparse.Namespace) -> None:
    key = _signing_key(args)
    with ProgressBar("hashing") as progress:
        done = sign(args.image, key, [args.group] if args.group is not None else [], progress)
    for s in done:
        objects = ", ".join(str(i) for i in s.objects)
        print(f"signed group {s.group} (objects {objects}) as signature {s.signature_id} by {s.signer}")


# -- key ------------------------------------------------------------------------------------


def cmd_key_import(args: argparse.Namespace) -> None:
    for k in Keyring().import_file(args.file):
        print(f"trusted {k.kind.upper()} key {k.id} {k.description}".rstrip())


def cmd_key_list(args: argparse.Namespace) -> None:
    keys = Keyring().keys()
    if args.json:
        print_json(
            [
                {
                    "kind": k.kind,
                    "id": k.id,
                    "description": k.description,
                    "file": str(k.path),
                    "status": k.status,
                }
                for k in keys
            ]
        )
        return
    for k in keys:
        print(f"{k.kind:4}  {k.id}  {k.description}{f'  [{k.status}]' if k.status else ''}")


def cmd_key_remove(args: argparse.Namespace) -> None:
    k = Keyring().remove(args.fingerprint)
    print(f"removed {k.kind.upper()} key {k.id} {k.description}".rstrip())
