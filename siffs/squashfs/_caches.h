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
 */
#ifndef SIFFS_SQUASHFS_CACHES_H
#define SIFFS_SQUASHFS_CACHES_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define RECENT_BLOCKS 8

/* One cache: its table, the table's move_to_end, and the loader for misses; for metadata blocks,
 * the last RECENT_BLOCKS given (position, (bytes, next) pair; NULL: a free slot). */
typedef struct {
    PyObject *items, *touch, *load;
    uint64_t recent_pos[RECENT_BLOCKS];
    PyObject *recent[RECENT_BLOCKS];
    unsigned next_slot;
} CacheView;

/* The tag of metadata blocks' keys, ("m", position), as metadata.py makes them. */
static PyObject *METADATA_TAG;
/* The name of the table's method that marks an entry recently used. */
static PyObject *MOVE_TO_END;

static inline int caches_init_module(void) {
    METADATA_TAG = PyUnicode_InternFromString("m");
    MOVE_TO_END = PyUnicode_InternFromString("move_to_end");
    return METADATA_TAG == NULL || MOVE_TO_END == NULL ? -1 : 0;
}

/* Fill `view` (references taken) from a table and a loader; -1 with an error if it is no table. */
static inline int cache_view_set(CacheView *view, PyObject *items, PyObject *load) {
    if (!PyDict_Check(items)) {
        PyErr_SetString(PyExc_TypeError, "a cache table must be a dict (LruCache.table)");
        return -1;
    }
    PyObject *touch = PyObject_GetAttrString(items, "move_to_end");
    if (touch == NULL) return -1;
    Py_XSETREF(view->items, Py_NewRef(items));
    Py_XSETREF(view->touch, touch);
    Py_XSETREF(view->load, Py_NewRef(load));
    for (int i = 0; i < RECENT_BLOCKS; i++) Py_CLEAR(view->recent[i]); /* they were another cache's */
    return 0;
}

#define CACHE_VIEW_VISIT(view)                                              \
    do {                                                                    \
        Py_VISIT((view).items);                                             \
        Py_VISIT((view).touch);                                             \
        Py_VISIT((view).load);                                              \
        for (int recent_i = 0; recent_i < RECENT_BLOCKS; recent_i++)        \
            Py_VISIT((view).recent[recent_i]);                              \
    } while (0)

static inline void cache_view_clear(CacheView *view) {
    Py_CLEAR(view->items);
    Py_CLEAR(view->touch);
    Py_CLEAR(view->load);
    for (int i = 0; i < RECENT_BLOCKS; i++) Py_CLEAR(view->recent[i]);
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

/* The decompressed metadata block at `pos` as the cache holds it, (bytes, next position) (a new
 * reference), remembered by the view, from the cache or its loader; NULL with an error. */
static inline PyObject *metadata_block_pair(CacheView *view, uint64_t pos) {
    for (int i = 0; i < RECENT_BLOCKS; i++)
        if (view->recent[i] != NULL && view->recent_pos[i] == pos) return Py_NewRef(view->recent[i]);
    PyObject *where = PyLong_FromUnsignedLongLong(pos);
    if (where == NULL) return NULL;
    PyObject *key = PyTuple_Pack(2, METADATA_TAG, where);
    PyObject *block = key == NULL ? NULL : cache_hit(view, key);
    Py_XDECREF(key);
    if (block == NULL && !PyErr_Occurred()) block = PyObject_CallOneArg(view->load, where);
    Py_DECREF(where);
    if (block == NULL) return NULL;
    if (!PyTuple_Check(block) || PyTuple_GET_SIZE(block) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(block, 0))) {
        Py_DECREF(block);
        PyErr_SetString(PyExc_TypeError, "a metadata block is not a (bytes, next) pair");
        return NULL;
    }
    unsigned slot = view->next_slot++ % RECENT_BLOCKS;
    view->recent_pos[slot] = pos;
    Py_XSETREF(view->recent[slot], Py_NewRef(block));
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
