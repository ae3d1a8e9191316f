"""Open a SIF file and check its structure before anyone trusts a single offset.

The header and the descriptor table are read (kilobytes, whatever the image size); objects
stay on disk and are read on demand with ``os.pread`` through the open descriptor, so that
inspecting a 10 GB image touches only its tables and concurrent readers need no locks.

Everything a hostile or damaged file could lie about is checked here, once, before any
allocation sized by an untrusted field (sif-format.md §10): counts, table bounds, object
bounds, overlaps and duplicate IDs. Code above this layer may then rely on every used
descriptor pointing inside the file.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from collections.abc import Iterator
from types import TracebackType

from siffs.sif.errors import ObjectNotFoundError, SifFormatError, SifIOError
from siffs.sif.raw import Descriptor, Header
from siffs.sif.types import DESCRIPTOR_SIZE, HEADER_SIZE, MAGIC, VERSION, DataType

#: Largest descriptor table accepted: far above any real image (the default is 48 slots),
#: small enough that reading it cannot exhaust memory.
MAX_DESCRIPTORS = 1 << 16


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    """Read exactly ``size`` bytes at ``offset`` or raise ``SifIOError`` (file shrank)."""
    data = os.pread(fd, size, offset)
    if len(data) == size:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = os.pread(fd, size - got, offset + got)
        if not more:
            raise SifIOError(f"unexpected end of file at byte {offset + got} (the file was truncated?)")
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class Image:
    """A loaded SIF container: header, descriptor slots and an open file descriptor.

    Use as a context manager, or call ``close``. ``descriptors`` holds the used slots in
    slot order, which is the order siftool lists them and legacy group digests use.
    """

    def __init__(
        self, path: str, fd: int, file_size: int, header: Header, slots: tuple[Descriptor, ...]
    ) -> None:
        self.path = path
        self.fd = fd
        self.file_size = file_size
        self.header = header
        self.slots = slots
        self.descriptors = tuple(d for d in slots if d.used)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, writable: bool = False) -> Image:
        """Open and validate ``path``; raises ``SifIOError`` or ``SifFormatError``."""
        path = os.fspath(path)
        try:
            fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
        except OSError as exc:
            raise SifIOError(_describe_os_error(exc)) from exc
        try:
            file_size = _checked_size(fd)
            header, slots = _load_tables(fd, file_size)
        except OSError as exc:
            os.close(fd)
            raise SifIOError(_describe_os_error(exc)) from exc
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, file_size, header, slots)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Image:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- look-ups ---------------------------------------------------------------------

    def get(self, object_id: int) -> Descriptor:
        """The used descriptor with this ID (IDs are unique: checked at load)."""
        for d in self.descriptors:
            if d.id == object_id:
                return d
        raise ObjectNotFoundError(f"object {object_id} not found")

    def primary_partition(self) -> Descriptor:
        """The single primary system partition (the one a runtime mounts as ``/``)."""
        found = [d for d in self.descriptors if d.is_primary_partition]
        if not found:
            raise ObjectNotFoundError("no primary system partition in the image")
        if len(found) > 1:
            ids = ", ".join(str(d.id) for d in found)
            raise SifFormatError(f"several primary system partitions ({ids}): refusing to choose one")
        return found[0]

    def groups(self) -> list[int]:
        """Group numbers that hold at least one object, ascending."""
        return sorted({d.group for d in self.descriptors if d.group})

    def group_members(self, group: int) -> list[Descriptor]:
        """Used descriptors of ``group``, in slot order."""
        return [d for d in self.descriptors if d.group == group]

    def relative_id(self, d: Descriptor) -> int:
        """ID relative to the smallest ID sharing the same raw GroupID (sif-format.md §5)."""
        lowest = min(o.id for o in self.descriptors if o.group_id_raw == d.group_id_raw)
        return (d.id - lowest) & 0xFFFFFFFF

    def signatures(self) -> list[Descriptor]:
        return [d for d in self.descriptors if d.data_type == DataType.SIGNATURE]

    # -- object data ------------------------------------------------------------------

    def read(self, d: Descriptor, offset: int = 0, size: int | None = None) -> bytes:
        """Bytes of object ``d`` from ``offset`` (relative to the object), at most to its end."""
        if offset < 0 or offset > d.size:
            raise SifIOError(f"read at {offset} outside object {d.id} of {d.size} bytes")
        length = d.size - offset if size is None else min(size, d.size - offset)
        try:
            return pread_exact(self.fd, length, d.offset + offset)
        except OSError as exc:
            raise SifIOError(_describe_os_error(exc)) from exc

    def iter_chunks(self, d: Descriptor, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Object data in chunks, for hashing or copying large partitions in bounded memory."""
        for start in range(0, d.size, chunk_size):
            yield self.read(d, start, chunk_size)


def _describe_os_error(exc: OSError) -> str:
    reason = {
        errno.ENOENT: "no such file",
        errno.EACCES: "permission denied",
        errno.EISDIR: "is a directory, not a SIF file",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return reason


def _checked_size(fd: int) -> int:
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        raise SifIOError("is a directory, not a SIF file")
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    raise SifIOError("not a regular file")


def _load_tables(fd: int, file_size: int) -> tuple[Header, tuple[Descriptor, ...]]:
    if file_size < HEADER_SIZE:
        raise SifFormatError(
            f"truncated header: the file has {file_size} bytes, a SIF header needs {HEADER_SIZE}"
        )
    header = Header.unpack(pread_exact(fd, HEADER_SIZE, 0))
    if header.magic != MAGIC:
        raise SifFormatError("not a SIF file (invalid SIF magic)")
    if header.version != VERSION:
        version = header.version.rstrip(b"\0").decode("ascii", "replace")
        raise SifFormatError(f"incompatible SIF version {version!r} (only 01 is known)")
    _check_table_bounds(header, file_size)
    table = pread_exact(fd, header.descriptors_total * DESCRIPTOR_SIZE, header.descriptors_offset)
    slots = tuple(
        Descriptor.unpack(i, table[i * DESCRIPTOR_SIZE : (i + 1) * DESCRIPTOR_SIZE])
        for i in range(header.descriptors_total)
    )
    _check_descriptors(header, slots, file_size)
    return header, slots


def _check_table_bounds(h: Header, file_size: int) -> None:
    total, offset = h.descriptors_total, h.descriptors_offset
    if total < 0 or total > MAX_DESCRIPTORS:
        raise SifFormatError(f"descriptor count {total} is out of range (0 to {MAX_DESCRIPTORS})")
    if h.descriptors_free < 0 or h.descriptors_free > total:
        raise SifFormatError(f"free descriptor count {h.descriptors_free} does not fit a table of {total}")
    if h.descriptors_size < total * DESCRIPTOR_SIZE:
        raise SifFormatError(
            f"descriptor table of {total} slots needs {total * DESCRIPTOR_SIZE} bytes, "
            f"the header gives {h.descriptors_size}"
        )
    if offset < HEADER_SIZE and total > 0:
        raise SifFormatError(f"descriptor table offset {offset} overlaps the header")
    if offset + total * DESCRIPTOR_SIZE > file_size:
        raise SifFormatError(
            f"truncated descriptor table: it ends at byte {offset + total * DESCRIPTOR_SIZE}, "
            f"the file has {file_size}"
        )


def _check_descriptors(h: Header, slots: tuple[Descriptor, ...], file_size: int) -> None:
    used = [d for d in slots if d.used]
    if h.descriptors_free != len(slots) - len(used):
        raise SifFormatError(
            f"header says {h.descriptors_free} free descriptors, the table has {len(slots) - len(used)}"
        )
    table = (h.descriptors_offset, h.descriptors_offset + len(slots) * DESCRIPTOR_SIZE)
    seen: dict[int, Descriptor] = {}
    for d in used:
        if d.id in seen:
            raise SifFormatError(f"duplicate object ID {d.id} (slots {seen[d.id].slot} and {d.slot})")
        seen[d.id] = d
        if d.offset < 0 or d.size < 0 or d.offset + d.size > file_size:
            raise SifFormatError(
                f"object {d.id} ({d.offset}+{d.size}) lies outside the file of {file_size} bytes (truncated?)"
            )
        if d.size and d.offset < HEADER_SIZE:
            raise SifFormatError(f"object {d.id} overlaps the header")
        if d.size and d.offset < table[1] and d.end > table[0]:
            raise SifFormatError(f"object {d.id} overlaps the descriptor table")
    extents = sorted((d.offset, d.end, d.id) for d in used if d.size)
    for (_, end, first), (start, _, second) in itertools.pairwise(extents):
        if start < end:
            raise SifFormatError(f"objects {first} and {second} overlap")
