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
 *
 * find_listing(table, key, block, put, name) -> the entry's inode reference, None, or NotImplemented
 *   The same search in a listing without an index, kept as its bytes rather than as a Segment:
 *   key is ("l", block position, offset, length); a miss copies the listing out of the metadata
 *   blocks, checks it whole (the walk parse() makes, so it accepts exactly what the Python parser
 *   does) and stores it through put; each search walks the bytes to the first entry of that name.
 *   NotImplemented: a listing not searched here (damaged, empty or longer than 64 KiB), for the
 *   Python way, which raises the precise error for a damaged one.
 */
#include "_caches.h" /* first: it includes Python.h */

#include <stdint.h>
#include <string.h>

#define HEADER_SIZE 12
#define ENTRY_SIZE 8
#define MAX_RUN 256
#define MAX_NAME 256
#define SIZE_BIAS 3
/* directory.NATIVE_SEGMENT_MAX: longer listings stay with the streaming Python parser. */
#define NATIVE_SEGMENT_MAX (1 << 16)

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint16_t le16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* Append a new reference to `item` to `list`; 0 on success. */
static int append_new(PyObject *list, PyObject *item) {
    if (item == NULL) return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

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

/* A listing's bytes cross at most 9 metadata blocks (64 KiB in blocks of up to 8 KiB, the first
 * entered anywhere); a longer chain is a damaged image, for the Python loader to name. */
#define MAX_HOPS 16

/* Copy `length` bytes of listing from the metadata block at `pos` (from `offset` in it) on into
 * `dest`, each block from the cache's `table` or loaded through `block`. 0 on success; -1 with an
 * error (a block that would not load), or -1 without one (damage: an offset past its block, more
 * blocks than a listing can cross), for the Python loader to name. */
static int copy_listing(PyObject *table, PyObject *block, long long pos, long long offset, long long length,
                        unsigned char *dest) {
    CacheView blocks = {NULL, NULL, NULL};
    int rc = -1;
    long long got = 0;
    if (cache_view_set(&blocks, table, block) < 0) goto out;
    for (int hops = 0; got < length; hops++) {
        PyObject *pair = hops < MAX_HOPS ? metadata_block_pair(&blocks, (uint64_t)pos) : NULL;
        if (pair == NULL) goto out;
        PyObject *data = PyTuple_GET_ITEM(pair, 0);
        long long have = PyBytes_GET_SIZE(data), next = PyLong_AsLongLong(PyTuple_GET_ITEM(pair, 1));
        if (offset > have || next < 0) { /* next < 0: not an int (or an error) */
            Py_DECREF(pair);
            goto out;
        }
        long long take = have - offset < length - got ? have - offset : length - got;
        memcpy(dest + got, PyBytes_AS_STRING(data) + offset, (size_t)take);
        Py_DECREF(pair);
        got += take;
        pos = next;
        offset = 0;
    }
    rc = 0;
out:
    cache_view_clear(&blocks);
    return rc;
}

/* The position, offset and length a listing key (tag, block position, offset, length) names;
 * 0 if they are ints in range for a listing parsed here, else no error set (the Python way copes). */
static int listing_span(PyObject *key, long long *pos, long long *offset, long long *length) {
    *pos = PyLong_AsLongLong(PyTuple_GET_ITEM(key, 1));
    *offset = PyLong_AsLongLong(PyTuple_GET_ITEM(key, 2));
    *length = PyLong_AsLongLong(PyTuple_GET_ITEM(key, 3));
    if (PyErr_Occurred() || *length <= 0 || *length > NATIVE_SEGMENT_MAX || *pos < 0 || *offset < 0) {
        PyErr_Clear(); /* not an int of 64 bits */
        return -1;
    }
    return 0;
}

/* An error met while copying a listing that is the image's (damage found loading a block), which
 * the Python loader meets again and raises, is cleared. A signal's exception (KeyboardInterrupt, the
 * daemon's stop) or MemoryError is not the image's: it stays, to go up. */
static void clear_image_error(void) {
    if (PyErr_ExceptionMatches(PyExc_Exception) && !PyErr_ExceptionMatches(PyExc_MemoryError)) PyErr_Clear();
}

/* What Listing._parse(-1) does for a listing without an index, whose one segment is the whole
 * listing: copy its bytes out of the metadata blocks (cached, or loaded through `block`), parse
 * them here and store the Segment through `put` (LruCache.put). It runs where a cold lookup
 * would otherwise spend most of its time: in Python, for each directory's first lookup.
 * NULL without an error: anything unusual (damage, an empty or long listing), for the Python
 * loader to redo and, when the image is damaged, to raise the precise error. */
static PyObject *load_whole(PyObject *table, PyObject *key_base, PyObject *seg_key, PyObject *block, PyObject *put) {
    long long pos, offset, length;
    if (listing_span(key_base, &pos, &offset, &length) < 0) return NULL;
    unsigned char *buf = PyMem_Malloc((size_t)length);
    if (buf == NULL) return PyErr_NoMemory();
    PyObject *stored = NULL;
    if (copy_listing(table, block, pos, offset, length, buf) < 0) goto out;
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

/* walk()'s visitor for validation alone. */
static int accept(void *ctx, const Entry *e) {
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
static int match(void *ctx, const Entry *e) {
    Wanted *w = ctx;
    if (e->name_size != w->size || memcmp(e->name, w->name, (size_t)w->size) != 0) return 0;
    w->ref = e->ref;
    return 1;
}

/* Cache cost of a listing's bytes beyond their length (the bytes object, the key, the entry). */
#define LISTING_OVERHEAD 200

/* A listing without an index as the cache keeps it for find_listing: its bytes, checked whole by
 * walk() before they are stored (a new reference); None without an error if it is not one to
 * keep (damage, an empty or long listing: the Python way names it), NULL with an error. */
static PyObject *listing_bytes(PyObject *table, PyObject *key, PyObject *block, PyObject *put) {
    PyObject *hit = table_hit(table, key);
    if (hit != NULL || PyErr_Occurred()) return hit;
    long long pos, offset, length;
    if (listing_span(key, &pos, &offset, &length) < 0) Py_RETURN_NONE;
    PyObject *data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)length);
    if (data == NULL) return NULL;
    unsigned char *buf = (unsigned char *)PyBytes_AS_STRING(data);
    PyObject *stored = NULL;
    if (copy_listing(table, block, pos, offset, length, buf) == 0 &&
        walk(buf, (Py_ssize_t)length, 0, length, accept, NULL) == WALK_DONE) {
        PyObject *cost = PyLong_FromLongLong(length + LISTING_OVERHEAD);
        PyObject *pargs[3] = {key, data, cost};
        stored = cost == NULL ? NULL : PyObject_Vectorcall(put, pargs, 3, NULL);
        Py_XDECREF(cost);
    }
    Py_DECREF(data);
    if (stored == NULL) {
        if (PyErr_Occurred()) clear_image_error();
        if (!PyErr_Occurred()) Py_RETURN_NONE;
    }
    return stored;
}

static PyObject *find_listing(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 5 || !PyTuple_Check(args[1]) || PyTuple_GET_SIZE(args[1]) != 4 || !PyBytes_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError, "find_listing(table, key: 4-tuple, block, put, name: bytes)");
        return NULL;
    }
    PyObject *data = listing_bytes(args[0], args[1], args[2], args[3]);
    if (data == NULL) return NULL;
    if (!PyBytes_Check(data)) { /* None: not one to search here */
        Py_DECREF(data);
        Py_RETURN_NOTIMPLEMENTED;
    }
    Wanted w = {PyBytes_AS_STRING(args[4]), PyBytes_GET_SIZE(args[4]), 0};
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    int rc = walk((const unsigned char *)PyBytes_AS_STRING(data), size, 0, size, match, &w);
    Py_DECREF(data);
    if (rc == WALK_STOPPED) return PyLong_FromUnsignedLongLong(w.ref);
    if (rc == WALK_DONE) Py_RETURN_NONE;
    PyErr_SetString(PyExc_TypeError, "a cached listing is not one find_listing stored");
    return NULL;
}

/* Whether bytes a sort before bytes b, as Python compares bytes. */
static int bytes_less(PyObject *a, PyObject *b) {
    Py_ssize_t la = PyBytes_GET_SIZE(a), lb = PyBytes_GET_SIZE(b);
    int c = memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), (size_t)(la < lb ? la : lb));
    return c < 0 || (c == 0 && la < lb);
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
    Py_ssize_t lo = 0, hi = PyTuple_GET_SIZE(first);
    while (lo < hi) { /* bisect_right */
        Py_ssize_t mid = lo + (hi - lo) / 2;
        PyObject *item = PyTuple_GET_ITEM(first, mid);
        if (!PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "first_names must hold bytes");
            return NULL;
        }
        if (bytes_less(name, item))
            hi = mid;
        else
            lo = mid + 1;
    }
    PyObject *number = PyLong_FromSsize_t(lo - 1);
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
    {"find_listing", (PyCFunction)(void (*)(void))find_listing, METH_FASTCALL,
     "find_listing(table, key, block, put, name) -> inode reference, None if no entry has the name, or "
     "NotImplemented if the listing is not one to search here"},
    {"set_segment_type", set_segment_type, METH_O,
     "set_segment_type(Segment): the class of the segments find parses and stores itself"},
    {"parse_segment", parse_segment, METH_VARARGS,
     "parse_segment(data, linear, length) -> (names, refs, starts, cookies), or None if malformed"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_directory", NULL, -1, methods};

PyMODINIT_FUNC PyInit__directory(void) {
    if (caches_init_module() < 0) return NULL;
    return PyModule_Create(&module);
}
