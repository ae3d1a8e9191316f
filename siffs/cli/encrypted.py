"""Encrypted partitions for ``mount``, ``run``, ``ls`` and friends: key options, ``create --encrypt``.

The key comes from ``--pem-path``, from ``SIFFS_ENCRYPTION_PASSPHRASE`` (or Apptainer's and
Singularity's names for it), or from a prompt without echo. The variables are removed from this
process's environment as soon as the command starts, so neither the mount daemon nor the
container ever sees them; the key is asked for only once an encrypted partition is found
(the decryption stage itself is ``siffs.open.decrypt``).
"""

from __future__ import annotations

import argparse
import ctypes
import getpass
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from siffs.cli import output
from siffs.cli.common import CommandError
from siffs.cli.exitcodes import ExitCode
from siffs.crypt.errors import KeyProblem
from siffs.sif.types import FsType

if TYPE_CHECKING:  # the crypto stack loads only when an encrypted partition is opened
    from siffs.crypt.keys import KeyMaterial

#: Where scripts put the passphrase; the first one set wins, all are removed from the environment.
PASSPHRASE_VARIABLES = (
    "SIFFS_ENCRYPTION_PASSPHRASE",
    "APPTAINER_ENCRYPTION_PASSPHRASE",
    "SINGULARITY_ENCRYPTION_PASSPHRASE",
)
PEM_PATH_VARIABLES = ("APPTAINER_ENCRYPTION_PEM_PATH", "SINGULARITY_ENCRYPTION_PEM_PATH")
#: Apptainer's variable holding the PEM text itself (removed from the environment like a passphrase).
PEM_DATA_VARIABLE = "APPTAINER_ENCRYPTION_PEM_DATA"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--passphrase",
        action="store_true",
        help="the image is encrypted with a passphrase: ask for it (or read SIFFS_ENCRYPTION_PASSPHRASE)",
    )
    parser.add_argument(
        "--pem-path",
        metavar="KEY.pem",
        help="the image is encrypted to an RSA key: this private key unlocks it",
    )


class KeyChoice(NamedTuple):
    """What the user offered to unlock an image; the secret itself is read only when needed.

    A named tuple (cheaper to define than a dataclass, on every start) whose repr leaves the
    secrets out, as the dataclass's did.
    """

    ask: bool = False
    pem_path: str | None = None
    env_passphrase: bytes | None = None
    env_pem: bytes | None = None

    def __repr__(self) -> str:
        return f"KeyChoice(ask={self.ask!r}, pem_path={self.pem_path!r})"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> KeyChoice:
        """The choice for this command, taking the passphrase variables out of the environment (once)."""
        known = getattr(args, "key_choice", None)
        if isinstance(known, KeyChoice):
            return known
        passphrase = None
        for name in PASSPHRASE_VARIABLES:
            value = _take_variable(name)
            if passphrase is None and value is not None:
                passphrase = value
        pem_path = getattr(args, "pem_path", None)
        for name in PEM_PATH_VARIABLES:
            pem_path = pem_path or os.environ.get(name) or None
        pem_data = _take_variable(PEM_DATA_VARIABLE)
        choice = cls(bool(getattr(args, "passphrase", False)), pem_path, passphrase, pem_data or None)
        args.key_choice = choice
        return choice

    @property
    def offered(self) -> bool:
        """True when a key was offered: a process holding what it unlocks must stay non-dumpable."""
        return (
            self.ask
            or self.pem_path is not None
            or self.env_pem is not None
            or self.env_passphrase is not None
        )

    def pem(self) -> bytes | None:
        """The PEM key given with --pem-path (or its variables), or None."""
        if self.pem_path is None:
            return self.env_pem
        try:
            with open(self.pem_path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise CommandError(f"{self.pem_path}: cannot read the key: {exc.strerror}", ExitCode.IO) from exc

    def material(self) -> KeyMaterial:
        """The key: the PEM file, the environment's passphrase, or one typed at the prompt."""
        from siffs.crypt.keys import KeyMaterial  # noqa: PLC0415 - the crypto stack loads only when needed

        pem = self.pem()
        if pem is not None:
            return KeyMaterial(pem=pem)
        if self.env_passphrase is not None:
            return KeyMaterial(passphrase=self.env_passphrase)
        if self.ask:
            return KeyMaterial(passphrase=_prompt())
        return KeyMaterial()


def _take_variable(name: str) -> bytes | None:
    """Remove ``name`` from the environment and wipe its value from the process's original environment block.

    Unsetting a variable leaves its bytes where the kernel put them at exec time, and
    /proc/PID/environ (of this process and of the daemon it forks) shows exactly those bytes.
    """
    value = os.environb.get(name.encode())
    if value:
        libc = ctypes.CDLL(None)
        libc.getenv.restype = ctypes.c_void_p
        libc.getenv.argtypes = [ctypes.c_char_p]
        pointer = libc.getenv(name.encode())
        if pointer:
            ctypes.memset(pointer, 0, len(value))
    os.environb.pop(name.encode(), None)
    return value


#: No key offered: an encrypted image is then refused with a hint (after its header was checked).
NO_KEYS = KeyChoice()


def _prompt() -> bytes:
    """A passphrase typed at the terminal without echo, or else one line of standard input."""
    if sys.stdin.isatty():
        try:
            text = getpass.getpass("Enter passphrase for encrypted container: ")
        except EOFError as exc:
            raise KeyProblem("no passphrase was typed") from exc
        return text.encode()
    line = sys.stdin.buffer.readline()
    return line[:-1] if line.endswith(b"\n") else line


def notice(message: str) -> None:
    """A status line for a slow step (the KDF), on a terminal only."""
    if sys.stderr.isatty() and output.verbosity() > output.Verbosity.QUIET:
        print(f"siffs: {message}", file=sys.stderr, flush=True)


# -- building (siffs create --encrypt) -----------------------------------------------------------


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """``create``'s options: --encrypt, --format, and the key (a passphrase, or an RSA public key)."""
    parser.add_argument("--encrypt", action="store_true", help="encrypt the root filesystem")
    parser.add_argument(
        "--format",
        choices=("gocryptfs", "luks2"),
        default="gocryptfs",
        help="gocryptfs: fs type 6, as unprivileged Apptainer >= 1.2 builds (default); "
        "luks2: fs type 5, as SingularityCE builds",
    )
    parser.add_argument(
        "--passphrase",
        action="store_true",
        help="encrypt with a passphrase: asked for twice (or read from SIFFS_ENCRYPTION_PASSPHRASE)",
    )
    parser.add_argument(
        "--pem-path", metavar="PUB.pem", help="encrypt to this RSA public key (PKCS#1 or SPKI PEM)"
    )
    parser.add_argument(
        "--kdf-memory",
        type=int,
        metavar="MiB",
        help="luks2: Argon2id memory (default: as cryptsetup, up to 1024 MiB for a ~2 s unlock here)",
    )
    parser.add_argument(
        "--kdf-time", type=int, metavar="N", help="luks2: Argon2id passes (default: fitted to a ~2 s unlock)"
    )


def _build_secret(keys: KeyChoice, length: int, *, hex_text: bool) -> tuple[bytes, bytes | None]:
    """The secret to encrypt with, and the Cryptographic Message that carries it for a PEM key."""
    from siffs.crypt.keys import encrypt_message  # noqa: PLC0415 - the crypto stack loads only when needed

    public = keys.pem()
    if public is not None:
        # Apptainer's gocryptfs password is 32 hex characters (MD5 of random bytes); LUKS2 takes 64 bytes.
        secret = os.urandom(16).hex().encode() if hex_text else os.urandom(length)
        return secret, encrypt_message(public, secret)
    if keys.env_passphrase is not None:
        return keys.env_passphrase, None
    if not keys.ask:
        raise CommandError("--encrypt needs --passphrase or --pem-path PUB.pem", ExitCode.USAGE)
    first = _prompt()
    if sys.stdin.isatty() and getpass.getpass("Retype passphrase: ").encode() != first:
        raise KeyProblem("the passphrases do not match")
    if not first:
        raise KeyProblem("the passphrase is empty")
    return first, None


class BuildChoice(NamedTuple):
    """How ``create --encrypt`` encrypts: the format and, for LUKS2, the Argon2id cost."""

    format: str
    keys: KeyChoice
    kdf_memory_mib: int | None = None  #: None: benchmarked, as cryptsetup does
    kdf_time: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BuildChoice:
        from siffs.crypt.luks2 import MAX_ARGON2_MEMORY_KIB, MAX_ARGON2_TIME  # noqa: PLC0415

        if (args.kdf_memory is not None and not 1 <= args.kdf_memory <= MAX_ARGON2_MEMORY_KIB >> 10) or (
            args.kdf_time is not None and not 4 <= args.kdf_time <= MAX_ARGON2_TIME
        ):
            raise CommandError("--kdf-memory must be 1..4096 MiB and --kdf-time 4..64", ExitCode.USAGE)
        return cls(args.format, KeyChoice.from_args(args), args.kdf_memory, args.kdf_time)


def build_partition(
    rootfs: str, choice: BuildChoice, workdir: str, *, progress: Callable[[int, int], None]
) -> tuple[str, int, bytes | None]:
    """The encrypted partition file for ``rootfs`` (a SquashFS file or a directory), its fs type and message.

    Files are written in ``workdir`` (beside the output, removed by the caller): the SquashFS of a
    directory, the gocryptfs ciphertext and its outer SquashFS, or the LUKS2 container.
    """
    squashfs = rootfs
    if os.path.isdir(rootfs):
        squashfs = os.path.join(workdir, "rootfs.squashfs")
        _mksquashfs([rootfs], squashfs, "-comp", "gzip")
    if choice.format == "luks2":
        return _luks2_partition(squashfs, choice, workdir, progress)
    from siffs.crypt.gocryptfs import encrypt_file, new_conf  # noqa: PLC0415

    secret, message = _build_secret(choice.keys, 32, hex_text=True)
    conf, master = new_conf(secret)
    cipher = os.path.join(workdir, "cipher")
    os.mkdir(cipher, 0o700)
    conf_path = os.path.join(cipher, "gocryptfs.conf")
    with open(conf_path, "wb") as f:
        f.write(conf)
    os.chmod(conf_path, 0o400)
    payload = os.path.join(cipher, f"squashfs-{int.from_bytes(os.urandom(4), 'little')}")
    try:
        with open(squashfs, "rb") as plain, open(payload, "wb") as out:
            encrypt_file(plain, out, master, progress)
    except OSError as exc:
        raise CommandError(f"{exc.filename}: {exc.strerror}", ExitCode.IO) from exc
    outer = os.path.join(workdir, "outer.squashfs")
    _mksquashfs([payload, conf_path], outer, "-comp", "gzip", "-noD", "-noF", "-all-root")
    return outer, FsType.GOCRYPTFS_SQUASHFS, message


def _luks2_partition(
    squashfs: str, choice: BuildChoice, workdir: str, progress: Callable[[int, int], None]
) -> tuple[str, int, bytes | None]:
    """A LUKS2 container as SingularityCE's ``build --encrypt`` lays it out, written in user space."""
    from siffs.crypt.luks2 import default_argon2_cost, encrypt_data, new_header  # noqa: PLC0415

    secret, message = _build_secret(choice.keys, 64, hex_text=False)
    cpus = min(4, os.cpu_count() or 1)
    time, memory = choice.kdf_time, None if choice.kdf_memory_mib is None else choice.kdf_memory_mib << 10
    if time is None or memory is None:
        notice("measuring Argon2id on this machine (cryptsetup's ~2 s unlock)")
        time, memory = default_argon2_cost(cpus, time=time, memory=memory)
    notice(f"deriving key: Argon2id, {memory >> 10} MiB, time {time}")
    header, volume_key = new_header(secret, time=time, memory=memory, cpus=cpus)
    container = os.path.join(workdir, "container.luks2")
    try:
        with open(squashfs, "rb") as plain, open(container, "wb") as out:
            out.write(header)
            encrypt_data(plain, out, volume_key, progress)
    except OSError as exc:
        raise CommandError(f"{exc.filename}: {exc.strerror}", ExitCode.IO) from exc
    return container, FsType.ENCRYPTED_SQUASHFS, message


def _mksquashfs(sources: list[str], out: str, *options: str) -> None:
    tool = shutil.which("mksquashfs")
    if tool is None:
        raise CommandError("mksquashfs is not installed (Debian: squashfs-tools)", ExitCode.IO)
    result = subprocess.run(
        [tool, *sources, out, "-noappend", "-quiet", "-no-progress", *options],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        reason = result.stderr.decode(errors="replace").strip().splitlines()
        raise CommandError(f"mksquashfs failed: {reason[-1] if reason else result.returncode}", ExitCode.IO)
