"""Block decompressors for the six SquashFS compressor ids, and their options block.

Every codec decompresses one whole block into at most ``bound`` bytes (the block size for
data, 8 KiB for metadata) and raises ``CorruptImage`` for anything else: bad input, and a
block that would expand past its bound (a decompression bomb) alike. No codec allocates
from a size the block claims for itself.

Bindings are imported when an image needs them, so a machine without one binding still
reads every other image; a missing one raises ``MissingCodec`` naming the pip package.
"""

from __future__ import annotations

import importlib
import lzma
import struct
import threading
import zlib
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from siffs.squashfs.errors import CorruptImage, MissingCodec, UnsupportedImage

# The kernel's numbering (squashfs_fs.h). Some format write-ups swap 2 and 3; images do not.
GZIP, LZMA, LZO, XZ, LZ4, ZSTD = 1, 2, 3, 4, 5, 6
NAMES = {GZIP: "gzip", LZMA: "lzma", LZO: "lzo", XZ: "xz", LZ4: "lz4", ZSTD: "zstd"}

#: Memory an xz/lzma decoder may use beyond its dictionary (liblzma's own state is ~30 KiB).
_LZMA_OVERHEAD = 1 << 20
#: Largest dictionary we let an xz/lzma stream ask for: a block never exceeds 1 MiB, so a larger
#: dictionary buys nothing and would only let a hostile image make us allocate.
_MAX_DICT = 8 << 20


def _import(module: str, package: str, compressor: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingCodec(
            f"this image is {compressor}-compressed and the Python module {module!r} is missing; "
            f"install it with: pip install {package}"
        ) from e


def _bad_block(compressor: str, error: Exception | str) -> CorruptImage:
    return CorruptImage(f"a {compressor} block does not decompress ({error}); the image is damaged")


class Codec:
    """Decompresses blocks of one image; ``options`` are the parsed compressor options."""

    name = "?"

    def __init__(self, options: Mapping[str, int]) -> None:
        self.options = dict(options)

    def decompress(self, data: bytes, bound: int) -> bytes:
        """Return the decompressed block, at most ``bound`` bytes; ``CorruptImage`` otherwise."""
        raise NotImplementedError


class GzipCodec(Codec):
    """zlib streams, inflated by libdeflate (2.8x zlib) when installed, stdlib zlib otherwise.

    libdeflate decodes in one call into a buffer of ``bound`` bytes and fails if the block
    needs more, which is exactly the bomb check; the zlib fallback gets the same effect from
    ``max_length`` and a look at what input is left.
    """

    name = "gzip"

    def __init__(self, options: Mapping[str, int], *, use_libdeflate: bool = True) -> None:
        super().__init__(options)
        self._inflate: Callable[[bytes, int], bytes] = self._zlib
        if use_libdeflate:
            try:
                deflate = importlib.import_module("deflate")
            except ImportError:
                pass  # the stdlib fallback is correct, only slower
            else:
                self._deflate_error: type[Exception] = deflate.DeflateError
                self._libdeflate: Callable[[bytes, int], bytes] = deflate.zlib_decompress
                self._inflate = self._with_libdeflate

    def _with_libdeflate(self, data: bytes, bound: int) -> bytes:
        try:
            # libdeflate hands back a bytearray: freeze it, since blocks are shared through the cache
            return bytes(self._libdeflate(data, bound))
        except self._deflate_error as e:
            raise _bad_block(self.name, e) from e

    def _zlib(self, data: bytes, bound: int) -> bytes:
        d = zlib.decompressobj()
        try:
            out = d.decompress(data, bound)
        except zlib.error as e:
            raise _bad_block(self.name, e) from e
        if not d.eof:
            raise _bad_block(self.name, "truncated stream or output larger than the block size")
        return out

    def decompress(self, data: bytes, bound: int) -> bytes:
        return self._inflate(data, bound)


class _LzmaFamily(Codec):
    """xz (LZMA2 in an xz stream) and legacy lzma (an lzma-alone stream) share one decoder loop.

    The xz stream header names its own filters (e.g. BCJ x86), so liblzma applies them
    without being told; the options block only records what the packer tried.
    """

    _format = lzma.FORMAT_XZ

    def __init__(self, options: Mapping[str, int], block_size: int) -> None:
        super().__init__(options)
        dict_size = min(options.get("dict_size", block_size), _MAX_DICT)
        self._memlimit = max(dict_size, block_size) + _LZMA_OVERHEAD

    def decompress(self, data: bytes, bound: int) -> bytes:
        d = lzma.LZMADecompressor(format=self._format, memlimit=self._memlimit)
        try:
            out = d.decompress(data, max_length=bound)
        except lzma.LZMAError as e:
            raise _bad_block(self.name, e) from e
        if not d.eof:
            raise _bad_block(self.name, "truncated stream or output larger than the block size")
        return out


class XzCodec(_LzmaFamily):
    name = "xz"


class LzmaCodec(_LzmaFamily):
    name = "lzma"
    _format = lzma.FORMAT_ALONE


class LzoCodec(Codec):
    """LZO1X through lzallright (a maintained binding of liblzo2 with wheels: no compiler needed).

    lzallright grows its output buffer past the size hint instead of failing, so the bound is
    checked on the result: LZO expands at most ~256x, so a hostile 1 MiB block costs a few hundred
    MiB for a moment before it is refused. Its compressor object is not documented as thread-safe,
    so each thread has its own.
    """

    name = "lzo"

    def __init__(self, options: Mapping[str, int]) -> None:
        super().__init__(options)
        self._lzo = _import("lzallright", "lzallright", self.name)
        self._local = threading.local()

    def decompress(self, data: bytes, bound: int) -> bytes:
        lzo = getattr(self._local, "lzo", None)
        if lzo is None:
            lzo = self._local.lzo = self._lzo.LZOCompressor()
        try:
            out: bytes = lzo.decompress(data, output_size_hint=bound)
        except (self._lzo.LZOError, self._lzo.InputNotConsumed) as e:
            raise _bad_block(self.name, e) from e
        if len(out) > bound:
            raise _bad_block(self.name, f"it expands past {bound} bytes")
        return out


class Lz4Codec(Codec):
    """Raw LZ4 blocks (not the LZ4 frame format, which is what PySquashfsImage wrongly expects)."""

    name = "lz4"

    def __init__(self, options: Mapping[str, int]) -> None:
        super().__init__(options)
        self._block = _import("lz4.block", "lz4", self.name)

    def decompress(self, data: bytes, bound: int) -> bytes:
        try:
            out: bytes = self._block.decompress(data, uncompressed_size=bound)
        except self._block.LZ4BlockError as e:
            raise _bad_block(self.name, e) from e
        return out


class ZstdCodec(Codec):
    """zstd frames; one decompression context per thread, since a context is not thread-safe.

    A frame may state its content size, and python-zstandard then allocates that much
    whatever ``max_output_size`` says; so the stated size is checked against the bound first.
    """

    name = "zstd"

    def __init__(self, options: Mapping[str, int]) -> None:
        super().__init__(options)
        self._zstd = _import("zstandard", "zstandard", self.name)
        self._local = threading.local()

    def decompress(self, data: bytes, bound: int) -> bytes:
        zstd = self._zstd
        dctx = getattr(self._local, "dctx", None)
        if dctx is None:
            dctx = self._local.dctx = zstd.ZstdDecompressor()
        try:
            stated = zstd.frame_content_size(data)
            if stated > bound:
                raise _bad_block(self.name, f"frame claims {stated} bytes, more than the {bound} allowed")
            out: bytes = dctx.decompress(data, max_output_size=bound)
        except zstd.ZstdError as e:
            raise _bad_block(self.name, e) from e
        if len(out) > bound:
            raise _bad_block(self.name, "output larger than the block size")
        return out


# --- compressor options -------------------------------------------------------------------


def _check(ok: bool, compressor: str, what: str) -> None:
    if not ok:
        raise CorruptImage(f"invalid {compressor} compressor options: {what}; the image is damaged")


def _gzip_options(raw: bytes) -> dict[str, int]:
    level, window, strategies = struct.unpack_from("<IHH", raw)
    _check(1 <= level <= 9, "gzip", f"compression level {level}")
    _check(8 <= window <= 15, "gzip", f"window size {window}")
    _check(strategies & ~0x1F == 0, "gzip", f"strategy bits {strategies:#x}")
    return {"compression_level": level, "window_size": window, "strategies": strategies}


def _xz_options(raw: bytes) -> dict[str, int]:
    dict_size, filters = struct.unpack_from("<II", raw)
    # The kernel's rule: a power of two, or the sum of two consecutive powers of two.
    low = dict_size & -dict_size
    _check(dict_size >= 8192 and dict_size in (low, 3 * low), "xz", f"dictionary size {dict_size}")
    _check(filters & ~0x3F == 0, "xz", f"filter bits {filters:#x}")
    return {"dict_size": dict_size, "filters": filters}


def _lzo_options(raw: bytes) -> dict[str, int]:
    algorithm, level = struct.unpack_from("<II", raw)
    _check(algorithm <= 4, "lzo", f"algorithm {algorithm}")
    _check(level <= 9 and (algorithm == 4 or level == 0), "lzo", f"compression level {level}")
    return {"algorithm": algorithm, "compression_level": level}


def _lz4_options(raw: bytes) -> dict[str, int]:
    version, flags = struct.unpack_from("<II", raw)
    if version != 1:
        raise UnsupportedImage(f"lz4 format version {version} is not supported (only 1 exists)")
    _check(flags & ~0x1 == 0, "lz4", f"flag bits {flags:#x}")
    return {"version": version, "hc": flags & 1}


def _zstd_options(raw: bytes) -> dict[str, int]:
    (level,) = struct.unpack_from("<I", raw)
    _check(1 <= level <= 22, "zstd", f"compression level {level}")
    return {"compression_level": level}


_OPTIONS: dict[int, Callable[[bytes], dict[str, int]]] = {
    GZIP: _gzip_options,
    XZ: _xz_options,
    LZO: _lzo_options,
    LZ4: _lz4_options,
    ZSTD: _zstd_options,
}


def make_codec(compressor: int, options: bytes | None, block_size: int, **kw: Any) -> Codec:
    """The codec for superblock compressor id ``compressor``, with its raw options block if any.

    ``kw`` is passed to the codec (``use_libdeflate=False`` tests the gzip fallback).
    """
    name = NAMES.get(compressor)
    if name is None:
        raise UnsupportedImage(f"unknown compressor id {compressor}; SquashFS 4.0 defines 1 to 6")
    parsed: dict[str, int] = {}
    if options is not None:
        parse = _OPTIONS.get(compressor)
        if parse is None:
            raise CorruptImage(
                f"the image has {name} compressor options, but {name} takes none; it is damaged"
            )
        try:
            parsed = parse(options)
        except struct.error as e:
            raise CorruptImage(f"{name} compressor options are {len(options)} bytes, too short") from e
    if compressor == GZIP:
        return GzipCodec(parsed, **kw)
    if compressor in (XZ, LZMA):
        return (XzCodec if compressor == XZ else LzmaCodec)(parsed, block_size)
    return {LZO: LzoCodec, LZ4: Lz4Codec, ZSTD: ZstdCodec}[compressor](parsed)
