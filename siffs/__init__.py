"""siffs: use Singularity/Apptainer SIF images where Singularity is not installed.

The package is layered so that data flows one way (see README, "Design"):
``sif`` (container format) -> ``integrity`` (digests, signatures) -> ``squashfs``
(filesystem reader) -> ``fs`` (FUSE daemon) -> ``cli``. ``runtime`` is a separate,
standard-library-only package that runs any directory tree.
"""

__version__ = "0.1.0"
