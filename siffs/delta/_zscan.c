/* Native hot path of siffs/delta/zsync.py: finding a zsync target's blocks in a seed file.
 *
 * Why native: every byte offset of every seed is a possible block start. The numpy version
 * computes the rolling sums of all offsets with prefix sums and filters them in bulk, costing
 * about eight times zsync's CPU. Here the rolling checksum of zsync (A = sum of the block's bytes,
 * B = sum of (block size - k) * byte k, both mod 2^16, truncated as the control file stores
 * them) advances one byte at a time, a small bit filter (a few hundred KiB, in cache) rejects
 * almost every offset, a hash table gives the blocks whose stored checksum equals the offset's,
 * and only those get an MD4. The MD4 is written from RFC 1320.
 *
 * The result is the same as the Python _Matcher's, decision for decision: offsets in increasing
 * order, candidate blocks in increasing order, a block recorded once (its first match), with
 * seq_matches 2 a block counted only when the next block matches right after it, then the run
 * extended forward one block at a time. The tests compare both, and both against zsync.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* -- MD4 (RFC 1320) ---------------------------------------------------------------------------- */

static inline uint32_t rol(uint32_t x, unsigned s) { return (x << s) | (x >> (32 - s)); }

static void md4_block(uint32_t st[4], const unsigned char *p) {
    uint32_t x[16];
    for (int i = 0; i < 16; i++) {
        x[i] = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16 |
               (uint32_t)p[4 * i + 3] << 24;
    }
    uint32_t a = st[0], b = st[1], c = st[2], d = st[3];
#define F(x, y, z) (((x) & (y)) | (~(x) & (z)))
#define G(x, y, z) (((x) & (y)) | ((x) & (z)) | ((y) & (z)))
#define H(x, y, z) ((x) ^ (y) ^ (z))
#define R1(a, b, c, d, k, s) a = rol(a + F(b, c, d) + x[k], s)
#define R2(a, b, c, d, k, s) a = rol(a + G(b, c, d) + x[k] + 0x5A827999u, s)
#define R3(a, b, c, d, k, s) a = rol(a + H(b, c, d) + x[k] + 0x6ED9EBA1u, s)
    for (int k = 0; k < 16; k += 4) {
        R1(a, b, c, d, k, 3);
        R1(d, a, b, c, k + 1, 7);
        R1(c, d, a, b, k + 2, 11);
        R1(b, c, d, a, k + 3, 19);
    }
    for (int k = 0; k < 4; k++) {
        R2(a, b, c, d, k, 3);
        R2(d, a, b, c, k + 4, 5);
        R2(c, d, a, b, k + 8, 9);
        R2(b, c, d, a, k + 12, 13);
    }
    static const int order[4] = {0, 2, 1, 3};
    for (int j = 0; j < 4; j++) {
        int k = order[j];
        R3(a, b, c, d, k, 3);
        R3(d, a, b, c, k + 8, 9);
        R3(c, d, a, b, k + 4, 11);
        R3(b, c, d, a, k + 12, 15);
    }
#undef F
#undef G
#undef H
#undef R1
#undef R2
#undef R3
    st[0] += a;
    st[1] += b;
    st[2] += c;
    st[3] += d;
}

static void md4(const unsigned char *data, size_t len, unsigned char out[16]) {
    uint32_t st[4] = {0x67452301u, 0xefcdab89u, 0x98badcfeu, 0x10325476u};
    size_t whole = len - len % 64;
    for (size_t i = 0; i < whole; i += 64) {
        md4_block(st, data + i);
    }
    unsigned char tail[128] = {0};
    size_t rest = len - whole;
    memcpy(tail, data + whole, rest);
    tail[rest] = 0x80;
    size_t tail_len = rest < 56 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) {
        tail[tail_len - 8 + i] = (unsigned char)(bits >> (8 * i));
    }
    for (size_t i = 0; i < tail_len; i += 64) {
        md4_block(st, tail + i);
    }
    for (int i = 0; i < 4; i++) {
        for (int j = 0; j < 4; j++) {
            out[4 * i + j] = (unsigned char)(st[i] >> (8 * j));
        }
    }
}

/* -- the matcher ------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Py_ssize_t blocks;
    uint32_t block_size;
    int pairs;            /* seq_matches 2: an entry is (key of block i, key of block i + 1) */
    int checksum_bytes;
    uint32_t a_mask;      /* the bits of A the control file keeps */
    unsigned char *sums;  /* checksum_bytes per block */
    Py_ssize_t entries;
    uint64_t *entry_key;
    int32_t *head;        /* hash buckets: first entry, chains in increasing entry order */
    int32_t *next;
    uint64_t bucket_mask;
    uint64_t *filter;     /* one bit per filter slot: "some entry may have this key" */
    uint64_t filter_mask;
    int64_t *offset;      /* where each block was found, -1 if not yet */
    int32_t *seed;        /* in which seed */
    Py_ssize_t found;
} Matcher;

static inline uint64_t mix(uint64_t k) {
    k ^= k >> 29;
    k *= 0xbf58476d1ce4e5b9ull;
    k ^= k >> 32;
    return k;
}

static void Matcher_dealloc(Matcher *self) {
    PyMem_Free(self->sums);
    PyMem_Free(self->entry_key);
    PyMem_Free(self->head);
    PyMem_Free(self->next);
    PyMem_Free(self->filter);
    PyMem_Free(self->offset);
    PyMem_Free(self->seed);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Matcher_init(Matcher *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"keys", "checksums", "block_size", "checksum_bytes", "a_mask", "pairs", NULL};
    Py_buffer keys, sums;
    unsigned int block_size, a_mask;
    int checksum_bytes, pairs;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*y*IiIp", kwlist, &keys, &sums, &block_size,
                                     &checksum_bytes, &a_mask, &pairs)) {
        return -1;
    }
    int rc = -1;
    Py_ssize_t n = keys.len / 4;
    if (keys.len % 4 || checksum_bytes < 1 || checksum_bytes > 16 || sums.len != n * checksum_bytes ||
        block_size < 64 || (block_size & (block_size - 1)) || n > INT32_MAX - 1 || self->sums != NULL) {
        PyErr_SetString(PyExc_ValueError, "inconsistent matcher parameters");
        goto out;
    }
    self->blocks = n;
    self->block_size = block_size;
    self->pairs = pairs && n > 1;
    self->checksum_bytes = checksum_bytes;
    self->a_mask = a_mask;
    self->entries = self->pairs ? n - 1 : n;
    uint64_t buckets = 1024, bits = 1 << 16;
    while (buckets < 2 * (uint64_t)self->entries) {
        buckets <<= 1;
    }
    while (bits < 32 * (uint64_t)self->entries) {
        bits <<= 1;
    }
    self->bucket_mask = buckets - 1;
    self->filter_mask = bits - 1;
    self->sums = PyMem_Malloc(sums.len ? sums.len : 1);
    self->entry_key = PyMem_Malloc(sizeof(uint64_t) * (self->entries + 1));
    self->head = PyMem_Malloc(sizeof(int32_t) * buckets);
    self->next = PyMem_Malloc(sizeof(int32_t) * (self->entries + 1));
    self->filter = PyMem_Calloc(bits / 64, sizeof(uint64_t));
    self->offset = PyMem_Malloc(sizeof(int64_t) * (n + 1));
    self->seed = PyMem_Malloc(sizeof(int32_t) * (n + 1));
    if (!self->sums || !self->entry_key || !self->head || !self->next || !self->filter || !self->offset ||
        !self->seed) {
        PyErr_NoMemory();
        goto out;
    }
    memcpy(self->sums, sums.buf, sums.len);
    const unsigned char *kb = keys.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        self->offset[i] = -1;
        self->seed[i] = -1;
    }
    for (uint64_t i = 0; i < buckets; i++) {
        self->head[i] = -1;
    }
    for (Py_ssize_t i = 0; i < self->entries; i++) {
        uint64_t k = (uint64_t)kb[4 * i] | (uint64_t)kb[4 * i + 1] << 8 | (uint64_t)kb[4 * i + 2] << 16 |
                     (uint64_t)kb[4 * i + 3] << 24;
        if (self->pairs) {
            const unsigned char *k2 = kb + 4 * (i + 1);
            k = k << 32 | (uint64_t)k2[0] | (uint64_t)k2[1] << 8 | (uint64_t)k2[2] << 16 | (uint64_t)k2[3] << 24;
        }
        self->entry_key[i] = k;
    }
    /* Descending insertion at the head leaves every chain in increasing entry order. */
    for (Py_ssize_t i = self->entries - 1; i >= 0; i--) {
        uint64_t h = mix(self->entry_key[i]);
        self->next[i] = self->head[h & self->bucket_mask];
        self->head[h & self->bucket_mask] = (int32_t)i;
        uint64_t bit = (h >> 32) & self->filter_mask;
        self->filter[bit >> 6] |= 1ull << (bit & 63);
    }
    self->found = 0;
    rc = 0;
out:
    PyBuffer_Release(&keys);
    PyBuffer_Release(&sums);
    return rc;
}

typedef struct {
    int fd;
    int number;
    const unsigned char *buf; /* the seed's bytes [buf_pos, buf_pos + buf_len) */
    int64_t buf_pos;
    int64_t buf_len;
    unsigned char *scratch;   /* one block, for reads outside buf */
    int error;                /* errno of a failed read */
} Seed;

/* Whether the seed's block_size bytes at ``at`` (zero-padded past its end) have block ``b``'s MD4. */
static int strong(Matcher *self, Seed *s, int64_t at, Py_ssize_t b) {
    const unsigned char *p;
    uint32_t bs = self->block_size;
    if (at >= s->buf_pos && at + bs <= s->buf_pos + s->buf_len) {
        p = s->buf + (at - s->buf_pos);
    } else {
        size_t got = 0;
        while (got < bs) {
            ssize_t r = pread(s->fd, s->scratch + got, bs - got, at + (int64_t)got);
            if (r < 0 && errno == EINTR) {
                continue;
            }
            if (r < 0) {
                s->error = errno;
                return 0;
            }
            if (r == 0) {
                break;
            }
            got += (size_t)r;
        }
        memset(s->scratch + got, 0, bs - got);
        p = s->scratch;
    }
    unsigned char digest[16];
    md4(p, bs, digest);
    return memcmp(digest, self->sums + b * self->checksum_bytes, self->checksum_bytes) == 0;
}

static void record(Matcher *self, Py_ssize_t b, int number, int64_t at) {
    if (self->offset[b] < 0) {
        self->offset[b] = at;
        self->seed[b] = number;
        self->found++;
    }
}

/* Once block b is found, its successors are tried right after it, alone, as zsync does. */
static void extend_from(Matcher *self, Seed *s, Py_ssize_t b) {
    int64_t at = self->offset[b];
    for (b++; b < self->blocks && self->offset[b] < 0 && !s->error; b++) {
        at += self->block_size;
        if (!strong(self, s, at, b)) {
            break;
        }
        record(self, b, s->number, at);
    }
}

static void candidate(Matcher *self, Seed *s, int64_t at, uint64_t key) {
    uint64_t h = mix(key);
    uint64_t bit = (h >> 32) & self->filter_mask;
    if (!(self->filter[bit >> 6] >> (bit & 63) & 1)) {
        return;
    }
    for (int32_t e = self->head[h & self->bucket_mask]; e >= 0 && !s->error; e = self->next[e]) {
        if (self->entry_key[e] != key || self->offset[e] >= 0 || !strong(self, s, at, e)) {
            continue;
        }
        if (!self->pairs) {
            record(self, e, s->number, at);
        } else if (strong(self, s, at + self->block_size, e + 1)) {
            record(self, e, s->number, at);
            record(self, e + 1, s->number, at + self->block_size);
            extend_from(self, s, e + 1);
        }
    }
}

#define READ_SPAN (8 << 20)

/* scan(number, fd, start, stop): try every offset in [start, stop) of seed ``number`` (open as fd)
 * as the start of a block (of a pair of blocks with seq_matches 2) whose bytes all lie in the file
 * of ``size`` bytes; record the blocks found. */
static PyObject *Matcher_scan(Matcher *self, PyObject *args) {
    int number, fd;
    long long start, stop, size;
    if (!PyArg_ParseTuple(args, "iiLLL", &number, &fd, &start, &stop, &size)) {
        return NULL;
    }
    const int64_t bs = self->block_size;
    const int64_t span = bs * (self->pairs ? 2 : 1);
    if (stop > size - span + 1) {
        stop = size - span + 1;
    }
    if (start < 0 || start >= stop || self->found == self->blocks) {
        Py_RETURN_NONE;
    }
    unsigned char *buf = PyMem_RawMalloc(READ_SPAN + span);
    unsigned char *scratch = PyMem_RawMalloc(bs);
    if (!buf || !scratch) {
        PyMem_RawFree(buf);
        PyMem_RawFree(scratch);
        return PyErr_NoMemory();
    }
    Seed s = {fd, number, buf, 0, 0, scratch, 0};
    const uint16_t bs16 = (uint16_t)bs;
    const uint32_t a_mask = self->a_mask;

    Py_BEGIN_ALLOW_THREADS
    int64_t at = start;
    while (at < stop && !s.error) {
        /* Offsets [at, piece_end) need the bytes [at, piece_end + span - 1). */
        int64_t piece_end = at + READ_SPAN < stop ? at + READ_SPAN : stop;
        int64_t want = piece_end - at + span - 1;
        int64_t got = 0;
        while (got < want) {
            ssize_t r = pread(fd, buf + got, (size_t)(want - got), at + got);
            if (r < 0 && errno == EINTR) {
                continue;
            }
            if (r <= 0) {
                s.error = r < 0 ? errno : 0;
                break;
            }
            got += r;
        }
        if (s.error || got < span) {
            break;
        }
        if (got < want) { /* the seed shrank while it was read: scan what is there */
            piece_end = at + got - span + 1;
            stop = piece_end;
        }
        s.buf_pos = at;
        s.buf_len = got;
        uint16_t a1 = 0, b1 = 0, a2 = 0, b2 = 0;
        for (int64_t k = 0; k < bs; k++) {
            a1 += buf[k];
            b1 += (uint16_t)((bs - k) * buf[k]);
            if (self->pairs) {
                a2 += buf[bs + k];
                b2 += (uint16_t)((bs - k) * buf[bs + k]);
            }
        }
        int64_t n = piece_end - at;
        for (int64_t o = 0;; o++) {
            uint64_t key = (uint64_t)(a1 & a_mask) << 16 | b1;
            if (self->pairs) {
                key = key << 32 | (uint64_t)(a2 & a_mask) << 16 | b2;
            }
            candidate(self, &s, at + o, key);
            if (o + 1 >= n || self->found == self->blocks || s.error) {
                break;
            }
            unsigned char out = buf[o], in = buf[o + bs];
            a1 += (uint16_t)(in - out);
            b1 += (uint16_t)(a1 - (uint16_t)(bs16 * out));
            if (self->pairs) {
                unsigned char out2 = buf[o + bs], in2 = buf[o + 2 * bs];
                a2 += (uint16_t)(in2 - out2);
                b2 += (uint16_t)(a2 - (uint16_t)(bs16 * out2));
            }
        }
        if (self->found == self->blocks) {
            break;
        }
        at = piece_end;
    }
    Py_END_ALLOW_THREADS

    PyMem_RawFree(buf);
    PyMem_RawFree(scratch);
    if (s.error) {
        errno = s.error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

/* found() -> {block: (seed number, offset)} */
static PyObject *Matcher_found(Matcher *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *d = PyDict_New();
    for (Py_ssize_t b = 0; d != NULL && b < self->blocks; b++) {
        if (self->offset[b] < 0) {
            continue;
        }
        PyObject *k = PyLong_FromSsize_t(b);
        PyObject *v = Py_BuildValue("(iL)", self->seed[b], (long long)self->offset[b]);
        if (k == NULL || v == NULL || PyDict_SetItem(d, k, v) < 0) {
            Py_CLEAR(d);
        }
        Py_XDECREF(k);
        Py_XDECREF(v);
    }
    return d;
}

static PyObject *Matcher_count(Matcher *self, void *Py_UNUSED(closure)) { return PyLong_FromSsize_t(self->found); }

static PyObject *zscan_md4(PyObject *Py_UNUSED(module), PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    unsigned char digest[16];
    Py_BEGIN_ALLOW_THREADS
    md4(view.buf, (size_t)view.len, digest);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyBytes_FromStringAndSize((const char *)digest, 16);
}

static PyMethodDef Matcher_methods[] = {
    {"scan", (PyCFunction)Matcher_scan, METH_VARARGS,
     "scan(number, fd, start, stop, size): find target blocks starting at offsets [start, stop) of a seed"},
    {"found", (PyCFunction)Matcher_found, METH_NOARGS, "found() -> {block: (seed number, offset)}"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Matcher_getset[] = {
    {"count", (getter)Matcher_count, NULL, "blocks found so far", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject MatcherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "siffs.delta._zscan.Matcher",
    .tp_basicsize = sizeof(Matcher),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Matcher(keys, checksums, block_size, checksum_bytes, a_mask, pairs): zsync seed scan",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Matcher_init,
    .tp_dealloc = (destructor)Matcher_dealloc,
    .tp_methods = Matcher_methods,
    .tp_getset = Matcher_getset,
};

static PyMethodDef module_methods[] = {
    {"md4", zscan_md4, METH_O, "md4(data) -> 16-byte MD4 digest (RFC 1320)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef zscan_module = {
    PyModuleDef_HEAD_INIT, "_zscan", "zsync seed scan (native hot path of zsync.py)", -1, module_methods,
};

PyMODINIT_FUNC PyInit__zscan(void) {
    if (PyType_Ready(&MatcherType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&zscan_module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&MatcherType);
    if (PyModule_AddObject(m, "Matcher", (PyObject *)&MatcherType) < 0) {
        Py_DECREF(&MatcherType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
