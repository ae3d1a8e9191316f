"""Reference material a fresh clone has: Debian's sylabs/sif package and a live Go oracle.

Debian's ``golang-github-sylabs-sif-dev`` (installed by contrib/install.sh) ships the upstream
test images, key, inputs and golden outputs in its Go source tree; they are used in place,
read-only. The reference library in the same package, built at test time
(tests/support/go/siforacle), answers what the corpus' stored ``expected.json`` answers: header
and descriptor fields, siftool output and verification verdicts, also for images flipped or
patched on the fly. So every family of checks runs without ``../shared``; when the corpus is
there (tests/support/shared.py) its images and stored answers run as well.

``expected()`` has the corpus' schema, so one set of tests serves both: corpus entries keep their
names, oracle entries are named ``debian/<image>`` (Debian's images) and ``go/<image>`` (images
the reference library signs at test time). An oracle answer needs the Go toolchain, so it is
computed on first lookup inside a test (``_Lazy``: ``[key]`` fills it, ``.get`` does not);
parametrization at collection only sees the question (image, keys, mode, selection).
"""

from __future__ import annotations

import atexit
import copy
import json
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from siffs.integrity.sign import DsseSigningKey, sign
from siffs.sif.types import arch_code
from tests.support import golang, shared
from tests.support.mutate import apply_ops

SIF_SOURCE = golang.SIF_SOURCE
UPSTREAM_IMAGES = SIF_SOURCE / "test/images"
UPSTREAM_INPUT = SIF_SOURCE / "test/input"
PRIVATE_KEY = SIF_SOURCE / "test/keys/private.asc"
SIFTOOL_GOLDEN = SIF_SOURCE / "internal/app/siftool/testdata"
INTEGRITY_GOLDEN = SIF_SOURCE / "pkg/integrity/testdata"

#: Where this run's links, generated keys and generated images live (removed at exit).
WORK = Path(tempfile.mkdtemp(prefix="siffs-reference-"))
WORK.chmod(0o755)  # tests run siffs as an unprivileged user on these keys and images
atexit.register(shutil.rmtree, WORK, True)
#: Every image by name: corpus names (when ../shared is there), Debian's names, ``debian/<name>``,
#: ``go/<name>`` (made on demand) and the DSSE images siffs signs when the corpus is absent.
IMAGES = WORK / "images"

DEBIAN = "debian/"
KEYSETS = {
    "pgp": ["pgp"],
    "pgp-public": ["pgp-public"],
    "pgp-unrelated": ["pgp-unrelated"],
    "ed25519": ["ed25519"],
    "rsa": ["rsa"],
    "ecdsa": ["ecdsa"],
    "ed25519+rsa": ["ed25519", "rsa"],
    "all": ["pgp", "ed25519", "rsa", "ecdsa"],
}
HEADER_FIELDS = [
    ("launch_script", 0, 32),
    ("magic", 32, 42),
    ("version", 42, 45),
    ("arch", 45, 48),
    ("id", 48, 64),
    ("created_at", 64, 72),
    ("modified_at", 72, 80),
    ("descriptors_free", 80, 88),
    ("descriptors_total", 88, 96),
    ("descriptors_offset", 96, 104),
    ("descriptors_size", 104, 112),
    ("data_offset", 112, 120),
    ("data_size", 120, 128),
]
DESCRIPTOR_FIELDS = [
    ("data_type", 0, 4),
    ("used", 4, 5),
    ("id", 5, 9),
    ("group_id", 9, 13),
    ("linked_id", 13, 17),
    ("offset", 17, 25),
    ("size", 25, 33),
    ("size_with_padding", 33, 41),
    ("created_at", 41, 49),
    ("modified_at", 49, 57),
    ("uid", 57, 65),
    ("gid", 65, 73),
    ("name", 73, 201),
    ("extra", 201, 585),
]
DESCRIPTOR_SIZE = 585
GROUP_MASK = 0xF0000000
#: Flips the reference accepts and a stricter verifier may refuse, as the corpus rates them
#: ("either"): fields a loader checks at open although no signature (of the selection) covers
#: them: the free count, table and data bounds, unique IDs, objects inside the file and apart.
STRICTER_ALLOWED = {
    "header descriptors_free",
    "header descriptors_size",
    "header data_offset",
    "header data_size",
    *(
        f"{kind} descriptor {field}"
        for kind in ("object", "signature")
        for field in ("used", "id", "offset", "size")
    ),
}


def declared_roots() -> tuple[str, ...]:
    """The reference material tests may read outside the repository (for the read guard)."""
    return (str(golang.GOCODE), str(WORK))


class _Lazy(dict[str, Any]):
    """A dict whose missing entries come from ``fill()`` on first lookup (one oracle run)."""

    def __init__(self, fill: Callable[[], dict[str, Any]], **known: Any) -> None:
        super().__init__(known)
        self._fill: Callable[[], dict[str, Any]] | None = fill

    def __missing__(self, key: str) -> Any:
        if self._fill is None:
            raise KeyError(key)
        fill, self._fill = self._fill, None
        self.update(fill())
        return self[key]


# ---- keys -----------------------------------------------------------------------------------


def _gpg(home: Path, *args: str, data: bytes | None = None) -> bytes:
    result = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--quiet", *args],
        input=data,
        capture_output=True,
        check=True,
    )
    return result.stdout


@cache
def _gnupg_home() -> Path:
    home = WORK / "gnupg"
    home.mkdir(mode=0o700)
    atexit.register(subprocess.run, ["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
    return home


def _fingerprint(home: Path, key: Path) -> str:
    for line in _gpg(home, "--with-colons", "--show-keys", str(key)).decode().splitlines():
        if line.startswith("fpr:"):
            return line.split(":")[9]
    raise RuntimeError(f"no fingerprint in {key}")


def _ssh_key_id(public_key: Any, name: str) -> str:
    """The key ID as ``ssh-keygen -l`` prints it (an implementation independent of siffs)."""
    line = WORK / "keys" / f"{name}.ssh.pub"
    line.write_bytes(
        public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    listed = subprocess.run(["ssh-keygen", "-l", "-f", str(line)], capture_output=True, text=True, check=True)
    return listed.stdout.split()[1]


def _pem_pair(name: str, private_key: Any) -> dict[str, str]:
    folder = WORK / "keys"
    private = folder / f"{name}-private.pem"
    public = folder / f"{name}-public.pem"
    private.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public.write_bytes(
        private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return {
        "public": str(public),
        "private": str(private),
        "dsse_keyid": _ssh_key_id(private_key.public_key(), name),
    }


@cache
def keys() -> dict[str, dict[str, Any]]:
    """The corpus' keys when ../shared is there, else Debian's key plus keys made for this run.

    Paths are absolute, so ``shared.CONFORMANCE / path`` (how tests resolve corpus key files)
    gives them unchanged.
    """
    if shared.available():
        corpus = copy.deepcopy(shared.expected()["keys"])
        for info in corpus.values():
            for part in ("file", "public", "private"):
                if part in info:
                    info[part] = str(shared.CONFORMANCE / info[part])
        return corpus
    home = _gnupg_home()
    (WORK / "keys").mkdir(exist_ok=True)
    _gpg(home, "--import", str(PRIVATE_KEY))
    fingerprint = _fingerprint(home, PRIVATE_KEY)
    public = WORK / "keys/public.asc"
    public.write_bytes(_gpg(home, "--armor", "--export", fingerprint))
    other = WORK / "gnupg-unrelated"
    other.mkdir(mode=0o700)
    _gpg(
        other,
        "--passphrase",
        "",
        "--quick-gen-key",
        "Unrelated <unrelated@test.invalid>",
        "rsa2048",
        "sign",
        "never",
    )
    unrelated = WORK / "keys/unrelated-public.asc"
    unrelated.write_bytes(_gpg(other, "--armor", "--export"))
    subprocess.run(["gpgconf", "--homedir", str(other), "--kill", "all"], check=False)
    return {
        "pgp": {"file": str(PRIVATE_KEY), "primary_fingerprint": fingerprint},
        "pgp-public": {"file": str(public), "primary_fingerprint": fingerprint},
        "pgp-unrelated": {"file": str(unrelated), "primary_fingerprint": _fingerprint(home, unrelated)},
        "ed25519": _pem_pair("ed25519", ed25519.Ed25519PrivateKey.generate()),
        "rsa": _pem_pair("rsa", rsa.generate_private_key(public_exponent=65537, key_size=3072)),
        "ecdsa": _pem_pair("ecdsa", ec.generate_private_key(ec.SECP256R1())),
    }


def key_path(name: str, part: str = "public") -> str:
    info = keys()[name]
    return str(info.get("file") or info[part])


# ---- images ---------------------------------------------------------------------------------


def _dsse_image(source: Path, dest: Path) -> None:
    """A DSSE-signed image made by siffs (checked by an independent DSSE library elsewhere)."""
    pair = [
        serialization.load_pem_private_key(Path(key_path(k, "private")).read_bytes(), None)
        for k in ("ed25519", "rsa")
    ]
    shutil.copyfile(source, dest)
    sign(str(dest), DsseSigningKey(tuple(pair)))  # type: ignore[arg-type]


@cache
def materialize() -> Path:
    """Fill :data:`IMAGES` (links, plus the DSSE images siffs signs when the corpus is absent)."""
    IMAGES.mkdir(exist_ok=True)
    (IMAGES / "debian").symlink_to(UPSTREAM_IMAGES)
    names = {p.name: p for p in UPSTREAM_IMAGES.glob("*.sif")}
    if shared.available():
        names.update({p.name: p for p in shared.IMAGES.glob("*.sif")})
    for name, path in names.items():
        (IMAGES / name).symlink_to(path)
    if not shared.available():
        for base in ("one-group", "two-groups"):
            _dsse_image(UPSTREAM_IMAGES / f"{base}.sif", IMAGES / f"{base}-signed-dsse.sif")
    return IMAGES


def upstream_names() -> list[str]:
    return sorted(p.name for p in UPSTREAM_IMAGES.glob("*.sif"))


GO = "go/"
#: Images the reference library signs at test time, in layouts Debian's set lacks: partial
#: signatures of a group (``OptSignObjects``) beside a whole-group one. name → (base, what to sign).
GO_IMAGES: dict[str, tuple[str, dict[str, Any]]] = {
    "two-groups-signed-subsets.sif": ("two-groups.sif", {"groups": [1], "objects": [[1], [3]]}),
    "one-group-signed-object2.sif": ("one-group.sif", {"objects": [[2]]}),
}


def go_available() -> bool:
    return shutil.which("go") is not None and SIF_SOURCE.is_dir()


@cache
def make_go_images() -> None:
    """Sign :data:`GO_IMAGES` with the reference library into ``IMAGES/go``."""
    folder = WORK / "go-images"
    folder.mkdir()
    for name, (base, spec) in GO_IMAGES.items():
        shutil.copyfile(UPSTREAM_IMAGES / base, folder / name)
        _run("sign", str(folder / name), str(PRIVATE_KEY), json.dumps(spec))
    (IMAGES / "go").symlink_to(folder)


#: The Go zero time (0001-01-01) as Unix seconds: the reference's "unset".
GO_ZERO_TIME = -62135596800


# ---- the Go oracle --------------------------------------------------------------------------


@cache
def _oracle() -> Path:
    return golang.build("siforacle", WORK / "go")


def _limit_memory() -> None:
    # Hostile sizes make the Go runtime allocate what the file says: die early, not the host.
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def _run(*args: str) -> str:
    result = subprocess.run(
        [_oracle(), *args], capture_output=True, text=True, check=False, preexec_fn=_limit_memory
    )
    if result.returncode:
        raise RuntimeError(f"siforacle {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def read_now(path: Path) -> dict[str, Any]:
    """What the reference library reads from an image (header, descriptors, data digests)."""
    data: dict[str, Any] = json.loads(_run("dump", str(path)))
    return data


#: :func:`read_now` for images that do not change (the reference's and the generated ones).
dump = cache(read_now)


def _spec(keyset: str, mode: str, groups: list[int], objects: list[int]) -> str:
    rings = [key_path(k) for k in KEYSETS[keyset] if k.startswith("pgp")]
    return json.dumps(
        {
            "keyrings": rings,
            "groups": groups,
            "objects": objects,
            "legacy": mode == "legacy",
            "legacy_all": mode == "legacy-all",
        }
    )


def verify_with(path: Path, keyrings: list[str]) -> dict[str, Any]:
    """The reference verifier's outcome for ``path`` with these OpenPGP key files (normal mode)."""
    spec = {"keyrings": keyrings, "groups": [], "objects": [], "legacy": False, "legacy_all": False}
    data: dict[str, Any] = json.loads(_run("verify", str(path), json.dumps(spec)))
    return data


def verdict(path: Path, keyset: str, mode: str, groups: list[int], objects: list[int]) -> dict[str, Any]:
    """The reference verifier's outcome: ``ok``, error kind, verified signatures."""
    data: dict[str, Any] = json.loads(_run("verify", str(path), _spec(keyset, mode, groups, objects)))
    return data


def flips(path: Path, spec: str, offsets: list[int]) -> dict[int, dict[str, Any]]:
    """The reference's verdict for each single-bit flip; a runtime crash is a verdict too."""
    out: dict[int, dict[str, Any]] = {}
    todo = list(offsets)
    while todo:
        result = subprocess.run(
            [_oracle(), "flips", str(path), spec, *map(str, todo)],
            capture_output=True,
            text=True,
            check=False,
            preexec_fn=_limit_memory,
        )
        lines = result.stdout.splitlines()
        for offset, line in zip(todo, lines, strict=False):
            out[offset] = json.loads(line)
        todo = todo[len(lines) :]
        if todo and result.returncode:
            out[todo.pop(0)] = {"ok": False, "error": "GoCrash", "message": result.stderr[-200:]}
        elif todo:
            raise RuntimeError(f"siforacle flips stopped early: {result.stderr.strip()}")
    return out


def siftool(*args: str) -> str:
    return _run("siftool", *args)


# ---- expected(): the corpus schema, answered by the oracle ----------------------------------


def _camel(name: str) -> str:
    return "".join(
        part.upper() if part in ("sbom", "json", "id") else part.capitalize()
        for part in name.removesuffix(".sif").split("-")
    )


#: Debian's TestApp_Info and TestApp_Dump goldens: (image, command, object ID) → golden file.
_INFO_GOLDENS = {
    ("one-object-time.sif", 1): "Time",
    ("one-object-generic-json.sif", 1): "GenericJSON",
    ("one-object-crypt-message.sif", 1): "CryptMessage",
    ("one-object-sbom.sif", 1): "SBOM",
    ("two-groups-signed.sif", 1): "DataPartitionRaw",
    ("two-groups-signed.sif", 2): "DataPartitionSquashFS",
    ("two-groups-signed.sif", 3): "DataPartitionEXT3",
    ("two-groups-signed.sif", 4): "DataSignature",
}
_DUMP_GOLDENS = {
    ("one-group-signed.sif", 1): "One",
    ("one-group-signed.sif", 2): "Two",
    ("one-group-signed.sif", 3): "Three",
}


def _golden_files(name: str) -> dict[str, str]:
    found = {}
    for command in ("header", "list"):
        golden = SIFTOOL_GOLDEN / f"TestApp_{command.capitalize()}" / f"{_camel(name)}.golden"
        if golden.is_file():
            found[command] = str(golden)
    for table, command in ((_INFO_GOLDENS, "info"), (_DUMP_GOLDENS, "dump")):
        for (image, object_id), stem in table.items():
            if image == name:
                found[f"{command} {object_id}"] = str(
                    SIFTOOL_GOLDEN / f"TestApp_{command.capitalize()}/{stem}.golden"
                )
    return found


def _descriptor(d: dict[str, Any], ids_by_group: dict[int, list[int]]) -> dict[str, Any]:
    link = {"id": d["link"], "is_group": d["link_is_group"]} if d["link"] else None
    out: dict[str, Any] = {
        "slot": d["slot"],
        "id": d["id"],
        "data_type": d["data_type"],
        "group_id": d["group_id"] or None,
        "group_id_raw": d["group_id_raw"],
        "linked": link,
        "linked_id_raw": d["linked_id_raw"],
        "offset": d["offset"],
        "size": d["size"],
        "size_with_padding": d["size_with_padding"],
        "created_at": d["created_at"],
        "modified_at": d["modified_at"],
        "uid": d["uid"],
        "gid": d["gid"],
        "name": d["name"],
        "data_sha256": d["data_sha256"],
        # Go's integrity metadata numbers an object by its ID minus the smallest ID of its group.
        "relative_id": d["id"] - min(ids_by_group[d["group_id"]]),
    }
    if "fs_type" in d:
        out["partition"] = {"fs_type": d["fs_type"], "part_type": d["part_type"], "arch": d["arch"]}
    if "hash_type" in d:
        out["signature"] = {"hash_type": d["hash_type"], "fingerprint": d["fingerprint"]}
    return out


def _image_entry(path: Path) -> dict[str, Any]:
    ref = dump(path)
    ids_by_group: dict[int, list[int]] = {}
    for d in ref["descriptors"]:
        ids_by_group.setdefault(d["group_id"], []).append(d["id"])
    header = {
        k: ref[k]
        for k in (
            "launch_script",
            "arch",
            "created_at",
            "modified_at",
            "descriptors_free",
            "descriptors_total",
            "descriptors_offset",
            "descriptors_size",
            "data_offset",
            "data_size",
        )
    }
    header["id"] = None if ref["id"] == "00000000-0000-0000-0000-000000000000" else ref["id"]
    header["descriptors_used"] = len(ref["descriptors"])
    header["version"] = ref["version"]
    header["arch_code"] = arch_code(ref["arch"]).decode("ascii")  # the format's table (sif-format.md)
    for when in ("created_at", "modified_at"):
        header[f"{when}_unset"] = ref[when] == GO_ZERO_TIME
    return {
        "header": header,
        "descriptors": [_descriptor(d, ids_by_group) for d in ref["descriptors"]],
        "primary_partition": ref["primary_partition"] or None,
        "groups": sorted(g for g in ids_by_group if g),
    }


def _siftool_entry(path: Path) -> dict[str, Any]:
    return {
        "header": siftool("header", str(path)),
        "list": siftool("list", str(path)),
        "info": {str(d["id"]): siftool("info", str(d["id"]), str(path)) for d in dump(path)["descriptors"]},
    }


def _selections(name: str) -> Iterator[tuple[str, str, list[int], list[int]]]:
    """The questions asked of each Debian image: keysets, modes and selections."""
    signed = "signed" in name
    everything = [([], []), ([1], []), ([2], []), ([99], []), *(([], [o]) for o in (1, 2, 3, 4, 5, 99))]
    for mode in ("default", "legacy", "legacy-all"):
        for groups, objects in everything if signed else everything[:2] + everything[4:5]:
            if mode == "legacy-all" and (groups or objects):
                continue  # the reference ignores a selection with --all
            yield ("pgp" if signed else "all"), mode, groups, objects
        if signed:
            for keyset in ("pgp-public", "pgp-unrelated", "all"):
                yield keyset, mode, [], [] if mode != "legacy" else [2]
    # sif 2.8.3 asks for key material before it looks for signatures; the newer upstream siffs
    # follows looks first. A keyset without OpenPGP keys is asked only where a signature is.
    if signed and "legacy" not in name:
        yield "ed25519", "default", [], []
    if name.endswith("legacy-all.sif"):
        yield "ed25519", "legacy-all", [], []


def _verification(
    path: Path, keyset: str, mode: str, groups: list[int], objects: list[int]
) -> dict[str, Any]:
    got = verdict(path, keyset, mode, groups, objects)
    fingerprint = keys()["pgp"]["primary_fingerprint"]
    case: dict[str, Any] = {"ok": got["ok"], "error": got.get("error")}
    case["signatures"] = [
        {
            "sig": s["sig"],
            "verified": s["verified"],
            "signer_fingerprint": s.get("signer_fingerprint", fingerprint),
        }
        for s in got["signatures"]
    ]
    return case


def _oracle_images() -> dict[str, Any]:
    images: dict[str, Any] = {}
    names = [DEBIAN + n for n in upstream_names()]
    if go_available():
        names += [GO + n for n in GO_IMAGES]
    for full in names:
        path, name = IMAGES / full, full.split("/")[1]
        cases = [
            _Lazy(lambda p=path, c=c: _verification(p, *c), keys=c[0], mode=c[1], groups=c[2], objects=c[3])
            for c in _selections(name)
        ]
        siftool_view = _Lazy(lambda p=path: _siftool_entry(p), golden_files=_golden_files(name))
        images[full] = _Lazy(lambda p=path: _image_entry(p), verification=cases, siftool=siftool_view)
    return images


def _regions(ref: dict[str, Any], size: int) -> list[tuple[int, int, str]]:
    """Every structural byte range of an image: header fields, descriptor fields, objects, gaps."""
    regions = [(start, end, f"header {field}") for field, start, end in HEADER_FIELDS]
    table = ref["descriptors_offset"]
    regions.append((128, table, "padding between header and descriptor table"))
    by_slot = {d["slot"]: d for d in ref["descriptors"]}
    for slot in range(ref["descriptors_total"]):
        base = table + slot * DESCRIPTOR_SIZE
        d = by_slot.get(slot)
        if d is None:
            if slot <= max(by_slot) + 2:  # a few unused slots: their "used" byte matters
                regions += [
                    (base, base + 4, "unused slot"),
                    (base + 4, base + 5, "unused slot used"),
                    (base + 5, base + DESCRIPTOR_SIZE, "unused slot"),
                ]
            continue
        kind = "signature" if "hash_type" in d else "object"
        regions += [(base + s, base + e, f"{kind} descriptor {f}") for f, s, e in DESCRIPTOR_FIELDS]
    end_of_table = table + ref["descriptors_total"] * DESCRIPTOR_SIZE
    regions.append((end_of_table, ref["data_offset"], "padding after the descriptor table"))
    for d in sorted(ref["descriptors"], key=lambda d: d["offset"]):
        if d["size"]:
            kind = "signature" if "hash_type" in d else "object"
            regions.append((d["offset"], d["offset"] + d["size"], f"{kind} {d['id']} data"))
    return [(s, min(e, size), r) for s, e, r in regions if s < min(e, size)]


def _tamper_ranges(
    path: Path, keyset: str, mode: str, groups: list[int], objects: list[int]
) -> dict[str, Any]:
    size = path.stat().st_size
    points = []
    for start, end, region in _regions(dump(path), size):
        points += [(offset, region) for offset in sorted({start, (start + end) // 2, end - 1})]
    answers = flips(path, _spec(keyset, mode, groups, objects), [p for p, _ in points])
    ranges = []
    for offset, region in points:
        got = answers[offset]
        expect = "pass" if got["ok"] else "fail"
        if got["ok"] and region in STRICTER_ALLOWED:
            expect = "either"
        ranges.append(
            {
                "start": offset,
                "end": offset + 1,
                "region": region,
                "expect": expect,
                "reference": got.get("error") or "OK",
            }
        )
    return {"ranges": ranges}


TAMPER_SETUPS = [
    (DEBIAN + "one-group-signed.sif", "pgp", "default", [], []),
    (DEBIAN + "two-groups-signed.sif", "pgp", "default", [], []),
    (DEBIAN + "two-groups-signed.sif", "pgp", "default", [1], []),
    (DEBIAN + "two-groups-signed.sif", "pgp", "default", [], [3]),
    (DEBIAN + "one-group-signed-legacy.sif", "pgp", "legacy", [], [2]),
    (DEBIAN + "one-group-signed-legacy-group.sif", "pgp", "legacy", [1], []),
    (DEBIAN + "two-groups-signed-legacy-all.sif", "pgp", "legacy-all", [], []),
    (GO + "two-groups-signed-subsets.sif", "pgp", "default", [], [1]),
]


def _oracle_tamper() -> list[dict[str, Any]]:
    return [
        _Lazy(
            lambda s=s: _tamper_ranges(IMAGES / s[0], *s[1:]),
            image=s[0],
            keys=s[1],
            mode=s[2],
            groups=s[3],
            objects=s[4],
        )
        for s in TAMPER_SETUPS
        if go_available() or not s[0].startswith(GO)
    ]


MALFORMED_BASE = "one-group-signed.sif"


class _Layout:
    """Where things are in the malformed cases' base image, as the reference reads it."""

    def __init__(self, ref: dict[str, Any], size: int) -> None:
        self.size, self.total, self.table = size, ref["descriptors_total"], ref["descriptors_offset"]
        self.at = {d["id"]: self.table + d["slot"] * DESCRIPTOR_SIZE for d in ref["descriptors"]}
        self.sig = next(d for d in ref["descriptors"] if "hash_type" in d)
        self.sig_at = self.at[self.sig["id"]]
        self.free = self.table + (len(ref["descriptors"]) + 1) * DESCRIPTOR_SIZE  # an unused slot
        self.first = min(d["offset"] for d in ref["descriptors"])


def _le64(offset: int, value: int) -> dict[str, Any]:
    return {"op": "le64", "offset": offset, "value": value}


def _le32(offset: int, value: int) -> dict[str, Any]:
    return {"op": "le32", "offset": offset, "value": value}


def _u8(offset: int, value: int) -> dict[str, Any]:
    return {"op": "u8", "offset": offset, "value": value}


def _cut(size: int) -> dict[str, Any]:
    return {"op": "truncate", "size": size}


def _put(offset: int, data: bytes) -> dict[str, Any]:
    return {"op": "bytes", "offset": offset, "hex": data.hex()}


#: Hostile edits of the base image (the corpus' kinds), placed from the reference's layout.
MALFORMED: list[tuple[str, Callable[[_Layout], list[dict[str, Any]]]]] = [
    ("empty file", lambda _: [_cut(0)]),
    ("truncated header", lambda _: [_cut(100)]),
    ("header only", lambda _: [_cut(128)]),
    ("cut inside the descriptor table", lambda x: [_cut(x.table + 1000)]),
    ("cut inside the first object", lambda x: [_cut(x.first + 2)]),
    ("cut inside the signature object", lambda x: [_cut(x.sig["offset"] + x.sig["size"] // 2)]),
    ("bad magic", lambda _: [_put(32, b"SIF_MAGIX")]),
    ("version 02", lambda _: [_put(42, b"02\0")]),
    ("DescriptorsTotal = -1", lambda _: [_le64(88, -1)]),
    ("DescriptorsTotal = 2^40", lambda _: [_le64(88, 1 << 40)]),
    ("DescriptorsTotal one more than the table holds", lambda x: [_le64(88, x.total + 1)]),
    ("DescriptorsSize = 100", lambda _: [_le64(104, 100)]),
    ("DescriptorsOffset = -5", lambda _: [_le64(96, -5)]),
    ("DescriptorsOffset past EOF", lambda x: [_le64(96, x.size + 10)]),
    ("DescriptorsFree == DescriptorsTotal", lambda x: [_le64(80, x.total)]),
    ("DescriptorsTotal = 0", lambda _: [_le64(88, 0)]),
    ("Total = Free = Size = 0", lambda _: [_le64(88, 0), _le64(80, 0), _le64(104, 0)]),
    ("object 1 size 0", lambda x: [_le64(x.at[1] + 25, 0)]),
    ("object 2 offset past EOF", lambda x: [_le64(x.at[2] + 17, x.size + 100)]),
    ("object 2 size 2^40", lambda x: [_le64(x.at[2] + 25, 1 << 40)]),
    ("object 2 size -1", lambda x: [_le64(x.at[2] + 25, -1)]),
    ("signature object size 2^40", lambda x: [_le64(x.sig_at + 25, 1 << 40)]),
    ("signature object size 2^32", lambda x: [_le64(x.sig_at + 25, 1 << 32)]),
    ("object 2 moved onto object 1", lambda x: [_le64(x.at[2] + 17, x.first)]),
    ("object 2 overlaps the descriptor table", lambda x: [_le64(x.at[2] + 17, x.table)]),
    ("object 1 data type unknown", lambda x: [_le32(x.at[1], 0x5000)]),
    ("object 1 id = 2 (duplicate)", lambda x: [_le32(x.at[1] + 5, 2)]),
    ("object 1 also *System (two primaries)", lambda x: [_le32(x.at[1] + 205, 2)]),
    ("object 2 Used = 0", lambda x: [_u8(x.at[2] + 4, 0)]),
    ("object 2 Used = 2", lambda x: [_u8(x.at[2] + 4, 2)]),
    ("free slot Used = 1", lambda x: [_u8(x.free + 4, 1)]),
    ("signature moved into group 1", lambda x: [_le32(x.sig_at + 9, GROUP_MASK | 1)]),
    ("object 1 without group", lambda x: [_le32(x.at[1] + 9, GROUP_MASK)]),
    ("signature hash type 0", lambda x: [_le32(x.sig_at + 201, 0)]),
    ("signature fingerprint zeroed", lambda x: [_put(x.sig_at + 205, bytes(20))]),
]


@cache
def _malformed_verdicts() -> dict[str, dict[str, Any]]:
    base = UPSTREAM_IMAGES / MALFORMED_BASE
    layout = _Layout(dump(base), base.stat().st_size)
    folder = WORK / "malformed"
    folder.mkdir(exist_ok=True)
    out = {}
    for i, (name, edit) in enumerate(MALFORMED):
        ops = edit(layout)
        path = apply_ops(base, folder / f"{i}.sif", ops)
        try:
            got = verdict(path, "pgp", "default", [], [])
        except RuntimeError as exc:  # the Go runtime died on it
            got = {"ok": False, "error": "GoCrash", "message": str(exc)}
        # The reference refusing to load it (or crashing) asks for a clean refusal at open; a
        # "not verified" verdict allows refusing at open or at verification; "verified", either.
        refused = got.get("error") in ("LoadError", "GoPanic", "GoCrash")
        expect = "either" if got["ok"] else "reject" if refused else "not_verified"
        out[name] = {"ops": ops, "expect": expect, "reference": got.get("error") or "OK"}
    return out


def _oracle_malformed() -> dict[str, Any]:
    cases = [_Lazy(lambda n=n: _malformed_verdicts()[n], name=n) for n, _ in MALFORMED]
    return {"base": DEBIAN + MALFORMED_BASE, "keys": "pgp", "mode": "default", "cases": cases}


@cache
def expected() -> dict[str, Any]:
    """The corpus' expectations (if ../shared is there) plus the oracle's, in the corpus' schema."""
    corpus = shared.expected() if shared.available() else {}
    return {
        "keys": _Lazy(keys),
        "keysets": KEYSETS,
        "images": {**corpus.get("images", {}), **_oracle_images()},
        "tamper": [*corpus.get("tamper", []), *_oracle_tamper()],
        "malformed": corpus.get("malformed") or _oracle_malformed(),
    }


def image_names() -> list[str]:
    return sorted(expected()["images"])
