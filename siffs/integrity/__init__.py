"""Signatures and integrity of SIF images: verify and sign (PGP, legacy PGP, DSSE), trusted
keys, and the per-block digest table that keeps reads honest after verification.

Knows the SIF container layer only (``siffs.sif``); never the filesystem or the CLI.
"""
