"""casync's content-defined chunker (buzhash over a 48-byte window), boundary for boundary.

The native module ``siffs.delta._chunk`` (C, built by ``pip install``) runs the byte loop of the
specification; the numpy code below is its fallback (no compiler, or ``SIFFS_NO_NATIVE=1``) and
the oracle the tests compare it with. Both take the 256-word table as a parameter: casync's
``TABLE`` by default, or a table derived from a secret for a keyed chunker (boundaries that
reveal nothing of an encrypted image's plaintext to whoever lacks the key).

Why two passes in numpy: the hash depends only on the 48 bytes of the window, never on where a chunk began, so
every position whose window matches the cut rule can be found first with numpy (five doublings over
``uint32`` arrays, about 25x faster than a byte loop), and a short Python loop then picks, chunk after
chunk, the first candidate between ``min`` and ``max``. The result is identical to casync's (and, apart
from cuts at exactly ``min``, desync's); see the chunker section of the casync specification.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import numpy.typing as npt

from siffs import native
from siffs.delta.errors import UnsupportedFormatError

WINDOW = 48
#: casync's hard limit on any chunk size field.
SIZE_LIMIT = 128 << 20
#: Above this average the discriminator formula approaches its pole (about 9.3 MB): refused.
AVERAGE_LIMIT = 4 << 20
#: Bytes scanned per numpy pass: large enough to amortise the calls, small enough to stay in cache.
_SCAN_BLOCK = 64 << 10
#: Bytes read from the input per call.
READ_SIZE = 4 << 20

# casync's buzhash table (the constants of the format; fingerprint checked by the tests).
_TABLE: npt.NDArray[np.uint32] = np.array(
    [
        0x458BE752,
        0xC10748CC,
        0xFBBCDBB8,
        0x6DED5B68,
        0xB10A82B5,
        0x20D75648,
        0xDFC5665F,
        0xA8428801,
        0x7EBF5191,
        0x841135C7,
        0x65CC53B3,
        0x280A597C,
        0x16F60255,
        0xC78CBC3E,
        0x294415F5,
        0xB938D494,
        0xEC85C4E6,
        0xB7D33EDC,
        0xE549B544,
        0xFDEDA5AA,
        0x882BF287,
        0x3116737C,
        0x05569956,
        0xE8CC1F68,
        0x0806AC5E,
        0x22A14443,
        0x15297E10,
        0x50D090E7,
        0x4BA60F6F,
        0xEFD9F1A7,
        0x5C5C885C,
        0x82482F93,
        0x9BFD7C64,
        0x0B3E7276,
        0xF2688E77,
        0x8FAD8ABC,
        0xB0509568,
        0xF1ADA29F,
        0xA53EFDFE,
        0xCB2B1D00,
        0xF2A9E986,
        0x6463432B,
        0x95094051,
        0x5A223AD2,
        0x9BE8401B,
        0x61E579CB,
        0x1A556A14,
        0x5840FDC2,
        0x9261DDF6,
        0xCDE002BB,
        0x52432BB0,
        0xBF17373E,
        0x7B7C222F,
        0x2955ED16,
        0x9F10CA59,
        0xE840C4C9,
        0xCCABD806,
        0x14543F34,
        0x1462417A,
        0x0D4A1F9C,
        0x087ED925,
        0xD7F8F24C,
        0x7338C425,
        0xCF86C8F5,
        0xB19165CD,
        0x9891C393,
        0x325384AC,
        0x0308459D,
        0x86141D7E,
        0xC922116A,
        0xE2FFA6B6,
        0x53F52AED,
        0x2CD86197,
        0xF5B9F498,
        0xBF319C8F,
        0xE0411FAE,
        0x977EB18C,
        0xD8770976,
        0x9833466A,
        0xC674DF7F,
        0x8C297D45,
        0x8CA48D26,
        0xC49ED8E2,
        0x7344F874,
        0x556F79C7,
        0x6B25EAED,
        0xA03E2B42,
        0xF68F66A4,
        0x8E8B09A2,
        0xF2E0E62A,
        0x0D3A9806,
        0x9729E493,
        0x8C72B0FC,
        0x160B94F6,
        0x450E4D3D,
        0x7A320E85,
        0xBEF8F0E1,
        0x21D73653,
        0x4E3D977A,
        0x1E7B3929,
        0x1CC6C719,
        0xBE478D53,
        0x8D752809,
        0xE6D8C2C6,
        0x275F0892,
        0xC8ACC273,
        0x4CC21580,
        0xECC4A617,
        0xF5F7BE70,
        0xE795248A,
        0x375A2FE9,
        0x425570B6,
        0x8898DCF8,
        0xDC2D97C4,
        0x0106114B,
        0x364DC22F,
        0x1E0CAD1F,
        0xBE63803C,
        0x5F69FAC2,
        0x4D5AFA6F,
        0x1BC0DFB5,
        0xFB273589,
        0x0EA47F7B,
        0x3C1C2B50,
        0x21B2A932,
        0x6B1223FD,
        0x2FE706A8,
        0xF9BD6CE2,
        0xA268E64E,
        0xE987F486,
        0x3EACF563,
        0x1CA2018C,
        0x65E18228,
        0x2207360A,
        0x57CF1715,
        0x34C37D2B,
        0x1F8F3CDE,
        0x93B657CF,
        0x31A019FD,
        0xE69EB729,
        0x8BCA7B9B,
        0x4C9D5BED,
        0x277EBEAF,
        0xE0D8F8AE,
        0xD150821C,
        0x31381871,
        0xAFC3F1B0,
        0x927DB328,
        0xE95EFFAC,
        0x305A47BD,
        0x426BA35B,
        0x1233AF3F,
        0x686A5B83,
        0x50E072E5,
        0xD9D3BB2A,
        0x8BEFC475,
        0x487F0DE6,
        0xC88DFF89,
        0xBD664D5E,
        0x971B5D18,
        0x63B14847,
        0xD7D3C1CE,
        0x7F583CF3,
        0x72CBCB09,
        0xC0D0A81C,
        0x7FA3429B,
        0xE9158A1B,
        0x225EA19A,
        0xD8CA9EA3,
        0xC763B282,
        0xBB0C6341,
        0x020B8293,
        0xD4CD299D,
        0x58CFA7F8,
        0x91B4EE53,
        0x37E4D140,
        0x95EC764C,
        0x30F76B06,
        0x5EE68D24,
        0x679C8661,
        0xA41979C2,
        0xF2B61284,
        0x4FAC1475,
        0x0ADB49F9,
        0x19727A23,
        0x15A7E374,
        0xC43A18D5,
        0x3FB1AA73,
        0x342FC615,
        0x924C0793,
        0xBEE2D7F0,
        0x8A279DE9,
        0x4AA2D70C,
        0xE24DD37F,
        0xBE862C0B,
        0x177C22C2,
        0x5388E5EE,
        0xCD8A7510,
        0xF901B4FD,
        0xDBC13DBC,
        0x6C0BAE5B,
        0x64EFE8C7,
        0x48B02079,
        0x80331A49,
        0xCA3D8AE6,
        0xF3546190,
        0xFED7108B,
        0xC49B941B,
        0x32BAF4A9,
        0xEB833A4A,
        0x88A3F1A5,
        0x3A91CE0A,
        0x3CC27DA1,
        0x7112E684,
        0x4A3096B1,
        0x3794574C,
        0xA3C8B6F3,
        0x1D213941,
        0x6E0A2E00,
        0x233479F1,
        0x0F4CD82F,
        0x6093EDD2,
        0x5D7D209E,
        0x464FE319,
        0xD4DCAC9E,
        0x0DB845CB,
        0xFB5E4BC3,
        0xE0256CE1,
        0x09FB4ED1,
        0x0914BE1E,
        0xA5BDB2C3,
        0xC6EB57BB,
        0x30320350,
        0x3F397E91,
        0xA67791BC,
        0x86BC0E2C,
        0xEFA0A7E2,
        0xE9FF7543,
        0xE733612C,
        0xD185897B,
        0x329E5388,
        0x91DD236B,
        0x2ECB0D93,
        0xF4D82A3D,
        0x35B5C03F,
        0xE4E606F0,
        0x05B21843,
        0x37B45964,
        0x5EFF22F4,
        0x6027F4CC,
        0x77178B3C,
        0xAE507131,
        0x7BF7CABC,
        0xF9C18D66,
        0x593ADE65,
        0xD95DDF11,
    ],
    dtype=np.uint32,
)
#: casync's table as 256 words: the default for :class:`Chunker`.
TABLE: tuple[int, ...] = tuple(_TABLE.tolist())


_native = native.load("siffs.delta._chunk", abi=1)


def native_available() -> bool:
    """Whether chunking runs in C (benchmarks and tests report it)."""
    return _native is not None


@dataclass(frozen=True)
class ChunkSizes:
    """Minimum, average and maximum chunk size; the average decides where cuts fall."""

    min: int
    avg: int
    max: int

    @classmethod
    def from_average(cls, avg: int) -> ChunkSizes:
        """``casync make --chunk-size=AVG``: min = AVG/4, max = AVG*4."""
        return cls(avg // 4, avg, avg * 4).checked()

    def checked(self) -> ChunkSizes:
        if not 1 <= self.min <= self.avg <= self.max <= SIZE_LIMIT:
            raise UnsupportedFormatError(
                f"chunk sizes {self.min}:{self.avg}:{self.max} are outside 1 <= min <= avg <= max <= 128 MiB"
            )
        if self.avg > AVERAGE_LIMIT:
            raise UnsupportedFormatError(f"average chunk size {self.avg} is above the 4 MiB siffs supports")
        return self

    @property
    def discriminator(self) -> int:
        """casync's divisor: a window cuts when its hash mod d is d - 1 (clamped into [min, max])."""
        d = int(self.avg / (1.33237515 - 1.42888852e-7 * self.avg))
        return min(max(d, self.min), self.max)


class _Scanner:
    """Finds candidate ends with numpy, reusing its buffers: fresh arrays per pass cost page faults."""

    def __init__(self, discriminator: int, table: npt.NDArray[np.uint32] = _TABLE) -> None:
        size = _SCAN_BLOCK + WINDOW - 1
        self._bufs = [np.empty(size, dtype=np.uint32) for _ in range(4)]
        self._match = np.empty(size, dtype=np.bool_)
        self._d = np.uint32(discriminator)
        self._table = table

    def ends(self, data: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
        """Every ``e`` (48 <= e <= len(data)) whose window ``data[e-48:e]`` satisfies the cut rule."""
        found = [np.zeros(0, dtype=np.int64)]
        for start in range(0, max(len(data) - WINDOW + 1, 0), _SCAN_BLOCK):
            found.append(self._block(data[start : start + _SCAN_BLOCK + WINDOW - 1]) + start)
        return np.concatenate(found)

    def _block(self, x: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
        # h_k[i] is the hash of the k bytes x[i:i+k]; h_2k[i] = rol(h_k[i], k) ^ h_k[i+k].
        n = len(x)
        cur, spare, tmp, h16 = self._bufs
        np.take(self._table, x, out=cur[:n])
        for k in (1, 2, 4, 8, 16):
            m = n - 2 * k + 1
            out, t = spare[:m], tmp[:m]
            np.left_shift(cur[:m], np.uint32(k), out=out)
            np.right_shift(cur[:m], np.uint32(32 - k), out=t)
            np.bitwise_or(out, t, out=out)
            np.bitwise_xor(out, cur[k : k + m], out=out)
            if k == 8:
                h16[:m] = out
            cur, spare = spare, cur
        # The 48-byte window: its first 16 bytes rotate by 32..47, i.e. by 0..15, like h16 itself.
        h48 = tmp[: n - WINDOW + 1]
        np.bitwise_xor(h16[: n - WINDOW + 1], cur[16 : n - 31], out=h48)
        np.remainder(h48, self._d, out=h48)
        match = self._match[: n - WINDOW + 1]
        np.equal(h48, self._d - np.uint32(1), out=match)
        return np.flatnonzero(match) + WINDOW


#: A rolling-hash table: 256 words of 32 bits (casync's :data:`TABLE`, or one derived from a secret).
Table = Sequence[int] | npt.NDArray[np.uint32]


class Chunker:
    """Cuts a stream into casync chunks, holding at most ``max`` + one read in memory.

    ``table``: the 256 words of the rolling hash (casync's :data:`TABLE` unless given); any other
    table keeps the rule, window and sizes but moves every boundary.
    """

    def __init__(self, sizes: ChunkSizes, table: Table | None = None, *, use_native: bool = True) -> None:
        self.sizes = sizes.checked()
        words = np.asarray(TABLE if table is None else table, dtype=np.int64)
        if words.shape != (256,) or words.min() < 0 or words.max() > 0xFFFFFFFF:
            raise ValueError("a chunker table is 256 words of 32 bits")
        self._table = words.astype(np.uint32)
        self._first_test = max(sizes.min, WINDOW)
        self._native = _native if use_native else None

    def split(self, read: Callable[[int], bytes]) -> Iterator[bytes]:
        """Yield the chunks of the stream ``read(n)`` returns (b"" at its end), in order."""
        if self._native is not None:
            return self._split_native(read, self._native)
        return self._split_numpy(read)

    def _split_native(self, read: Callable[[int], bytes], module: ModuleType) -> Iterator[bytes]:
        s = self.sizes
        state = module.Buzhash(self._table.astype("<u4").tobytes(), s.min, s.max, s.discriminator)
        pending = bytearray()  # the start of the current chunk, from earlier reads
        while data := read(READ_SIZE):
            start = 0
            for cut in state.feed(data):
                if pending:
                    pending += memoryview(data)[start:cut]
                    yield bytes(pending)
                    pending.clear()
                else:
                    yield data[start:cut]
                start = cut
            pending += memoryview(data)[start:]
        if pending:
            yield bytes(pending)

    def _split_numpy(self, read: Callable[[int], bytes]) -> Iterator[bytes]:
        scanner = _Scanner(self.sizes.discriminator, self._table)
        buf = bytearray()
        base = 0  # stream offset of buf[0], which is always the start of the next chunk
        tail = b""  # the 47 bytes before the unscanned data, so windows span reads
        cands: list[int] = []  # candidate ends (stream offsets) not yet passed
        end = 0  # stream offset just after the data read so far
        eof = False
        while not eof:
            data = read(READ_SIZE)
            eof = not data
            if data:
                scan = np.frombuffer(tail + data, dtype=np.uint8)
                cands.extend((scanner.ends(scan) + (end - len(tail))).tolist())
                tail = (tail + data)[-(WINDOW - 1) :]
                buf += data
                end += len(data)
            while True:
                cut = self._next_cut(cands, base, end, eof)
                if cut is None:
                    break
                yield bytes(buf[: cut - base])
                del buf[: cut - base]
                base = cut
            del cands[: bisect.bisect_left(cands, base + self._first_test)]

    def _next_cut(self, cands: list[int], start: int, end: int, eof: bool) -> int | None:
        """Where the chunk starting at ``start`` ends, or None until more data is read."""
        if start == end:
            return None
        lowest, highest = start + self._first_test, start + self.sizes.max
        i = bisect.bisect_left(cands, lowest)
        if i < len(cands) and cands[i] <= highest:
            return cands[i]
        if end >= highest:
            return highest
        return end if eof else None


def chunk_file(path: str, sizes: ChunkSizes, table: Table | None = None) -> Iterator[bytes]:
    """The chunks of a whole file, streamed (``table`` as for :class:`Chunker`)."""
    with open(path, "rb", buffering=0) as f:
        yield from Chunker(sizes, table).split(f.read)
