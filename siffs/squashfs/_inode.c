/* Native decoder of one inode: the hot path of siffs.squashfs.inode.read_inode.
 *
 * A cold walk or listing decodes every inode it meets once; in Python the cursor, the struct
 * records and the named tuples cost about 6 us per inode, most of a cold entry's time in the
 * daemon. This decodes the same fields from the inode's metadata block (already decompressed and
 * cached by the caller) and builds the same named tuples (Stat, DirLocation, FileLocation, Inode).
 *
 * It decides nothing the Python decoder does not: when the inode is anything but well-formed
 * (a number or type out of range, an owner index beyond the id table, an oversized link target)
 * or does not lie whole in the given block (a record straddling into the next block), decode()
 * returns None and the caller decodes it with the Python code, which raises the precise error or
 * follows the record into the next block. The Python decoder is the fallback and the oracle in
 * the tests (tests/squashfs/test_inode_native.py). The capsule's raw() alone follows a record into
 * one next block itself (about one inode in a hundred straddles two), since its callers answer a
 * request from it and the Python way there costs a dozen frames and a second search.
 *
 * Decoder(types, inode_count, block_size, ids, stored_size)
 *   types:       (Stat, DirLocation, FileLocation, Inode), the named tuple classes to build
 *   ids:         the image's id table (a tuple of ints)
 *   stored_size: None if the image has no xattr table, else a callable giving the stored size
 *                of xattr set i (it may raise, as it does for the Python decoder)
 *   cache (optional keyword): (metadata cache table, metadata block loader, inode table position,
 *                inode table size), for decode_ref (see _caches.h)
 * Decoder.decode(data, offset, block_pos, ref) -> Inode | None
 *   data: the decompressed metadata block at image position block_pos; the inode starts at offset
 * Decoder.decode_ref(ref) -> Inode | None
 *   the same for the inode at reference ref, its block taken from the metadata cache: a lookup or
 *   a listing entry then runs no Python at all when the block is cached *
 * The module's capsule (_inode.h) gives other native modules the same decoding by reference as C
 * values (a RawInode), for requests answered without the named tuples (_tree.c).
 */
#include "_caches.h" /* first: it includes Python.h */
#include "_inode.h"

#include <stdint.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

/* The version of this module's interface to its Python caller (siffs.native.load checks it):
 * bump it whenever a signature, a constructor argument or a capsule changes. */
#define ABI 1

#define HEADER_SIZE 16
#define NO_FRAGMENT 0xFFFFFFFFu
#define MAX_TARGET (1u << 16)
#define NTYPES 4

enum { T_STAT, T_DIRLOC, T_FILELOC, T_INODE };
static const Py_ssize_t FIELDS[NTYPES] = {9, 6, 5, 7};
static const unsigned FORMAT[8] = {0, S_IFDIR, S_IFREG, S_IFLNK, S_IFBLK, S_IFCHR, S_IFIFO, S_IFSOCK};

typedef struct {
    PyObject_HEAD
    PyTypeObject *types[NTYPES];
    PyObject *ids;
    PyObject *stored_size;
    uint64_t inode_count;
    uint64_t block_size;
    CacheView meta; /* for decode_ref; unset (NULL) without the cache keyword */
    uint64_t inode_table, inode_table_size;
    uint64_t *id_values; /* the ids as C values for the capsule's raw(); NULL: one is not a uint64 */
} Decoder;

static PyTypeObject DecoderType;

static uint16_t le16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const unsigned char *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }

/* A new instance of named tuple class `tp` holding `items` (references stolen, NULL-safe):
 * what tuple.__new__ does for a subclass, without the call through the class's __new__. */
static PyObject *build(PyTypeObject *tp, PyObject **items, Py_ssize_t n) {
    PyObject *out = NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        if (items[i] == NULL) goto fail;
    out = tp->tp_alloc(tp, n);
    if (out == NULL) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) PyTuple_SET_ITEM(out, i, items[i]);
    return out;
fail:
    for (Py_ssize_t i = 0; i < n; i++) Py_XDECREF(items[i]);
    return NULL;
}

static PyObject *position(uint64_t block_pos, Py_ssize_t offset) {
    return Py_BuildValue("(Kn)", (unsigned long long)block_pos, offset);
}

/* What parse_inode found besides an inode: one not well-formed, or one cut short by the end of
 * the bytes it was given (a record that straddles into the next metadata block, or damage). */
enum { MALFORMED = 0, CUT_SHORT = -2 };

/* The inode at `pos` in the decompressed block `data` into *r, except the attribute set's share
 * of the blocks and the owner's values (finish() adds them): 1, MALFORMED or CUT_SHORT (for the
 * Python decoder to take, or for raw() to try again across two blocks). */
static int parse_inode(const Decoder *self, const unsigned char *data, Py_ssize_t size, Py_ssize_t pos,
                       RawInode *r) {
    if (pos < 0 || pos > size) return MALFORMED;
    if (size - pos < HEADER_SIZE) return CUT_SHORT;
    const unsigned char *p = data + pos;
    unsigned kind = le16(p), perm = le16(p + 2);
    r->uid = le16(p + 4), r->gid = le16(p + 6); /* indices into the id table until finish() */
    r->mtime = le32(p + 8), r->ino = le32(p + 12);
    if (r->ino < 1 || r->ino > self->inode_count || kind < 1 || kind > 14) return MALFORMED;
    if ((Py_ssize_t)r->uid >= PyTuple_GET_SIZE(self->ids) || (Py_ssize_t)r->gid >= PyTuple_GET_SIZE(self->ids))
        return MALFORMED;
    unsigned basic = (kind - 1) % 7 + 1;
    int extended = kind > 7;
    r->basic = basic;
    r->extended = extended;
    r->mode = (perm & 07777) | FORMAT[basic];
    r->nlink = r->size = r->blocks = r->rdev = 0;
    r->xattr = INODE_NO_XATTR;
    r->target = NULL;
    r->target_size = 0;
    pos += HEADER_SIZE;
    p = data + pos;
    Py_ssize_t left = size - pos;

#define NEED(n)                                 \
    do {                                        \
        if (left < (Py_ssize_t)(n)) return CUT_SHORT;   \
    } while (0)
#define TAKE(n) (pos += (n), left -= (n), p += (n))

    if (basic == 1) { /* directory */
        r->dir_index_count = 0;
        if (extended) {
            NEED(24);
            r->nlink = le32(p), r->size = le32(p + 4), r->dir_start = le32(p + 8), r->dir_parent = le32(p + 12);
            r->dir_index_count = le16(p + 16), r->dir_offset = le16(p + 18), r->xattr = le32(p + 20);
            TAKE(24);
        } else {
            NEED(16);
            r->dir_start = le32(p), r->nlink = le32(p + 4), r->size = le16(p + 8), r->dir_offset = le16(p + 10);
            r->dir_parent = le32(p + 12);
            TAKE(16);
        }
        r->dir_size = r->size;
    } else if (basic == 2) { /* regular file */
        uint64_t fragment;
        if (extended) {
            NEED(40);
            r->file_blocks_start = le64(p), r->size = le64(p + 8);
            uint64_t sparse = le64(p + 16);
            r->nlink = le32(p + 24), fragment = le32(p + 28), r->file_fragment_offset = le32(p + 32);
            r->xattr = le32(p + 36);
            TAKE(40);
            /* max(0, size - sparse + 511) >> 9, without overflow */
            uint64_t stored = r->size >= sparse ? r->size - sparse : 0;
            r->blocks = (stored >> 9) + ((stored & 511) != 0);
        } else {
            NEED(16);
            r->file_blocks_start = le32(p), fragment = le32(p + 4), r->file_fragment_offset = le32(p + 8);
            r->size = le32(p + 12);
            TAKE(16);
            r->nlink = 1;
            r->blocks = (r->size >> 9) + ((r->size & 511) != 0);
        }
        r->file_has_fragment = fragment != NO_FRAGMENT;
        r->file_fragment = fragment;
        r->file_block_count =
            r->size / self->block_size + (!r->file_has_fragment && r->size % self->block_size != 0);
    } else if (basic == 3) { /* symbolic link */
        NEED(8);
        r->nlink = le32(p), r->size = le32(p + 4);
        TAKE(8);
        if (r->size > MAX_TARGET) return MALFORMED;
        NEED(r->size + (extended ? 4 : 0));
        r->target = p;
        r->target_size = (Py_ssize_t)r->size;
        TAKE((Py_ssize_t)r->size);
        if (extended) {
            r->xattr = le32(p);
            TAKE(4);
        }
    } else if (basic == 4 || basic == 5) { /* block or character device */
        NEED(8 + (extended ? 4 : 0));
        r->nlink = le32(p);
        uint32_t raw = le32(p + 4);
        unsigned major = (raw & 0xFFF00) >> 8, minor = (raw & 0xFF) | ((raw >> 12) & 0xFFF00);
        r->rdev = makedev(major, minor);
        if (extended) r->xattr = le32(p + 8);
        TAKE(8 + (extended ? 4 : 0));
    } else { /* FIFO or socket */
        NEED(4 + (extended ? 4 : 0));
        r->nlink = le32(p);
        if (extended) r->xattr = le32(p + 4);
        TAKE(4 + (extended ? 4 : 0));
    }
#undef NEED
#undef TAKE
    r->end = pos;
    return 1;
}

/* Complete a parsed inode: the attribute set's stored size in its blocks (asking the xattr table,
 * which may raise: -1), and no set at all for an image without a table, as the Python decoder. */
static int finish(const Decoder *self, RawInode *r) {
    if (r->xattr == INODE_NO_XATTR) return 0;
    if (self->stored_size == Py_None) {
        r->xattr = INODE_NO_XATTR;
        return 0;
    }
    PyObject *index = PyLong_FromUnsignedLong(r->xattr);
    PyObject *stored = index == NULL ? NULL : PyObject_CallOneArg(self->stored_size, index);
    long long n = stored == NULL ? -1 : PyLong_AsLongLong(stored);
    Py_XDECREF(stored);
    Py_XDECREF(index);
    if (PyErr_Occurred()) return -1;
    /* ((n - 1) >> 9) + 1, Python's floor shift, for any n the table may give */
    r->blocks += (uint64_t)(((n - 1) >> 9) + 1);
    return 0;
}

/* The named tuples of a parsed and finished inode (its id indices still in uid and gid). */
static PyObject *build_inode(Decoder *self, const RawInode *r, uint64_t block_pos, PyObject *ref) {
    PyObject *dir = NULL, *file = NULL, *target = NULL;
    if (r->basic == 1) {
        PyObject *loc[6] = {PyLong_FromUnsignedLongLong(r->dir_start), PyLong_FromUnsignedLongLong(r->dir_offset),
                            PyLong_FromUnsignedLongLong(r->dir_size), PyLong_FromUnsignedLongLong(r->dir_parent),
                            PyLong_FromUnsignedLongLong(r->dir_index_count), position(block_pos, r->end)};
        dir = build(self->types[T_DIRLOC], loc, 6);
        if (dir == NULL) return NULL;
    } else if (r->basic == 2) {
        PyObject *frag = r->file_has_fragment ? PyLong_FromUnsignedLongLong(r->file_fragment) : Py_NewRef(Py_None);
        PyObject *loc[5] = {PyLong_FromUnsignedLongLong(r->file_blocks_start),
                            PyLong_FromUnsignedLongLong(r->file_block_count), position(block_pos, r->end), frag,
                            PyLong_FromUnsignedLongLong(r->file_fragment_offset)};
        file = build(self->types[T_FILELOC], loc, 5);
        if (file == NULL) return NULL;
    } else if (r->basic == 3) {
        target = PyBytes_FromStringAndSize((const char *)r->target, r->target_size);
        if (target == NULL) return NULL;
    }
    PyObject *xattr = r->xattr == INODE_NO_XATTR ? Py_NewRef(Py_None) : PyLong_FromUnsignedLong(r->xattr);
    PyObject *items[9] = {PyLong_FromUnsignedLong(r->ino),
                          PyLong_FromUnsignedLong(r->mode),
                          PyLong_FromUnsignedLongLong(r->nlink),
                          Py_NewRef(PyTuple_GET_ITEM(self->ids, (Py_ssize_t)r->uid)),
                          Py_NewRef(PyTuple_GET_ITEM(self->ids, (Py_ssize_t)r->gid)),
                          PyLong_FromUnsignedLongLong(r->size),
                          PyLong_FromUnsignedLong(r->mtime),
                          PyLong_FromUnsignedLongLong(r->rdev),
                          PyLong_FromUnsignedLongLong(r->blocks)};
    PyObject *st = build(self->types[T_STAT], items, 9);
    PyObject *inode[7] = {st,
                          Py_NewRef(ref),
                          xattr,
                          PyBool_FromLong(r->extended),
                          dir ? dir : Py_NewRef(Py_None),
                          file ? file : Py_NewRef(Py_None),
                          target ? target : Py_NewRef(Py_None)};
    return build(self->types[T_INODE], inode, 7);
}

static PyObject *decode(Decoder *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "decode(data, offset, block_pos, ref)");
        return NULL;
    }
    if (!PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "decode: data must be bytes");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    unsigned long long block_pos = PyLong_AsUnsignedLongLong(args[2]);
    if (PyErr_Occurred()) return NULL;
    RawInode r;
    if (parse_inode(self, (const unsigned char *)PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0]), pos, &r) != 1)
        Py_RETURN_NONE;
    if (finish(self, &r) < 0) return NULL;
    return build_inode(self, &r, block_pos, args[3]);
}

static int Decoder_init(Decoder *self, PyObject *args, PyObject *kwds) {
    PyObject *types, *ids, *stored_size, *cache = NULL;
    unsigned long long inode_count, block_size;
    static char *kwlist[] = {"types", "inode_count", "block_size", "ids", "stored_size", "cache", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!KKO!O|$O!", kwlist, &PyTuple_Type, &types, &inode_count,
                                     &block_size, &PyTuple_Type, &ids, &stored_size, &PyTuple_Type, &cache))
        return -1;
    PyObject *items = NULL, *load = NULL;
    unsigned long long inode_table = 0, inode_table_size = 0;
    if (cache != NULL && !PyArg_ParseTuple(cache, "OOKK;cache: (table, loader, inode table, its size)", &items,
                                           &load, &inode_table, &inode_table_size))
        return -1;
    if (PyTuple_GET_SIZE(types) != NTYPES) {
        PyErr_SetString(PyExc_ValueError, "types: (Stat, DirLocation, FileLocation, Inode)");
        return -1;
    }
    for (int i = 0; i < NTYPES; i++) {
        PyObject *t = PyTuple_GET_ITEM(types, i);
        /* Only a tuple subclass with no instance dict and the expected field count can be built
         * by filling its items, as tuple.__new__ does. */
        if (!PyType_Check(t) || !PyType_IsSubtype((PyTypeObject *)t, &PyTuple_Type) ||
            ((PyTypeObject *)t)->tp_dictoffset != 0) {
            PyErr_SetString(PyExc_TypeError, "types must be named tuple classes");
            return -1;
        }
        PyObject *fields = PyObject_GetAttrString(t, "_fields");
        Py_ssize_t n = fields == NULL ? -1 : PyObject_Length(fields);
        Py_XDECREF(fields);
        if (n != FIELDS[i]) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "a named tuple class has the wrong fields");
            return -1;
        }
    }
    if (block_size == 0) {
        PyErr_SetString(PyExc_ValueError, "block_size must be positive");
        return -1;
    }
    Py_ssize_t nids = PyTuple_GET_SIZE(ids);
    uint64_t *values = PyMem_Malloc(sizeof(uint64_t) * (size_t)(nids > 0 ? nids : 1));
    if (values == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < nids; i++) {
        if (!PyLong_Check(PyTuple_GET_ITEM(ids, i))) {
            PyMem_Free(values);
            PyErr_SetString(PyExc_TypeError, "ids must be ints");
            return -1;
        }
        values[i] = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(ids, i));
        if (PyErr_Occurred()) { /* not a uint64 (only a test makes one): raw() leaves every inode to Python */
            PyErr_Clear();
            PyMem_Free(values);
            values = NULL;
            break;
        }
    }
    PyMem_Free(self->id_values);
    self->id_values = values;
    for (int i = 0; i < NTYPES; i++) Py_XSETREF(self->types[i], (PyTypeObject *)Py_NewRef(PyTuple_GET_ITEM(types, i)));
    Py_XSETREF(self->ids, Py_NewRef(ids));
    Py_XSETREF(self->stored_size, Py_NewRef(stored_size));
    self->inode_count = inode_count;
    self->block_size = block_size;
    if (items != NULL && cache_view_set(&self->meta, items, load) < 0) return -1;
    self->inode_table = inode_table;
    self->inode_table_size = inode_table_size;
    return 0;
}

static int Decoder_traverse(Decoder *self, visitproc visit, void *arg) {
    for (int i = 0; i < NTYPES; i++) Py_VISIT(self->types[i]);
    Py_VISIT(self->ids);
    Py_VISIT(self->stored_size);
    CACHE_VIEW_VISIT(self->meta);
    return 0;
}

static int Decoder_clear(Decoder *self) {
    for (int i = 0; i < NTYPES; i++) Py_CLEAR(self->types[i]);
    Py_CLEAR(self->ids);
    Py_CLEAR(self->stored_size);
    cache_view_clear(&self->meta);
    return 0;
}

static void Decoder_dealloc(Decoder *self) {
    PyObject_GC_UnTrack(self);
    Decoder_clear(self);
    PyMem_Free(self->id_values);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Decoder_decode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Decoder *d = (Decoder *)self;
    if (d->types[0] == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Decoder not initialised");
        return NULL;
    }
    return decode(d, args, nargs);
}

/* The bytes from `offset` in the metadata block `data` on, followed by all of the block at `next`
 * (a new bytes object); NULL with an error (the next block would not load, as it would not for the
 * Python decoder's cursor either). */
static PyObject *joined(Decoder *d, PyObject *data, Py_ssize_t offset, uint64_t next) {
    PyObject *second = metadata_block(&d->meta, next);
    if (second == NULL) return NULL;
    Py_ssize_t tail = PyBytes_GET_SIZE(data) - offset, more = PyBytes_GET_SIZE(second);
    PyObject *both = PyBytes_FromStringAndSize(NULL, tail + more);
    if (both != NULL) {
        memcpy(PyBytes_AS_STRING(both), PyBytes_AS_STRING(data) + offset, (size_t)tail);
        memcpy(PyBytes_AS_STRING(both) + tail, PyBytes_AS_STRING(second), (size_t)more);
    }
    Py_DECREF(second);
    return both;
}

/* The inode at reference `ref`, its block from the metadata cache: 1 with *r parsed and finished
 * (owner indices, not values) and *block a new reference to the block; 0 for the Python decoder;
 * -1 with an error. With `join`, an inode cut short by the end of its block is parsed again from
 * its block's tail joined to the next block (*block is then that joined copy, r->end -1): a record
 * may straddle two blocks, and one in a hundred or so does. One that needs a third block (a link
 * target of more than 8 KiB) is left to the Python decoder. */
static int inode_at_ref(Decoder *d, uint64_t ref, RawInode *r, PyObject **block, int join) {
    uint64_t at = ref >> 16;
    if (at >= d->inode_table_size) return 0; /* the Python decoder says what is wrong */
    PyObject *pair = metadata_block_pair(&d->meta, d->inode_table + at);
    if (pair == NULL) return -1;
    PyObject *data = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
    Py_ssize_t offset = (Py_ssize_t)(ref & 0xFFFF);
    int rc = parse_inode(d, (const unsigned char *)PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), offset, r);
    if (rc == CUT_SHORT && join) {
        unsigned long long next = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(pair, 1));
        if (next == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear(); /* not a position: the Python decoder copes */
        } else {
            Py_SETREF(data, joined(d, data, offset, next));
            rc = data == NULL ? -1 : parse_inode(d, (const unsigned char *)PyBytes_AS_STRING(data),
                                                 PyBytes_GET_SIZE(data), 0, r);
            if (rc == 1) r->end = -1;
        }
    }
    Py_DECREF(pair);
    if (rc == 1 && finish(d, r) < 0) rc = -1;
    if (rc == 1)
        *block = data;
    else
        Py_XDECREF(data);
    return rc == 1 ? 1 : rc == -1 ? -1 : 0;
}

static int with_cache(Decoder *d) {
    if (d->types[0] != NULL && d->meta.items != NULL) return 1;
    PyErr_SetString(PyExc_RuntimeError, "Decoder made without a cache: decode_ref needs one");
    return 0;
}

static PyObject *Decoder_decode_ref(PyObject *self, PyObject *ref) {
    Decoder *d = (Decoder *)self;
    if (!with_cache(d)) return NULL;
    unsigned long long value = PyLong_AsUnsignedLongLong(ref);
    if (PyErr_Occurred()) return NULL;
    RawInode r;
    PyObject *block;
    int rc = inode_at_ref(d, value, &r, &block, 0);
    if (rc <= 0) {
        if (rc < 0) return NULL;
        Py_RETURN_NONE;
    }
    PyObject *inode = build_inode(d, &r, d->inode_table + (value >> 16), ref);
    Py_DECREF(block);
    return inode;
}

/* The capsule's raw(): as decode_ref, without the named tuples (see _inode.h). */
static int api_raw(PyObject *decoder, uint64_t ref, RawInode *out, PyObject **block) {
    if (!PyObject_TypeCheck(decoder, &DecoderType)) {
        PyErr_SetString(PyExc_TypeError, "raw() needs a siffs.squashfs._inode.Decoder");
        return -1;
    }
    Decoder *d = (Decoder *)decoder;
    if (!with_cache(d)) return -1;
    if (d->id_values == NULL) return 0;
    int rc = inode_at_ref(d, ref, out, block, 1);
    if (rc == 1) {
        out->uid = d->id_values[out->uid];
        out->gid = d->id_values[out->gid];
    }
    return rc;
}

static InodeApi API = {api_raw};

static PyMethodDef Decoder_methods[] = {
    {"decode_ref", (PyCFunction)Decoder_decode_ref, METH_O,
     "decode_ref(ref) -> Inode, or None to leave the inode to the Python decoder"},
    {"decode", (PyCFunction)(void (*)(void))Decoder_decode, METH_FASTCALL,
     "decode(data, offset, block_pos, ref) -> Inode, or None to leave the inode to the Python decoder"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "siffs.squashfs._inode.Decoder",
    .tp_basicsize = sizeof(Decoder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Decoder(types, inode_count, block_size, ids, stored_size): one image's inode decoder",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Decoder_init,
    .tp_traverse = (traverseproc)Decoder_traverse,
    .tp_clear = (inquiry)Decoder_clear,
    .tp_dealloc = (destructor)Decoder_dealloc,
    .tp_methods = Decoder_methods,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_inode", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__inode(void) {
    if (caches_init_module() < 0 || PyType_Ready(&DecoderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "ABI", ABI) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyObject *api = PyCapsule_New(&API, INODE_API_NAME, NULL);
    if (api == NULL || PyModule_AddObjectRef(m, "Decoder", (PyObject *)&DecoderType) < 0 ||
        PyModule_AddObject(m, INODE_API_ATTR, api) < 0) {
        Py_XDECREF(api);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
