"""``--nv`` and ``--rocm``: find the host's GPU driver files to bind into the container (runtime.md §6).

The driver's user-space libraries must match the host kernel module exactly, so they come
from the host, not the image. They are found as Apptainer finds them: the names of a library
list matched against the host's linker cache (``ldconfig -p``), each checked for the host's
ELF class and machine. Every input is injectable (``NvidiaSources``) so that tests can use a
fake driver tree: there is no GPU on the machines that run them. AMD's ROCm (``--rocm``) is the
same search with another list, another driver test and other devices (``ROCM``).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from runtime import nvliblist, rocmliblist
from runtime.elf import Target, host_target, read_target
from runtime.layout import NvidiaFiles
from runtime.request import NvidiaSources

_CACHE_LINE = re.compile(r"^\s*(\S+)\s+\((.*)\)\s+=>\s+(.+?)\s*$")
_FALLBACK_LDCONFIG = ("/sbin/ldconfig", "/usr/sbin/ldconfig")


@dataclass(frozen=True)
class Vendor:
    """What differs between GPU vendors: the option, the list, how a driver is told, the devices."""

    option: str
    liblist: str
    #: Library name prefixes of which one must be found for the driver to count as present.
    driver_libraries: tuple[str, ...]
    #: Device names under the device dir (glob patterns); directories are bound whole.
    devices: tuple[str, ...]
    name: str
    #: The libraries named in the "no driver" warning.
    hint: str


NVIDIA = Vendor(
    "--nv",
    nvliblist.DEFAULT,
    ("libcuda", "libnvidia"),
    ("nvidia*",),
    "NVIDIA driver",
    "libcuda or libnvidia-*",
)
ROCM = Vendor(
    "--rocm",
    rocmliblist.DEFAULT,
    ("libhsa-runtime64", "libamdhip64", "libhsakmt"),
    ("kfd", "dri"),
    "ROCm driver",
    "libhsa-runtime64, libamdhip64 or libhsakmt",
)


def linker_cache(path: str) -> list[tuple[str, str]]:
    """``(soname, path)`` pairs of ``ldconfig -p``, in its order (``ldconfig`` found on ``path`` first)."""
    ldconfig = shutil.which("ldconfig", path=path) or next(
        (p for p in _FALLBACK_LDCONFIG if os.access(p, os.X_OK)), None
    )
    if ldconfig is None:
        return []
    try:
        out = subprocess.run([ldconfig, "-p"], capture_output=True, check=False, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    pairs = []
    for line in os.fsdecode(out).splitlines():
        match = _CACHE_LINE.match(line)
        if match:
            pairs.append((match.group(1), match.group(3)))
    return pairs


def _entries(liblist: str) -> tuple[list[str], list[str], list[str]]:
    libraries, data, programs = [], [], []
    for raw in liblist.splitlines():
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        if entry.startswith("/"):
            data.append(entry)
        elif ".so" in entry:
            libraries.append(entry)
        else:
            programs.append(entry)
    return libraries, data, programs


def match_libraries(
    prefixes: list[str], cache: list[tuple[str, str]], target: Target
) -> list[tuple[str, str]]:
    """Every cache key starting with a listed name, once, with its first path built for ``target``.

    All paths of a key are considered, not only the first: a multiarch host lists the 32-bit
    copy of a library under the same soname.
    """
    chosen: dict[str, str] = {}
    for prefix in prefixes:
        for key, path in cache:
            if key.startswith(prefix) and key not in chosen and read_target(path) == target:
                chosen[key] = path
    found, names = [], set()
    for path in chosen.values():
        name = os.path.basename(path)
        if name not in names:
            names.add(name)
            found.append((path, name))
    return found


def resolve(sources: NvidiaSources, vendor: Vendor = NVIDIA) -> NvidiaFiles:
    """The host files ``--nv``/``--rocm`` binds. No driver is a warning, never an error."""
    prefixes, data, programs = _entries(sources.liblist or vendor.liblist)
    files = NvidiaFiles()
    path = os.environ.get("PATH", os.defpath) if sources.path is None else sources.path
    libraries = match_libraries(prefixes, linker_cache(path), sources.target or host_target())
    if not any(name.startswith(vendor.driver_libraries) for _, name in libraries):
        files.warnings.append(
            f"{vendor.option}: no {vendor.name} found on this host (no {vendor.hint} in 'ldconfig -p'); "
            "running without GPU support"
        )
        return files
    files.libraries = libraries
    for name in programs:
        found = shutil.which(name, path=path)
        if found:
            files.programs.append((found, f"/usr/bin/{name}"))
    extra = (sources.persistenced_socket,) if vendor is NVIDIA else ()
    files.data_files = [p for p in (*data, *extra) if os.path.exists(p)]
    files.devices = sorted(
        d
        for pattern in vendor.devices
        for d in glob.glob(os.path.join(sources.device_dir, pattern))
        if vendor is not NVIDIA or not os.path.isdir(d)
    )
    if (
        vendor is NVIDIA
        and files.devices
        and not any(os.path.basename(d) == "nvidia-uvm" for d in files.devices)
    ):
        files.warnings.append(
            f"--nv: {sources.device_dir}/nvidia-uvm is missing: CUDA programs will fail to find the GPU "
            "(load the module with 'nvidia-modprobe -u -c=0')"
        )
    if vendor is ROCM and not any(os.path.basename(d) == "kfd" for d in files.devices):
        files.warnings.append(f"--rocm: {sources.device_dir}/kfd is missing: is the amdgpu driver loaded?")
    return files


def combine(first: NvidiaFiles, second: NvidiaFiles) -> NvidiaFiles:
    """``--nv --rocm``: both drivers' files, each library, program, file and device once."""

    def unique(items: list[Any]) -> list[Any]:
        return list(dict.fromkeys(items))

    both = NvidiaFiles()
    both.libraries = unique(first.libraries + second.libraries)
    both.programs = unique(first.programs + second.programs)
    both.data_files = unique(first.data_files + second.data_files)
    both.devices = unique(first.devices + second.devices)
    both.warnings = first.warnings + second.warnings
    return both
