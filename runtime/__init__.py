"""siffs' unprivileged container runtime: runs any directory tree in user + mount namespaces.

Standard library only, and knows nothing of SIF: it is given a root directory (a siffs
mount, a sandbox directory) and runs a command in it with Singularity's semantics.
"""
