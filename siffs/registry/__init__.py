"""OCI registries: ``oras://`` SIF artifacts pulled and pushed as Apptainer and SingularityCE do.

A whole-file stage (architecture.md): it produces a SIF on disk atomically and hands it to the
same verification every image gets; it never serves or runs what it fetched by itself.
"""
