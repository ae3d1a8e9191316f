/* One decoded inode as C values, and the capsule through which other native modules get it.
 *
 * _inode.c decodes an inode into a RawInode first; Decoder.decode and decode_ref build the Python
 * named tuples from it, and the capsule's `raw` hands it to C callers as it is: _tree.c answers a
 * FUSE request from it without making a Stat, an Inode and a dozen ints per inode (most of a
 * cached getattr's time). Both take every decision from the one parse, so they cannot differ.
 *
 * The capsule is the attribute INODE_API_ATTR of siffs.squashfs._inode, named INODE_API_NAME (a
 * version in the name: a changed layout is a new name, and PyCapsule_Import refuses the old one).
 */
#ifndef SIFFS_SQUASHFS_INODE_H
#define SIFFS_SQUASHFS_INODE_H

#include <Python.h>
#include <stdint.h>

#define INODE_API_NAME "siffs.squashfs._inode._api_v1"
#define INODE_API_ATTR "_api_v1"
#define INODE_NO_XATTR 0xFFFFFFFFu

typedef struct {
    unsigned basic;  /* 1 directory, 2 file, 3 symbolic link, 4/5 block/char device, 6/7 FIFO/socket */
    int extended;
    uint32_t ino, mtime;
    unsigned mode;   /* permission bits and the file type, as Stat.mode */
    uint64_t uid, gid, nlink, size, rdev;
    uint64_t blocks; /* as Stat.blocks: 512-byte units stored, the attribute set's included */
    uint32_t xattr;  /* the attribute set's index, INODE_NO_XATTR for none (or no xattr table) */
    /* directory: DirLocation's fields; end: the offset in the block after the inode (-1 for one
     * that raw() read across two blocks) */
    uint64_t dir_start, dir_offset, dir_size, dir_parent, dir_index_count;
    /* regular file: FileLocation's fields */
    uint64_t file_blocks_start, file_block_count, file_fragment, file_fragment_offset;
    int file_has_fragment;
    Py_ssize_t end;
    /* symbolic link: the target, inside the metadata block the caller keeps */
    const unsigned char *target;
    Py_ssize_t target_size;
} RawInode;

typedef struct {
    /* The inode at reference `ref` of `decoder` (a siffs.squashfs._inode.Decoder made with a
     * cache): 1 with *out filled and *block a new reference to the metadata block it lies in, or to
     * a copy of its two parts when it straddles two blocks (out->target points into it); 0 if the C
     * decoder leaves it to Python (damage, a record across more than two blocks); -1 with an error
     * (a block that would not load, the xattr table's). */
    int (*raw)(PyObject *decoder, uint64_t ref, RawInode *out, PyObject **block);
} InodeApi;

#endif
