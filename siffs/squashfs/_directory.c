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
 * find(table, key, first_names, name, load) -> the entry's inode reference, or None if none has it
 *   What Listing.find does: bisect the index's first names (first_names, sorted) for the segment
 *   that may hold `name`, take that segment from the metadata cache's table under key + (its
 *   number,) (a miss calls load(number), which parses and caches it), and search its names, the
 *   first match winning. Saves the three Python calls and the tuple search of every lookup.
 */
#include "_caches.h" /* first: it includes Python.h */

#include <stdint.h>
#include <string.h>

#define HEADER_SIZE 12
#define ENTRY_SIZE 8
#define MAX_RUN 256
#define MAX_NAME 256
#define SIZE_BIAS 3

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

static PyObject *parse_segment(PyObject *self, PyObject *args) {
    Py_buffer view;
    long long linear, length;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*LL", &view, &linear, &length)) return NULL;
    const unsigned char *data = view.buf;
    Py_ssize_t size = view.len, pos = 0;
    PyObject *lists[4] = {PyList_New(0), PyList_New(0), PyList_New(0), PyList_New(0)};
    PyObject *result = NULL;
    int malformed = 0;
    if (!lists[0] || !lists[1] || !lists[2] || !lists[3]) goto done;
    while (pos < size) {
        if (size - pos < HEADER_SIZE) { malformed = 1; goto done; }
        uint64_t count = (uint64_t)le32(data + pos) + 1;
        uint64_t inode_block = le32(data + pos + 4);
        pos += HEADER_SIZE;
        linear += HEADER_SIZE;
        if (count > MAX_RUN) { malformed = 1; goto done; }
        for (uint64_t k = 0; k < count; k++) {
            if (linear >= length || size - pos < ENTRY_SIZE) { malformed = 1; goto done; }
            uint16_t entry_offset = le16(data + pos);
            Py_ssize_t name_size = (Py_ssize_t)le16(data + pos + 6) + 1;
            if (name_size > MAX_NAME || size - pos - ENTRY_SIZE < name_size) { malformed = 1; goto done; }
            if (append_new(lists[2], PyLong_FromLongLong(linear))) goto done;
            if (append_new(lists[0], PyBytes_FromStringAndSize((const char *)data + pos + ENTRY_SIZE, name_size)))
                goto done;
            if (append_new(lists[1], PyLong_FromUnsignedLongLong(inode_block << 16 | entry_offset))) goto done;
            pos += ENTRY_SIZE + name_size;
            linear += ENTRY_SIZE + name_size;
            if (append_new(lists[3], PyLong_FromLongLong(linear + SIZE_BIAS))) goto done;
        }
    }
    result = PyTuple_New(4);
    if (result == NULL) goto done;
    for (int i = 0; i < 4; i++) {
        PyObject *t = PyList_AsTuple(lists[i]);
        if (t == NULL) { Py_CLEAR(result); goto done; }
        PyTuple_SET_ITEM(result, i, t);
    }
done:
    for (int i = 0; i < 4; i++) Py_XDECREF(lists[i]);
    PyBuffer_Release(&view);
    if (malformed && !PyErr_Occurred()) Py_RETURN_NONE;
    return result;
}

/* Whether bytes a sort before bytes b, as Python compares bytes. */
static int bytes_less(PyObject *a, PyObject *b) {
    Py_ssize_t la = PyBytes_GET_SIZE(a), lb = PyBytes_GET_SIZE(b);
    int c = memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), (size_t)(la < lb ? la : lb));
    return c < 0 || (c == 0 && la < lb);
}

static PyObject *find(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 5 || !PyTuple_Check(args[1]) || PyTuple_GET_SIZE(args[1]) != 4 || !PyTuple_Check(args[2]) ||
        !PyBytes_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "find(table, key: 4-tuple, first_names: tuple, name: bytes, load)");
        return NULL;
    }
    PyObject *key_base = args[1], *first = args[2], *name = args[3];
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
    CacheView view = {NULL, NULL, NULL};
    PyObject *segment = NULL;
    if (cache_view_set(&view, args[0], args[4]) == 0) {
        segment = cache_hit(&view, key);
        if (segment == NULL && !PyErr_Occurred()) segment = PyObject_CallOneArg(view.load, number);
    }
    cache_view_clear(&view);
    Py_DECREF(key);
    Py_DECREF(number);
    if (segment == NULL) return NULL;
    PyObject *names = PyObject_GetAttrString(segment, "names");
    PyObject *refs = names == NULL ? NULL : PyObject_GetAttrString(segment, "refs");
    Py_DECREF(segment);
    PyObject *found = NULL;
    if (refs == NULL) goto done;
    if (!PyTuple_Check(names) || !PyTuple_Check(refs) || PyTuple_GET_SIZE(names) != PyTuple_GET_SIZE(refs)) {
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
     "find(table, key, first_names, name, load) -> inode reference, or None if no entry has the name"},
    {"parse_segment", parse_segment, METH_VARARGS,
     "parse_segment(data, linear, length) -> (names, refs, starts, cookies), or None if malformed"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_directory", NULL, -1, methods};

PyMODINIT_FUNC PyInit__directory(void) {
    if (caches_init_module() < 0) return NULL;
    return PyModule_Create(&module);
}
