/*
 * AES-XTS over a run of data units (LUKS2 sectors) in one call: the loop of siffs/crypt/xts.py in C.
 *
 * Why: with 512-byte sectors a 128 KiB read is 256 units, and each unit cost two ctypes calls
 * and a Python-built tweak, several times the AES work itself. Here the loop sets each unit's
 * tweak (a 128-bit little-endian counter) and runs OpenSSL's XTS on it, with the GIL released.
 *
 * No OpenSSL headers are needed (no new build dependency): the caller passes the addresses of
 * EVP_CipherInit_ex and EVP_CipherUpdate from the libcrypto it loaded with ctypes, and a cipher
 * context already keyed for the direction wanted. xts.py stays the fallback (no compiler,
 * SIFFS_NO_NATIVE=1) and the oracle the tests compare this with.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef int (*cipher_init_fn)(void *ctx, const void *type, void *impl, const unsigned char *key,
                              const unsigned char *iv, int enc);
typedef int (*cipher_update_fn)(void *ctx, unsigned char *out, int *outl, const unsigned char *in, int inl);

static PyObject *units(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long init_addr, update_addr, ctx_addr, tweak_lo, tweak_hi, step;
    Py_ssize_t unit;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "KKKy*nKKK", &init_addr, &update_addr, &ctx_addr, &data, &unit, &tweak_lo,
                          &tweak_hi, &step))
        return NULL;
    if (unit <= 0 || unit > (1 << 20) || data.len % unit) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "data is not a whole number of units");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, data.len);
    if (out == NULL) {
        PyBuffer_Release(&data);
        return NULL;
    }
    cipher_init_fn init = (cipher_init_fn)(uintptr_t)init_addr;
    cipher_update_fn update = (cipher_update_fn)(uintptr_t)update_addr;
    void *ctx = (void *)(uintptr_t)ctx_addr;
    const unsigned char *src = data.buf;
    unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(out);
    Py_ssize_t n = data.len / unit;
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS;
    uint64_t lo = tweak_lo, hi = tweak_hi;
    unsigned char tweak[16];
    for (Py_ssize_t i = 0; i < n && !failed; i++) {
        for (int b = 0; b < 8; b++) {
            tweak[b] = (unsigned char)(lo >> (8 * b));
            tweak[8 + b] = (unsigned char)(hi >> (8 * b));
        }
        int written = 0;
        if (init(ctx, NULL, NULL, NULL, tweak, -1) != 1 ||
            update(ctx, dst + i * unit, &written, src + i * unit, (int)unit) != 1)
            failed = 1;
        uint64_t next = lo + step;
        hi += next < lo;
        lo = next;
    }
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&data);
    if (failed) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_ValueError, "AES-XTS failed on a data unit");
        return NULL;
    }
    return out;
}

static PyMethodDef methods[] = {
    {"units", units, METH_VARARGS,
     "units(init, update, ctx, data, unit, tweak_lo, tweak_hi, step) -> bytes: XTS over each unit of data"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "siffs.crypt._xts", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__xts(void) { return PyModule_Create(&module); }
