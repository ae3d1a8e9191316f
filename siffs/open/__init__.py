"""Opening an image: the one pipeline that ``mount``, ``run``, ``sandbox``, ``bundle`` and ``ls`` share.

A typed request goes in (path, partition, trust choice, cache size); a tree and where it came
from (who vouched for it) come out. On the way the partition is chosen and checked, the trust
policy applied, and the byte-source stages stacked: the file, the verified block table,
decryption. Errors are :class:`siffs.open.errors.OpenError` (or the layers' own); prompts,
warnings and progress are callbacks (:class:`siffs.open.hooks.Hooks`) the caller supplies,
so nothing here prints or reads a terminal.

This package file imports nothing: ``siffs mount`` pays only for the modules it uses.
"""
