"""``siffs list|info|header|dump``: look inside a SIF the way ``siftool`` does.

Text output is byte-for-byte siftool's; ``--json`` gives the same facts for scripts.
"""

from __future__ import annotations

import argparse
import sys

from siffs.cli import output
from siffs.cli.common import print_json, write_bytes
from siffs.open import decrypt
from siffs.sif import Image
from siffs.sif.describe import descriptor_json, header_json, header_text, image_json, info_text, list_text


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("list", help="list the data objects of an image (as siftool list)")
    p.add_argument("image", help="SIF file")
    p.add_argument("--json", action="store_true", help="print the header and every descriptor as JSON")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="describe one data object (as siftool info)")
    p.add_argument("id", type=int, help="object ID (see 'siffs list')")
    p.add_argument("image", help="SIF file")
    p.add_argument("--json", action="store_true", help="print the descriptor as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("header", help="show the global header (as siftool header)")
    p.add_argument("image", help="SIF file")
    p.add_argument("--json", action="store_true", help="print the header as JSON")
    p.set_defaults(func=cmd_header)

    p = sub.add_parser("dump", help="write the data of one object to standard output (as siftool dump)")
    p.add_argument("id", type=int, help="object ID")
    p.add_argument("image", help="SIF file")
    p.set_defaults(func=cmd_dump)


def cmd_list(args: argparse.Namespace) -> None:
    with Image.open(args.image) as image:
        if args.json:
            print_json(image_json(image))
        else:
            sys.stdout.write(list_text(image))


def cmd_info(args: argparse.Namespace) -> None:
    with Image.open(args.image) as image:
        d = image.get(args.id)
        if args.json:
            facts = descriptor_json(d)
            if decrypt.is_encrypted(d):
                facts["encryption"] = decrypt.describe(image, d, output.warn)
            print_json(facts)
        else:
            sys.stdout.write(info_text(d))


def cmd_header(args: argparse.Namespace) -> None:
    with Image.open(args.image) as image:
        if args.json:
            print_json(header_json(image.header))
        else:
            sys.stdout.write(header_text(image.header))


def cmd_dump(args: argparse.Namespace) -> None:
    with Image.open(args.image) as image:
        for chunk in image.iter_chunks(image.get(args.id)):
            write_bytes(chunk)
