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
 * extended forward one block at a time, and the scan resumed after the run (zsync skips a match
 * the same way: in an unchanged seed each byte is then read and MD4-hashed about once). The tests compare both, and both against zsync.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The version of this module's interface to its Python caller (siffs.native.load checks it):
 * bump it whenever a signature, a constructor argument or a capsule changes. */
#define ABI 1

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

#define READ_SPAN (8 << 20) /* seed bytes scanned per read */
#define AHEAD (1 << 20)      /* seed bytes read at once while a run is extended past READ_SPAN */

/* -- the matcher ------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Py_ssize_t blocks;
    uint32_t block_size;
    int pairs;            /* seq_matches 2: an entry is (key of block i, key of block i + 1) */
    int checksum_bytes;
    uint32_t a_mask;      /* the bits of A the control file keeps */
    unsigned char *sums;  /* checksum_bytes per block */
    Py_ssize_t entries;   /* blocks, or pairs of consecutive blocks */
    /* Entries grouped by key: the entries of distinct key k are order[start[k] .. start[k + 1]),
     * in increasing order; cursor[k] skips the first ones once found (found never reverts). Many
     * equal blocks (zeros, duplicated files) thus cost one look-up, not one per block. */
    int32_t *order;
    Py_ssize_t distinct;
    uint64_t *key;
    int32_t *start;
    int32_t *cursor;
    int32_t *table;       /* open addressing: key -> distinct index, -1 for empty */
    uint64_t table_mask;
    uint64_t *filter;     /* one bit per filter slot: "some entry may have this key" */
    uint64_t filter_mask;
    int64_t *offset;      /* where each block was found, -1 if not yet */
    int32_t *seed;        /* in which seed */
    Py_ssize_t found;
    int resume_seed;      /* offsets of this seed below resume_at lie in a run already found */
    int64_t resume_at;
} Matcher;

static inline uint64_t mix(uint64_t k) {
    k ^= k >> 29;
    k *= 0xbf58476d1ce4e5b9ull;
    k ^= k >> 32;
    return k;
}

static void Matcher_dealloc(Matcher *self) {
    PyMem_Free(self->sums);
    PyMem_Free(self->order);
    PyMem_Free(self->key);
    PyMem_Free(self->start);
    PyMem_Free(self->cursor);
    PyMem_Free(self->table);
    PyMem_Free(self->filter);
    PyMem_Free(self->offset);
    PyMem_Free(self->seed);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Matcher_init(Matcher *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"checksums", "block_size", "checksum_bytes", "a_mask", "pairs",
                             "order",     "keys",       "starts",         NULL};
    Py_buffer sums, order, keys, starts;
    unsigned int block_size, a_mask;
    int checksum_bytes, pairs;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*IiIpy*y*y*", kwlist, &sums, &block_size, &checksum_bytes,
                                     &a_mask, &pairs, &order, &keys, &starts)) {
        return -1;
    }
    int rc = -1;
    Py_ssize_t n = checksum_bytes > 0 ? sums.len / checksum_bytes : 0;
    Py_ssize_t entries = order.len / 4, distinct = keys.len / 8;
    if (checksum_bytes < 1 || checksum_bytes > 16 || sums.len % checksum_bytes || block_size < 64 ||
        (block_size & (block_size - 1)) || n > INT32_MAX - 1 || self->sums != NULL ||
        entries != (pairs && n > 1 ? n - 1 : n) || starts.len != 4 * (distinct + 1)) {
        PyErr_SetString(PyExc_ValueError, "inconsistent matcher parameters");
        goto out;
    }
    self->blocks = n;
    self->block_size = block_size;
    self->pairs = pairs && n > 1;
    self->checksum_bytes = checksum_bytes;
    self->a_mask = a_mask;
    self->entries = entries;
    self->distinct = distinct;
    uint64_t slots = 1024, bits = 1 << 16;
    while (slots < 2 * (uint64_t)distinct) {
        slots <<= 1;
    }
    while (bits < 32 * (uint64_t)distinct) {
        bits <<= 1;
    }
    self->table_mask = slots - 1;
    self->filter_mask = bits - 1;
    self->sums = PyMem_Malloc(sums.len ? sums.len : 1);
    self->order = PyMem_Malloc(4 * (entries + 1));
    self->key = PyMem_Malloc(8 * (distinct + 1));
    self->start = PyMem_Malloc(4 * (distinct + 1));
    self->cursor = PyMem_Malloc(4 * (distinct + 1));
    self->table = PyMem_Malloc(sizeof(int32_t) * slots);
    self->filter = PyMem_Calloc(bits / 64, sizeof(uint64_t));
    self->offset = PyMem_Malloc(sizeof(int64_t) * (n + 1));
    self->seed = PyMem_Malloc(sizeof(int32_t) * (n + 1));
    if (!self->sums || !self->order || !self->key || !self->start || !self->cursor || !self->table ||
        !self->filter || !self->offset || !self->seed) {
        PyErr_NoMemory();
        goto out;
    }
    memcpy(self->sums, sums.buf, sums.len);
    memcpy(self->order, order.buf, order.len); /* native byte order: numpy built them here */
    memcpy(self->key, keys.buf, keys.len);
    memcpy(self->start, starts.buf, starts.len);
    for (Py_ssize_t i = 0; i < n; i++) {
        self->offset[i] = -1;
        self->seed[i] = -1;
    }
    for (uint64_t i = 0; i < slots; i++) {
        self->table[i] = -1;
    }
    for (Py_ssize_t k = 0; k < distinct; k++) {
        if (self->start[k] < 0 || self->start[k] > self->start[k + 1] || self->start[k + 1] > entries) {
            PyErr_SetString(PyExc_ValueError, "inconsistent matcher parameters");
            goto out;
        }
        self->cursor[k] = self->start[k];
        uint64_t h = mix(self->key[k]);
        uint64_t slot = h & self->table_mask;
        while (self->table[slot] >= 0) {
            slot = (slot + 1) & self->table_mask;
        }
        self->table[slot] = (int32_t)k;
        uint64_t bit = (h >> 32) & self->filter_mask;
        self->filter[bit >> 6] |= 1ull << (bit & 63);
    }
    for (Py_ssize_t j = 0; j < entries; j++) {
        if (self->order[j] < 0 || self->order[j] >= entries) {
            PyErr_SetString(PyExc_ValueError, "inconsistent matcher parameters");
            goto out;
        }
    }
    self->found = 0;
    self->resume_seed = -1;
    self->resume_at = 0;
    rc = 0;
out:
    PyBuffer_Release(&sums);
    PyBuffer_Release(&order);
    PyBuffer_Release(&keys);
    PyBuffer_Release(&starts);
    return rc;
}

typedef struct {
    int fd;
    int number;
    const unsigned char *buf; /* the seed's bytes [buf_pos, buf_pos + buf_len) */
    int64_t buf_pos;
    int64_t buf_len;
    unsigned char *ahead;     /* read-ahead for runs extended past buf: [ahead_pos, + ahead_len) */
    int64_t ahead_pos;
    int64_t ahead_len;
    int error;                /* errno of a failed read */
} Seed;

/* The MD4 of the seed's block_size bytes at ``at`` (zero-padded past its end); 0 on a read error. */
static int digest_at(Matcher *self, Seed *s, int64_t at, unsigned char digest[16]) {
    const unsigned char *p;
    uint32_t bs = self->block_size;
    if (at >= s->buf_pos && at + bs <= s->buf_pos + s->buf_len) {
        p = s->buf + (at - s->buf_pos);
    } else {
        if (!(at >= s->ahead_pos && at + bs <= s->ahead_pos + s->ahead_len)) {
            int64_t got = 0;
            while (got < AHEAD) {
                ssize_t r = pread(s->fd, s->ahead + got, (size_t)(AHEAD - got), at + got);
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
                got += r;
            }
            if (got < bs) { /* past the seed's end: zeros, as the control file pads the last block */
                memset(s->ahead + got, 0, bs - got);
            }
            s->ahead_pos = at;
            s->ahead_len = got < bs ? 0 : got;
            p = s->ahead;
        } else {
            p = s->ahead + (at - s->ahead_pos);
        }
    }
    md4(p, bs, digest);
    return 1;
}

static inline int same(const Matcher *self, const unsigned char digest[16], Py_ssize_t b) {
    return memcmp(digest, self->sums + b * self->checksum_bytes, self->checksum_bytes) == 0;
}

static void record(Matcher *self, Py_ssize_t b, int number, int64_t at) {
    if (self->offset[b] < 0) {
        self->offset[b] = at;
        self->seed[b] = number;
        self->found++;
    }
}

/* Once block b is found, its successors are tried right after it, alone, as zsync does.
 * Returns the seed offset just past the last block recorded, or -1 if none was. */
static int64_t extend_from(Matcher *self, Seed *s, Py_ssize_t b) {
    int64_t at = self->offset[b], end = -1;
    for (b++; b < self->blocks && self->offset[b] < 0 && !s->error; b++) {
        unsigned char digest[16];
        at += self->block_size;
        if (!digest_at(self, s, at, digest) || !same(self, digest, b)) {
            break;
        }
        record(self, b, s->number, at);
        end = at + self->block_size;
    }
    return end;
}

/* Try the blocks whose checksum equals the seed's at ``at``. Returns the offset where scanning
 * resumes: past the blocks found here and the run extended from them (at + 1 if none). */
static int64_t candidate(Matcher *self, Seed *s, int64_t at, uint64_t key) {
    int64_t resume = at + 1;
    uint64_t h = mix(key);
    uint64_t bit = (h >> 32) & self->filter_mask;
    if (!(self->filter[bit >> 6] >> (bit & 63) & 1)) {
        return resume;
    }
    uint64_t slot = h & self->table_mask;
    int32_t k;
    while ((k = self->table[slot]) >= 0 && self->key[k] != key) {
        slot = (slot + 1) & self->table_mask;
    }
    if (k < 0) {
        return resume;
    }
    int32_t j = self->cursor[k], end = self->start[k + 1];
    while (j < end && self->offset[self->order[j]] >= 0) {
        j++;
    }
    self->cursor[k] = j;
    /* Both digests are the seed's, the same for every entry: computed once, when first needed. */
    unsigned char here[16], next[16];
    int have_here = 0, have_next = 0;
    for (; j < end && !s->error; j++) {
        int32_t e = self->order[j];
        if (self->offset[e] >= 0) {
            continue;
        }
        if (!have_here && !(have_here = digest_at(self, s, at, here))) {
            return resume;
        }
        if (!same(self, here, e)) {
            continue;
        }
        if (!self->pairs) {
            record(self, e, s->number, at);
            resume = at + self->block_size;
            continue;
        }
        if (!have_next && !(have_next = digest_at(self, s, at + self->block_size, next))) {
            return resume;
        }
        if (same(self, next, e + 1)) {
            int64_t pair_end = at + 2 * (int64_t)self->block_size;
            record(self, e, s->number, at);
            record(self, e + 1, s->number, at + self->block_size);
            /* The run continues this pair unless block e + 1 was found elsewhere before. */
            int here_too = self->offset[e + 1] == at + self->block_size && self->seed[e + 1] == s->number;
            int64_t run_end = extend_from(self, s, e + 1);
            int64_t end = here_too && run_end > pair_end ? run_end : pair_end;
            resume = end > resume ? end : resume;
        }
    }
    return resume;
}


/* The rolling checksum (A, B) of the block_size bytes at p. */
static void rsum(const unsigned char *p, int64_t bs, uint16_t *a, uint16_t *b) {
    uint16_t sa = 0, sb = 0;
    for (int64_t k = 0; k < bs; k++) {
        sa += p[k];
        sb += (uint16_t)((bs - k) * p[k]);
    }
    *a = sa;
    *b = sb;
}

/* scan(number, fd, start, stop, size): try the offsets in [start, stop) of seed ``number`` (open
 * as fd, ``size`` bytes) as the start of a block (of a pair of blocks with seq_matches 2), in
 * order, and record the blocks found. Offsets inside a run of blocks just found are skipped, as
 * zsync skips them: the scan resumes after the run. */
static PyObject *Matcher_scan(Matcher *self, PyObject *args) {
    int number, fd;
    long long start, stop, size;
    if (!PyArg_ParseTuple(args, "iiLLL", &number, &fd, &start, &stop, &size)) {
        return NULL;
    }
    const int64_t bs = self->block_size;
    const int64_t span = bs * (self->pairs ? 2 : 1);
    if (self->resume_seed != number) {
        self->resume_seed = number;
        self->resume_at = 0;
    }
    if (start < self->resume_at) {
        start = self->resume_at;
    }
    if (stop > size - span + 1) {
        stop = size - span + 1;
    }
    if (start < 0 || start >= stop || self->found == self->blocks) {
        Py_RETURN_NONE;
    }
    unsigned char *buf = PyMem_RawMalloc(READ_SPAN + span);
    unsigned char *ahead = PyMem_RawMalloc(AHEAD > bs ? AHEAD : bs);
    if (!buf || !ahead) {
        PyMem_RawFree(buf);
        PyMem_RawFree(ahead);
        return PyErr_NoMemory();
    }
    Seed s = {fd, number, buf, 0, 0, ahead, 0, 0, 0};
    const uint16_t bs16 = (uint16_t)bs;
    const uint32_t a_mask = self->a_mask;
    int64_t resume = start;

    Py_BEGIN_ALLOW_THREADS
    int64_t at = start;
    while (at < stop && !s.error && self->found < self->blocks) {
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
        const int64_t n = piece_end - at;
        int64_t o = 0;
        uint16_t a1, b1, a2 = 0, b2 = 0;
        rsum(buf, bs, &a1, &b1);
        if (self->pairs) {
            rsum(buf + bs, bs, &a2, &b2);
        }
        for (;;) {
            uint64_t key = (uint64_t)(a1 & a_mask) << 16 | b1;
            if (self->pairs) {
                key = key << 32 | (uint64_t)(a2 & a_mask) << 16 | b2;
            }
            resume = candidate(self, &s, at + o, key);
            if (s.error || self->found == self->blocks) {
                break;
            }
            if (resume > at + o + 1) { /* past a run: start the sums afresh there */
                o = resume - at;
                if (o >= n) {
                    break;
                }
                rsum(buf + o, bs, &a1, &b1);
                if (self->pairs) {
                    rsum(buf + o + bs, bs, &a2, &b2);
                }
                continue;
            }
            if (o + 1 >= n) {
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
            o++;
        }
        at = resume > piece_end ? resume : piece_end;
    }
    Py_END_ALLOW_THREADS

    self->resume_at = resume;
    PyMem_RawFree(buf);
    PyMem_RawFree(ahead);
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
    .tp_doc = "Matcher(checksums, block_size, checksum_bytes, a_mask, pairs, order, keys, starts): zsync seed scan",
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
    if (PyModule_AddIntConstant(m, "ABI", ABI) < 0) {
        Py_DECREF(m);
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
