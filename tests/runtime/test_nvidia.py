"""``--nv`` with the fake driver tree of runtime.md §6.2: there is no GPU here, only its shape."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.runtime.conftest import add_file

SONAMES = ("libcuda.so.1", "libnvidia-ml.so.1", "libnvidia-ptxjitcompiler.so.1")
STUB = "int cuInit(unsigned flags) { return 0; }\nint cuDriverGetVersion(int *v) { *v = 12020; return 0; }\n"
PROBE = """#include <dlfcn.h>
#include <stdio.h>
int main(void) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (!h) { printf("dlopen: %s\\n", dlerror()); return 1; }
    int (*version)(int *) = (int (*)(int *))dlsym(h, "cuDriverGetVersion");
    int v = 0;
    version(&v);
    printf("driver %d\\n", v);
    return 0;
}
"""


def _gcc(*args: object) -> None:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is not installed: run the README's test set-up command")
    subprocess.run(["gcc", *map(str, args)], check=True)


@pytest.fixture(scope="module")
def driver(work) -> Path:
    """F: stub libraries in a linker cache, a 32-bit impostor, nvidia-smi, device nodes, fake ldconfig."""
    f = work / "fake-driver"
    libdir = f / "usr/lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    (f / "stub.c").write_text(STUB)
    for soname in SONAMES:
        real = soname.replace(".so.1", ".so.535.104.05")
        _gcc("-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", libdir / real, f / "stub.c")
    (f / "etc").mkdir()
    (f / "etc/ld.so.conf").write_text(f"{libdir}\n")
    subprocess.run(["ldconfig", "-C", f / "etc/ld.so.cache", "-f", f / "etc/ld.so.conf"], check=True)
    impostor = bytearray((libdir / "libnvidia-ml.so.535.104.05").read_bytes())
    impostor[4] = 1
    impostor[18:20] = (3).to_bytes(2, "little")  # EM_386
    add_file(f, "/lib32/libnvidia-ml.so.1", bytes(impostor))
    # The 32-bit copy comes first under the same key: the runtime must look further.
    add_file(f, "/bin/ldconfig", "#!/bin/sh\n"
             f"printf '\\tlibnvidia-ml.so.1 (libc6) => {f}/lib32/libnvidia-ml.so.1\\n'\n"
             f"/sbin/ldconfig -p -C {f}/etc/ld.so.cache | grep {f}/\n")  # fmt: skip
    add_file(f, "/usr/bin/nvidia-smi", "#!/bin/sh\necho 'NVIDIA-SMI 535.104.05 (fake)'\n")
    (f / "dev").mkdir()
    for name, major, minor in (("nvidia0", 195, 0), ("nvidiactl", 195, 255), ("nvidia-uvm", 237, 0)):
        subprocess.run(["mknod", "-m", "666", f / "dev" / name, "c", str(major), str(minor)], check=True)
    add_file(f, "/empty/bin/ldconfig", "#!/bin/sh\n")  # a host without any driver
    subprocess.run(["chmod", "-R", "a+rX", str(f)], check=True)
    return f


@pytest.fixture(scope="module")
def glibc_tree(variant, work) -> Path:
    """The test tree plus glibc and a program that dlopens libcuda.so.1 (busybox cannot)."""

    def with_glibc(root: Path) -> None:
        for lib in ("/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libc.so.6"):
            add_file(root, lib, Path(lib).read_bytes())
        (work / "probe.c").write_text(PROBE)
        _gcc("-o", root / "usr/bin/cudaprobe", work / "probe.c")

    return variant("glibc", with_glibc)


def _nv(siffs, driver, *argv, extra_env=None):
    env = {"PATH": f"{driver}/bin:{driver}/usr/bin:/usr/bin:/bin", "SIFFS_NV_DEVICE_DIR": f"{driver}/dev"}
    return siffs(*argv, env={**env, **(extra_env or {})})


def test_libraries_programs_and_path(siffs, driver, glibc_tree):
    script = (
        "ls /.singularity.d/libs; sha256sum /.singularity.d/libs/libnvidia-ml.so.1; "
        "touch /.singularity.d/libs/x 2>&1 | grep -c Read-only; which nvidia-smi; nvidia-smi; "
        "echo $LD_LIBRARY_PATH; cudaprobe"
    )
    result = _nv(siffs, driver, "exec", "--nv", glibc_tree, "/bin/sh", "-c", script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == sorted(SONAMES)  # exactly the three: the 32-bit impostor is not there
    stub = driver / "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.535.104.05"
    assert lines[3].split()[0] == hashlib.sha256(stub.read_bytes()).hexdigest()
    assert lines[4:] == [
        "1",
        "/usr/bin/nvidia-smi",
        "NVIDIA-SMI 535.104.05 (fake)",
        "/.singularity.d/libs",
        "driver 12020",
    ]
    assert result.stderr == ""


def test_ld_library_path_override_keeps_libs(siffs, driver, tree):
    result = _nv(siffs, driver, "exec", "--nv", tree, "/bin/sh", "-c", "echo $LD_LIBRARY_PATH",
                 extra_env={"SINGULARITYENV_LD_LIBRARY_PATH": "/x"})  # fmt: skip
    assert result.stdout == "/x:/.singularity.d/libs\n"


def test_devices_in_contained_dev(siffs, driver, tree):
    script = "stat -c '%F %t:%T' /dev/nvidia0; cat /dev/nvidia0"
    result = _nv(siffs, driver, "exec", "--nv", "--contain", tree, "/bin/sh", "-c", script)
    assert result.stdout == "character special file c3:0\n"
    assert "No such device or address" in result.stderr  # bound node, no driver: ENXIO, not EACCES


def test_image_without_libs_dir_or_99_base(siffs, driver, variant):
    def bare(root: Path) -> None:
        shutil.rmtree(root / ".singularity.d/libs")
        (root / ".singularity.d/env/99-base.sh").unlink()
        shutil.rmtree(root / "usr")

    root = variant("no-libs-dir", bare)
    script = "ls /.singularity.d/libs | wc -l; echo $LD_LIBRARY_PATH; nvidia-smi"
    result = _nv(siffs, driver, "exec", "--nv", root, "/bin/sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["3", "/.singularity.d/libs", "NVIDIA-SMI 535.104.05 (fake)"]


def test_no_driver_is_one_warning(siffs, driver, tree):
    env = {"PATH": f"{driver}/empty/bin:/usr/bin:/bin"}
    result = siffs("exec", "--nv", tree, "/bin/sh", "-c", "ls /.singularity.d/libs | wc -l", env=env)
    assert result.returncode == 0
    assert result.stdout.strip() == "0"
    warnings = result.stderr.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("WARNING: --nv: no NVIDIA driver found")
    quiet = siffs("-q", "exec", "--nv", tree, "/bin/true", env=env)
    assert (quiet.returncode, quiet.stderr) == (0, "")  # -q: errors only, as Apptainer's


def test_missing_uvm_is_reported(siffs, driver, tree, work):
    devices = work / "dev-without-uvm"
    devices.mkdir(exist_ok=True)
    if not (devices / "nvidia0").exists():
        os.link(driver / "dev/nvidia0", devices / "nvidia0")
    result = _nv(siffs, driver, "exec", "--nv", tree, "true", extra_env={"SIFFS_NV_DEVICE_DIR": str(devices)})
    assert result.returncode == 0
    assert "nvidia-uvm is missing" in result.stderr
