"""Decryption stage: encrypted SIF partitions turned back into the SquashFS bytes they hold.

Two kinds exist. fs type 5 is a LUKS2 container (SingularityCE, Apptainer as root); fs type 6
is Apptainer's unprivileged format, one gocryptfs-encrypted file inside an outer SquashFS.
Each unlock gives a :class:`siffs.source.ByteSource` of plaintext over the (verified)
ciphertext source, so the SquashFS reader and the FUSE layer never learn about encryption.
Keys stay in this process's memory only.
"""
