/* Native read of a regular file's bytes: the hot path of siffs.squashfs.data.DataReader.read.
 *
 * A cold read of a small file is one inode, one fragment-table entry and one slice of a cached
 * fragment block; in Python the named tuples, the block list, the cache calls and the slicing
 * cost about 10 us per read, a third of a cold read-all's daemon time. This walks the same
 * structures straight from the caches: the inode's metadata block, the fragment table's block
 * and the decompressed data blocks are looked up in the two LRU caches' tables (a hit is a dict
 * look-up and a move_to_end, as LruCache.get_or_load does it; see _caches.h), and a miss goes
 * through the Python loader, so loading, de-duplication of loads in flight and every error stay
 * in one place.
 *
 * It decides nothing the Python reader does not: an inode that is not a regular file, a block
 * list that does not lie whole in the inode's metadata block, and anything malformed (a list
 * longer than the inode table can hold, blocks running past the image, a fragment index beyond
 * the table, a tail past its fragment) make read() return None, and the caller then reads with
 * the Python code, which raises the precise error or follows the list into the next block. The
 * Python reader is the fallback and the oracle in the tests (tests/squashfs/test_data_native.py).
 *
 * FileReader(meta_items, data_items, meta_block, data_block, layout)
 *   meta_items, data_items: the metadata and data caches' tables (LruCache.table: an OrderedDict
 *       of key -> (value, cost), keys ("m", position) and ("d", start, size word))
 *   meta_block: MetadataReader.loader (position -> (bytes, next position) through its cache, _caches.h)
 *   data_block: (start, size word) -> bytes, the data or fragment block through its cache
 *   layout: (inode_table, inode_table_size, block_size, image_end, max_list_bytes,
 *            fragment_count, fragment_block_positions)
 * FileReader.read(ref, offset, size) -> bytes | None
 *   ref: the file's inode reference (metadata block << 16 | offset in it)
 */
#include "_caches.h" /* first: it includes Python.h */

#include <string.h>

/* The version of this module's interface to its Python caller (siffs.native.load checks it):
 * bump it whenever a signature, a constructor argument or a capsule changes. */
#define ABI 1

#define HEADER_SIZE 16
#define BASIC_FILE 2
#define EXTENDED_FILE 9
#define NO_FRAGMENT 0xFFFFFFFFu
#define UNCOMPRESSED (1u << 24)
#define SIZE_MASK (UNCOMPRESSED - 1)
#define FRAGMENT_RECORD 16
#define METADATA_SIZE 8192

typedef struct {
    PyObject_HEAD
    CacheView meta, data;
    PyObject *fragment_blocks; /* tuple of ints */
    uint64_t inode_table, inode_table_size, block_size, image_end, max_list, fragment_count;
} FileReader;

static PyObject *DATA_TAG;

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const unsigned char *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }

/* The decompressed data or fragment block stored at `start` with size word `word` (a new
 * reference), or NULL with an error. */
static PyObject *data_block(FileReader *self, uint64_t start, uint32_t word) {
    PyObject *args[2] = {PyLong_FromUnsignedLongLong(start), PyLong_FromUnsignedLong(word)};
    PyObject *key = NULL, *block = NULL;
    if (args[0] != NULL && args[1] != NULL) key = PyTuple_Pack(3, DATA_TAG, args[0], args[1]);
    if (key != NULL) block = cache_hit(&self->data, key);
    Py_XDECREF(key);
    if (block == NULL && !PyErr_Occurred()) block = PyObject_Vectorcall(self->data.load, args, 2, NULL);
    Py_XDECREF(args[0]);
    Py_XDECREF(args[1]);
    if (block != NULL && !PyBytes_Check(block)) {
        Py_DECREF(block);
        PyErr_SetString(PyExc_TypeError, "a data block is not bytes");
        return NULL;
    }
    return block;
}

/* Copy bytes [lo, hi) of a block holding `have` bytes at `src` to `dst`; past `have`, zeros (a
 * block that unpacks short is zero-filled, as the kernel does). */
static void copy_zero_filled(char *dst, const char *src, uint64_t have, uint64_t lo, uint64_t hi) {
    uint64_t stop = hi < have ? hi : have;
    if (lo < stop) {
        memcpy(dst, src + lo, stop - lo);
        dst += stop - lo;
        lo = stop;
    }
    if (lo < hi) memset(dst, 0, hi - lo);
}

/* The fragment block and where the file's tail of `expected` bytes starts in it; a new reference,
 * NULL with no error to leave the file to the Python reader, NULL with an error to raise it. */
static PyObject *tail_block(FileReader *self, uint32_t fragment, uint64_t frag_offset, uint64_t expected) {
    if (fragment == NO_FRAGMENT || fragment >= self->fragment_count) return NULL;
    uint64_t where = (uint64_t)fragment * FRAGMENT_RECORD;
    PyObject *pos_obj = PyTuple_GET_ITEM(self->fragment_blocks, (Py_ssize_t)(where / METADATA_SIZE));
    uint64_t pos = PyLong_AsUnsignedLongLong(pos_obj);
    if (PyErr_Occurred()) return NULL;
    PyObject *table = metadata_block(&self->meta, pos);
    if (table == NULL) return NULL;
    uint64_t at = where % METADATA_SIZE;
    if (at + FRAGMENT_RECORD > (uint64_t)PyBytes_GET_SIZE(table)) {
        Py_DECREF(table);
        return NULL;
    }
    const unsigned char *record = (const unsigned char *)PyBytes_AS_STRING(table) + at;
    uint64_t start = le64(record);
    uint32_t word = le32(record + 8);
    Py_DECREF(table);
    if ((word & SIZE_MASK) == 0) return NULL;
    PyObject *block = data_block(self, start, word);
    if (block != NULL && frag_offset + expected > (uint64_t)PyBytes_GET_SIZE(block)) Py_CLEAR(block);
    return block;
}

static PyObject *read_file(FileReader *self, uint64_t ref, long long offset, long long size) {
    uint64_t inode_block = ref >> 16, at = ref & 0xFFFF;
    if (inode_block >= self->inode_table_size) Py_RETURN_NONE;
    PyObject *meta = metadata_block(&self->meta, self->inode_table + inode_block);
    if (meta == NULL) return NULL;
    const unsigned char *block = (const unsigned char *)PyBytes_AS_STRING(meta);
    uint64_t have = (uint64_t)PyBytes_GET_SIZE(meta);
    PyObject *out = NULL;
    const unsigned char *p = block + at;
    unsigned kind = at + HEADER_SIZE <= have ? (unsigned)(p[0] | p[1] << 8) : 0;
    uint64_t record = kind == BASIC_FILE ? 16 : 40;
    if ((kind != BASIC_FILE && kind != EXTENDED_FILE) || at + HEADER_SIZE + record > have) goto python;
    p += HEADER_SIZE;
    uint64_t blocks_start, file_size, frag_offset;
    uint32_t fragment;
    if (kind == BASIC_FILE) {
        blocks_start = le32(p), fragment = le32(p + 4), frag_offset = le32(p + 8), file_size = le32(p + 12);
    } else {
        blocks_start = le64(p), file_size = le64(p + 8), fragment = le32(p + 28), frag_offset = le32(p + 32);
    }
    const uint64_t bs = self->block_size;
    uint64_t count = file_size / bs + (fragment == NO_FRAGMENT && file_size % bs != 0);
    if (offset < 0 || size <= 0 || (uint64_t)offset >= file_size) {
        Py_DECREF(meta);
        return PyBytes_FromStringAndSize(NULL, 0);
    }
    uint64_t off = (uint64_t)offset;
    uint64_t end = file_size - off < (uint64_t)size ? file_size : off + (uint64_t)size;
    uint64_t first = off / bs, last = (end - 1) / bs;

    /* The block list follows the inode; blocks are stored back to back from blocks_start. */
    const unsigned char *sizes = p + record;
    uint64_t start = blocks_start;
    if (first < count) {
        if (count > self->max_list / 4 || (uint64_t)(sizes - block) + 4 * count > have) goto python;
        if (blocks_start > self->image_end) goto python;
        uint64_t total = blocks_start;
        for (uint64_t i = 0; i < count; i++) {
            if (i == first) start = total;
            total += le32(sizes + 4 * i) & SIZE_MASK;
        }
        if (total > self->image_end) goto python;
    }

    /* A read of exactly one whole data block (the kernel reads ahead in requests of a block's
     * size, aligned): the cached block itself, no copy of its 128 KiB. */
    if (first == last && first < count && off == first * bs && (le32(sizes + 4 * first) & SIZE_MASK) != 0) {
        PyObject *data = data_block(self, start, le32(sizes + 4 * first));
        if (data == NULL || (uint64_t)PyBytes_GET_SIZE(data) == end - off) {
            out = data;
            goto done;
        }
        Py_DECREF(data); /* one that unpacks short: zero-filled below */
    }

    /* At most 2048 blocks (their list lies in one metadata block) and a tail: end - off fits. */
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(end - off));
    if (out == NULL) goto done;
    char *dst = PyBytes_AS_STRING(out);
    for (uint64_t i = first; i <= last; i++) {
        uint64_t base = i * bs;
        uint64_t expected = file_size - base < bs ? file_size - base : bs;
        uint64_t lo = (off > base ? off : base) - base, hi = (end < base + bs ? end : base + bs) - base;
        if (i < count) {
            uint32_t word = le32(sizes + 4 * i);
            if ((word & SIZE_MASK) == 0) {
                memset(dst, 0, hi - lo); /* a sparse block */
            } else {
                PyObject *data = data_block(self, start, word);
                if (data == NULL) goto fail;
                copy_zero_filled(dst, PyBytes_AS_STRING(data), (uint64_t)PyBytes_GET_SIZE(data), lo, hi);
                Py_DECREF(data);
            }
            start += word & SIZE_MASK;
        } else {
            PyObject *frag = tail_block(self, fragment, frag_offset, expected);
            if (frag == NULL) {
                if (PyErr_Occurred()) goto fail;
                Py_CLEAR(out);
                goto python;
            }
            memcpy(dst, PyBytes_AS_STRING(frag) + frag_offset + lo, hi - lo);
            Py_DECREF(frag);
        }
        dst += hi - lo;
    }
    goto done;
fail:
    Py_CLEAR(out);
    goto done;
python:
    out = Py_NewRef(Py_None);
done:
    Py_DECREF(meta);
    return out;
}

static PyObject *FileReader_read(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    FileReader *r = (FileReader *)self;
    if (r->data.items == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "FileReader not initialised");
        return NULL;
    }
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "read(ref, offset, size)");
        return NULL;
    }
    uint64_t ref = PyLong_AsUnsignedLongLong(args[0]);
    long long offset = PyLong_AsLongLong(args[1]);
    long long size = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return NULL;
        PyErr_Clear(); /* out of range for C: the Python reader decides */
        Py_RETURN_NONE;
    }
    return read_file(r, ref, offset, size);
}

static int FileReader_init(FileReader *self, PyObject *args, PyObject *kwds) {
    PyObject *meta_items, *data_items, *meta_block, *data_block, *fragment_blocks;
    unsigned long long layout[6];
    static char *kwlist[] = {"meta_items", "data_items", "meta_block", "data_block", "layout", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO(KKKKKKO!)", kwlist, &meta_items, &data_items,
                                     &meta_block, &data_block, &layout[0],
                                     &layout[1], &layout[2], &layout[3], &layout[4], &layout[5],
                                     &PyTuple_Type, &fragment_blocks))
        return -1;
    if (layout[2] == 0) {
        PyErr_SetString(PyExc_ValueError, "block_size must be positive");
        return -1;
    }
    /* Every fragment index below the count must name a listed block: checked once here. */
    if ((layout[5] * FRAGMENT_RECORD + METADATA_SIZE - 1) / METADATA_SIZE > (uint64_t)PyTuple_GET_SIZE(fragment_blocks)) {
        PyErr_SetString(PyExc_ValueError, "fewer fragment table blocks than the fragment count needs");
        return -1;
    }
    if (cache_view_set(&self->meta, meta_items, meta_block) < 0 ||
        cache_view_set(&self->data, data_items, data_block) < 0)
        return -1;
    Py_XSETREF(self->fragment_blocks, Py_NewRef(fragment_blocks));
    self->inode_table = layout[0];
    self->inode_table_size = layout[1];
    self->block_size = layout[2];
    self->image_end = layout[3];
    self->max_list = layout[4];
    self->fragment_count = layout[5];
    return 0;
}

static int FileReader_traverse(FileReader *self, visitproc visit, void *arg) {
    CACHE_VIEW_VISIT(self->meta);
    CACHE_VIEW_VISIT(self->data);
    Py_VISIT(self->fragment_blocks);
    return 0;
}

static int FileReader_clear(FileReader *self) {
    cache_view_clear(&self->meta);
    cache_view_clear(&self->data);
    Py_CLEAR(self->fragment_blocks);
    return 0;
}

static void FileReader_dealloc(FileReader *self) {
    PyObject_GC_UnTrack(self);
    FileReader_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef FileReader_methods[] = {
    {"read", (PyCFunction)(void (*)(void))FileReader_read, METH_FASTCALL,
     "read(ref, offset, size) -> bytes, or None to leave the read to the Python reader"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FileReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "siffs.squashfs._data.FileReader",
    .tp_basicsize = sizeof(FileReader),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "FileReader(meta_items, data_items, meta_block, data_block, layout): one image's file reader",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FileReader_init,
    .tp_traverse = (traverseproc)FileReader_traverse,
    .tp_clear = (inquiry)FileReader_clear,
    .tp_dealloc = (destructor)FileReader_dealloc,
    .tp_methods = FileReader_methods,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_data", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__data(void) {
    DATA_TAG = PyUnicode_InternFromString("d");
    if (caches_init_module() < 0 || DATA_TAG == NULL || PyType_Ready(&FileReaderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "ABI", ABI) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "FileReader", (PyObject *)&FileReaderType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
