"""AES-XTS over runs of small data units (LUKS2 sectors), one key schedule per run.

Every 512-byte sector has its own tweak. ``cryptography`` builds a new cipher context (and key
schedule) per tweak, about 5 us, more than decrypting the sector; OpenSSL itself can keep the
key and change only the tweak. So runs go through the system's libcrypto when it loads (Debian:
libssl3, always present), and through ``cryptography`` otherwise; all give the same bytes.
The loop runs in C (``_xts.c``, given the libraries' functions by address) when it was built:
through libgcrypt's XTS when the system has libgcrypt (one call per sector after setting its
tweak: the fastest here), else XTS spelled out as two bulk OpenSSL AES-ECB calls (tweaks, then
data) around a whitening pass, so AES-NI pipelines over a whole read instead of restarting per
512-byte sector; else here with two ctypes calls per unit through OpenSSL's own XTS.
gocryptfs' AES-GCM blocks take the same ways (libgcrypt, else OpenSSL; gcm_open_blocks).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import threading
from collections.abc import Callable
from types import ModuleType

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from siffs import native


@functools.cache
def libcrypto() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("crypto")
    try:
        lib = ctypes.CDLL(name or "libcrypto.so.3")
        lib.EVP_CIPHER_CTX_new.restype = ctypes.c_void_p
        lib.EVP_CIPHER_CTX_free.argtypes = [ctypes.c_void_p]
        lib.EVP_aes_128_xts.restype = ctypes.c_void_p
        lib.EVP_aes_256_xts.restype = ctypes.c_void_p
        lib.EVP_CipherInit_ex.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
        ]  # fmt: skip
        lib.EVP_CipherUpdate.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.c_void_p, ctypes.c_int,
        ]  # fmt: skip
        lib.EVP_aes_256_gcm.restype = ctypes.c_void_p
        lib.EVP_aes_128_ecb.restype = ctypes.c_void_p
        lib.EVP_aes_256_ecb.restype = ctypes.c_void_p
        lib.EVP_CIPHER_CTX_set_padding.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.EVP_CIPHER_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
        lib.EVP_CipherFinal_ex.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
    except (OSError, AttributeError):
        return None
    return lib


@functools.cache
def libgcrypt() -> ctypes.CDLL | None:
    """The system's libgcrypt (Debian: libgcrypt20, on every install), initialised; None without it,
    before 1.8, or with ``SIFFS_NO_GCRYPT`` set (then OpenSSL does AES-GCM).

    Why a second library: its AES-256-GCM opens a 4 KiB gocryptfs block in about two thirds of the
    time OpenSSL 3.0 takes (OpenSSL looks its parameters up by name in every call), and decrypting
    those blocks is most of what an encrypted image costs over a plain one.
    """
    if os.environ.get("SIFFS_NO_GCRYPT"):
        return None
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("gcrypt") or "libgcrypt.so.20")
        lib.gcry_check_version.restype = ctypes.c_char_p
        lib.gcry_check_version.argtypes = [ctypes.c_char_p]
        lib.gcry_control.restype = ctypes.c_uint
        lib.gcry_cipher_open.restype = ctypes.c_uint
        lib.gcry_cipher_open.argtypes = [
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_uint,
        ]
        lib.gcry_cipher_setkey.restype = ctypes.c_uint
        lib.gcry_cipher_setkey.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        lib.gcry_cipher_close.restype = None
        lib.gcry_cipher_close.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    if lib.gcry_check_version(b"1.8.0") is None:
        return None
    if not lib.gcry_control(_GCRYCTL_INITIALIZATION_FINISHED_P):
        lib.gcry_control(_GCRYCTL_INITIALIZATION_FINISHED, 0)
    return lib


@functools.cache
def _address(lib: ctypes.CDLL, name: str) -> int:
    """Where function ``name`` of ``lib`` is, for the C loops."""
    return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value or 0


@functools.cache
def _gcrypt_addresses(lib: ctypes.CDLL) -> tuple[int, int, int, int]:
    """Where gcry_cipher_setiv, _authenticate, _decrypt and _checktag are, for the C GCM loop."""
    names = ("gcry_cipher_setiv", "gcry_cipher_authenticate", "gcry_cipher_decrypt", "gcry_cipher_checktag")
    setiv, authenticate, decrypt, checktag = (_address(lib, n) for n in names)
    return setiv, authenticate, decrypt, checktag


@functools.cache
def native_loops() -> ModuleType | None:
    """siffs.crypt._xts (the unit loop in C), unless not built or ``SIFFS_NO_NATIVE`` is set."""
    return native.load("siffs.crypt._xts", abi=1)


@functools.cache
def _addresses(lib: ctypes.CDLL) -> tuple[int, int, int, int]:
    """Where EVP_CipherInit_ex, _CipherUpdate, _CipherFinal_ex and _CIPHER_CTX_ctrl are, for the C loops."""
    names = ("EVP_CipherInit_ex", "EVP_CipherUpdate", "EVP_CipherFinal_ex", "EVP_CIPHER_CTX_ctrl")
    init, update, final, ctrl = (_address(lib, n) for n in names)
    return init, update, final, ctrl


_EVP_CTRL_GCM_SET_IVLEN = 0x9
#: From gcrypt.h (libgcrypt 1.8 and later).
_GCRY_CIPHER_AES128 = 7
_GCRY_CIPHER_AES256 = 9
_GCRY_CIPHER_MODE_GCM = 9
_GCRY_CIPHER_MODE_XTS = 13
_GCRYCTL_INITIALIZATION_FINISHED = 38
_GCRYCTL_INITIALIZATION_FINISHED_P = 39
#: gocryptfs' blocks, as gcm_open_blocks counts them: 4 KiB of plaintext, a 16-byte nonce and tag.
_GCM_BLOCK = 4096
_GCM_OVERHEAD = 32
_GCM_CIPHER_BLOCK = _GCM_BLOCK + _GCM_OVERHEAD


class _Context:
    """A keyed cipher context (OpenSSL's, or a libgcrypt handle); freed when dropped, which wipes the key."""

    def __init__(self, free: Callable[[int], object], tag: tuple[object, ...], pointer: int) -> None:
        self.free, self.tag, self.pointer = free, tag, int(pointer)

    def __del__(self) -> None:
        self.free(self.pointer)


_held = threading.local()
#: Contexts one thread keeps: the XTS pair (data and tweak keys) and a GCM one, and a spare.
_KEPT = 4


def _context(lib: ctypes.CDLL, cipher: str, key: bytes, encrypt: bool) -> _Context:
    """This thread's context keyed for ``cipher`` and ``key``, made again only when they change.

    The caller holds the returned object while OpenSSL uses its pointer: making another context
    may drop this one from the thread's set, and only the caller's reference then keeps it alive.

    Why: creating and keying a context costs several ctypes calls and OpenSSL's implicit
    algorithm fetch, more than decrypting a metadata block; each thread keeps its last few
    (threads serve one image, so the keys rarely change), and they are freed with the thread.
    """
    tag = (cipher, key, encrypt)
    held: dict[tuple[object, ...], _Context] = getattr(_held, "contexts", None) or {}
    _held.contexts = held
    found = held.get(tag)
    if found is not None:
        return found
    if len(held) >= _KEPT:
        held.clear()
    if cipher in ("gcrypt-gcm", "gcrypt-xts"):
        handle = ctypes.c_void_p()
        algorithm, mode = (
            (_GCRY_CIPHER_AES256, _GCRY_CIPHER_MODE_GCM)
            if cipher == "gcrypt-gcm"
            else (_GCRY_CIPHER_AES256 if len(key) == 64 else _GCRY_CIPHER_AES128, _GCRY_CIPHER_MODE_XTS)
        )
        if lib.gcry_cipher_open(ctypes.byref(handle), algorithm, mode, 0) or not handle:
            raise MemoryError("libgcrypt could not open a cipher handle")
        context = _Context(lib.gcry_cipher_close, tag, handle.value or 0)
        if lib.gcry_cipher_setkey(context.pointer, key, len(key)):
            raise ValueError(f"AES-{cipher[7:].upper()} refused the key")
        held[tag] = context
        return context
    pointer = lib.EVP_CIPHER_CTX_new()
    if not pointer:
        raise MemoryError("OpenSSL could not allocate a cipher context")
    context = _Context(lib.EVP_CIPHER_CTX_free, tag, pointer)
    if cipher == "gcm":
        ok = (
            lib.EVP_CipherInit_ex(pointer, lib.EVP_aes_256_gcm(), None, None, None, int(encrypt)) == 1
            and lib.EVP_CIPHER_CTX_ctrl(pointer, _EVP_CTRL_GCM_SET_IVLEN, 16, None) == 1
            and lib.EVP_CipherInit_ex(pointer, None, None, key, None, int(encrypt)) == 1
        )
    else:  # "ecb": one half of an XTS key, no padding (whole blocks only)
        kind = lib.EVP_aes_256_ecb() if len(key) == 32 else lib.EVP_aes_128_ecb()
        ok = (
            lib.EVP_CipherInit_ex(pointer, kind, None, key, None, int(encrypt)) == 1
            and lib.EVP_CIPHER_CTX_set_padding(pointer, 0) == 1
        )
    if not ok:
        raise ValueError(f"AES-{cipher.upper()} refused the key")
    held[tag] = context
    return context


def _xts_contexts(lib: ctypes.CDLL, key: bytes, encrypt: bool) -> tuple[_Context, _Context]:
    """This thread's ECB contexts for an XTS key: data key in ``encrypt``'s direction, tweak key encrypting.

    Kept as one pair (one comparison per call: small metadata reads are frequent).
    """
    kept = getattr(_held, "xts", None)
    if kept is not None and kept[0] == key and kept[1] == encrypt:
        return kept[2], kept[3]
    half = len(key) // 2
    if len(key) not in (32, 64) or (encrypt and key[:half] == key[half:]):
        raise ValueError("AES-XTS refused the key")  # as OpenSSL's XTS refuses it
    pair = _context(lib, "ecb", key[:half], encrypt), _context(lib, "ecb", key[half:], True)
    _held.xts = (key, encrypt, *pair)
    return pair


def gcm_open_blocks(
    key: bytes, data: bytes, first_block: int, file_id: bytes, *, skip: int = 0, length: int | None = None
) -> bytes | int | None:
    """gocryptfs' 4 KiB blocks decrypted in C (through libgcrypt, else OpenSSL): bytes ``skip`` ..
    ``skip + length`` of their plaintext (default: all of it), the number of the first block that
    fails authentication, or None when the native loop or both libraries are missing (the
    caller's Python loop then does the work).
    Every block of ``data`` is authenticated, also those the range leaves out."""
    native = native_loops()
    if native is None:
        return None
    if length is None:
        full, rest = divmod(len(data), _GCM_CIPHER_BLOCK)
        length = full * _GCM_BLOCK + max(rest - _GCM_OVERHEAD, 0) - skip
    gcrypt, lib = libgcrypt(), libcrypto()
    if gcrypt is not None:
        ctx = _context(gcrypt, "gcrypt-gcm", key, False)
        calls = _gcrypt_addresses(gcrypt)
    elif lib is not None:
        ctx = _context(lib, "gcm", key, False)
        calls = _addresses(lib)
    else:
        return None
    result: bytes | int = native.gcm_blocks(
        gcrypt is not None, *calls, ctx.pointer, data, first_block, file_id, skip, length
    )
    return result


def _native_xts(lib: ctypes.CDLL, key: bytes, encrypt: bool) -> tuple[bool, tuple[int, int, int], object]:
    """What the C XTS loop runs through: whether libgcrypt, the two calls and the keyed context (or
    contexts) as addresses, and the context objects, which must stay alive while it runs.

    libgcrypt's XTS when it loads and takes the key; else OpenSSL's ECB with the whitening in C
    (also for encryption with equal key halves, which that refuses as OpenSSL's XTS does).
    """
    gcrypt = libgcrypt()
    if gcrypt is not None and not (encrypt and key[: len(key) // 2] == key[len(key) // 2 :]):
        try:
            handle = _context(gcrypt, "gcrypt-xts", key, encrypt)
        except ValueError:
            pass  # a key libgcrypt refuses (as weak) and OpenSSL takes
        else:
            crypt = _address(gcrypt, "gcry_cipher_encrypt" if encrypt else "gcry_cipher_decrypt")
            return True, (_gcrypt_addresses(gcrypt)[0], crypt, handle.pointer), handle
    data_ctx, tweak_ctx = _xts_contexts(lib, key, encrypt)
    return False, (_addresses(lib)[1], data_ctx.pointer, tweak_ctx.pointer), (data_ctx, tweak_ctx)


def xts(
    key: bytes,
    data: bytes,
    unit: int,
    first_tweak: int,
    tweak_step: int,
    *,
    encrypt: bool = False,
    skip: int = 0,
    length: int | None = None,
) -> bytes:
    """AES-XTS over ``data`` in ``unit``-byte pieces, piece i with tweak first + i·step (little-endian);
    bytes ``skip`` .. ``skip + length`` of the result (default: all of it).

    ``key`` is 32 or 64 bytes (AES-128 or AES-256, data key then tweak key); raises ValueError
    for a key the cipher refuses. Why the range: a read starts and ends inside sectors, and the
    C loop writes just the wanted bytes, where slicing afterwards would copy the read once more.
    """
    if length is None:
        length = len(data) - skip
    lib = libcrypto()
    if lib is None:
        return xts_portable(key, data, unit, first_tweak, tweak_step, encrypt=encrypt)[skip : skip + length]
    native = native_loops()
    if native is not None:
        gcrypt, calls, keep = _native_xts(lib, key, encrypt)
        result: bytes = native.units(
            gcrypt, *calls, data, unit, first_tweak & (2**64 - 1), first_tweak >> 64, tweak_step, skip, length
        )
        del keep  # the keyed contexts the C loop used
        return result
    cipher = lib.EVP_aes_256_xts() if len(key) == 64 else lib.EVP_aes_128_xts()
    ctx = lib.EVP_CIPHER_CTX_new()
    if not ctx:
        raise MemoryError("OpenSSL could not allocate a cipher context")
    try:
        if lib.EVP_CipherInit_ex(ctx, cipher, None, key, None, int(encrypt)) != 1:
            raise ValueError("AES-XTS refused the key")
        source = ctypes.create_string_buffer(data, len(data))
        out = ctypes.create_string_buffer(len(data))
        written = ctypes.c_int()
        src, dst = ctypes.addressof(source), ctypes.addressof(out)
        init, update = lib.EVP_CipherInit_ex, lib.EVP_CipherUpdate
        for i in range(0, len(data), unit):
            tweak = (first_tweak + (i // unit) * tweak_step).to_bytes(16, "little")
            if (
                init(ctx, None, None, None, tweak, -1) != 1
                or update(ctx, dst + i, written, src + i, unit) != 1
            ):
                raise ValueError("AES-XTS failed on a data unit")
        return out.raw[skip : skip + length]
    finally:
        lib.EVP_CIPHER_CTX_free(ctx)  # also wipes the key schedule


def xts_portable(
    key: bytes, data: bytes, unit: int, first_tweak: int, tweak_step: int, *, encrypt: bool = False
) -> bytes:
    """The same with ``cryptography`` only: one cipher context per data unit."""
    out = bytearray(len(data))
    aes = algorithms.AES(key)
    for i in range(0, len(data), unit):
        mode = Cipher(aes, modes.XTS((first_tweak + (i // unit) * tweak_step).to_bytes(16, "little")))
        worker = mode.encryptor() if encrypt else mode.decryptor()
        out[i : i + unit] = worker.update(data[i : i + unit])
    return bytes(out)
