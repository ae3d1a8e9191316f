"""siffs' own ``rocmliblist.conf``: what ``--rocm`` looks for on the host (format of ``nvliblist``).

Programs first, then library name prefixes matched against ``ldconfig -p``: the HIP and HSA
runtimes, the kernel-driver thunk, the code-object manager, ROCm SMI, AMD's OpenCL, and the
libdrm pieces they load (which must match the host's kernel driver, hence come from the host).
"""

DEFAULT = """\
# driver programs
rocm-smi
rocminfo
amd-smi
# libraries
libamdhip64.so
libhsa-runtime64.so
libhsakmt.so
libamd_comgr.so
libamdcomgr64.so
librocm_smi64.so
libamd_smi.so
libamdocl64.so
libOpenCL.so
librocr_debug_agent64.so
libdrm.so
libdrm_amdgpu.so
libnuma.so
"""
