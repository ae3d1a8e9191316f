"""Delta transfer: publish and pull SIF images as casync chunk stores or zsync control files.

A whole-file stage: it produces a SIF on disk atomically, verified by ``siffs.integrity`` before
it replaces anything, and knows nothing of FUSE or the command line.
"""
