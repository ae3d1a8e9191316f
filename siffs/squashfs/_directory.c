/* Native parser of one directory segment: the hot loop of siffs.squashfs.directory.
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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

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

static PyMethodDef methods[] = {
    {"parse_segment", parse_segment, METH_VARARGS,
     "parse_segment(data, linear, length) -> (names, refs, starts, cookies), or None if malformed"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_directory", NULL, -1, methods};

PyMODINIT_FUNC PyInit__directory(void) { return PyModule_Create(&module); }
