/* A directory listing's bytes: the one walk over them, and their copy out of the metadata blocks.
 *
 * Shared (static inline: one copy per module, as _caches.h) by _directory.c, which parses a
 * listing into a Segment, and _tree.c, which keeps the bytes of a listing without an index and
 * searches them for a lookup. Both walk with walk(), so they accept exactly the same bytes, the
 * bytes the Python parser (directory.py, the oracle) accepts; anything else is theirs to name.
 */
#ifndef SIFFS_SQUASHFS_LISTING_H
#define SIFFS_SQUASHFS_LISTING_H

#include "_caches.h"

#include <stdint.h>
#include <string.h>

#define HEADER_SIZE 12
#define ENTRY_SIZE 8
#define MAX_RUN 256
#define MAX_NAME 256
/* directory.SIZE_BIAS: a directory's stored size counts 3 bytes more than its listing. */
#define SIZE_BIAS 3
/* directory.NATIVE_SEGMENT_MAX: longer listings stay with the streaming Python parser. */
#define NATIVE_SEGMENT_MAX (1 << 16)

static inline uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint16_t le16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* One entry of a listing, as walk() hands it to its visitor. */
typedef struct {
    const unsigned char *name;
    Py_ssize_t name_size;
    uint64_t ref;
    long long start, end; /* linear offsets of the entry and of the next one */
} Entry;

enum { WALK_DONE = 0, WALK_STOPPED = 1, WALK_ERROR = -1, WALK_MALFORMED = -2 };

/* Visit each entry of the listing bytes in `data` (at linear offset `linear` of a listing of
 * `length` bytes) in order: the one walk that parse(), validation and the name search share, so
 * they accept exactly the same bytes. `visit` returns 0 to go on, 1 to stop, -1 on an error. */
static inline int walk(const unsigned char *data, Py_ssize_t size, long long linear, long long length,
                       int (*visit)(void *ctx, const Entry *e), void *ctx) {
    Py_ssize_t pos = 0;
    while (pos < size) {
        if (size - pos < HEADER_SIZE) return WALK_MALFORMED;
        uint64_t count = (uint64_t)le32(data + pos) + 1;
        uint64_t inode_block = le32(data + pos + 4);
        pos += HEADER_SIZE;
        linear += HEADER_SIZE;
        if (count > MAX_RUN) return WALK_MALFORMED;
        for (uint64_t k = 0; k < count; k++) {
            if (linear >= length || size - pos < ENTRY_SIZE) return WALK_MALFORMED;
            Entry e;
            e.ref = inode_block << 16 | le16(data + pos);
            e.name_size = (Py_ssize_t)le16(data + pos + 6) + 1;
            if (e.name_size > MAX_NAME || size - pos - ENTRY_SIZE < e.name_size) return WALK_MALFORMED;
            e.name = data + pos + ENTRY_SIZE;
            e.start = linear;
            pos += ENTRY_SIZE + e.name_size;
            linear += ENTRY_SIZE + e.name_size;
            e.end = linear;
            int rc = visit(ctx, &e);
            if (rc != 0) return rc < 0 ? WALK_ERROR : WALK_STOPPED;
        }
    }
    return WALK_DONE;
}

/* walk()'s visitor for a check alone. */
static inline int accept_entry(void *ctx, const Entry *e) {
    (void)ctx;
    (void)e;
    return 0;
}

typedef struct {
    const char *name;
    Py_ssize_t size;
    uint64_t ref;
} Wanted;

/* walk()'s visitor for a name search: stops at the first entry of that name, as Listing.find. */
static inline int match_entry(void *ctx, const Entry *e) {
    Wanted *w = ctx;
    if (e->name_size != w->size || memcmp(e->name, w->name, (size_t)w->size) != 0) return 0;
    w->ref = e->ref;
    return 1;
}

/* Whether bytes a sort before bytes b, as Python compares bytes. */
static inline int bytes_less(PyObject *a, PyObject *b) {
    Py_ssize_t la = PyBytes_GET_SIZE(a), lb = PyBytes_GET_SIZE(b);
    int c = memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), (size_t)(la < lb ? la : lb));
    return c < 0 || (c == 0 && la < lb);
}

/* The index interval that holds `name` in a listing whose index has the (sorted) first names
 * `first`, as Listing.find picks it: bisect_right less one (-1: before the first index entry).
 * -2 with a TypeError if a first name is not bytes. */
static inline Py_ssize_t interval_of(PyObject *first, PyObject *name) {
    Py_ssize_t lo = 0, hi = PyTuple_GET_SIZE(first);
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        PyObject *item = PyTuple_GET_ITEM(first, mid);
        if (!PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "first_names must hold bytes");
            return -2;
        }
        if (bytes_less(name, item))
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo - 1;
}

/* A listing's bytes cross at most 9 metadata blocks (64 KiB in blocks of up to 8 KiB, the first
 * entered anywhere); a longer chain is a damaged image, for the Python loader to name. */
#define MAX_HOPS 16

/* Copy `length` bytes of listing from the metadata block at `pos` (from `offset` in it) on into
 * `dest`, each block through the view `blocks` (_caches.h). 0 on success; -1 with an error (a block
 * that would not load), or -1 without one (damage: an offset past its block, more blocks than a
 * listing can cross), for the Python loader to name. */
static inline int copy_listing(CacheView *blocks, long long pos, long long offset, long long length,
                               unsigned char *dest) {
    long long got = 0;
    for (int hops = 0; got < length; hops++) {
        PyObject *pair = hops < MAX_HOPS ? metadata_block_pair(blocks, (uint64_t)pos) : NULL;
        if (pair == NULL) return -1;
        PyObject *data = PyTuple_GET_ITEM(pair, 0);
        long long have = PyBytes_GET_SIZE(data), next = PyLong_AsLongLong(PyTuple_GET_ITEM(pair, 1));
        if (offset > have || next < 0) { /* next < 0: not an int (or an error) */
            Py_DECREF(pair);
            return -1;
        }
        long long take = have - offset < length - got ? have - offset : length - got;
        memcpy(dest + got, PyBytes_AS_STRING(data) + offset, (size_t)take);
        Py_DECREF(pair);
        got += take;
        pos = next;
        offset = 0;
    }
    return 0;
}

#endif
