/* Native hot path of siffs/delta/chunker.py: casync's buzhash chunker, boundary for boundary.
 *
 * Why native: the chunker touches every byte of every image published and of every seed, and
 * the numpy version (five doublings over uint32 arrays per block) runs at ~100 MB/s, slower than
 * casync itself. This is the byte loop of the casync specification (§4.2, §4.3), written from that
 * text, streaming: the state (bytes in the current chunk, the rolling hash, the last 48 bytes of
 * the stream) is carried from one feed() to the next, so a stream can be read in any pieces.
 *
 * The 256-word table is a parameter, not a constant: casync's table gives casync's boundaries; a
 * table derived from a secret gives a keyed chunker whose boundaries reveal nothing of the
 * content to whoever cannot compute the table (the rule and the window stay the same).
 *
 * Python's chunker.py stays the fallback (no compiler, SIFFS_NO_NATIVE=1) and the oracle the
 * tests compare this with.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* The version of this module's interface to its Python caller (siffs.native.load checks it):
 * bump it whenever a signature, a constructor argument or a capsule changes. */
#define ABI 1

#define WINDOW 48

typedef struct {
    PyObject_HEAD
    uint32_t table[256];     /* T[b] */
    uint32_t table_out[256]; /* rol32(T[b], 48) = rol32(T[b], 16): what a byte leaving the window removes */
    uint64_t min_test;       /* first length tested: max(min, 48) */
    uint64_t max;            /* a chunk reaching this length is cut whatever the hash says */
    uint32_t d;              /* discriminator: cut when h mod d == d - 1 */
    uint64_t magic;          /* ceil(2^64 / d): divisibility test without a division per byte */
    int top_matches;         /* whether h = 0xffffffff satisfies the rule (h + 1 overflows 32 bits) */
    uint64_t pos;            /* bytes of the current chunk seen so far */
    uint32_t h;              /* hash of the window ending at pos (meaningful once pos >= min_test) */
    unsigned char last[WINDOW]; /* the last 48 bytes of the stream, oldest first */
} Buzhash;

static inline uint32_t rol32(uint32_t x, unsigned n) {
    n &= 31;
    return n ? (x << n) | (x >> (32 - n)) : x;
}

/* h mod d == d - 1  <=>  d divides h + 1; for 1 <= h + 1 < 2^32 and M = ceil(2^64 / d), d divides
 * n exactly when n * M mod 2^64 < M (Lemire, Kaser, Kurz: "Faster remainder by direct computation"). */
static inline int cuts(const Buzhash *self, uint32_t h) {
    if (h == 0xffffffffu) {
        return self->top_matches;
    }
    return (uint64_t)((uint64_t)h + 1) * self->magic < self->magic;
}

static int Buzhash_init(Buzhash *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"table", "min", "max", "discriminator", NULL};
    Py_buffer table;
    unsigned long long min, max, d;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*KKK", kwlist, &table, &min, &max, &d)) {
        return -1;
    }
    if (table.len != 1024) {
        PyBuffer_Release(&table);
        PyErr_SetString(PyExc_ValueError, "table must be 1024 bytes: 256 little-endian 32-bit words");
        return -1;
    }
    const unsigned char *t = table.buf;
    for (int i = 0; i < 256; i++) {
        uint32_t w = (uint32_t)t[4 * i] | (uint32_t)t[4 * i + 1] << 8 | (uint32_t)t[4 * i + 2] << 16 |
                     (uint32_t)t[4 * i + 3] << 24;
        self->table[i] = w;
        self->table_out[i] = rol32(w, WINDOW);
    }
    PyBuffer_Release(&table);
    if (min < 1 || max < min || d < 1 || d > 0xffffffffull) {
        PyErr_SetString(PyExc_ValueError, "need 1 <= min <= max and 1 <= discriminator < 2^32");
        return -1;
    }
    self->min_test = min > WINDOW ? min : WINDOW;
    self->max = max;
    self->d = (uint32_t)d;
    self->magic = UINT64_MAX / self->d + 1;
    self->top_matches = 0xffffffffu % self->d == self->d - 1;
    self->pos = 0;
    self->h = 0;
    memset(self->last, 0, WINDOW);
    return 0;
}

/* feed(buffer) -> list of the cut positions inside buffer (offsets just after each chunk's last
 * byte). The bytes after the last cut belong to the chunk that the next feed() continues. */
static PyObject *Buzhash_feed(Buzhash *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *result = PyList_New(0);
    if (result == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const unsigned char *buf = view.buf;
    const uint64_t n = (uint64_t)view.len;
    const uint64_t skip_to = self->min_test - WINDOW; /* chunk bytes never part of a tested window */
    uint64_t pos = self->pos;
    uint32_t h = self->h;
    uint64_t i = 0;
    int failed = 0;

    Py_BEGIN_ALLOW_THREADS
    while (i < n && !failed) {
        int cut = 0;
        if (pos < skip_to || self->max < self->min_test) {
            /* Skipped bytes; with max < 48 every chunk is max bytes long, never hashed. */
            uint64_t stop = self->max < self->min_test ? self->max : skip_to;
            uint64_t k = stop - pos < n - i ? stop - pos : n - i;
            pos += k;
            i += k;
            cut = pos == self->max;
        } else if (pos < self->min_test) {
            /* Filling the first window of this chunk: h = rol(h, 1) ^ T[b], 48 times from 0. */
            if (pos == skip_to) {
                h = 0;
            }
            uint64_t k = self->min_test - pos < n - i ? self->min_test - pos : n - i;
            for (uint64_t j = 0; j < k; j++) {
                h = rol32(h, 1) ^ self->table[buf[i + j]];
            }
            pos += k;
            i += k;
            cut = pos == self->min_test && (pos == self->max || cuts(self, h));
        } else {
            /* Rolling: one byte enters, the byte 48 before it leaves. Stop at max or buffer end. */
            uint64_t room = self->max - pos; /* > 0: a chunk at max was cut already */
            uint64_t stop = i + (room < n - i ? room : n - i);
            uint64_t begin = i;
            /* The first 47 bytes of a buffer push out bytes of the previous one. */
            while (i < stop && i < WINDOW) {
                h = rol32(h, 1) ^ self->table_out[self->last[i]] ^ self->table[buf[i]];
                i++;
                if (cuts(self, h)) {
                    cut = 1;
                    break;
                }
            }
            if (!cut) {
                const uint32_t *t = self->table, *t_out = self->table_out;
                const uint64_t magic = self->magic;
                while (i < stop) {
                    h = rol32(h, 1) ^ t_out[buf[i - WINDOW]] ^ t[buf[i]];
                    i++;
                    if ((uint64_t)((uint64_t)h + 1) * magic < magic || h == 0xffffffffu) {
                        if (cuts(self, h)) { /* the rare false alarm: h == 0xffffffff */
                            cut = 1;
                            break;
                        }
                    }
                }
            }
            pos += i - begin;
            cut = cut || pos == self->max;
        }
        if (cut) {
            /* Appending needs the GIL; cuts are rare (one per ~d bytes). */
            Py_BLOCK_THREADS
            PyObject *at = PyLong_FromUnsignedLongLong(i);
            if (at == NULL || PyList_Append(result, at) < 0) {
                failed = 1;
            }
            Py_XDECREF(at);
            Py_UNBLOCK_THREADS
            pos = 0;
            h = 0;
        }
    }
    Py_END_ALLOW_THREADS

    if (failed) {
        Py_DECREF(result);
        PyBuffer_Release(&view);
        return NULL;
    }
    /* Keep the last 48 bytes of the stream: the bytes leaving the window early in the next feed. */
    if (n >= WINDOW) {
        memcpy(self->last, buf + n - WINDOW, WINDOW);
    } else if (n > 0) {
        memmove(self->last, self->last + n, WINDOW - n);
        memcpy(self->last + WINDOW - n, buf, n);
    }
    self->pos = pos;
    self->h = h;
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef Buzhash_methods[] = {
    {"feed", (PyCFunction)Buzhash_feed, METH_O,
     "feed(buffer) -> list of cut offsets in buffer; state carries over to the next call"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BuzhashType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "siffs.delta._chunk.Buzhash",
    .tp_basicsize = sizeof(Buzhash),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Buzhash(table, min, max, discriminator): casync's streaming chunker with a given table",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Buzhash_init,
    .tp_methods = Buzhash_methods,
};

static struct PyModuleDef chunk_module = {
    PyModuleDef_HEAD_INIT, "_chunk", "casync's buzhash chunker (native hot path of chunker.py)", -1, NULL,
};

PyMODINIT_FUNC PyInit__chunk(void) {
    if (PyType_Ready(&BuzhashType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&chunk_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "ABI", ABI) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&BuzhashType);
    if (PyModule_AddObject(m, "Buzhash", (PyObject *)&BuzhashType) < 0) {
        Py_DECREF(&BuzhashType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
