/*
 * The per-unit loops of the decryption stage in C: AES-XTS over LUKS2 sectors (the loop of
 * siffs/crypt/xts.py) and AES-256-GCM over gocryptfs' 4 KiB blocks (GocryptfsSource._block),
 * the latter through libgcrypt when the system has it (faster per block), else OpenSSL.
 *
 * Why: with 512-byte sectors a 128 KiB read is 256 units, and each unit cost two ctypes calls
 * and a Python-built tweak, several times the AES work itself; a gocryptfs block cost three
 * times its decryption in Python around it. XTS runs as two bulk AES-ECB calls around a whitening
 * pass (see units); each GCM block gets its nonce, tag and associated data and one library run.
 * The GIL is released so several reads decrypt at once.
 *
 * No OpenSSL or libgcrypt headers are needed (no new build dependency): the caller passes the
 * addresses of the library functions it loaded with ctypes, and cipher contexts (or handles)
 * already keyed for the direction wanted. xts.py stays the fallback (no compiler,
 * SIFFS_NO_NATIVE=1) and the oracle the tests compare this with.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* The version of this module's interface to its Python caller (siffs.native.load checks it):
 * bump it whenever a signature, a constructor argument or a capsule changes. */
#define ABI 1

typedef int (*cipher_init_fn)(void *ctx, const void *type, void *impl, const unsigned char *key,
                              const unsigned char *iv, int enc);
typedef int (*cipher_update_fn)(void *ctx, unsigned char *out, int *outl, const unsigned char *in, int inl);

/* One XTS data unit's tweak T (a 128-bit little-endian number) times alpha in GF(2^128). */
static inline void gf_double(uint64_t *lo, uint64_t *hi) {
    uint64_t carry = *hi >> 63;
    *hi = (*hi << 1) | (*lo >> 63);
    *lo = (*lo << 1) ^ (0x87 & (0 - carry));
}

/* Little-endian 64-bit words, as XTS numbers its tweaks; memcpy compiles to one move. */
static inline uint64_t load64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static inline void store64(unsigned char *p, uint64_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(p, &v, 8);
}

/* dst = src ^ the whitening mask of every 16-byte block: T_i * alpha^j for block j of unit i. */
static void whiten(unsigned char *dst, const unsigned char *src, const unsigned char *tweaks, Py_ssize_t n,
                   Py_ssize_t unit) {
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t lo = load64(tweaks + 16 * i), hi = load64(tweaks + 16 * i + 8);
        const unsigned char *from = src + i * unit;
        unsigned char *to = dst + i * unit;
        for (Py_ssize_t at = 0; at < unit; at += 16) {
            store64(to + at, load64(from + at) ^ lo);
            store64(to + at + 8, load64(from + at + 8) ^ hi);
            gf_double(&lo, &hi);
        }
    }
}

static int ecb(cipher_update_fn update, void *ctx, unsigned char *buf, Py_ssize_t len) {
    for (Py_ssize_t at = 0; at < len; at += 1 << 30) {
        int piece = (int)(len - at < (1 << 30) ? len - at : (1 << 30)), written = 0;
        if (update(ctx, buf + at, &written, buf + at, piece) != 1 || written != piece)
            return 0;
    }
    return 1;
}

/* Whether ``data`` is whole units of a size XTS takes, and the range lies inside it; if not, the
 * buffer is released and ValueError set. */
static int whole_units(Py_buffer *data, Py_ssize_t unit, Py_ssize_t skip, Py_ssize_t length) {
    const char *problem = NULL;
    if (unit <= 0 || unit > (1 << 20) || unit % 16 || data->len % unit)
        problem = "data is not a whole number of units";
    else if (skip < 0 || length < 0 || skip > data->len - length)
        problem = "the range asked for lies outside the data";
    if (problem == NULL)
        return 1;
    PyBuffer_Release(data);
    PyErr_SetString(PyExc_ValueError, problem);
    return 0;
}

typedef unsigned int (*gcry_crypt_fn)(void *handle, void *out, size_t out_length, const void *in, size_t in_length);
typedef unsigned int (*gcry_buffer_fn)(void *handle, const void *buffer, size_t length);

/*
 * XTS through libgcrypt's own XTS mode (``handle`` keyed with both halves; ``crypt`` is
 * gcry_cipher_decrypt or _encrypt, ``setiv`` gcry_cipher_setiv), one call per unit after setting
 * its tweak. Why: libgcrypt's XTS pipelines the 16-byte blocks of a unit itself and re-keys
 * nothing per tweak, so a 512-byte sector costs less than the two ECB passes and whitening below
 * (4 against 3 GB/s here). 1 when done, 0 if a call failed, -1 out of memory.
 */
static int units_gcrypt(uintptr_t setiv_addr, uintptr_t crypt_addr, uintptr_t handle_addr, const Py_buffer *data,
                        Py_ssize_t unit, uint64_t tweak_lo, uint64_t tweak_hi, uint64_t step, Py_ssize_t skip,
                        Py_ssize_t length, unsigned char *dst) {
    unsigned char local[4096];
    unsigned char *edge = unit <= 4096 ? local : PyMem_RawMalloc((size_t)unit);
    if (edge == NULL)
        return -1;
    gcry_buffer_fn setiv = (gcry_buffer_fn)setiv_addr;
    gcry_crypt_fn crypt = (gcry_crypt_fn)crypt_addr;
    void *handle = (void *)handle_addr;
    const unsigned char *src = data->buf;
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS;
    Py_ssize_t end = skip + length;
    uint64_t lo = tweak_lo, hi = tweak_hi;
    for (Py_ssize_t at = 0; ok && at < end; at += unit) {
        if (at + unit > skip) { /* units before the range are not decrypted */
            Py_ssize_t from = at < skip ? skip - at : 0, to = at + unit > end ? end - at : unit;
            int inside = from == 0 && to == unit;
            unsigned char tweak[16];
            store64(tweak, lo);
            store64(tweak + 8, hi);
            ok = setiv(handle, tweak, 16) == 0 &&
                 crypt(handle, inside ? dst + at - skip : edge, (size_t)unit, src + at, (size_t)unit) == 0;
            if (ok && !inside)
                memcpy(dst + at + from - skip, edge + from, (size_t)(to - from));
        }
        uint64_t next = lo + step;
        hi += next < lo;
        lo = next;
    }
    Py_END_ALLOW_THREADS;
    if (edge != local)
        PyMem_RawFree(edge);
    return ok;
}

/* The second whitening pass, written straight into the caller's range: out receives bytes skip ..
 * skip + length of the whitened run (the other 16-byte blocks are computed but not stored). */
static void whiten_range(unsigned char *out, const unsigned char *src, const unsigned char *tweaks, Py_ssize_t n,
                         Py_ssize_t unit, Py_ssize_t skip, Py_ssize_t length) {
    Py_ssize_t end = skip + length;
    for (Py_ssize_t i = skip / unit; i < n && i * unit < end; i++) {
        uint64_t lo = load64(tweaks + 16 * i), hi = load64(tweaks + 16 * i + 8);
        for (Py_ssize_t at = i * unit; at < (i + 1) * unit; at += 16) {
            if (at >= skip && at + 16 <= end) {
                store64(out + at - skip, load64(src + at) ^ lo);
                store64(out + at - skip + 8, load64(src + at + 8) ^ hi);
            } else if (at + 16 > skip && at < end) { /* the range starts or ends inside this block */
                unsigned char block[16];
                store64(block, load64(src + at) ^ lo);
                store64(block + 8, load64(src + at + 8) ^ hi);
                Py_ssize_t from = at < skip ? skip - at : 0, to = at + 16 > end ? end - at : 16;
                memcpy(out + at + from - skip, block + from, (size_t)(to - from));
            }
            gf_double(&lo, &hi);
        }
    }
}

/*
 * XTS as its definition reads (IEEE 1619), with AES in ECB over whole runs: every unit's tweak is
 * encrypted in one call (key 2), the data is whitened with T_i * alpha^j, en/decrypted in one call
 * (key 1) and whitened again. Why: OpenSSL's XTS takes one unit per call and re-initialises for
 * each tweak, which with 512-byte sectors costs as much as the AES work; two bulk ECB calls let
 * AES-NI pipeline over the whole read. Units are whole 16-byte blocks (no ciphertext stealing):
 * LUKS2 sectors and keyslot areas always are.
 *
 * Only bytes skip .. skip + length of the result are returned: a read starts and ends inside
 * sectors, and the last whitening pass writes the wanted bytes straight into the returned object
 * (no second buffer, no slice copy in Python).
 */
static int units_ecb(uintptr_t update_addr, uintptr_t data_ctx, uintptr_t tweak_ctx, const Py_buffer *data,
                     Py_ssize_t unit, uint64_t tweak_lo, uint64_t tweak_hi, uint64_t step, Py_ssize_t skip,
                     Py_ssize_t length, unsigned char *dst) {
    Py_ssize_t n = data->len / unit;
    unsigned char local[16 * 256]; /* the tweaks of a read up to 128 KiB need no allocation */
    unsigned char *tweaks = n <= 256 ? local : PyMem_RawMalloc((size_t)n * 16);
    /* The run whitened and decrypted in place; not wiped, as the plaintext the reader caches is not. */
    unsigned char *work = PyMem_RawMalloc((size_t)data->len + 1);
    if (tweaks == NULL || work == NULL) {
        if (tweaks != local)
            PyMem_RawFree(tweaks);
        PyMem_RawFree(work);
        return -1;
    }
    cipher_update_fn update = (cipher_update_fn)update_addr;
    const unsigned char *src = data->buf;
    int ok;
    Py_BEGIN_ALLOW_THREADS;
    uint64_t lo = tweak_lo, hi = tweak_hi;
    for (Py_ssize_t i = 0; i < n; i++) {
        store64(tweaks + 16 * i, lo);
        store64(tweaks + 16 * i + 8, hi);
        uint64_t next = lo + step;
        hi += next < lo;
        lo = next;
    }
    ok = ecb(update, (void *)tweak_ctx, tweaks, n * 16);
    if (ok) {
        whiten(work, src, tweaks, n, unit);
        ok = ecb(update, (void *)data_ctx, work, data->len);
        whiten_range(dst, work, tweaks, n, unit, skip, length);
    }
    memset(tweaks, 0, (size_t)n * 16);
    Py_END_ALLOW_THREADS;
    if (tweaks != local)
        PyMem_RawFree(tweaks);
    PyMem_RawFree(work);
    return ok;
}

/* units(gcrypt, call, crypt_or_ctx, ctx_or_handle, data, unit, tweak_lo, tweak_hi, step, skip, length) ->
 * bytes skip .. skip + length of XTS over each unit, unit i with tweak (tweak_lo, tweak_hi) + i * step.
 * ``gcrypt`` 1: libgcrypt's gcry_cipher_setiv, gcry_cipher_decrypt (or _encrypt) and a keyed XTS
 * handle; 0: OpenSSL's EVP_CipherUpdate, the data key's ECB context and the tweak key's. */
static PyObject *units(PyObject *self, PyObject *args) {
    (void)self;
    int gcrypt;
    unsigned long long a, b, c, tweak_lo, tweak_hi, step;
    Py_ssize_t unit, skip, length;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "pKKKy*nKKKnn", &gcrypt, &a, &b, &c, &data, &unit, &tweak_lo, &tweak_hi, &step,
                          &skip, &length))
        return NULL;
    if (!whole_units(&data, unit, skip, length))
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, length);
    int ok = out == NULL ? -1
                         : (gcrypt ? units_gcrypt : units_ecb)((uintptr_t)a, (uintptr_t)b, (uintptr_t)c, &data, unit,
                                                               tweak_lo, tweak_hi, step, skip, length,
                                                               (unsigned char *)PyBytes_AS_STRING(out));
    PyBuffer_Release(&data);
    if (ok == 1)
        return out;
    Py_XDECREF(out);
    if (ok < 0)
        return PyErr_NoMemory();
    PyErr_SetString(PyExc_ValueError, "AES-XTS failed on a data unit");
    return NULL;
}

typedef int (*cipher_final_fn)(void *ctx, unsigned char *out, int *outl);
typedef int (*cipher_ctrl_fn)(void *ctx, int type, int arg, void *ptr);

#define GCM_NONCE 16
#define GCM_TAG 16
#define GCM_BLOCK 4096
#define GCM_CIPHER_BLOCK (GCM_NONCE + GCM_BLOCK + GCM_TAG)
#define EVP_CTRL_GCM_SET_TAG 0x11

static int all_zero(const unsigned char *p, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* One AES-256-GCM implementation, as the caller chose it: OpenSSL's EVP calls, or libgcrypt's
 * (gcry_cipher_setiv, _authenticate, _decrypt, _checktag: 0 is success). */
typedef struct {
    int gcrypt;
    uintptr_t calls[4];
    void *ctx;
} gcm_backend;

/* Decrypt and authenticate one block into ``plain``; 0 if the tag (or a call) fails. */
static int open_block(const gcm_backend *b, const unsigned char *block, Py_ssize_t n, const unsigned char *aad,
                      unsigned char *plain) {
    const unsigned char *ciphertext = block + GCM_NONCE, *tag = block + GCM_NONCE + n;
    if (b->gcrypt) {
        gcry_buffer_fn setiv = (gcry_buffer_fn)b->calls[0], authenticate = (gcry_buffer_fn)b->calls[1],
                       checktag = (gcry_buffer_fn)b->calls[3];
        gcry_crypt_fn decrypt = (gcry_crypt_fn)b->calls[2];
        return setiv(b->ctx, block, GCM_NONCE) == 0 && authenticate(b->ctx, aad, 24) == 0 &&
               decrypt(b->ctx, plain, (size_t)n, ciphertext, (size_t)n) == 0 &&
               checktag(b->ctx, tag, GCM_TAG) == 0;
    }
    cipher_init_fn init = (cipher_init_fn)b->calls[0];
    cipher_update_fn update = (cipher_update_fn)b->calls[1];
    cipher_final_fn final = (cipher_final_fn)b->calls[2];
    cipher_ctrl_fn ctrl = (cipher_ctrl_fn)b->calls[3];
    int written = 0, tail = 0;
    return init(b->ctx, NULL, NULL, NULL, block, 0) == 1 && update(b->ctx, NULL, &written, aad, 24) == 1 &&
           update(b->ctx, plain, &written, ciphertext, (int)n) == 1 &&
           ctrl(b->ctx, EVP_CTRL_GCM_SET_TAG, GCM_TAG, (void *)tag) == 1 && final(b->ctx, plain + written, &tail) == 1;
}

/* gcm_blocks(gcrypt, call0..call3, ctx, data, first_block, file_id, skip, length) -> bytes skip .. skip +
 * length of the plaintext, or the number of the first block that fails authentication (an int).
 * ``gcrypt`` 0: the calls are OpenSSL's EVP_CipherInit_ex, _CipherUpdate, _CipherFinal_ex and
 * _CIPHER_CTX_ctrl, ``ctx`` an EVP context keyed for AES-256-GCM decryption with 16-byte nonces;
 * 1: libgcrypt's gcry_cipher_setiv, _authenticate, _decrypt and _checktag, ``ctx`` a keyed GCM
 * handle (libgcrypt does a 4 KiB block in about two thirds of OpenSSL 3.0's time: no per-call
 * parameter lookups). ``data`` holds whole cipher blocks (the last one may be short). Every block
 * is authenticated; blocks wholly inside the range are decrypted straight into the returned
 * object, the one or two it starts or ends inside go through a block-sized buffer (a read seldom
 * starts on a block boundary, and slicing afterwards would copy the whole read once more). */
static PyObject *gcm_blocks(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long call[4], ctx_addr, first;
    int gcrypt;
    Py_ssize_t skip, length;
    Py_buffer data, file_id;
    if (!PyArg_ParseTuple(args, "pKKKKKy*Ky*nn", &gcrypt, &call[0], &call[1], &call[2], &call[3], &ctx_addr, &data,
                          &first, &file_id, &skip, &length))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t full = data.len / GCM_CIPHER_BLOCK, rest = data.len % GCM_CIPHER_BLOCK;
    if (file_id.len != 16 || (rest && rest <= GCM_NONCE + GCM_TAG)) {
        PyErr_SetString(PyExc_ValueError, "not whole gocryptfs blocks");
        goto done;
    }
    Py_ssize_t size = full * GCM_BLOCK + (rest ? rest - GCM_NONCE - GCM_TAG : 0);
    if (skip < 0 || length < 0 || skip > size - length) {
        PyErr_SetString(PyExc_ValueError, "the range asked for lies outside the blocks");
        goto done;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, length);
    if (out == NULL)
        goto done;
    gcm_backend backend = {gcrypt, {0}, (void *)(uintptr_t)ctx_addr};
    for (int i = 0; i < 4; i++)
        backend.calls[i] = (uintptr_t)call[i];
    const unsigned char *src = data.buf;
    unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(out);
    long long failed = -1;
    Py_BEGIN_ALLOW_THREADS;
    unsigned char aad[24], edge[GCM_BLOCK];
    memcpy(aad + 8, file_id.buf, 16);
    Py_ssize_t count = full + (rest != 0), end = skip + length;
    for (Py_ssize_t i = 0; i < count; i++) {
        const unsigned char *block = src + i * GCM_CIPHER_BLOCK;
        Py_ssize_t cipher_length = i < full ? GCM_CIPHER_BLOCK : rest, n = cipher_length - GCM_NONCE - GCM_TAG;
        Py_ssize_t at = i * GCM_BLOCK, from = at < skip ? skip - at : 0, to = at + n > end ? end - at : n;
        int inside = from == 0 && to == n;
        unsigned char *plain = inside ? dst + at - skip : edge;
        uint64_t number = first + (uint64_t)i;
        if (all_zero(block, GCM_NONCE)) {
            if (cipher_length == GCM_CIPHER_BLOCK && all_zero(block, cipher_length)) {
                memset(plain, 0, GCM_BLOCK); /* a hole */
            } else {
                failed = (long long)number;
                break;
            }
        } else {
            for (int b = 0; b < 8; b++)
                aad[b] = (unsigned char)(number >> (56 - 8 * b));
            if (!open_block(&backend, block, n, aad, plain)) {
                failed = (long long)number;
                break;
            }
        }
        if (!inside && from < to)
            memcpy(dst + at + from - skip, edge + from, (size_t)(to - from));
    }
    Py_END_ALLOW_THREADS;
    if (failed >= 0) {
        Py_DECREF(out);
        result = PyLong_FromLongLong(failed);
    } else {
        result = out;
    }
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&file_id);
    return result;
}

static PyMethodDef methods[] = {
    {"gcm_blocks", gcm_blocks, METH_VARARGS,
     "gcm_blocks(gcrypt, call0, call1, call2, call3, ctx, data, first_block, file_id, skip, length) -> bytes | "
     "failing block"},
    {"units", units, METH_VARARGS,
     "units(gcrypt, call, crypt_or_ctx, ctx_or_handle, data, unit, tweak_lo, tweak_hi, step, skip, length) -> "
     "bytes skip .. skip + length of XTS over each unit"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "siffs.crypt._xts", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__xts(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "ABI", ABI) < 0)
        Py_CLEAR(m);
    return m;
}
