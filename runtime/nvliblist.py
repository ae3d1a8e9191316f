"""siffs' own ``nvliblist.conf`` (runtime.md §6.1): what ``--nv`` looks for on the host.

Format as Apptainer's: one entry per line, ``#`` comments; entries containing ``.so`` are
library name prefixes matched against ``ldconfig -p``, absolute paths are data files bound
when present, other words are driver programs looked up on the host ``PATH``.
"""

DEFAULT = """\
# driver programs
nvidia-smi
nvidia-debugdump
nvidia-persistenced
nvidia-cuda-mps-control
nvidia-cuda-mps-server
# libraries
libcuda.so
libcudadebugger.so
libnvcuvid.so
libnvidia-allocator.so
libnvidia-cfg.so
libnvidia-compiler.so
libnvidia-eglcore.so
libnvidia-egl-gbm.so
libnvidia-egl-wayland.so
libnvidia-encode.so
libnvidia-fatbinaryloader.so
libnvidia-fbc.so
libnvidia-glcore.so
libnvidia-glsi.so
libnvidia-glvkspirv.so
libnvidia-gpucomp.so
libnvidia-gtk2.so
libnvidia-gtk3.so
libnvidia-ifr.so
libnvidia-ml.so
libnvidia-ngx.so
libnvidia-nvvm.so
libnvidia-opencl.so
libnvidia-opticalflow.so
libnvidia-pkcs11.so
libnvidia-pkcs11-openssl3.so
libnvidia-ptxjitcompiler.so
libnvidia-rtcore.so
libnvidia-tls.so
libnvidia-vulkan-producer.so
libnvidia-wfb.so
libnvoptix.so
libEGL_nvidia.so
libGLESv1_CM_nvidia.so
libGLESv2_nvidia.so
libGLX_nvidia.so
libvdpau_nvidia.so
libEGL.so
libGL.so
libGLX.so
libGLdispatch.so
libGLESv1_CM.so
libGLESv2.so
libOpenGL.so
libOpenCL.so
libnvrm_gpu.so
libnvrm_mem.so
libnvrm_host1x.so
libnvrm_sync.so
# data files (EGL/Vulkan ICDs, OptiX)
/usr/share/glvnd/egl_vendor.d/10_nvidia.json
/usr/share/egl/egl_external_platform.d/10_nvidia_wayland.json
/usr/share/egl/egl_external_platform.d/15_nvidia_gbm.json
/usr/share/vulkan/icd.d/nvidia_icd.json
/usr/share/vulkan/implicit_layer.d/nvidia_layers.json
/etc/vulkan/icd.d/nvidia_icd.json
/usr/share/nvidia/nvoptix.bin
"""
