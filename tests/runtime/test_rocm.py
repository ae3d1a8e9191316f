"""``--rocm`` with a fake AMD driver tree, as test_nvidia does for ``--nv``: no GPU, only its shape."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.runtime.conftest import add_file

SONAMES = ("libamdhip64.so.6", "libhsa-runtime64.so.1", "libdrm_amdgpu.so.1")
STUB = "int hsa_init(void) { return 0; }\n"


@pytest.fixture(scope="module")
def rocm(work) -> Path:
    """F: stub ROCm libraries in a linker cache, rocm-smi, /dev/kfd and /dev/dri nodes, a fake ldconfig."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is not installed: run the README's test set-up command")
    f = work / "fake-rocm"
    libdir = f / "opt/rocm/lib"
    libdir.mkdir(parents=True)
    (f / "stub.c").write_text(STUB)
    for soname in SONAMES:
        real = soname + ".60200"
        subprocess.run(
            ["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", libdir / real, f / "stub.c"],
            check=True,
        )
    (f / "etc").mkdir()
    (f / "etc/ld.so.conf").write_text(f"{libdir}\n")
    subprocess.run(["ldconfig", "-C", f / "etc/ld.so.cache", "-f", f / "etc/ld.so.conf"], check=True)
    add_file(f, "/bin/ldconfig", f"#!/bin/sh\n/sbin/ldconfig -p -C {f}/etc/ld.so.cache | grep {f}/\n")
    add_file(f, "/opt/rocm/bin/rocm-smi", "#!/bin/sh\necho 'ROCm System Management Interface (fake)'\n")
    (f / "dev/dri").mkdir(parents=True)
    for name, major, minor in (("kfd", 235, 0), ("dri/card0", 226, 0), ("dri/renderD128", 226, 128)):
        subprocess.run(["mknod", "-m", "666", f / "dev" / name, "c", str(major), str(minor)], check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(f)], check=True)
    return f


def _rocm(siffs, rocm, *argv):
    env = {"PATH": f"{rocm}/bin:{rocm}/opt/rocm/bin:/usr/bin:/bin", "SIFFS_ROCM_DEVICE_DIR": f"{rocm}/dev"}
    return siffs(*argv, env=env)


def test_libraries_programs_and_path(siffs, rocm, tree):
    script = (
        "ls /.singularity.d/libs; sha256sum /.singularity.d/libs/libhsa-runtime64.so.1; "
        "rocm-smi; echo $LD_LIBRARY_PATH"
    )
    result = _rocm(siffs, rocm, "exec", "--rocm", tree, "/bin/sh", "-c", script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == sorted(SONAMES)
    stub = rocm / "opt/rocm/lib/libhsa-runtime64.so.1.60200"
    assert lines[3].split()[0] == hashlib.sha256(stub.read_bytes()).hexdigest()
    assert lines[4:] == ["ROCm System Management Interface (fake)", "/.singularity.d/libs"]
    assert result.stderr == ""


def test_kfd_and_dri_in_contained_dev(siffs, rocm, tree):
    script = "stat -c '%n %F %t:%T' /dev/kfd /dev/dri/card0 /dev/dri/renderD128"
    result = _rocm(siffs, rocm, "exec", "--rocm", "--contain", tree, "/bin/sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "/dev/kfd character special file eb:0",
        "/dev/dri/card0 character special file e2:0",
        "/dev/dri/renderD128 character special file e2:80",
    ]
    without = siffs("exec", "--contain", tree, "/bin/sh", "-c", "ls /dev/kfd /dev/dri 2>&1 | wc -l")
    assert without.stdout.strip() == "2"  # two "No such file" lines: nothing of the GPU without --rocm


def test_no_driver_is_one_warning(siffs, tree, work):
    empty = work / "no-rocm-bin"
    add_file(empty, "/ldconfig", "#!/bin/sh\n")
    result = siffs("exec", "--rocm", tree, "/bin/true", env={"PATH": f"{empty}:/usr/bin:/bin"})
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        "WARNING: --rocm: no ROCm driver found on this host (no libhsa-runtime64, libamdhip64 or libhsakmt "
        "in 'ldconfig -p'); running without GPU support"
    ]
