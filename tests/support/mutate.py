"""Apply the corpus' ``malformed`` patch operations to a copy of an image."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path
from typing import Any


def apply_ops(source: Path, dest: Path, ops: list[dict[str, Any]]) -> Path:
    shutil.copyfile(source, dest)
    with open(dest, "r+b") as f:
        for op in ops:
            kind = op["op"]
            if kind == "truncate":
                f.truncate(op["size"])
                continue
            f.seek(op["offset"])
            if kind == "le64":
                f.write(struct.pack("<q", op["value"]))
            elif kind == "le32":
                f.write(struct.pack("<I", op["value"] & 0xFFFFFFFF))
            elif kind == "u8":
                f.write(bytes([op["value"]]))
            elif kind == "bytes":
                f.write(bytes.fromhex(op["hex"]))
            else:
                raise ValueError(f"unknown patch op {kind}")
    return dest
