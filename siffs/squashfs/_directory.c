/* Native parser of one directory segment, and the name search of a lookup: the hot loops of
 * siffs.squashfs.directory.
 *
 * A cold lookup or listing parses a segment of about one metadata block of directory entries;
 * in Python that loop is most of the daemon's time on cold rows. This does the same walk over a
 * contiguous copy of the segment's bytes. It decides nothing the Python parser does not: when
 * the bytes are anything but well-formed (a run past the segment, a size beyond the limits, a
 * listing past its stated size) it returns None and the caller parses the segment with the
 * Python code, which raises the precise error. The Python parser is the fallback and the oracle
 * in the tests.
 *
 * parse_segment(data, linear, length) -> (names, refs, starts, cookies) | None
 *   data:   the listing bytes from linear offset `linear` to the segment's end
 *   length: the listing's length (its stored size minus the 3-byte bias)
 *
 * find(table, key, first_names, block, put, name, load) -> the entry's inode reference, or None
 *   What Listing.find does: bisect the index's first names (first_names, sorted) for the segment
 *   that may hold `name`, take that segment from the metadata cache's table under key + (its
 *   number,) (a miss calls load(number), which parses and caches it), and search its names, the
 *   first match winning. Saves the three Python calls and the tuple search of every lookup.
 *   A listing without an index (first_names empty: one segment, the whole listing) that is not
 *   cached yet is parsed here: its bytes from the metadata blocks (block: MetadataReader.block
 *   for those not cached), stored through put (LruCache.put), once set_segment_type has named
 *   the Segment class; None for block and put leaves every miss to load. With None for load, a
 *   miss that is not parsed here returns NotImplemented: the caller goes the Python way.
 */
#include "_caches.h" /* first: it includes Python.h */
#include "_listing.h"

/* The version of this module's interface to its Python caller (siffs.native.load checks it):
 * bump it whenever a signature, a constructor argument or a capsule changes. */
#define ABI 1

/* Append a new reference to `item` to `list`; 0 on success. */
static int append_new(PyObject *list, PyObject *item) {
    if (item == NULL) return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

/* parse(): the four lists of a Segment. */
static int collect(void *ctx, const Entry *e) {
    PyObject **lists = ctx;
    if (append_new(lists[2], PyLong_FromLongLong(e->start))) return -1;
    if (append_new(lists[0], PyBytes_FromStringAndSize((const char *)e->name, e->name_size))) return -1;
    if (append_new(lists[1], PyLong_FromUnsignedLongLong(e->ref))) return -1;
    return append_new(lists[3], PyLong_FromLongLong(e->end + SIZE_BIAS));
}

/* The segment in `data` as (names, refs, starts, cookies), None if malformed, NULL on an error. */
static PyObject *parse(const unsigned char *data, Py_ssize_t size, long long linear, long long length) {
    PyObject *lists[4] = {PyList_New(0), PyList_New(0), PyList_New(0), PyList_New(0)};
    PyObject *result = NULL;
    int rc = WALK_ERROR;
    if (!lists[0] || !lists[1] || !lists[2] || !lists[3]) goto done;
    rc = walk(data, size, linear, length, collect, lists);
    if (rc != WALK_DONE) goto done;
    result = PyTuple_New(4);
    if (result == NULL) goto done;
    for (int i = 0; i < 4; i++) {
        PyObject *t = PyList_AsTuple(lists[i]);
        if (t == NULL) { Py_CLEAR(result); goto done; }
        PyTuple_SET_ITEM(result, i, t);
    }
done:
    for (int i = 0; i < 4; i++) Py_XDECREF(lists[i]);
    if (rc == WALK_MALFORMED) Py_RETURN_NONE;
    return result;
}

static PyObject *parse_segment(PyObject *self, PyObject *args) {
    Py_buffer view;
    long long linear, length;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*LL", &view, &linear, &length)) return NULL;
    PyObject *result = parse(view.buf, view.len, linear, length);
    PyBuffer_Release(&view);
    return result;
}

/* The Segment class (directory.py), set once by set_segment_type; NULL: segments load in Python. */
static PyTypeObject *SEGMENT_TYPE;

static PyObject *set_segment_type(PyObject *self, PyObject *cls) {
    (void)self;
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "the segment type must be a tuple subclass (a NamedTuple)");
        return NULL;
    }
    Py_XSETREF(SEGMENT_TYPE, (PyTypeObject *)Py_NewRef(cls));
    Py_RETURN_NONE;
}

/* A Segment holding the four tuples of `parsed` (a NamedTuple made as tuple.__new__ makes it). */
static PyObject *segment_from(PyObject *parsed) {
    PyObject *seg = SEGMENT_TYPE->tp_alloc(SEGMENT_TYPE, 4);
    if (seg == NULL) return NULL;
    for (Py_ssize_t i = 0; i < 4; i++) PyTuple_SET_ITEM(seg, i, Py_NewRef(PyTuple_GET_ITEM(parsed, i)));
    return seg;
}

/* Segment.cost. */
static Py_ssize_t segment_cost(PyObject *names) {
    Py_ssize_t n = PyTuple_GET_SIZE(names), cost = 100 + 150 * n;
    for (Py_ssize_t i = 0; i < n; i++) cost += PyBytes_GET_SIZE(PyTuple_GET_ITEM(names, i));
    return cost;
}

/* What Listing._parse(-1) does for a listing without an index, whose one segment is the whole
 * listing: copy its bytes out of the metadata blocks (cached, or loaded through `block`), parse
 * them here and store the Segment through `put` (LruCache.put). It runs where a cold lookup
 * would otherwise spend most of its time: in Python, for each directory's first lookup.
 * NULL without an error: anything unusual (damage, an empty or long listing), for the Python
 * loader to redo and, when the image is damaged, to raise the precise error. */
static PyObject *load_whole(PyObject *table, PyObject *key_base, PyObject *seg_key, PyObject *block, PyObject *put) {
    long long pos = PyLong_AsLongLong(PyTuple_GET_ITEM(key_base, 1));
    long long offset = PyLong_AsLongLong(PyTuple_GET_ITEM(key_base, 2));
    long long length = PyLong_AsLongLong(PyTuple_GET_ITEM(key_base, 3));
    if (PyErr_Occurred() || length <= 0 || length > NATIVE_SEGMENT_MAX || pos < 0 || offset < 0) {
        PyErr_Clear(); /* not an int of 64 bits: the Python loader copes */
        return NULL;
    }
    unsigned char *buf = PyMem_Malloc((size_t)length);
    if (buf == NULL) return PyErr_NoMemory();
    PyObject *stored = NULL;
    CacheView blocks = {0}; /* met once per listing: nothing to remember between calls */
    int copied = cache_view_set(&blocks, table, block) < 0 ? -1 : copy_listing(&blocks, pos, offset, length, buf);
    cache_view_clear(&blocks);
    if (copied < 0) goto out;
    PyObject *parsed = parse(buf, (Py_ssize_t)length, 0, length);
    if (parsed == NULL || parsed == Py_None) {
        Py_XDECREF(parsed);
        goto out;
    }
    PyObject *seg = segment_from(parsed);
    Py_DECREF(parsed);
    if (seg == NULL) goto out;
    PyObject *cost = PyLong_FromSsize_t(segment_cost(PyTuple_GET_ITEM(seg, 0)));
    PyObject *pargs[3] = {seg_key, seg, cost};
    stored = cost == NULL ? NULL : PyObject_Vectorcall(put, pargs, 3, NULL);
    Py_XDECREF(cost);
    Py_DECREF(seg);
out:
    PyMem_Free(buf);
    if (stored == NULL) clear_image_error();
    return stored;
}

static PyObject *find(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 7 || !PyTuple_Check(args[1]) || PyTuple_GET_SIZE(args[1]) != 4 || !PyTuple_Check(args[2]) ||
        !PyBytes_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError,
                        "find(table, key: 4-tuple, first_names: tuple, block, put, name: bytes, load)");
        return NULL;
    }
    PyObject *key_base = args[1], *first = args[2], *block = args[3], *put = args[4], *name = args[5];
    Py_ssize_t interval = interval_of(first, name);
    if (interval < -1) return NULL;
    PyObject *number = PyLong_FromSsize_t(interval);
    PyObject *key = number == NULL ? NULL : PyTuple_New(5);
    if (key == NULL) {
        Py_XDECREF(number);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < 4; i++) PyTuple_SET_ITEM(key, i, Py_NewRef(PyTuple_GET_ITEM(key_base, i)));
    PyTuple_SET_ITEM(key, 4, Py_NewRef(number));
    PyObject *segment = table_hit(args[0], key), *load = args[6];
    if (segment == NULL && !PyErr_Occurred() && PyTuple_GET_SIZE(first) == 0 && SEGMENT_TYPE != NULL &&
        block != Py_None && put != Py_None)
        segment = load_whole(args[0], key_base, key, block, put);
    if (segment == NULL && !PyErr_Occurred()) {
        if (load == Py_None) { /* the caller has no Python loader at hand: it asks Python */
            Py_DECREF(key);
            Py_DECREF(number);
            Py_RETURN_NOTIMPLEMENTED;
        }
        segment = PyObject_CallOneArg(load, number);
    }
    Py_DECREF(key);
    Py_DECREF(number);
    if (segment == NULL) return NULL;
    PyObject *found = NULL, *names = NULL, *refs = NULL;
    /* A Segment is a tuple: names and refs first (no attribute look-up by name). */
    if (PyTuple_Check(segment) && PyTuple_GET_SIZE(segment) >= 2) {
        names = Py_NewRef(PyTuple_GET_ITEM(segment, 0));
        refs = Py_NewRef(PyTuple_GET_ITEM(segment, 1));
    }
    Py_DECREF(segment);
    if (refs == NULL || !PyTuple_Check(names) || !PyTuple_Check(refs) ||
        PyTuple_GET_SIZE(names) != PyTuple_GET_SIZE(refs)) {
        PyErr_SetString(PyExc_TypeError, "a segment's names and refs must be tuples of one length");
        goto done;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(name);
    const char *wanted = PyBytes_AS_STRING(name);
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(names); j++) {
        PyObject *item = PyTuple_GET_ITEM(names, j);
        if (PyBytes_Check(item) && PyBytes_GET_SIZE(item) == size && memcmp(PyBytes_AS_STRING(item), wanted, (size_t)size) == 0) {
            found = Py_NewRef(PyTuple_GET_ITEM(refs, j));
            goto done;
        }
    }
    found = Py_NewRef(Py_None);
done:
    Py_XDECREF(names);
    Py_XDECREF(refs);
    return found;
}

static PyMethodDef methods[] = {
    {"find", (PyCFunction)(void (*)(void))find, METH_FASTCALL,
     "find(table, key, first_names, block, put, name, load) -> inode reference, or None if no entry has the name"},
    {"set_segment_type", set_segment_type, METH_O,
     "set_segment_type(Segment): the class of the segments find parses and stores itself"},
    {"parse_segment", parse_segment, METH_VARARGS,
     "parse_segment(data, linear, length) -> (names, refs, starts, cookies), or None if malformed"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_directory", NULL, -1, methods};

PyMODINIT_FUNC PyInit__directory(void) {
    if (caches_init_module() < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "ABI", ABI) < 0) Py_CLEAR(m);
    return m;
}
