/* The SquashFS reader's LRU caches seen from its native modules (_data.c, _inode.c, _directory.c).
 *
 * An LruCache (cache.py) keeps its entries in an OrderedDict, key -> (value, cost), that it
 * publishes as LruCache.table. A native reader looks a value up there and marks it recently used,
 * exactly what a hit in LruCache.get_or_load does; on a miss it calls the Python loader, which
 * goes through get_or_load (or, for a value made in C, stores it through LruCache.put), so
 * storing, evicting, de-duplicating loads in flight and every error stay in cache.py. Included by
 * each module (static inline functions: one copy per module).
 *
 * A view also remembers the last few metadata blocks it was given (RECENT_BLOCKS pairs, taken
 * from the cache or its loader): a cold lookup decodes two or three inodes and a listing from the
 * same handful of blocks, and asking the LruCache for each (a key tuple, a dict look-up, a call of
 * move_to_end) was a tenth of the request. The image never changes, so a remembered block is right
 * for as long as it is kept; it may outlive its entry in the LruCache by up to RECENT_BLOCKS
 * blocks per view (~66 KiB), which the cache's budget does not count.
 *
 * A view may also load a metadata block itself, when the reader's bytes come from a plain file
 * (MetadataReader.loader, metadata.py): the same checks and steps as MetadataReader._load, with the
 * codec's decompress and LruCache.put the only Python calls. Through the Python loader a miss took
 * eight frames, two locks and a lock made per load, some 10 us in a cold pass, where the block's
 * decompression takes 20. Anything unusual (damage, a short read, a closed file, an error from the
 * codec) goes to the Python loader, which names it.
 */
#ifndef SIFFS_SQUASHFS_CACHES_H
#define SIFFS_SQUASHFS_CACHES_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <unistd.h>

#define RECENT_MAX 8
#define RECENT_BLOCKS 8

/* The last few values met, by a 64-bit key (the image never changes, so any is right for as long as
 * it is kept): at most RECENT_MAX slots, of which a user takes `n`, the oldest replaced first. */
typedef struct {
    uint64_t key[RECENT_MAX];
    PyObject *value[RECENT_MAX]; /* NULL: a free slot */
    unsigned next;
} Recent;

/* The value kept under `key` (a new reference), or NULL. */
static inline PyObject *recent_get(const Recent *r, int n, uint64_t key) {
    for (int i = 0; i < n; i++)
        if (r->value[i] != NULL && r->key[i] == key) return Py_NewRef(r->value[i]);
    return NULL;
}

static inline void recent_put(Recent *r, int n, uint64_t key, PyObject *value) {
    unsigned slot = r->next++ % (unsigned)n;
    r->key[slot] = key;
    Py_XSETREF(r->value[slot], Py_NewRef(value));
}

static inline void recent_clear(Recent *r) {
    for (int i = 0; i < RECENT_MAX; i++) Py_CLEAR(r->value[i]);
}

#define RECENT_VISIT(r)                                               \
    do {                                                              \
        for (int recent_i = 0; recent_i < RECENT_MAX; recent_i++)     \
            Py_VISIT((r).value[recent_i]);                            \
    } while (0)

/* One cache: its table, the table's move_to_end, and the loader for misses; for metadata blocks,
 * the last RECENT_BLOCKS given (position -> (bytes, next) pair). */
typedef struct {
    PyObject *items, *touch, *load;
    Recent recent;
    /* Loading a metadata block here (MetadataReader.loader): the file source (NULL: never), its
     * offset in the file, the end of the image, the codec's decompress, the cache's put, and
     * what a block costs beyond its bytes. */
    PyObject *source, *decompress, *put;
    unsigned long long base, limit, overhead;
} CacheView;

/* The tag of metadata blocks' keys, ("m", position), as metadata.py makes them. */
static PyObject *METADATA_TAG;
/* The name of the table's method that marks an entry recently used. */
static PyObject *MOVE_TO_END;
/* FileSource's descriptor attribute (-1 once closed), and a metadata block's size bound. */
static PyObject *FD_ATTR, *BLOCK_BOUND;

#define METADATA_BLOCK 8192
#define METADATA_UNCOMPRESSED 0x8000

static inline int caches_init_module(void) {
    METADATA_TAG = PyUnicode_InternFromString("m");
    MOVE_TO_END = PyUnicode_InternFromString("move_to_end");
    FD_ATTR = PyUnicode_InternFromString("_fd");
    BLOCK_BOUND = PyLong_FromLong(METADATA_BLOCK);
    return METADATA_TAG == NULL || MOVE_TO_END == NULL || FD_ATTR == NULL || BLOCK_BOUND == NULL ? -1 : 0;
}

/* An error met while reading the image that is the image's (damage found loading a block), which
 * the Python path meets again and raises, is cleared. A signal's exception (KeyboardInterrupt, the
 * daemon's stop) or MemoryError is not the image's: it stays, to go up. */
static inline void clear_image_error(void) {
    if (PyErr_ExceptionMatches(PyExc_Exception) && !PyErr_ExceptionMatches(PyExc_MemoryError)) PyErr_Clear();
}

/* Fill `view` (references taken) from a table and a loader: a callable, or MetadataReader.loader's
 * (block, source, base, limit, decompress, put, overhead) for a view that loads metadata blocks
 * itself. -1 with an error if it is neither, or the table no table. */
static inline int cache_view_set(CacheView *view, PyObject *items, PyObject *load) {
    if (!PyDict_Check(items)) {
        PyErr_SetString(PyExc_TypeError, "a cache table must be a dict (LruCache.table)");
        return -1;
    }
    PyObject *source = NULL, *decompress = NULL, *put = NULL;
    unsigned long long base = 0, limit = 0, overhead = 0;
    if (PyTuple_Check(load)) {
        if (!PyArg_ParseTuple(load, "OOKKOOK", &load, &source, &base, &limit, &decompress, &put, &overhead))
            return -1;
    }
    PyObject *touch = PyObject_GetAttrString(items, "move_to_end");
    if (touch == NULL) return -1;
    Py_XSETREF(view->items, Py_NewRef(items));
    Py_XSETREF(view->touch, touch);
    Py_XSETREF(view->load, Py_NewRef(load));
    Py_XSETREF(view->source, Py_XNewRef(source));
    Py_XSETREF(view->decompress, Py_XNewRef(decompress));
    Py_XSETREF(view->put, Py_XNewRef(put));
    view->base = base, view->limit = limit, view->overhead = overhead;
    recent_clear(&view->recent); /* they were another cache's */
    return 0;
}

#define CACHE_VIEW_VISIT(view)                                              \
    do {                                                                    \
        Py_VISIT((view).items);                                             \
        Py_VISIT((view).touch);                                             \
        Py_VISIT((view).load);                                              \
        Py_VISIT((view).source);                                            \
        Py_VISIT((view).decompress);                                        \
        Py_VISIT((view).put);                                               \
        RECENT_VISIT((view).recent);                                        \
    } while (0)

static inline void cache_view_clear(CacheView *view) {
    Py_CLEAR(view->items);
    Py_CLEAR(view->touch);
    Py_CLEAR(view->load);
    Py_CLEAR(view->source);
    Py_CLEAR(view->decompress);
    Py_CLEAR(view->put);
    recent_clear(&view->recent);
}

/* As cache_hit, for a table met once (no view kept): the method is looked up, not bound. */
static inline PyObject *table_hit(PyObject *items, PyObject *key) {
    if (!PyDict_Check(items)) {
        PyErr_SetString(PyExc_TypeError, "a cache table must be a dict (LruCache.table)");
        return NULL;
    }
    PyObject *item = PyDict_GetItemWithError(items, key);
    if (item == NULL) return NULL;
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
        PyErr_SetString(PyExc_TypeError, "a cache entry is not a (value, cost) pair");
        return NULL;
    }
    PyObject *value = Py_NewRef(PyTuple_GET_ITEM(item, 0));
    PyObject *args[2] = {items, key};
    PyObject *moved = PyObject_VectorcallMethod(MOVE_TO_END, args, 2, NULL);
    if (moved == NULL) {
        Py_DECREF(value);
        return NULL;
    }
    Py_DECREF(moved);
    return value;
}

/* The value cached under `key` (a new reference), marked as recently used; NULL on a miss (no
 * error set) or on an error. No Python code runs between the look-up and the move, so the entry
 * cannot be evicted in between. */
static inline PyObject *cache_hit(CacheView *view, PyObject *key) {
    PyObject *item = PyDict_GetItemWithError(view->items, key);
    if (item == NULL) return NULL;
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
        PyErr_SetString(PyExc_TypeError, "a cache entry is not a (value, cost) pair");
        return NULL;
    }
    PyObject *value = Py_NewRef(PyTuple_GET_ITEM(item, 0));
    PyObject *moved = PyObject_CallOneArg(view->touch, key);
    if (moved == NULL) {
        Py_DECREF(value);
        return NULL;
    }
    Py_DECREF(moved);
    return value;
}

/* `size` bytes at `pos` of the file `fd` into `buf`, the GIL let go meanwhile (a cold read waits
 * for the disk): 1 if all were read. */
static inline int read_exactly(int fd, void *buf, size_t size, unsigned long long pos) {
    ssize_t got;
    Py_BEGIN_ALLOW_THREADS
    got = pread(fd, buf, size, (off_t)pos);
    Py_END_ALLOW_THREADS
    return got >= 0 && (size_t)got == size;
}

/* The metadata block at `pos` loaded as MetadataReader._load loads it, stored in the cache under
 * `key` through LruCache.put (which returns the value it keeps); NULL without an error for anything
 * but the common case (the Python loader then redoes it and names the damage), NULL with an error
 * that is not the image's. */
static inline PyObject *load_block(CacheView *view, uint64_t pos, PyObject *key) {
    PyObject *fd_obj = PyObject_GetAttr(view->source, FD_ATTR);
    long fd = fd_obj == NULL ? -1 : PyLong_AsLong(fd_obj);
    Py_XDECREF(fd_obj);
    unsigned char head[2];
    if (PyErr_Occurred() || fd < 0 || pos > view->limit || view->limit - pos < 2 ||
        !read_exactly((int)fd, head, 2, view->base + pos)) {
        PyErr_Clear(); /* a closed or odd source: the Python loader says what is wrong */
        return NULL;
    }
    unsigned header = head[0] | (unsigned)head[1] << 8, size = header & ~(unsigned)METADATA_UNCOMPRESSED;
    uint64_t start = pos + 2;
    if (size == 0 || size > METADATA_BLOCK || size > view->limit - start) return NULL;
    PyObject *data = PyBytes_FromStringAndSize(NULL, size);
    if (data == NULL) return NULL;
    if (!read_exactly((int)fd, PyBytes_AS_STRING(data), size, view->base + start)) {
        Py_DECREF(data);
        return NULL;
    }
    if (!(header & METADATA_UNCOMPRESSED)) {
        PyObject *args[2] = {data, BLOCK_BOUND};
        Py_SETREF(data, PyObject_Vectorcall(view->decompress, args, 2, NULL));
        if (data != NULL && !PyBytes_Check(data)) Py_CLEAR(data);
        if (data == NULL) {
            clear_image_error();
            return NULL;
        }
    }
    PyObject *next = PyLong_FromUnsignedLongLong(start + size);
    PyObject *pair = next == NULL ? NULL : PyTuple_Pack(2, data, next);
    PyObject *cost = PyLong_FromUnsignedLongLong((unsigned long long)PyBytes_GET_SIZE(data) + view->overhead);
    PyObject *kept = NULL;
    if (pair != NULL && cost != NULL) {
        PyObject *args[3] = {key, pair, cost};
        kept = PyObject_Vectorcall(view->put, args, 3, NULL);
    }
    Py_XDECREF(cost);
    Py_XDECREF(pair);
    Py_XDECREF(next);
    Py_DECREF(data);
    return kept;
}

/* The decompressed metadata block at `pos` as the cache holds it, (bytes, next position) (a new
 * reference), remembered by the view, from the cache, loaded here, or from the Python loader; NULL
 * with an error. */
static inline PyObject *metadata_block_pair(CacheView *view, uint64_t pos) {
    PyObject *remembered = recent_get(&view->recent, RECENT_BLOCKS, pos);
    if (remembered != NULL) return remembered;
    PyObject *where = PyLong_FromUnsignedLongLong(pos);
    if (where == NULL) return NULL;
    PyObject *key = PyTuple_Pack(2, METADATA_TAG, where);
    PyObject *block = key == NULL ? NULL : cache_hit(view, key);
    if (block == NULL && !PyErr_Occurred() && view->source != NULL) block = load_block(view, pos, key);
    Py_XDECREF(key);
    if (block == NULL && !PyErr_Occurred()) block = PyObject_CallOneArg(view->load, where);
    Py_DECREF(where);
    if (block == NULL) return NULL;
    if (!PyTuple_Check(block) || PyTuple_GET_SIZE(block) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(block, 0))) {
        Py_DECREF(block);
        PyErr_SetString(PyExc_TypeError, "a metadata block is not a (bytes, next) pair");
        return NULL;
    }
    recent_put(&view->recent, RECENT_BLOCKS, pos, block);
    return block;
}

/* The bytes of the decompressed metadata block at `pos` (a new reference); NULL with an error. */
static inline PyObject *metadata_block(CacheView *view, uint64_t pos) {
    PyObject *block = metadata_block_pair(view, pos);
    if (block == NULL) return NULL;
    PyObject *data = Py_NewRef(PyTuple_GET_ITEM(block, 0));
    Py_DECREF(block);
    return data;
}

#endif
