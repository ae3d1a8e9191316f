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
 * the tests (tests/squashfs/test_inode_native.py).
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
 *   a listing entry then runs no Python at all when the block is cached
 */
#include "_caches.h" /* first: it includes Python.h */

#include <stdint.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#define HEADER_SIZE 16
#define NO_FRAGMENT 0xFFFFFFFFu
#define NO_XATTR 0xFFFFFFFFu
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
} Decoder;

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

static PyObject *decode(Decoder *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "decode(data, offset, block_pos, ref)");
        return NULL;
    }
    if (!PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "decode: data must be bytes");
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    unsigned long long block_pos = PyLong_AsUnsignedLongLong(args[2]);
    if (PyErr_Occurred()) return NULL;
    PyObject *ref = args[3];
    if (pos < 0 || pos > size || size - pos < HEADER_SIZE) Py_RETURN_NONE;

    const unsigned char *p = data + pos;
    unsigned kind = le16(p), perm = le16(p + 2), uid_index = le16(p + 4), gid_index = le16(p + 6);
    uint32_t mtime = le32(p + 8), ino = le32(p + 12);
    Py_ssize_t nids = PyTuple_GET_SIZE(self->ids);
    if (ino < 1 || ino > self->inode_count || kind < 1 || kind > 14) Py_RETURN_NONE;
    if ((Py_ssize_t)uid_index >= nids || (Py_ssize_t)gid_index >= nids) Py_RETURN_NONE;
    unsigned basic = (kind - 1) % 7 + 1;
    int extended = kind > 7;
    pos += HEADER_SIZE;
    p = data + pos;
    Py_ssize_t left = size - pos;

    uint64_t nlink = 0, fsize = 0, blocks = 0, rdev = 0, xattr = NO_XATTR;
    PyObject *dir = NULL, *file = NULL, *target = NULL;
    PyObject *items[9];

#define NEED(n)                                 \
    do {                                        \
        if (left < (Py_ssize_t)(n)) goto punt;  \
    } while (0)
#define TAKE(n) (pos += (n), left -= (n), p += (n))

    if (basic == 1) { /* directory */
        uint64_t start, offset, parent, index_count = 0;
        if (extended) {
            NEED(24);
            nlink = le32(p), fsize = le32(p + 4), start = le32(p + 8), parent = le32(p + 12);
            index_count = le16(p + 16), offset = le16(p + 18), xattr = le32(p + 20);
            TAKE(24);
        } else {
            NEED(16);
            start = le32(p), nlink = le32(p + 4), fsize = le16(p + 8), offset = le16(p + 10);
            parent = le32(p + 12);
            TAKE(16);
        }
        PyObject *loc[6] = {PyLong_FromUnsignedLongLong(start), PyLong_FromUnsignedLongLong(offset),
                            PyLong_FromUnsignedLongLong(fsize), PyLong_FromUnsignedLongLong(parent),
                            PyLong_FromUnsignedLongLong(index_count), position(block_pos, pos)};
        dir = build(self->types[T_DIRLOC], loc, 6);
        if (dir == NULL) return NULL;
    } else if (basic == 2) { /* regular file */
        uint64_t blocks_start, fragment, frag_offset;
        if (extended) {
            NEED(40);
            blocks_start = le64(p), fsize = le64(p + 8);
            uint64_t sparse = le64(p + 16);
            nlink = le32(p + 24), fragment = le32(p + 28), frag_offset = le32(p + 32), xattr = le32(p + 36);
            TAKE(40);
            /* max(0, size - sparse + 511) >> 9, without overflow */
            uint64_t stored = fsize >= sparse ? fsize - sparse : 0;
            blocks = (stored >> 9) + ((stored & 511) != 0);
        } else {
            NEED(16);
            blocks_start = le32(p), fragment = le32(p + 4), frag_offset = le32(p + 8), fsize = le32(p + 12);
            TAKE(16);
            nlink = 1;
            blocks = (fsize >> 9) + ((fsize & 511) != 0);
        }
        int has_fragment = fragment != NO_FRAGMENT;
        uint64_t count = fsize / self->block_size + (!has_fragment && fsize % self->block_size != 0);
        PyObject *frag;
        if (has_fragment) {
            frag = PyLong_FromUnsignedLongLong(fragment);
        } else {
            frag = Py_NewRef(Py_None);
        }
        PyObject *loc[5] = {PyLong_FromUnsignedLongLong(blocks_start), PyLong_FromUnsignedLongLong(count),
                            position(block_pos, pos), frag, PyLong_FromUnsignedLongLong(frag_offset)};
        file = build(self->types[T_FILELOC], loc, 5);
        if (file == NULL) return NULL;
    } else if (basic == 3) { /* symbolic link */
        NEED(8);
        nlink = le32(p), fsize = le32(p + 4);
        TAKE(8);
        if (fsize > MAX_TARGET) Py_RETURN_NONE;
        NEED(fsize + (extended ? 4 : 0));
        target = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)fsize);
        if (target == NULL) return NULL;
        TAKE((Py_ssize_t)fsize);
        if (extended) {
            xattr = le32(p);
            TAKE(4);
        }
    } else if (basic == 4 || basic == 5) { /* block or character device */
        NEED(8 + (extended ? 4 : 0));
        nlink = le32(p);
        uint32_t raw = le32(p + 4);
        unsigned major = (raw & 0xFFF00) >> 8, minor = (raw & 0xFF) | ((raw >> 12) & 0xFFF00);
        rdev = makedev(major, minor);
        if (extended) xattr = le32(p + 8);
        TAKE(8 + (extended ? 4 : 0));
    } else { /* FIFO or socket */
        NEED(4 + (extended ? 4 : 0));
        nlink = le32(p);
        if (extended) xattr = le32(p + 4);
        TAKE(4 + (extended ? 4 : 0));
    }
#undef NEED
#undef TAKE

    PyObject *xattr_obj = Py_None;
    if (xattr != NO_XATTR && self->stored_size != Py_None) {
        xattr_obj = PyLong_FromUnsignedLongLong(xattr);
        if (xattr_obj == NULL) goto fail;
        PyObject *stored = PyObject_CallOneArg(self->stored_size, xattr_obj);
        long long n = stored == NULL ? -1 : PyLong_AsLongLong(stored);
        Py_XDECREF(stored);
        if (PyErr_Occurred()) {
            Py_DECREF(xattr_obj);
            goto fail;
        }
        /* ((n - 1) >> 9) + 1, Python's floor shift, for any n the table may give */
        blocks += (uint64_t)(((n - 1) >> 9) + 1);
    } else {
        Py_INCREF(xattr_obj);
    }

    items[0] = PyLong_FromUnsignedLong(ino);
    items[1] = PyLong_FromUnsignedLong((perm & 07777) | FORMAT[basic]);
    items[2] = PyLong_FromUnsignedLongLong(nlink);
    items[3] = Py_NewRef(PyTuple_GET_ITEM(self->ids, uid_index));
    items[4] = Py_NewRef(PyTuple_GET_ITEM(self->ids, gid_index));
    items[5] = PyLong_FromUnsignedLongLong(fsize);
    items[6] = PyLong_FromUnsignedLong(mtime);
    items[7] = PyLong_FromUnsignedLongLong(rdev);
    items[8] = PyLong_FromUnsignedLongLong(blocks);
    PyObject *st = build(self->types[T_STAT], items, 9);
    if (st == NULL) {
        Py_DECREF(xattr_obj);
        goto fail;
    }
    PyObject *inode[7] = {st,
                          Py_NewRef(ref),
                          xattr_obj,
                          PyBool_FromLong(extended),
                          dir ? dir : Py_NewRef(Py_None),
                          file ? file : Py_NewRef(Py_None),
                          target ? target : Py_NewRef(Py_None)};
    return build(self->types[T_INODE], inode, 7);

punt: /* not whole in this block, or malformed: the Python decoder takes it */
    Py_XDECREF(dir);
    Py_XDECREF(file);
    Py_XDECREF(target);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(dir);
    Py_XDECREF(file);
    Py_XDECREF(target);
    return NULL;
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
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(ids); i++) {
        if (!PyLong_Check(PyTuple_GET_ITEM(ids, i))) {
            PyErr_SetString(PyExc_TypeError, "ids must be ints");
            return -1;
        }
    }
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

static PyObject *Decoder_decode_ref(PyObject *self, PyObject *ref) {
    Decoder *d = (Decoder *)self;
    if (d->types[0] == NULL || d->meta.items == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Decoder made without a cache: decode_ref needs one");
        return NULL;
    }
    unsigned long long value = PyLong_AsUnsignedLongLong(ref);
    if (PyErr_Occurred()) return NULL;
    uint64_t block = value >> 16;
    if (block >= d->inode_table_size) Py_RETURN_NONE; /* the Python decoder says what is wrong */
    PyObject *data = metadata_block(&d->meta, d->inode_table + block);
    if (data == NULL) return NULL;
    PyObject *args[4] = {data, PyLong_FromUnsignedLongLong(value & 0xFFFF),
                         PyLong_FromUnsignedLongLong(d->inode_table + block), ref};
    PyObject *inode = args[1] == NULL || args[2] == NULL ? NULL : decode(d, args, 4);
    Py_DECREF(data);
    Py_XDECREF(args[1]);
    Py_XDECREF(args[2]);
    return inode;
}

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
    if (PyModule_AddObjectRef(m, "Decoder", (PyObject *)&DecoderType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
