"""zsync control files (as Debian's zsync 0.6.2 reads and writes them) and pulls through them.

A control file is text headers, an empty line, then one record per block of the target file:
the last ``rsum_bytes`` bytes of the big-endian (A, B) rolling checksum and the first
``checksum_bytes`` bytes of the block's MD4 (the last block is zero-padded to a full block).
Making one here gives the same bytes as ``zsyncmake`` for the same file, name, URL and mtime.

Pulling: every offset of every seed is tried as a block start, candidate offsets go through a
hash filter and the exact rsum, and only survivors are MD4-checked. The native module
``siffs.delta._zscan`` does this a byte at a time with a rolling sum, as zsync does; the numpy
``_Matcher`` (all offsets of a piece at once: the rolling sums are differences of prefix sums) is
its fallback and its oracle, with the same results decision for decision. With ``seq_matches``
2 a block counts as found only when the next block matches right after it, as zsync requires.
What the seeds lack is fetched with HTTP Range requests, several in flight, and every block is
MD4-checked before use; the whole file is then checked against the SHA-1 header and the SIF
signatures, and only then replaces the destination.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import numpy.typing as npt
from Crypto.Hash import MD4

from siffs import native
from siffs.delta.errors import DeltaIOError, DigestMismatchError, IndexFormatError, UnsupportedFormatError
from siffs.delta.files import Journal, describe, write_atomic
from siffs.delta.http import HttpClient, is_url
from siffs.delta.pull import PullReport, partial_path, read_source, seed_paths
from siffs.delta.target import Assembly, Trust

Progress = Callable[[int, int], None]

VERSION = "0.6.2"
_MAX_HEADER = 64 << 10
_PIECE = 1 << 20  # bytes per read when checksumming or scanning: numpy's temporaries stay small
_RANGE_BLOCKS = 64  # at most this many consecutive blocks per Range request
_COPY_RUN = 8 << 20  # at most this many bytes per copy from a seed
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class ControlFile:
    """A parsed ``.zsync``."""

    filename: str
    block_size: int
    length: int
    seq_matches: int
    rsum_bytes: int
    checksum_bytes: int
    urls: tuple[str, ...]
    sha1: str | None
    records: bytes  #: rsum_bytes + checksum_bytes per block

    @property
    def blocks(self) -> int:
        return -(-self.length // self.block_size)

    @property
    def record_size(self) -> int:
        return self.rsum_bytes + self.checksum_bytes

    def rsums(self) -> npt.NDArray[np.uint32]:
        """Every block's :meth:`rsum`, at once."""
        rows = np.frombuffer(self.records, dtype=np.uint8).reshape(-1, self.record_size)
        keys = np.zeros(len(rows), dtype=np.uint32)
        for column in range(self.rsum_bytes):
            keys = (keys << np.uint32(8)) | rows[:, column]
        return keys

    def rsum(self, i: int) -> int:
        """Block ``i``'s rolling checksum as ``A << 16 | B``, with the bytes the file omits as zero."""
        record = self.records[i * self.record_size : i * self.record_size + self.rsum_bytes]
        return int.from_bytes(record, "big")

    def checksum(self, i: int) -> bytes:
        start = i * self.record_size + self.rsum_bytes
        return self.records[start : start + self.checksum_bytes]

    @property
    def a_mask(self) -> int:
        return {2: 0, 3: 0xFF, 4: 0xFFFF}[self.rsum_bytes]


def hash_lengths(length: int, block_size: int) -> tuple[int, int, int]:
    """zsyncmake's choice of (seq_matches, rsum_bytes, checksum_bytes) for a file of this size."""
    seq = 2 if length > block_size else 1
    log_len = math.log(length) if length > 0 else 0.0
    rsum = math.ceil(((log_len + math.log(block_size)) / math.log(2) - 8.6) / seq / 8)
    rsum = min(max(rsum, 2), 4)
    blocks = 1 + length // block_size
    checksum = math.ceil((20 + (log_len + math.log(blocks)) / math.log(2)) / seq / 8)
    checksum = max(checksum, int((7.9 + (20 + math.log(blocks) / math.log(2))) / 8))
    return seq, rsum, min(checksum, 16)


def default_block_size(length: int) -> int:
    return 2048 if length < 100_000_000 else 4096


def _rsums(blocks: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """(A, B) of each row: A = sum of bytes, B = sum of (block_size - k) * byte k, both mod 2^16."""
    size = blocks.shape[1]
    weights = np.arange(size, 0, -1, dtype=np.uint64)
    wide = blocks.astype(np.uint64)
    a = wide.sum(axis=1) & np.uint64(0xFFFF)
    b = (wide @ weights) & np.uint64(0xFFFF)
    return a, b


_native = native.load("siffs.delta._zscan", abi=1)


def _md4(block: bytes | memoryview) -> bytes:
    if _native is not None:
        native_digest: bytes = _native.md4(block)
        return native_digest
    digest: bytes = MD4.new(bytes(block)).digest()
    return digest


def _http_date(seconds: float) -> str:
    t = time.gmtime(seconds)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02}:{t.tm_min:02}:{t.tm_sec:02} +0000"
    )


@dataclass(frozen=True)
class MakeReport:
    path: str
    length: int
    block_size: int
    blocks: int


def make(
    image: str,
    out: str,
    *,
    url: str | None = None,
    block_size: int | None = None,
    progress: Progress | None = None,
) -> MakeReport:
    """Write ``image``'s control file to ``out``, as ``zsyncmake -u URL`` would."""
    try:
        st = os.stat(image)
        f = open(image, "rb")  # noqa: SIM115 -- closed below; streamed in blocks
    except OSError as exc:
        raise describe(exc, image) from None
    length = st.st_size
    size = block_size or default_block_size(length)
    if size < 64 or size > 1 << 20 or size & (size - 1):
        raise UnsupportedFormatError(f"block size {size} is not a power of two between 64 and 1 MiB")
    seq, rsum_bytes, checksum_bytes = hash_lengths(length, size)
    records = bytearray()
    sha1 = hashlib.sha1()
    done = 0
    with f:
        while data := f.read(max(size, _PIECE)):
            sha1.update(data)
            done += len(data)
            if len(data) % size:
                data += bytes(size - len(data) % size)
            rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, size)
            a, b = _rsums(rows)
            packed = ((a << np.uint64(16)) | b).astype(">u4").tobytes()
            for i in range(len(rows)):
                records += packed[4 * i + 4 - rsum_bytes : 4 * i + 4]
                records += _md4(data[i * size : (i + 1) * size])[:checksum_bytes]
            if progress is not None:
                progress(done, length)
    name = os.path.basename(image)
    header = (
        f"zsync: {VERSION}\nFilename: {name}\nMTime: {_http_date(st.st_mtime)}\nBlocksize: {size}\n"
        f"Length: {length}\nHash-Lengths: {seq},{rsum_bytes},{checksum_bytes}\nURL: {url or name}\n"
        f"SHA-1: {sha1.hexdigest()}\n\n"
    )
    write_atomic(out, header.encode() + bytes(records))
    return MakeReport(out, length, size, -(-length // size))


def parse(data: bytes, *, what: str = "control file") -> ControlFile:
    """Parse and check a control file; refuses what zsync 0.6.2 would, and compressed-target files."""

    def bad(rule: str) -> IndexFormatError:
        return IndexFormatError(f"corrupt {what}: {rule}")

    end = data.find(b"\n\n", 0, _MAX_HEADER)
    if not data.startswith(b"zsync: ") or end < 0:
        raise bad("no 'zsync:' header block ending in an empty line")
    headers: dict[str, list[str]] = {}
    for line in data[:end].decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition(": ")
        if not sep:
            raise bad(f"header line without ': ': {line[:60]!r}")
        headers.setdefault(key, []).append(value.strip())

    def number(key: str, default: str | None = None) -> int:
        text = headers.get(key, [default])[0]
        if text is None or not text.isdigit():
            raise bad(f"{key} header missing or not a number")
        return int(text)

    for key in ("Z-URL", "Z-Map2", "Recompress"):
        if key in headers:
            raise UnsupportedFormatError(f"{what} describes a gzip-compressed target ({key}): not supported")
    algorithm = headers.get("Strong-Hash-Algorithm", ["MD4"])[0]
    if algorithm != "MD4":
        raise UnsupportedFormatError(f"{what} uses {algorithm} block checksums: siffs reads MD4 only")
    size, length = number("Blocksize"), number("Length")
    if size < 64 or size > 1 << 24 or size & (size - 1):
        raise bad(f"block size {size} is not a power of two between 64 and 16 MiB")
    lengths = headers.get("Hash-Lengths", ["1,4,16"])[0].split(",")
    if len(lengths) != 3 or not all(p.isdigit() for p in lengths):
        raise bad("Hash-Lengths is not three numbers")
    seq, rsum_bytes, checksum_bytes = (int(p) for p in lengths)
    if seq not in (1, 2) or rsum_bytes not in (2, 3, 4) or not 3 <= checksum_bytes <= 16:
        raise bad(f"Hash-Lengths {seq},{rsum_bytes},{checksum_bytes} out of range (1-2, 2-4, 3-16)")
    urls = tuple(headers.get("URL", []))
    if not urls:
        raise bad("no URL header: nothing to fetch missing blocks from")
    sha1 = headers.get("SHA-1", [None])[0]
    if sha1 is not None and (len(sha1) != 40 or any(c not in "0123456789abcdefABCDEF" for c in sha1)):
        raise bad("SHA-1 header is not 40 hex digits")
    records = data[end + 2 :]
    count = -(-length // size)
    if len(records) != count * (rsum_bytes + checksum_bytes):
        raise bad(f"{len(records)} bytes of block checksums for {count} blocks (truncated or extra data)")
    filename = headers.get("Filename", [""])[0]
    return ControlFile(
        filename, size, length, seq, rsum_bytes, checksum_bytes, urls, sha1 and sha1.lower(), records
    )


# -- pulling -----------------------------------------------------------------------------------------

_FILTER_BITS = 24
_U32 = np.uint32


def _slot(
    first: npt.NDArray[np.uint32], second: npt.NDArray[np.uint32] | None = None
) -> npt.NDArray[np.uint32]:
    """A 24-bit hash of a rolling key (or of a pair of them) for the candidate filter."""
    h = first * _U32(0x9E3779B1)
    if second is not None:
        h = (h ^ second) * _U32(0x85EBCA6B)
    return h >> _U32(32 - _FILTER_BITS)


class _Matcher:
    """Finds target blocks in seeds: key filter, exact key, MD4; then runs are extended forward.

    All rolling-sum arithmetic is done in ``uint16``: the sums only matter modulo 2^16, and
    wrapping arithmetic is exact modulo its width, so the arrays stay a quarter of ``uint64``'s.
    """

    def __init__(self, control: ControlFile) -> None:
        self.c = control
        n = control.blocks
        keys = control.rsums()
        self.pairs = control.seq_matches == 2 and n > 1
        self.by_key: dict[int, list[int]] = {}
        if self.pairs:
            combined = (keys[:-1].astype(np.uint64) << np.uint64(32)) | keys[1:]
            slots = _slot(keys[:-1], keys[1:])
        else:
            combined, slots = keys.astype(np.uint64), _slot(keys)
        for i, key in enumerate(combined.tolist()):
            self.by_key.setdefault(key, []).append(i)
        self.known = np.unique(combined)
        self.filter = np.zeros(1 << _FILTER_BITS, dtype=np.bool_)
        self.filter[slots] = True
        self.found: dict[int, tuple[int, int]] = {}  # block -> (seed number, offset)
        self._resume = 0  # offsets of the seed being scanned below this lie in a run found
        self._index = (
            np.arange(max(_PIECE, control.block_size) + 2 * control.block_size, dtype=np.uint32)
            & _U32(0xFFFF)
        ).astype(np.uint16)

    def _keys(self, data: npt.NDArray[np.uint8], starts: int) -> npt.NDArray[np.uint32]:
        """The rolling key (A masked as the file stores it, << 16 | B) of the first ``starts`` offsets."""
        size, n = self.c.block_size, len(data)
        d16 = data.astype(np.uint16)
        c1 = np.zeros(n + 1, dtype=np.uint16)
        np.cumsum(d16, dtype=np.uint16, out=c1[1:])
        c2 = np.zeros(n + 1, dtype=np.uint16)
        d16 *= self._index[:n]
        np.cumsum(d16, dtype=np.uint16, out=c2[1:])
        a = c1[size : size + starts] - c1[:starts]
        # B = size*A - sum(k * byte[o+k]) = size*A - (C2[o+size] - C2[o]) + o*A, all modulo 2^16.
        b = np.uint16(size & 0xFFFF) * a - (c2[size : size + starts] - c2[:starts]) + self._index[:starts] * a
        keys = (a & np.uint16(self.c.a_mask)).astype(np.uint32) << _U32(16)
        keys |= b
        return keys

    def scan(self, number: int, fd: int, size: int, progress: Progress | None) -> None:
        """Record where seed ``number`` (open as ``fd``) holds target blocks."""
        c = self.c
        span = c.block_size * (2 if self.pairs else 1)
        step = max(c.block_size, _PIECE)
        pos = 0
        self._resume = 0
        while pos < size and len(self.found) < c.blocks:
            data = os.pread(fd, step + span - 1, pos)
            starts = min(step, len(data) - span + 1)
            if starts > 0:
                self._scan_piece(number, fd, np.frombuffer(data, dtype=np.uint8), pos, starts)
            pos += step
            if progress is not None:
                progress(min(pos, size), size)

    def _scan_piece(self, number: int, fd: int, data: npt.NDArray[np.uint8], pos: int, starts: int) -> None:
        c = self.c
        keys = self._keys(data, starts + (c.block_size if self.pairs else 0))
        if self.pairs:
            first, second = keys[:starts], keys[c.block_size : c.block_size + starts]
            hits = np.flatnonzero(self.filter[_slot(first, second)])
            combined = (first[hits].astype(np.uint64) << np.uint64(32)) | second[hits]
        else:
            hits = np.flatnonzero(self.filter[_slot(keys[:starts])])
            combined = keys[hits].astype(np.uint64)
        at = np.minimum(np.searchsorted(self.known, combined), len(self.known) - 1)
        exact = self.known[at] == combined
        raw = data.tobytes()
        for offset, key in zip(hits[exact].tolist(), combined[exact].tolist(), strict=True):
            at = pos + offset
            if at < self._resume:
                continue  # inside a run just found: zsync skips it too
            for block in self.by_key.get(key, ()):
                if block in self.found or not self._strong(raw, offset, block):
                    continue
                if not self.pairs:
                    self.found[block] = (number, at)
                    self._resume = max(self._resume, at + c.block_size)
                elif self._strong(raw, offset + c.block_size, block + 1):
                    self.found[block] = (number, at)
                    here_too = self.found.setdefault(block + 1, (number, at + c.block_size)) == (
                        number,
                        at + c.block_size,
                    )
                    run_end = self._extend_from(number, fd, block + 1)
                    end = run_end if here_too and run_end is not None else at + 2 * c.block_size
                    self._resume = max(self._resume, end, at + 2 * c.block_size)

    def _strong(self, raw: bytes, offset: int, block: int) -> bool:
        c = self.c
        piece = raw[offset : offset + c.block_size]
        if len(piece) < c.block_size:
            piece += bytes(c.block_size - len(piece))
        return _md4(piece)[: c.checksum_bytes] == c.checksum(block)

    def _extend_from(self, number: int, fd: int, block: int) -> int | None:
        """Once a block is found, its successors are tried right after it, alone (as zsync does):
        one MD4 per block of an unchanged run, and the run's last block, which has no matching pair,
        is found too. Returns the seed offset just past the last block found here, if any."""
        c = self.c
        offset = self.found[block][1]
        end = None
        block += 1
        while block < c.blocks and block not in self.found:
            offset += c.block_size
            if not self._strong(os.pread(fd, c.block_size, offset), 0, block):
                break
            self.found[block] = (number, offset)
            end = offset + c.block_size
            block += 1
        return end


class _NativeMatcher:
    """The same search as :class:`_Matcher`, in C (``siffs.delta._zscan``)."""

    _STEP = 32 << 20  #: seed bytes per call: progress is reported between calls

    def __init__(self, control: ControlFile, module: ModuleType) -> None:
        self.c = control
        rows = np.frombuffer(control.records, dtype=np.uint8).reshape(-1, control.record_size)
        keys = control.rsums().astype(np.uint64)
        pairs = control.seq_matches == 2 and control.blocks > 1
        if pairs:
            keys = (keys[:-1] << np.uint64(32)) | keys[1:]
        # Entries grouped by key, each group in block order: what the C side looks up.
        order = np.argsort(keys, kind="stable").astype(np.int32)
        distinct, starts = np.unique(keys[order], return_index=True)
        self._m = module.Matcher(
            rows[:, control.rsum_bytes :].tobytes(),
            control.block_size,
            control.checksum_bytes,
            control.a_mask,
            pairs,
            order.tobytes(),
            distinct.astype(np.uint64).tobytes(),
            np.append(starts, len(keys)).astype(np.int32).tobytes(),
        )

    @property
    def found(self) -> dict[int, tuple[int, int]]:
        """block -> (seed number, offset), as :attr:`_Matcher.found`."""
        found: dict[int, tuple[int, int]] = self._m.found()
        return found

    def scan(self, number: int, fd: int, size: int, progress: Progress | None) -> None:
        for start in range(0, size, self._STEP):
            if self._m.count == self.c.blocks:
                break
            self._m.scan(number, fd, start, start + self._STEP, size)
            if progress is not None:
                progress(min(start + self._STEP, size), size)


def native_available() -> bool:
    """Whether seeds are scanned in C (benchmarks and tests report it)."""
    return _native is not None


def matcher(control: ControlFile, *, use_native: bool = True) -> _Matcher | _NativeMatcher:
    """The seed scanner for ``control``: native unless unavailable (or not wanted, to compare)."""
    if use_native and _native is not None:
        return _NativeMatcher(control, _native)
    return _Matcher(control)


def _ranges(missing: Sequence[int]) -> Iterator[tuple[int, int]]:
    """Runs of consecutive block numbers, at most _RANGE_BLOCKS each: (first, end)."""
    run_start = prev = None
    for block in missing:
        if (
            run_start is not None
            and prev is not None
            and block == prev + 1
            and block - run_start < _RANGE_BLOCKS
        ):
            prev = block
            continue
        if run_start is not None and prev is not None:
            yield run_start, prev + 1
        run_start = prev = block
    if run_start is not None and prev is not None:
        yield run_start, prev + 1


def _range_key(first: int, end: int) -> bytes:
    return b"zsync-blocks".ljust(16, b"\0") + first.to_bytes(8, "little") + end.to_bytes(8, "little")


def pull(
    source: str,
    dest: str,
    *,
    seed_files: Sequence[str] = (),
    trust: Trust,
    progress: Progress | None = None,
    client: HttpClient | None = None,
) -> PullReport:
    """Assemble ``source``'s target file at ``dest`` (see the module docstring)."""
    client = client or HttpClient()
    raw = read_source(source, client)
    control = parse(raw, what=f"control file {source}")
    report = PullReport(dest, source, control.length, index_bytes=len(raw), fetched_bytes=len(raw))
    target = _target_location(source, control)
    finder = matcher(control)
    paths = seed_paths(dest, seed_files)
    fds: list[int] = []
    try:
        for number, path in enumerate(paths):
            try:
                fds.append(os.open(path, os.O_RDONLY))
            except OSError as exc:
                raise DeltaIOError(f"seed {path}: {exc.strerror}") from None
            report.reused[path] = 0
            try:
                finder.scan(number, fds[-1], os.fstat(fds[-1]).st_size, progress)
            except OSError as exc:
                raise DeltaIOError(f"seed {path}: {exc.strerror}") from None
        assembly = Assembly(dest, control.length)
        try:
            job = _ZJob(control, assembly, report, Journal(partial_path(dest, "zsync")))
            try:
                found, resumed = _extend_backward(control, finder.found, fds), job.resumed()
                missing = [b for b in range(control.blocks) if b not in found and b not in resumed]
                job.fetch(client, target, missing, progress)
                sha1 = job.copy_found(found, resumed, fds, paths)
            finally:
                job.partial.close()
            report.signers = assembly.commit(trust, lambda: _check_sha1(sha1, control, dest))
        except BaseException:
            assembly.discard()
            raise
    finally:
        for fd in fds:
            os.close(fd)
        report.requests = client.requests
    job.partial.remove()
    return report


def _extend_backward(
    control: ControlFile, found: dict[int, tuple[int, int]], fds: list[int]
) -> dict[int, tuple[int, int]]:
    """Also take the block right before each run found, when the seed has it there.

    The scan only extends runs forward; the first block of a run whose pair did not match at its
    start (the scan resumed past it, or its predecessor in the seed differs) would otherwise be
    fetched. A few hundred MD4s at most: one per run.
    """
    size = control.block_size
    for block in range(control.blocks - 1, 0, -1):
        if block in found and block - 1 not in found:
            number, offset = found[block]
            if offset < size:
                continue
            piece = os.pread(fds[number], size, offset - size)
            if len(piece) == size and _md4(piece)[: control.checksum_bytes] == control.checksum(block - 1):
                found[block - 1] = (number, offset - size)
    return found


def _target_location(source: str, control: ControlFile) -> str:
    """The target's URL (or, for a local control file with a relative URL, the file beside it)."""
    url = control.urls[0]
    if is_url(source):
        return urllib.parse.urljoin(source, url)
    if is_url(url):
        return url
    return os.path.join(os.path.dirname(os.path.abspath(source)), url)


def _check_sha1(sha1: hashlib._Hash, control: ControlFile, dest: str) -> None:
    if control.sha1 is not None and sha1.hexdigest() != control.sha1:
        raise DigestMismatchError(f"{dest}: the assembled file's SHA-1 differs from the control file's")


@dataclass
class _ZJob:
    control: ControlFile
    assembly: Assembly
    report: PullReport
    partial: Journal

    def _block_bytes(self, block: int, data: bytes) -> bytes:
        """A block's real bytes (the last one is shorter than a block in the file)."""
        c = self.control
        return data[: min(c.block_size, c.length - block * c.block_size)]

    def _check(self, block: int, data: bytes, source: str) -> None:
        c = self.control
        padded = data + bytes(c.block_size - len(data))
        if _md4(padded)[: c.checksum_bytes] != c.checksum(block):
            raise DigestMismatchError(
                f"block {block} from {source} does not match its MD4 in the control file"
            )

    def copy_found(
        self,
        found: dict[int, tuple[int, int]],
        resumed: dict[int, bytes],
        fds: list[int],
        paths: list[str],
    ) -> hashlib._Hash:
        """Write the resumed and the seeds' blocks once the missing ones are fetched; the file's SHA-1.

        The file is walked in order, so its SHA-1 comes from the bytes as they are written (the
        fetched ones read back): no second pass over the whole file. Consecutive blocks found one
        after the other in the same seed are copied as one run (up to _COPY_RUN bytes), and so are
        consecutive fetched blocks read back: one read and one write per run, not per block.
        """
        c = self.control
        sha1 = hashlib.sha1()
        run: list[int] = []  # first block, seed number (-1: fetched), seed offset, blocks

        def flush() -> None:
            if not run:
                return
            first, number, offset, count = run
            run.clear()
            size = min(count * c.block_size, c.length - first * c.block_size)
            if number < 0:
                sha1.update(self.assembly.read(first * c.block_size, size))
                return
            data = os.pread(fds[number], size, offset)
            self.report.reused[paths[number]] += len(data)
            if len(data) < size:  # the seed ended: zeros, as the control file padded the block
                data += bytes(size - len(data))
            self.assembly.write(first * c.block_size, data)
            sha1.update(data)

        for block in range(c.blocks):
            data = resumed.get(block)
            where = (-1, 0) if data is None and block not in found else found.get(block)
            follows = run and where == (run[1], run[2] + run[3] * c.block_size if run[1] >= 0 else 0)
            if follows and (run[3] + 1) * c.block_size <= _COPY_RUN:
                run[3] += 1
                continue
            flush()
            if data is not None:
                self.report.resumed_bytes += len(data)
                self.assembly.write(block * c.block_size, data)
                sha1.update(data)
            elif where is not None:
                run[:] = [block, where[0], where[1], 1]
        flush()
        return sha1

    def resumed(self) -> dict[int, bytes]:
        """Blocks an interrupted pull fetched, each re-checked."""
        blocks: dict[int, bytes] = {}
        size = self.control.block_size
        for key in self.partial.records:
            first, end = int.from_bytes(key[16:24], "little"), int.from_bytes(key[24:32], "little")
            data = self.partial.read(key) or b""
            for block in range(first, min(end, self.control.blocks)):
                piece = self._block_bytes(block, data[(block - first) * size :])
                with contextlib.suppress(DigestMismatchError):
                    self._check(block, piece, "the partial download")
                    blocks[block] = piece
        return blocks

    def fetch(self, client: HttpClient, target: str, missing: list[int], progress: Progress | None) -> None:
        c = self.control
        done = c.length - sum(len(self._block_bytes(b, bytes(c.block_size))) for b in missing)

        lock = threading.Lock()

        def get(span: tuple[int, int]) -> None:
            nonlocal done
            first, end = span
            start, stop = first * c.block_size, min(end * c.block_size, c.length)
            if is_url(target):
                data = client.get_range(target, start, stop)
            else:
                with open(target, "rb") as f:
                    f.seek(start)
                    data = f.read(stop - start)
            for block in range(first, end):
                piece = self._block_bytes(block, data[(block - first) * c.block_size :])
                self._check(block, piece, f"the server {target}")
            self.partial.add(_range_key(first, end), data)
            self.assembly.write(start, data)
            with lock:
                self.report.fetched_items += 1
                self.report.fetched_bytes += len(data)
                done += len(data)
                if progress is not None:
                    progress(done, c.length)

        try:
            client.run(get, list(_ranges(missing)))
        except OSError as exc:
            raise describe(exc, target) from None
