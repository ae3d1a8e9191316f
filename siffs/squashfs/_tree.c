/* The reader's per-request methods without a Python frame (siffs/squashfs/reader.py).
 *
 * A FUSE request answered in C (siffs/fs/_fast.c) still paid for the reader's own Python
 * frames: five for a lookup or getattr (the method, the directory, the name search, the inode
 * fetch, the decoder), three for a listxattr, about as much as the rest of the request. Tree
 * chains the reader's C parts directly: the directory's name search (_directory.find), the
 * inode decoder (_inode.Decoder.decode_ref), the file reader (_data.FileReader), the table of
 * known inodes, and the xattr code kept beside each reference. Whatever is not the common case
 * goes to the reader's Python method of the same name, which stays the fallback and the oracle:
 * a directory whose listing is not kept, an inode never seen, one the C decoder leaves to Python,
 * a reference of more than 48 bits, an attribute set not in the cache yet (Python loads it).
 * Errors raised by the C parts (damage found while loading a block) propagate as the Python path
 * raises them, since it would call the same parts.
 *
 * A directory without an index whose listing is not kept (most directories) needs no Listing
 * and no Segment: Tree keeps its listing's bytes, copied out of the metadata blocks and checked
 * whole once (walk(), _listing.h: what the Python parser accepts), and each lookup walks them to
 * the first entry of the name, as squashfuse does. A Segment holds four Python objects per entry;
 * a lookup needs one entry, and making the others was most of a cold lookup's time. The bytes
 * are kept up to a budget of their own (the dict is emptied when it is reached). So are the index
 * intervals of a listing with an index (its Listing, made by the Python lookup, says where they
 * start), each under (directory, interval).
 *
 * The module's capsule (_tree.h) answers lookup, getattr and readlink as C values, from the
 * inode decoded into C values (_inode.h), and hands over an inode's attribute set (the last few
 * met are remembered), for the FUSE layer's C handlers; Tree's methods answer the same in Python
 * objects, and everything the capsule declines.
 *
 * Tree(refs, listings, find, decoder, read, fallbacks, layout, basic)
 *   refs: the reader's dict inode number -> reference | xattr code << 48
 *   listings: its dict directory inode -> Listing (with .find_args and ._segment)
 *   find: _directory.find; decoder: _inode.Decoder (made with a cache); read: FileReader.read
 *   fallbacks: (lookup, getattr, readlink, listxattr, read, inode_at, getxattr): the Python methods
 *   layout: (index of stat, xattr, extended, dir, target in Inode; no xattr table: 0/1)
 *   basic: (metadata cache table, directory table start, MetadataReader.block, bytes of listings
 *           to keep)
 */
#include "_caches.h" /* first: it includes Python.h */
#include "_inode.h"
#include "_listing.h"
#include "_tree.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <structmember.h>

/* The version of this module's interface to its Python caller (siffs.native.load checks it):
 * bump it whenever a signature, a constructor argument or a capsule changes. */
#define ABI 3

#define REF_BITS 48
#define REF_MASK ((1ULL << REF_BITS) - 1)
/* The xattr codes of reader.py: none, unsupported (no xattr table), index + BASE. */
enum { NO_XATTRS = 1, XATTRS_UNSUPPORTED = 2, XATTR_BASE = 3 };
enum { FB_LOOKUP, FB_GETATTR, FB_READLINK, FB_LISTXATTR, FB_READ, FB_INODE_AT, FB_GETXATTR, FB_COUNT };

#define RECENT_SETS 4
#define RECENT_INOS 4

typedef struct {
    PyObject_HEAD
    PyObject *refs, *listings, *find, *decoder, *decode_ref, *read;
    const InodeApi *inode_api; /* the decoder's C values, for the capsule's functions (_tree.h) */
    PyObject *fallback[FB_COUNT];
    Py_ssize_t i_stat, i_xattr, i_extended, i_dir, i_target;
    int no_xattr_table;
    CacheView blocks; /* metadata blocks, for copying listings out */
    unsigned long long directory_table;
    PyObject *kept; /* directory inode -> its listing's checked bytes (directories without an index) */
    Py_ssize_t kept_bytes, kept_budget;
    CacheView xattr_sets; /* the metadata cache, for attribute sets loaded by the Python path */
    Recent sets; /* the last RECENT_SETS attribute sets met, by xattr code (files share few sets) */
    Recent inos; /* refs' values for the last RECENT_INOS inode numbers the C API was asked about */
} Tree;

/* Listings kept at most, whatever their bytes (a few hundred each); the dict is emptied when this
 * or the byte budget is reached, as the reader's listings are. */
#define KEPT_MAX 8192

static PyObject *SEGMENT, *FIND_ARGS, *SPANS, *XATTR_TAG;

static PyObject *call1(PyObject *fn, PyObject *a) { return PyObject_Vectorcall(fn, &a, 1, NULL); }

/* A refs value as reference and xattr code: 1, or 0 with no error when it is not 64-bit. */
static int unpacked(PyObject *v, unsigned long long *ref, unsigned long long *code) {
    unsigned long long raw = PyLong_AsUnsignedLongLong(v);
    if (raw == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear(); /* an xattr index too large for 64 bits: the Python path copes */
        return 0;
    }
    *ref = raw & REF_MASK;
    *code = raw >> REF_BITS;
    return 1;
}

/* The known reference of inode ``ino`` (0 with no error: not known, or not 64-bit). */
static int known(Tree *t, PyObject *ino, unsigned long long *ref, unsigned long long *code) {
    PyObject *v = PyDict_GetItemWithError(t->refs, ino); /* borrowed */
    if (v == NULL)
        return PyErr_Occurred() ? -1 : 0;
    return unpacked(v, ref, code);
}

/* The decoded inode at ``ref`` (C decoder first, the reader's _inode_at when it declines). */
static PyObject *inode_at(Tree *t, unsigned long long ref) {
    PyObject *r = PyLong_FromUnsignedLongLong(ref);
    if (r == NULL)
        return NULL;
    PyObject *inode = call1(t->decode_ref, r);
    if (inode == Py_None) {
        Py_DECREF(inode);
        inode = call1(t->fallback[FB_INODE_AT], r);
    }
    Py_DECREF(r);
    return inode;
}

/* As SquashFS._xattr_code, from what the inode says: -1 to leave it to Python. */
static long long code_of(const Tree *t, int extended, int is_dir, int is_link, int has_set, long long index) {
    if (t->no_xattr_table && (extended || is_dir || is_link))
        return XATTRS_UNSUPPORTED;
    if (!has_set)
        return NO_XATTRS;
    return index < 0 || index > 0xFFFF ? -1 : XATTR_BASE + index;
}

static long long xattr_code(Tree *t, PyObject *inode) {
    PyObject *x = PyTuple_GET_ITEM(inode, t->i_xattr);
    long long index = x == Py_None ? 0 : PyLong_AsLongLong(x);
    return code_of(t, PyObject_IsTrue(PyTuple_GET_ITEM(inode, t->i_extended)),
                   PyTuple_GET_ITEM(inode, t->i_dir) != Py_None, PyTuple_GET_ITEM(inode, t->i_target) != Py_None,
                   x != Py_None, index);
}

/* Learn that inode `ino` is at `ref` with xattr code `code` (code_of's): 1; 0 for a code that is
 * not stored here (an index beyond 16 bits: the Python path learns it), -1 on an error (set). */
static int remember(Tree *t, PyObject *ino, unsigned long long ref, long long code) {
    if (code <= 0)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *v = PyLong_FromUnsignedLongLong(ref | (unsigned long long)code << REF_BITS);
    int rc = v == NULL || PyDict_SetItem(t->refs, ino, v) < 0 ? -1 : 1;
    Py_XDECREF(v);
    return rc;
}

/* lookup's second half, as SquashFS._inode_at: the inode's Stat, its reference learned. */
static PyObject *stat_at(Tree *t, PyObject *ref_obj) {
    unsigned long long ref = PyLong_AsUnsignedLongLong(ref_obj);
    if ((ref == (unsigned long long)-1 && PyErr_Occurred()) || ref >> REF_BITS) {
        PyErr_Clear();
        PyObject *inode = call1(t->fallback[FB_INODE_AT], ref_obj); /* raises CorruptImage */
        if (inode == NULL)
            return NULL;
        PyObject *st = PyTuple_GET_ITEM(inode, t->i_stat);
        Py_INCREF(st);
        Py_DECREF(inode);
        return st;
    }
    PyObject *inode = inode_at(t, ref);
    if (inode == NULL)
        return NULL;
    if (!PyTuple_Check(inode) || PyTuple_GET_SIZE(inode) <= t->i_target) {
        Py_DECREF(inode);
        PyErr_SetString(PyExc_TypeError, "the decoder returned something that is not an Inode");
        return NULL;
    }
    PyObject *st = PyTuple_GET_ITEM(inode, t->i_stat);
    Py_INCREF(st);
    PyObject *ino = PyTuple_GET_ITEM(st, 0);
    int have = PyDict_Contains(t->refs, ino);
    if (have == 0)
        have = remember(t, ino, ref, xattr_code(t, inode));
    if (have == 0) { /* an xattr index beyond 16 bits: the Python path learns it (arbitrary precision) */
        PyObject *learnt = call1(t->fallback[FB_INODE_AT], ref_obj);
        have = learnt == NULL ? -1 : 1;
        Py_XDECREF(learnt);
    }
    Py_DECREF(inode);
    if (have < 0) {
        Py_DECREF(st);
        return NULL;
    }
    return st;
}

/* The inode at `ref` decoded into C values (_inode.h): 1, TREE_DECLINE, or TREE_ERROR. *block: its
 * metadata block, or its two parts joined (a new reference, which out->target points into). */
static int raw_at(Tree *t, unsigned long long ref, RawInode *r, PyObject **block) {
    if (ref >> REF_BITS)
        return TREE_DECLINE; /* the Python path names the damage */
    int rc = t->inode_api->raw(t->decoder, ref, r, block);
    return rc == 1 ? 1 : rc == 0 ? TREE_DECLINE : TREE_ERROR;
}

/* `length` bytes of listing copied out of the metadata blocks from `offset` in the block at `pos`
 * and checked by walk() (a new bytes object): the entries from linear offset `linear` of a listing
 * of `length_all` bytes. NULL with no error: damage, for the Python lookup to name. */
static PyObject *copied(Tree *t, long long pos, long long offset, long long linear, long long length,
                        long long length_all) {
    PyObject *data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)length);
    if (data == NULL)
        return NULL;
    unsigned char *buf = (unsigned char *)PyBytes_AS_STRING(data);
    if (copy_listing(&t->blocks, pos, offset, length, buf) < 0 ||
        walk(buf, (Py_ssize_t)length, linear, length_all, accept_entry, NULL) != WALK_DONE) {
        Py_DECREF(data);
        if (PyErr_Occurred())
            clear_image_error();
        return NULL;
    }
    return data;
}

/* Keep checked listing bytes `data` (stolen) under `key` within the budget (the dict is emptied
 * when it is reached; bytes larger than the budget are searched once, not kept). Returns the
 * bytes to search: `data`, or those another thread kept meanwhile (a block load may have run
 * Python code); NULL on an error. */
static PyObject *keep(Tree *t, PyObject *key, PyObject *data) {
    Py_ssize_t length = PyBytes_GET_SIZE(data);
    if (length > t->kept_budget)
        return data;
    PyObject *stored = PyDict_GetItemWithError(t->kept, key);
    if (stored != NULL || PyErr_Occurred()) {
        Py_DECREF(data);
        return Py_XNewRef(stored);
    }
    if (PyDict_GET_SIZE(t->kept) >= KEPT_MAX || t->kept_bytes + length > t->kept_budget) {
        PyDict_Clear(t->kept);
        t->kept_bytes = 0;
    }
    if (PyDict_SetItem(t->kept, key, data) < 0) {
        Py_DECREF(data);
        return NULL;
    }
    t->kept_bytes += length;
    return data;
}

/* The reference of the first entry called `name` in checked listing bytes `data` (stolen), as an
 * int, or None. */
static PyObject *search(PyObject *data, PyObject *name) {
    Wanted w = {PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name), 0};
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    int found = walk((const unsigned char *)PyBytes_AS_STRING(data), size, 0, size, match_entry, &w);
    Py_DECREF(data); /* checked when kept: the walk ends or stops */
    return found == WALK_STOPPED ? PyLong_FromUnsignedLongLong(w.ref) : Py_NewRef(Py_None);
}

/* The checked bytes of directory `parent`'s listing if it is known and has no index (kept, or
 * copied out of the metadata blocks and kept). NULL with no error: not that case, or a listing
 * walk() does not accept, for the Python lookup (which raises what a damaged one deserves). */
static PyObject *basic_listing(Tree *t, PyObject *parent) {
    PyObject *kept = PyDict_GetItemWithError(t->kept, parent);
    if (kept != NULL || PyErr_Occurred())
        return Py_XNewRef(kept);
    unsigned long long ref, code;
    if (known(t, parent, &ref, &code) <= 0)
        return NULL;
    RawInode r;
    PyObject *block;
    int rc = raw_at(t, ref, &r, &block);
    if (rc != 1)
        return NULL; /* an error the Python path meets too, or a decline */
    Py_DECREF(block);
    long long length = r.dir_size > SIZE_BIAS ? (long long)r.dir_size - SIZE_BIAS : 0;
    unsigned long long ino = PyLong_AsUnsignedLongLong(parent);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return NULL;
    }
    if (r.basic != 1 || r.ino != ino || r.dir_index_count != 0 || length <= 0 || length > NATIVE_SEGMENT_MAX)
        return NULL; /* not a directory, another inode than asked for, an index, empty or too long */
    PyObject *data = copied(t, (long long)(t->directory_table + r.dir_start), (long long)r.dir_offset, 0, length,
                            length);
    return data == NULL ? NULL : keep(t, parent, data);
}

/* The checked bytes of index interval `i` of a listing the reader keeps (a Listing with an index:
 * its find_args `fa` and spans), kept under (directory, i) as basic_listing keeps a whole listing,
 * instead of the interval's Segment (four Python objects per entry, and a lookup needs one).
 * The interval is what Listing._parse(i) reads. NULL with no error: an empty or long interval,
 * odd arguments or damage, for the Segment way (_directory.find). */
static PyObject *interval(Tree *t, PyObject *dir, PyObject *fa, PyObject *spans, Py_ssize_t i) {
    PyObject *key = Py_BuildValue("(On)", dir, i);
    if (key == NULL)
        return NULL;
    PyObject *kept = PyDict_GetItemWithError(t->kept, key);
    if (kept != NULL || PyErr_Occurred()) {
        Py_DECREF(key);
        return Py_XNewRef(kept);
    }
    PyObject *data = NULL, *offsets, *blocks;
    unsigned long long table, start, first_offset, length;
    PyObject *base = PyTuple_GET_ITEM(fa, 1);
    if (PyArg_ParseTuple(spans, "KO!O!", &table, &PyTuple_Type, &offsets, &PyTuple_Type, &blocks) &&
        PyTuple_GET_SIZE(base) == 4 && PyTuple_GET_SIZE(blocks) == PyTuple_GET_SIZE(offsets) &&
        i < PyTuple_GET_SIZE(offsets)) {
        start = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(base, 1));
        first_offset = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(base, 2));
        length = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(base, 3));
        unsigned long long linear = i < 0 ? 0 : PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(offsets, i));
        unsigned long long pos = i < 0 ? start : table + PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(blocks, i));
        unsigned long long end = i + 1 < PyTuple_GET_SIZE(offsets)
                                     ? PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(offsets, i + 1))
                                     : length;
        if (!PyErr_Occurred() && linear < end && end - linear <= NATIVE_SEGMENT_MAX && end <= length &&
            length <= LLONG_MAX && pos <= LLONG_MAX)
            data = copied(t, (long long)pos, (long long)((first_offset + linear) % METADATA_BLOCK), (long long)linear,
                          (long long)(end - linear), (long long)length);
    }
    if (data == NULL && PyErr_Occurred())
        clear_image_error(); /* odd arguments or damage: the Segment way raises what is due */
    PyObject *kept_now = data == NULL ? NULL : keep(t, key, data);
    Py_DECREF(key);
    return kept_now;
}

/* What a lookup answers for the reference ``find`` returned (stolen): the entry's Stat, None for
 * no such name, NULL on an error. */
static PyObject *entry_at(Tree *t, PyObject *ref) {
    if (ref == NULL || ref == Py_None)
        return ref;
    PyObject *st = stat_at(t, ref);
    Py_DECREF(ref);
    return st;
}

/* The reference of entry `name` of directory `dir` (a new reference): an int, None for no such
 * entry, NotImplemented for the reader's Python lookup to answer, or NULL with an error. */
static PyObject *find_ref(Tree *t, PyObject *dir, PyObject *name) {
    if (!PyBytes_Check(name))
        return Py_NewRef(Py_NotImplemented);
    PyObject *listing = PyDict_GetItemWithError(t->listings, dir);
    if (listing == NULL) {
        if (PyErr_Occurred())
            return NULL;
        PyObject *data = basic_listing(t, dir);
        if (data == NULL)
            return PyErr_Occurred() ? NULL : Py_NewRef(Py_NotImplemented);
        return search(data, name);
    }
    Py_INCREF(listing); /* the dict may drop it while a block loads */
    PyObject *fa = PyObject_GetAttr(listing, FIND_ARGS);
    PyObject *ref = NULL;
    if (fa != NULL && PyTuple_Check(fa) && PyTuple_GET_SIZE(fa) == 5 && PyTuple_Check(PyTuple_GET_ITEM(fa, 1)) &&
        PyTuple_Check(PyTuple_GET_ITEM(fa, 2)) && PyTuple_GET_SIZE(PyTuple_GET_ITEM(fa, 2)) > 0) {
        Py_ssize_t i = interval_of(PyTuple_GET_ITEM(fa, 2), name);
        PyObject *spans = i < -1 ? NULL : PyObject_GetAttr(listing, SPANS);
        PyObject *data = spans == NULL || !PyTuple_Check(spans) ? NULL : interval(t, dir, fa, spans, i);
        Py_XDECREF(spans);
        if (data != NULL) {
            Py_DECREF(fa);
            Py_DECREF(listing);
            return search(data, name);
        }
        if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception))
            goto out; /* a signal's exception: up */
        PyErr_Clear(); /* the Segment way below raises what is due */
    }
    PyObject *load = fa == NULL ? NULL : PyObject_GetAttr(listing, SEGMENT);
    if (fa != NULL && load != NULL && PyTuple_Check(fa) && PyTuple_GET_SIZE(fa) == 5) {
        PyObject *fargs[7] = {PyTuple_GET_ITEM(fa, 0), PyTuple_GET_ITEM(fa, 1), PyTuple_GET_ITEM(fa, 2),
                              PyTuple_GET_ITEM(fa, 3), PyTuple_GET_ITEM(fa, 4), name, load};
        ref = PyObject_Vectorcall(t->find, fargs, 7, NULL);
    } else if (!PyErr_Occurred()) {
        PyErr_SetString(PyExc_TypeError, "a listing without find_args");
    }
    Py_XDECREF(load);
out:
    Py_XDECREF(fa);
    Py_DECREF(listing);
    return ref;
}

static PyObject *Tree_lookup(Tree *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "lookup(parent, name)");
        return NULL;
    }
    PyObject *ref = find_ref(t, args[0], args[1]);
    if (ref == Py_NotImplemented) {
        Py_DECREF(ref);
        return PyObject_Vectorcall(t->fallback[FB_LOOKUP], args, 2, NULL);
    }
    return entry_at(t, ref);
}

/* The inode ``ino`` names, if known (decoded as inode_at does); NULL with no error: ask Python. */
static PyObject *known_inode(Tree *t, PyObject *ino) {
    unsigned long long ref, code;
    if (known(t, ino, &ref, &code) <= 0)
        return NULL;
    PyObject *inode = inode_at(t, ref);
    if (inode != NULL && (!PyTuple_Check(inode) || PyTuple_GET_SIZE(inode) <= t->i_target)) {
        Py_DECREF(inode);
        return NULL;
    }
    return inode; /* its number is ``ino``: the table learns a reference from the inode it decodes */
}

static PyObject *by_inode(Tree *t, PyObject *ino, int which) {
    PyObject *inode = known_inode(t, ino);
    if (inode == NULL) {
        if (PyErr_Occurred())
            return NULL;
        return call1(t->fallback[which], ino);
    }
    PyObject *v = PyTuple_GET_ITEM(inode, which == FB_GETATTR ? t->i_stat : t->i_target);
    if (v == Py_None) { /* not a link: Python raises the error */
        Py_DECREF(inode);
        return call1(t->fallback[which], ino);
    }
    Py_INCREF(v);
    Py_DECREF(inode);
    return v;
}

static PyObject *Tree_getattr(Tree *t, PyObject *ino) { return by_inode(t, ino, FB_GETATTR); }

static PyObject *Tree_readlink(Tree *t, PyObject *ino) { return by_inode(t, ino, FB_READLINK); }

/* The (name, value) pairs of attribute set `code` (an inode's xattr code, XATTR_BASE or more) if
 * the set is in the cache (XattrTable.pairs keeps it under ("x", index)); NULL with no error: ask
 * Python, which loads the set. */
static PyObject *pairs_of(Tree *t, unsigned long long code) {
    PyObject *remembered = recent_get(&t->sets, RECENT_SETS, code);
    if (remembered != NULL)
        return remembered;
    PyObject *index = PyLong_FromUnsignedLongLong(code - XATTR_BASE);
    PyObject *key = index == NULL ? NULL : PyTuple_Pack(2, XATTR_TAG, index);
    Py_XDECREF(index);
    PyObject *pairs = key == NULL ? NULL : cache_hit(&t->xattr_sets, key);
    Py_XDECREF(key);
    if (pairs != NULL && !PyTuple_Check(pairs)) {
        Py_DECREF(pairs);
        PyErr_SetString(PyExc_TypeError, "an attribute set is not a tuple of pairs");
        return NULL;
    }
    if (pairs != NULL)
        recent_put(&t->sets, RECENT_SETS, code, pairs);
    return pairs;
}

/* The pairs of inode ``ino``'s attribute set if it is known and the set is in the cache; NULL with
 * no error: ask Python. */
static PyObject *cached_pairs(Tree *t, PyObject *ino) {
    unsigned long long ref, code;
    if (known(t, ino, &ref, &code) <= 0 || code < XATTR_BASE)
        return NULL;
    return pairs_of(t, code);
}

/* Item ``i`` (0: name, 1: value) of pair ``j``, if it is a (bytes, bytes) pair (borrowed). */
static PyObject *pair_item(PyObject *pairs, Py_ssize_t j, int i) {
    PyObject *pair = PyTuple_GET_ITEM(pairs, j);
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(pair, i)))
        return NULL;
    return PyTuple_GET_ITEM(pair, i);
}

static PyObject *Tree_listxattr(Tree *t, PyObject *ino) {
    unsigned long long ref, code;
    int k = known(t, ino, &ref, &code);
    if (k < 0)
        return NULL;
    if (k == 1 && code == NO_XATTRS)
        return PyList_New(0);
    PyObject *pairs = cached_pairs(t, ino);
    if (pairs == NULL) {
        if (PyErr_Occurred())
            return NULL;
        return call1(t->fallback[FB_LISTXATTR], ino);
    }
    Py_ssize_t n = PyTuple_GET_SIZE(pairs);
    PyObject *names = PyList_New(n);
    for (Py_ssize_t j = 0; names != NULL && j < n; j++) {
        PyObject *name = pair_item(pairs, j, 0);
        if (name == NULL) {
            Py_CLEAR(names);
            PyErr_SetString(PyExc_TypeError, "an attribute set is not a tuple of pairs");
        } else {
            PyList_SET_ITEM(names, j, Py_NewRef(name));
        }
    }
    Py_DECREF(pairs);
    return names;
}

static PyObject *Tree_getxattr(Tree *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "getxattr(ino, name: bytes)");
        return NULL;
    }
    PyObject *pairs = cached_pairs(t, args[0]);
    if (pairs == NULL) {
        if (PyErr_Occurred())
            return NULL;
        return PyObject_Vectorcall(t->fallback[FB_GETXATTR], args, 2, NULL);
    }
    Py_ssize_t size = PyBytes_GET_SIZE(args[1]);
    PyObject *found = NULL;
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(pairs) && found == NULL; j++) {
        PyObject *name = pair_item(pairs, j, 0), *value = pair_item(pairs, j, 1);
        if (name != NULL && value != NULL && PyBytes_GET_SIZE(name) == size &&
            memcmp(PyBytes_AS_STRING(name), PyBytes_AS_STRING(args[1]), (size_t)size) == 0)
            found = Py_NewRef(value); /* the first of that name, as the Python loop */
    }
    Py_DECREF(pairs);
    /* No such attribute (or a malformed set): Python raises the error with its message. */
    return found != NULL ? found : PyObject_Vectorcall(t->fallback[FB_GETXATTR], args, 2, NULL);
}

static PyObject *Tree_read(Tree *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "read(ino, offset, size)");
        return NULL;
    }
    unsigned long long ref, code;
    int k = known(t, args[0], &ref, &code);
    if (k < 0)
        return NULL;
    if (k == 1) {
        PyObject *r = PyLong_FromUnsignedLongLong(ref);
        if (r == NULL)
            return NULL;
        PyObject *rargs[3] = {r, args[1], args[2]};
        PyObject *got = PyObject_Vectorcall(t->read, rargs, 3, NULL);
        Py_DECREF(r);
        if (got != Py_None)
            return got; /* the bytes, or the error the Python path would raise too */
        Py_DECREF(got);
    }
    return PyObject_Vectorcall(t->fallback[FB_READ], args, 3, NULL);
}

/* --- the capsule: answers as C values (_tree.h) ------------------------------------------------ */

static PyTypeObject TreeType;

static Tree *as_tree(PyObject *tree) {
    if (PyObject_TypeCheck(tree, &TreeType) && ((Tree *)tree)->inode_api != NULL)
        return (Tree *)tree;
    PyErr_SetString(PyExc_TypeError, "the tree API needs an initialised siffs.squashfs._tree.Tree");
    return NULL;
}

static void stat_of(const RawInode *r, TreeStat *out) {
    unsigned long long v[TS_FIELDS] = {r->ino, r->mode, r->nlink, r->uid, r->gid, r->size, r->mtime, r->rdev, r->blocks};
    memcpy(out->f, v, sizeof(v));
}

/* A decoding's outcome `rc` (raw_at's) as attributes: *out filled and the block let go on success. */
static int stat_taken(int rc, PyObject *block, const RawInode *r, TreeStat *out) {
    if (rc != 1)
        return rc;
    Py_DECREF(block);
    stat_of(r, out);
    return TREE_FOUND;
}

/* What stat_at does for a lookup's entry, without the Stat: its reference learned. */
static int entry_raw(Tree *t, unsigned long long ref, TreeStat *out) {
    RawInode r;
    PyObject *block = NULL;
    int rc = raw_at(t, ref, &r, &block); /* before block is read: argument order is unspecified */
    rc = stat_taken(rc, block, &r, out);
    if (rc != TREE_FOUND)
        return rc;
    PyObject *ino = PyLong_FromUnsignedLong(r.ino);
    if (ino == NULL)
        return TREE_ERROR;
    int have = PyDict_Contains(t->refs, ino);
    if (have == 0) /* 0 again: an index beyond 16 bits, which the Python path learns */
        have = remember(t, ino, ref,
                        code_of(t, r.extended, r.basic == 1, r.basic == 3, r.xattr != INODE_NO_XATTR, r.xattr));
    Py_DECREF(ino);
    return have < 0 ? TREE_ERROR : have == 0 ? TREE_DECLINE : TREE_FOUND;
}

static int api_lookup(PyObject *tree, uint64_t parent, const char *name, size_t size, TreeStat *out) {
    Tree *t = as_tree(tree);
    if (t == NULL)
        return TREE_ERROR;
    PyObject *dir = PyLong_FromUnsignedLongLong(parent);
    PyObject *wanted = dir == NULL ? NULL : PyBytes_FromStringAndSize(name, (Py_ssize_t)size);
    PyObject *ref = wanted == NULL ? NULL : find_ref(t, dir, wanted);
    int rc = TREE_ERROR;
    if (ref == Py_NotImplemented) {
        rc = TREE_DECLINE;
    } else if (ref == Py_None) {
        rc = TREE_NO_ENTRY;
    } else if (ref != NULL) {
        unsigned long long at = PyLong_AsUnsignedLongLong(ref);
        if (at == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear(); /* not a reference of 64 bits: the Python way names the damage */
            rc = TREE_DECLINE;
        } else {
            rc = entry_raw(t, at, out);
        }
    }
    Py_XDECREF(dir);
    Py_XDECREF(wanted);
    Py_XDECREF(ref);
    return rc;
}

/* The reference and xattr code of known inode `ino` (1), or TREE_DECLINE / TREE_ERROR. */
static int known_ino(PyObject *tree, uint64_t ino, Tree **t, unsigned long long *ref, unsigned long long *code) {
    *t = as_tree(tree);
    if (*t == NULL)
        return TREE_ERROR;
    /* A client asks several things of one inode in a row (getxattr after listxattr, read after
     * read); remembering its refs value saves making a number and a dict lookup each time. */
    PyObject *v = recent_get(&(*t)->inos, RECENT_INOS, ino);
    if (v == NULL) {
        PyObject *number = PyLong_FromUnsignedLongLong(ino);
        if (number == NULL)
            return TREE_ERROR;
        v = PyDict_GetItemWithError((*t)->refs, number);
        Py_DECREF(number);
        if (v == NULL)
            return PyErr_Occurred() ? TREE_ERROR : TREE_DECLINE;
        recent_put(&(*t)->inos, RECENT_INOS, ino, v);
        Py_INCREF(v);
    }
    int rc = unpacked(v, ref, code);
    Py_DECREF(v);
    return rc == 0 ? TREE_DECLINE : 1;
}

/* The known inode `ino` decoded (1), or TREE_DECLINE / TREE_ERROR. */
static int known_raw(PyObject *tree, uint64_t ino, RawInode *r, PyObject **block) {
    Tree *t;
    unsigned long long ref, code;
    int rc = known_ino(tree, ino, &t, &ref, &code);
    return rc == 1 ? raw_at(t, ref, r, block) : rc;
}

static int api_getattr(PyObject *tree, uint64_t ino, TreeStat *out) {
    RawInode r;
    PyObject *block = NULL;
    int rc = known_raw(tree, ino, &r, &block);
    return stat_taken(rc, block, &r, out);
}

static int api_readlink(PyObject *tree, uint64_t ino, PyObject **out) {
    RawInode r;
    PyObject *block;
    int rc = known_raw(tree, ino, &r, &block);
    if (rc != 1)
        return rc;
    rc = TREE_DECLINE; /* not a link: the Python path raises the error */
    if (r.basic == 3) {
        *out = PyBytes_FromStringAndSize((const char *)r.target, r.target_size);
        rc = *out == NULL ? TREE_ERROR : TREE_FOUND;
    }
    Py_DECREF(block);
    return rc;
}

static int api_xattrs(PyObject *tree, uint64_t ino, PyObject **pairs) {
    Tree *t;
    unsigned long long ref, code;
    int rc = known_ino(tree, ino, &t, &ref, &code);
    if (rc != 1)
        return rc;
    if (code == NO_XATTRS) {
        *pairs = NULL;
        return TREE_FOUND;
    }
    if (code < XATTR_BASE)
        return TREE_DECLINE; /* no xattr table: EOPNOTSUPP or nothing, by the kind of inode */
    *pairs = pairs_of(t, code);
    return *pairs != NULL ? TREE_FOUND : PyErr_Occurred() ? TREE_ERROR : TREE_DECLINE;
}

/* readdir's walk over listing bytes: entries from linear offset `want` on, each decoded and handed to
 * `emit`. */
typedef struct {
    Tree *t;
    unsigned long long want;
    TreeEmit emit;
    void *ctx;
    int rc;   /* why the walk was cut short (TREE_DECLINE or TREE_ERROR) */
    int full; /* emit took no more */
} Lister;

static int list_entry(void *ctx, const Entry *e) {
    Lister *l = ctx;
    if ((unsigned long long)e->start < l->want)
        return 0; /* handed over by an earlier call */
    TreeStat ts;
    int rc = entry_raw(l->t, e->ref, &ts);
    if (rc != TREE_FOUND) {
        l->rc = rc;
        return -1;
    }
    rc = l->emit(l->ctx, e->name, (size_t)e->name_size, &ts, (uint64_t)e->end + SIZE_BIAS);
    if (rc < 0) {
        l->rc = TREE_DECLINE;
        return -1;
    }
    l->full = rc > 0;
    return rc > 0;
}

/* Walk checked listing bytes `data` (stolen) of a listing of `length` bytes, from linear offset
 * `linear`: TREE_FOUND (l->full when emit stopped), or why not. */
static int list_bytes(Lister *l, PyObject *data, long long linear, long long length) {
    int walked = walk((const unsigned char *)PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), linear, length,
                      list_entry, l);
    Py_DECREF(data);
    return walked == WALK_ERROR ? l->rc : walked == WALK_MALFORMED ? TREE_DECLINE : TREE_FOUND;
}

/* The first index interval readdir reads from cookie `want` (a linear offset), as Listing.entries
 * picks it: bisect_right of the index offsets less one. -2 with an error. */
static Py_ssize_t first_interval(PyObject *offsets, unsigned long long want) {
    Py_ssize_t lo = 0, hi = PyTuple_GET_SIZE(offsets);
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        unsigned long long at = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(offsets, mid));
        if (at == (unsigned long long)-1 && PyErr_Occurred())
            return -2;
        if (want < at)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo - 1;
}

/* The entries of a listing with an index, from the Listing the reader keeps for it: interval by
 * interval, each kept as checked bytes as lookups keep them. */
static int list_intervals(Lister *l, PyObject *dir, PyObject *listing) {
    PyObject *fa = PyObject_GetAttr(listing, FIND_ARGS);
    PyObject *spans = fa == NULL ? NULL : PyObject_GetAttr(listing, SPANS);
    PyObject *offsets = NULL;
    PyObject *base = NULL;
    int rc = TREE_DECLINE;
    if (spans != NULL && PyTuple_Check(fa) && PyTuple_GET_SIZE(fa) == 5 && PyTuple_Check(spans) &&
        PyTuple_GET_SIZE(spans) == 3 && PyTuple_Check(PyTuple_GET_ITEM(spans, 1)) &&
        PyTuple_Check(PyTuple_GET_ITEM(fa, 1)) && PyTuple_GET_SIZE(PyTuple_GET_ITEM(fa, 1)) == 4) {
        offsets = PyTuple_GET_ITEM(spans, 1);
        base = PyTuple_GET_ITEM(fa, 1);
    }
    long long length = base == NULL ? -1 : PyLong_AsLongLong(PyTuple_GET_ITEM(base, 3));
    Py_ssize_t i = length < 0 ? -2 : first_interval(offsets, l->want);
    Py_ssize_t n = i < -1 ? 0 : PyTuple_GET_SIZE(offsets);
    for (rc = i < -1 ? TREE_DECLINE : TREE_FOUND; rc == TREE_FOUND && !l->full && i < n; i++) {
        long long lo = i < 0 ? 0 : PyLong_AsLongLong(PyTuple_GET_ITEM(offsets, i));
        long long hi = i + 1 < n ? PyLong_AsLongLong(PyTuple_GET_ITEM(offsets, i + 1)) : length;
        if (lo < 0 || hi < 0) {
            rc = TREE_DECLINE;
        } else if (lo < hi) { /* an empty interval (the index starting at 0) has nothing to hand over */
            PyObject *data = interval(l->t, dir, fa, spans, i);
            rc = data != NULL ? list_bytes(l, data, lo, length) : PyErr_Occurred() ? TREE_ERROR : TREE_DECLINE;
        }
    }
    if (rc == TREE_DECLINE && PyErr_Occurred())
        PyErr_Clear(); /* odd arguments: the Python path raises what is due */
    Py_XDECREF(fa);
    Py_XDECREF(spans);
    return rc;
}

/* TREE_FOUND if known inode `ino` is a directory with an empty listing (nothing to hand over), else
 * TREE_DECLINE (or TREE_ERROR). */
static int empty_directory(Tree *t, uint64_t ino) {
    RawInode r;
    PyObject *block;
    int rc = known_raw((PyObject *)t, ino, &r, &block);
    if (rc != 1)
        return rc;
    Py_DECREF(block);
    return r.basic == 1 && r.ino == ino && r.dir_size <= SIZE_BIAS ? TREE_FOUND : TREE_DECLINE;
}

static int api_readdir(PyObject *tree, uint64_t ino, uint64_t start, TreeEmit emit, void *ctx) {
    Tree *t = as_tree(tree);
    if (t == NULL)
        return TREE_ERROR;
    Lister l = {t, start > SIZE_BIAS ? start - SIZE_BIAS : 0, emit, ctx, TREE_FOUND, 0};
    PyObject *dir = PyLong_FromUnsignedLongLong(ino);
    if (dir == NULL)
        return TREE_ERROR;
    int rc = TREE_DECLINE;
    PyObject *data = basic_listing(t, dir);
    if (data != NULL) {
        rc = list_bytes(&l, data, 0, PyBytes_GET_SIZE(data));
    } else if (!PyErr_Occurred()) {
        PyObject *listing = PyDict_GetItemWithError(t->listings, dir);
        if (listing != NULL) {
            Py_INCREF(listing); /* the dict may drop it while a block loads */
            rc = list_intervals(&l, dir, listing);
            Py_DECREF(listing);
        } else if (!PyErr_Occurred()) {
            rc = empty_directory(t, ino);
        }
    }
    if (PyErr_Occurred() && rc != TREE_ERROR)
        rc = TREE_ERROR;
    Py_DECREF(dir);
    return rc;
}

static const TreeApi API = {api_lookup, api_getattr, api_readlink, api_xattrs, api_readdir};

/* --- the type ------------------------------------------------------------------------------ */

static int Tree_traverse(Tree *t, visitproc visit, void *arg) {
    Py_VISIT(t->refs);
    Py_VISIT(t->listings);
    Py_VISIT(t->find);
    Py_VISIT(t->decoder);
    Py_VISIT(t->decode_ref);
    Py_VISIT(t->read);
    for (int i = 0; i < FB_COUNT; i++)
        Py_VISIT(t->fallback[i]);
    CACHE_VIEW_VISIT(t->blocks);
    Py_VISIT(t->kept);
    CACHE_VIEW_VISIT(t->xattr_sets);
    RECENT_VISIT(t->sets);
    RECENT_VISIT(t->inos);
    return 0;
}

static int Tree_clear(Tree *t) {
    Py_CLEAR(t->refs);
    Py_CLEAR(t->listings);
    Py_CLEAR(t->find);
    Py_CLEAR(t->decoder);
    Py_CLEAR(t->decode_ref);
    Py_CLEAR(t->read);
    for (int i = 0; i < FB_COUNT; i++)
        Py_CLEAR(t->fallback[i]);
    cache_view_clear(&t->blocks);
    Py_CLEAR(t->kept);
    cache_view_clear(&t->xattr_sets);
    recent_clear(&t->sets);
    recent_clear(&t->inos);
    t->inode_api = NULL;
    return 0;
}

static void Tree_dealloc(Tree *t) {
    PyObject_GC_UnTrack(t);
    Tree_clear(t);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static int Tree_init(Tree *t, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"refs", "listings", "find", "decoder", "read", "fallbacks", "layout", "basic", NULL};
    PyObject *refs, *listings, *find, *decoder, *read, *fallbacks, *table, *block;
    Py_ssize_t i_stat, i_xattr, i_extended, i_dir, i_target, budget;
    unsigned long long directory_table;
    int no_table;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!OOOO!(nnnnnp)(O!KOn)", kw, &PyDict_Type, &refs, &PyDict_Type,
                                     &listings, &find, &decoder, &read, &PyTuple_Type, &fallbacks, &i_stat, &i_xattr,
                                     &i_extended, &i_dir, &i_target, &no_table, &PyDict_Type, &table,
                                     &directory_table, &block, &budget))
        return -1;
    if (PyTuple_GET_SIZE(fallbacks) != FB_COUNT) {
        PyErr_Format(PyExc_ValueError, "fallbacks: %d callables", FB_COUNT);
        return -1;
    }
    Py_ssize_t idx[] = {i_stat, i_xattr, i_extended, i_dir, i_target};
    for (int i = 0; i < 5; i++)
        if (idx[i] < 0 || idx[i] > i_target) {
            PyErr_SetString(PyExc_ValueError, "layout: field indices, target last");
            return -1;
        }
    Tree_clear(t);
    PyObject **slots[] = {&t->refs, &t->listings, &t->find, &t->decoder, &t->read};
    PyObject *vals[] = {refs, listings, find, decoder, read};
    for (int i = 0; i < 5; i++) {
        Py_INCREF(vals[i]);
        *slots[i] = vals[i];
    }
    for (int i = 0; i < FB_COUNT; i++) {
        t->fallback[i] = PyTuple_GET_ITEM(fallbacks, i);
        Py_INCREF(t->fallback[i]);
    }
    t->i_stat = i_stat;
    t->i_xattr = i_xattr;
    t->i_extended = i_extended;
    t->i_dir = i_dir;
    t->i_target = i_target;
    t->no_xattr_table = no_table;
    t->directory_table = directory_table;
    t->kept_budget = budget;
    t->kept_bytes = 0;
    t->decode_ref = PyObject_GetAttrString(decoder, "decode_ref");
    t->inode_api = PyCapsule_Import(INODE_API_NAME, 0);
    t->kept = PyDict_New();
    if (t->decode_ref == NULL || t->inode_api == NULL || t->kept == NULL ||
        cache_view_set(&t->xattr_sets, table, Py_None) < 0 || cache_view_set(&t->blocks, table, block) < 0)
        return -1;
    return 0;
}

static PyMethodDef Tree_methods[] = {
    {"lookup", (PyCFunction)(void (*)(void))Tree_lookup, METH_FASTCALL, "As SquashFS.lookup."},
    {"getattr", (PyCFunction)Tree_getattr, METH_O, "As SquashFS.getattr."},
    {"readlink", (PyCFunction)Tree_readlink, METH_O, "As SquashFS.readlink."},
    {"listxattr", (PyCFunction)Tree_listxattr, METH_O, "As SquashFS.listxattr."},
    {"read", (PyCFunction)(void (*)(void))Tree_read, METH_FASTCALL, "As SquashFS.read."},
    {"getxattr", (PyCFunction)(void (*)(void))Tree_getxattr, METH_FASTCALL, "As SquashFS.getxattr."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Tree_members[] = {
    {"kept_bytes", T_PYSSIZET, offsetof(Tree, kept_bytes), READONLY, "Bytes of listings kept now (for the tests)."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject TreeType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "siffs.squashfs._tree.Tree",
    .tp_basicsize = sizeof(Tree),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The reader's per-request methods in C (see _tree.c).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Tree_init,
    .tp_dealloc = (destructor)Tree_dealloc,
    .tp_traverse = (traverseproc)Tree_traverse,
    .tp_clear = (inquiry)Tree_clear,
    .tp_methods = Tree_methods,
    .tp_members = Tree_members,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "siffs.squashfs._tree", "The reader's per-request methods in C.", -1, NULL, NULL, NULL,
    NULL, NULL,
};

PyMODINIT_FUNC PyInit__tree(void) {
    SEGMENT = PyUnicode_InternFromString("_segment");
    FIND_ARGS = PyUnicode_InternFromString("find_args");
    SPANS = PyUnicode_InternFromString("spans");
    XATTR_TAG = PyUnicode_InternFromString("x");   /* and xattr.XattrTable's attribute sets' with this */
    if (SEGMENT == NULL || FIND_ARGS == NULL || SPANS == NULL || XATTR_TAG == NULL ||
        caches_init_module() < 0 || PyType_Ready(&TreeType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "ABI", ABI) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&TreeType);
    if (PyModule_AddObject(m, "Tree", (PyObject *)&TreeType) < 0) {
        Py_DECREF(&TreeType);
        Py_DECREF(m);
        return NULL;
    }
    PyObject *api = PyCapsule_New((void *)&API, TREE_API_NAME, NULL);
    if (api == NULL || PyModule_AddObject(m, TREE_API_ATTR, api) < 0) {
        Py_XDECREF(api);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
