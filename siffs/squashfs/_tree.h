/* The reader's per-request answers as C values, for the FUSE layer's C handlers (siffs/fs/_fast.c).
 *
 * Tree's methods (_tree.c) answer in Python objects: a Stat per lookup, which the handlers then
 * take apart again. Through this capsule a lookup, getattr or readlink of the common case makes
 * none of them: the inode is decoded into C values (_inode.h) and the answer is those values.
 * Anything else is declined (TREE_DECLINE) and the caller asks Tree's methods, which answer
 * everything (and stay the oracle in the tests).
 *
 * The capsule is the attribute TREE_API_ATTR of siffs.squashfs._tree, named TREE_API_NAME; the
 * tree is the reader's ``native_tree`` (a Tree, or None where the C methods are not in use).
 */
#ifndef SIFFS_SQUASHFS_TREE_H
#define SIFFS_SQUASHFS_TREE_H

#include <Python.h>
#include <stdint.h>

#define TREE_API_NAME "siffs.squashfs._tree._api_v3"
#define TREE_API_ATTR "_api_v3"

/* The fields of the reader's Stat record, in its order. */
enum { TS_INO, TS_MODE, TS_NLINK, TS_UID, TS_GID, TS_SIZE, TS_MTIME, TS_RDEV, TS_BLOCKS, TS_FIELDS };

typedef struct {
    unsigned long long f[TS_FIELDS];
} TreeStat;

enum { TREE_DECLINE = -2, TREE_ERROR = -1, TREE_NO_ENTRY = 0, TREE_FOUND = 1 };

/* How readdir hands over an entry: its name (`size` bytes, not NUL-terminated), attributes and the
 * cookie to resume after it. Returns 0 to go on, 1 to stop (the entry was not taken), -1 to decline
 * the whole listing (an error, cleared). */
typedef int (*TreeEmit)(void *ctx, const unsigned char *name, size_t size, const TreeStat *st, uint64_t cookie);

typedef struct {
    /* Entry `name` (`size` bytes) of directory `parent`: TREE_FOUND with *out, TREE_NO_ENTRY,
     * TREE_ERROR with a Python error set (the reader's, as its lookup raises it), or TREE_DECLINE. */
    int (*lookup)(PyObject *tree, uint64_t parent, const char *name, size_t size, TreeStat *out);
    /* Inode `ino`'s attributes, as lookup answers. */
    int (*getattr)(PyObject *tree, uint64_t ino, TreeStat *out);
    /* Link `ino`'s target: TREE_FOUND with *out a new bytes object, or as above. */
    int (*readlink)(PyObject *tree, uint64_t ino, PyObject **out);
    /* Inode `ino`'s extended attributes: TREE_FOUND with *pairs a new reference to its set (a
     * tuple of (name, value) pairs, as XattrTable.pairs keeps it; the caller checks each pair), or
     * NULL when it has none; TREE_DECLINE when the inode is not known yet, the image has no xattr
     * table (the methods say what that means for each kind of inode), or the set is not in the
     * cache (the method loads it); TREE_ERROR as above. */
    int (*xattrs)(PyObject *tree, uint64_t ino, PyObject **pairs);
    /* Directory `dir`'s entries after reader cookie `start` (0: from the first), as SquashFS.readdir
     * yields them, each handed to `emit` until it stops: TREE_FOUND once all or as many as it took
     * were handed over; TREE_DECLINE for anything else (not a known directory, a listing with an
     * index the reader keeps no Listing for, damage), at any point: the caller drops what was
     * handed over and asks the Python path; TREE_ERROR as above. */
    int (*readdir)(PyObject *tree, uint64_t dir, uint64_t start, TreeEmit emit, void *ctx);
} TreeApi;

#endif
