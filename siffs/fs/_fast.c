/* Request handlers the patched pyfuse3 calls in C (contrib/pyfuse3-patches/0009).
 *
 * Every request through pyfuse3's Python path costs a coroutine, a request context, an
 * EntryAttributes and two Python frames before the tree reader is even called: more than the
 * reader's own work for a cached lookup or read. The binding's fast_ops hook calls these
 * functions first; each asks the tree (its bound Python methods: the reader's hot paths are C
 * already) and answers exactly as ReadOnlyOperations does (operations.py, the fallback and the
 * oracle in the tests), or declines (< 0), and the request then takes the Python path. A SquashFS
 * reader's lookup, getattr and readlink are asked as C values first (its native_tree's capsule,
 * siffs/squashfs/_tree.h: no Stat object made and taken apart again), then, where the tree declines,
 * through its methods. Declined:
 * "." and "..", results that are not the reader's Stat records, and every exception that does
 * not carry its own errno (the Python handler repeats the call, which logs and counts it).
 *
 * The pyfuse3_fast_ops layout is the binding's ABI, pinned by the capsule's name: v1, or v2 (which
 * adds readdirplus) for a binding whose FAST_OPS_VERSION is 2; one structure serves both, since v2
 * only appends a member.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

#include "../squashfs/_tree.h"

/* The version of this module's interface to its Python caller (siffs.native.load checks it):
 * bump it whenever a signature, a constructor argument or a capsule changes. */
#define ABI 3

#define FAST_OPS_NAME "pyfuse3.fast_ops.v1"
#define FAST_OPS_V2_NAME "pyfuse3.fast_ops.v2"
#define DECLINE (-1)
#define ROOT_INODE 1

typedef struct {
    uint64_t ino;
    uint64_t generation;
    struct stat attr;
    double attr_timeout;
    double entry_timeout;
} fast_entry;

/* The binding's way of taking a listing's entry: 0 once it is in the reply, 1 when the reply is full. */
typedef int (*fast_add)(void *ctx, const char *name, const fast_entry *entry, uint64_t next_off);

typedef struct {
    void *data;
    int (*lookup)(void *data, uint64_t parent, const char *name, fast_entry *entry);
    int (*getattr)(void *data, uint64_t ino, fast_entry *entry);
    int (*read)(void *data, uint64_t fh, uint64_t off, size_t size, PyObject **out);
    int (*readlink)(void *data, uint64_t ino, PyObject **out);
    int (*listxattr)(void *data, uint64_t ino, uint32_t uid, PyObject **out);
    int (*getxattr)(void *data, uint64_t ino, const char *name, PyObject **out);
    int (*readdirplus)(void *data, uint64_t fh, uint64_t off, fast_add add, void *ctx); /* v2 */
} fast_ops;

typedef struct {
    PyObject_HEAD
    fast_ops ops;
    PyObject *lookup, *getattr, *read, *readlink, *listxattr, *getxattr;
    PyObject *parents;        /* dict: directory inode -> parent, for ".." (operations.py) */
    PyObject *native;         /* the reader's native_tree, asked first through api; or NULL */
    const TreeApi *api;
    PyTypeObject *stat_type;  /* the only result type answered here */
    uint64_t root;            /* the tree's root inode, shown as 1 (and 1 as it) */
    long long uid, gid;       /* -1: as stored */
    size_t name_max;
    double timeout;
    long blksize;
} Handlers;

static uint64_t swap(const Handlers *h, uint64_t ino) {
    if (ino == h->root)
        return ROOT_INODE;
    if (ino == ROOT_INODE)
        return h->root;
    return ino;
}

/* An exception the reader raised: answer its errno as fuse_error() does without logging
 * (an int errno that is neither 0 nor EIO), else decline so the Python path logs it. */
static int raised(void) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    int code = DECLINE;
    if (value != NULL) {
        PyObject *e = PyObject_GetAttrString(value, "errno");
        if (e == NULL) {
            PyErr_Clear();
        } else {
            if (PyLong_CheckExact(e)) {
                long v = PyLong_AsLong(e);
                if (v > 0 && v != EIO && v < 4096)
                    code = (int)v;
                else
                    PyErr_Clear();
            }
            Py_DECREF(e);
        }
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return code;
}

/* Call method ``fn`` with an inode (and ``extra`` unless NULL). */
static PyObject *call(PyObject *fn, uint64_t ino, PyObject *extra) {
    PyObject *args[2];
    args[0] = PyLong_FromUnsignedLongLong(ino);
    if (args[0] == NULL)
        return NULL;
    args[1] = extra;
    PyObject *r = PyObject_Vectorcall(fn, args, extra == NULL ? 1 : 2, NULL);
    Py_DECREF(args[0]);
    return r;
}

/* The attributes of a Stat record's fields (in its order: _tree.h) as _entry() builds them. */
static void fill_values(const Handlers *h, const unsigned long long *f, fast_entry *e) {
    memset(e, 0, sizeof(*e));
    e->ino = swap(h, f[TS_INO]);
    e->attr_timeout = e->entry_timeout = h->timeout;
    e->attr.st_ino = e->ino;
    e->attr.st_mode = (mode_t)f[TS_MODE];
    e->attr.st_nlink = (nlink_t)f[TS_NLINK];
    e->attr.st_uid = (uid_t)(h->uid < 0 ? f[TS_UID] : (unsigned long long)h->uid);
    e->attr.st_gid = (gid_t)(h->gid < 0 ? f[TS_GID] : (unsigned long long)h->gid);
    e->attr.st_rdev = (dev_t)f[TS_RDEV];
    e->attr.st_size = (off_t)f[TS_SIZE];
    e->attr.st_blksize = h->blksize;
    e->attr.st_blocks = (blkcnt_t)f[TS_BLOCKS];
    e->attr.st_atim.tv_sec = e->attr.st_mtim.tv_sec = e->attr.st_ctim.tv_sec = (time_t)f[TS_MTIME];
}

/* The attributes of a Stat record; DECLINE if it is not one. */
static int fill(const Handlers *h, PyObject *st, fast_entry *e) {
    if (Py_TYPE(st) != h->stat_type || PyTuple_GET_SIZE(st) < TS_FIELDS)
        return DECLINE;
    unsigned long long f[TS_FIELDS];
    for (int i = 0; i < TS_FIELDS; i++) {
        PyObject *item = PyTuple_GET_ITEM(st, i);
        if (!PyLong_CheckExact(item))
            return DECLINE;
        f[i] = PyLong_AsUnsignedLongLong(item);
        if (f[i] == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            return DECLINE;
        }
    }
    fill_values(h, f, e);
    return 0;
}

/* A cacheable "no such entry" (an ENOENT error would not be cached), with the rest as a fresh
 * EntryAttributes has it (the kernel reads nothing else of it). */
static void no_entry(const Handlers *h, fast_entry *entry) {
    memset(entry, 0, sizeof(*entry));
    entry->entry_timeout = h->timeout;
    entry->attr_timeout = 300;
    entry->attr.st_mode = S_IFREG;
    entry->attr.st_nlink = 1;
    entry->attr.st_blksize = 4096;
}

/* Directory `ino`'s parent is `dir`, for "..": 0, or DECLINE (an error, cleared). */
static int remember_parent(const Handlers *h, PyObject *ino, uint64_t dir) {
    PyObject *up = PyLong_FromUnsignedLongLong(dir);
    int res = up == NULL || PyDict_SetItem(h->parents, ino, up) < 0 ? DECLINE : 0;
    Py_XDECREF(up);
    if (res == DECLINE)
        PyErr_Clear();
    return res;
}

/* remember_parent for an entry the tree answered as C values (its inode number a C value too). */
static int remember_dir(const Handlers *h, uint64_t ino, uint64_t dir) {
    PyObject *number = PyLong_FromUnsignedLongLong(ino);
    if (number == NULL) {
        PyErr_Clear();
        return DECLINE;
    }
    int res = remember_parent(h, number, dir);
    Py_DECREF(number);
    return res;
}

/* The tree's answer as C values (_tree.h), when it has one: 0 or an errno, else DECLINE. */
static int native_lookup(const Handlers *h, uint64_t dir, const char *name, size_t n, fast_entry *entry) {
    TreeStat ts;
    int rc = h->api->lookup(h->native, dir, name, n, &ts);
    if (rc == TREE_NO_ENTRY) {
        no_entry(h, entry);
        return 0;
    }
    if (rc == TREE_ERROR)
        return raised();
    if (rc != TREE_FOUND)
        return DECLINE;
    fill_values(h, ts.f, entry);
    return S_ISDIR(entry->attr.st_mode) ? remember_dir(h, ts.f[TS_INO], dir) : 0;
}

static int fast_lookup(void *data, uint64_t parent, const char *name, fast_entry *entry) {
    Handlers *h = data;
    size_t n = strlen(name);
    if (n > h->name_max)
        return ENAMETOOLONG;  /* as the kernel's squashfs answers, before any search */
    if (name[0] == '.' && (n == 1 || (n == 2 && name[1] == '.')))
        return DECLINE;
    uint64_t dir = swap(h, parent);
    if (h->api != NULL) {
        int res = native_lookup(h, dir, name, n, entry);
        if (res != DECLINE)
            return res;
    }
    PyObject *key = PyBytes_FromStringAndSize(name, (Py_ssize_t)n);
    if (key == NULL) {
        PyErr_Clear();
        return DECLINE;
    }
    PyObject *st = call(h->lookup, dir, key);
    Py_DECREF(key);
    if (st == NULL)
        return raised();
    int res;
    if (st == Py_None) {
        no_entry(h, entry);
        res = 0;
    } else {
        res = fill(h, st, entry);
        if (res == 0 && S_ISDIR(entry->attr.st_mode))
            res = remember_parent(h, PyTuple_GET_ITEM(st, TS_INO), dir);
    }
    Py_DECREF(st);
    return res;
}

static int fast_getattr(void *data, uint64_t ino, fast_entry *entry) {
    Handlers *h = data;
    if (h->api != NULL) {
        TreeStat ts;
        int rc = h->api->getattr(h->native, swap(h, ino), &ts);
        if (rc == TREE_FOUND) {
            fill_values(h, ts.f, entry);
            return 0;
        }
        if (rc == TREE_ERROR)
            return raised();
    }
    PyObject *st = call(h->getattr, swap(h, ino), NULL);
    if (st == NULL)
        return raised();
    int res = fill(h, st, entry);
    Py_DECREF(st);
    return res;
}

/* A bytes result for the binding (a new reference in *out), or DECLINE. */
static int bytes_result(PyObject *r, PyObject **out) {
    if (r == NULL)
        return raised();
    if (!PyBytes_Check(r)) {
        Py_DECREF(r);
        return DECLINE;
    }
    *out = r;
    return 0;
}

static int fast_read(void *data, uint64_t fh, uint64_t off, size_t size, PyObject **out) {
    Handlers *h = data;
    PyObject *args[3];
    args[0] = PyLong_FromUnsignedLongLong(swap(h, fh));
    args[1] = PyLong_FromUnsignedLongLong(off);
    args[2] = PyLong_FromSize_t(size);
    PyObject *r = NULL;
    if (args[0] != NULL && args[1] != NULL && args[2] != NULL)
        r = PyObject_Vectorcall(h->read, args, 3, NULL);
    for (int i = 0; i < 3; i++)
        Py_XDECREF(args[i]);
    return bytes_result(r, out);
}

static int fast_readlink(void *data, uint64_t ino, PyObject **out) {
    Handlers *h = data;
    if (h->api != NULL) {
        int rc = h->api->readlink(h->native, swap(h, ino), out);
        if (rc == TREE_FOUND)
            return 0;
        if (rc == TREE_ERROR)
            return raised();
    }
    return bytes_result(call(h->readlink, swap(h, ino), NULL), out);
}

/* Name and value of pair `j` of an attribute set, if it is a (bytes, bytes) pair: 1, else 0. */
static int pair_at(PyObject *pairs, Py_ssize_t j, PyObject **name, PyObject **value) {
    PyObject *pair = PyTuple_GET_ITEM(pairs, j);
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2)
        return 0;
    *name = PyTuple_GET_ITEM(pair, 0);
    *value = PyTuple_GET_ITEM(pair, 1);
    return PyBytes_CheckExact(*name) && PyBytes_CheckExact(*value);
}

/* native_xattrs found the inode's attribute set. */
#define WITH_SET (-3)

/* The tree's attribute set of `ino` as C values (_tree.h): WITH_SET with *pairs (NULL: it has
 * none), DECLINE to ask the methods, or the errno of the reader's error. */
static int native_xattrs(const Handlers *h, uint64_t ino, PyObject **pairs) {
    if (h->api == NULL)
        return DECLINE;
    int rc = h->api->xattrs(h->native, swap(h, ino), pairs);
    return rc == TREE_FOUND ? WITH_SET : rc == TREE_ERROR ? raised() : DECLINE;
}

/* Attribute `name`'s value from a set's pairs (NULL: none) into *out: 0, ENODATA when there is no
 * such attribute (as the reader raises NoSuchAttribute), or DECLINE for a malformed set (the
 * method says what is wrong). */
static int value_of(PyObject *pairs, const char *name, PyObject **out) {
    size_t size = strlen(name);
    PyObject *key, *value;
    for (Py_ssize_t j = 0; pairs != NULL && j < PyTuple_GET_SIZE(pairs); j++) {
        if (!pair_at(pairs, j, &key, &value))
            return DECLINE;
        if ((size_t)PyBytes_GET_SIZE(key) == size && memcmp(PyBytes_AS_STRING(key), name, size) == 0) {
            *out = Py_NewRef(value); /* the first of that name, as the reader's loop */
            return 0;
        }
    }
    return ENODATA;
}

static int fast_getxattr(void *data, uint64_t ino, const char *name, PyObject **out) {
    Handlers *h = data;
    PyObject *pairs;
    int res = native_xattrs(h, ino, &pairs);
    if (res == WITH_SET) {
        res = value_of(pairs, name, out);
        Py_XDECREF(pairs);
    }
    if (res != DECLINE)
        return res;
    PyObject *wanted = PyBytes_FromString(name);
    if (wanted == NULL) {
        PyErr_Clear();
        return DECLINE;
    }
    PyObject *r = call(h->getxattr, swap(h, ino), wanted);
    Py_DECREF(wanted);
    return bytes_result(r, out);
}

/* As the kernel: trusted.* is listed only for CAP_SYS_ADMIN (root here). */
static int hidden(PyObject *name, uint32_t uid) {
    return uid != 0 && PyBytes_GET_SIZE(name) >= 8 && memcmp(PyBytes_AS_STRING(name), "trusted.", 8) == 0;
}

/* The names of `count` attributes, each followed by a NUL, those hidden from `uid` left out, in
 * *out: 0, or DECLINE when one is not bytes. `name_of(items, i)` gives the i-th name or NULL. */
static int joined_names(PyObject *items, Py_ssize_t count, PyObject *(*name_of)(PyObject *, Py_ssize_t),
                        uint32_t uid, PyObject **out) {
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *name = name_of(items, i);
        if (name == NULL)
            return DECLINE;
        if (!hidden(name, uid))
            total += PyBytes_GET_SIZE(name) + 1;
    }
    PyObject *joined = PyBytes_FromStringAndSize(NULL, total);
    if (joined == NULL) {
        PyErr_Clear();
        return DECLINE;
    }
    char *p = PyBytes_AS_STRING(joined);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *name = name_of(items, i);
        if (hidden(name, uid))
            continue;
        memcpy(p, PyBytes_AS_STRING(name), (size_t)PyBytes_GET_SIZE(name));
        p += PyBytes_GET_SIZE(name);
        *p++ = '\0';
    }
    *out = joined;
    return 0;
}

static PyObject *list_name(PyObject *names, Py_ssize_t i) {
    PyObject *name = PyList_GET_ITEM(names, i);
    return PyBytes_CheckExact(name) ? name : NULL;
}

static PyObject *pair_name(PyObject *pairs, Py_ssize_t i) {
    PyObject *name, *value;
    return pair_at(pairs, i, &name, &value) ? name : NULL;
}

static int fast_listxattr(void *data, uint64_t ino, uint32_t uid, PyObject **out) {
    Handlers *h = data;
    PyObject *pairs;
    int res = native_xattrs(h, ino, &pairs);
    if (res == WITH_SET) {
        res = joined_names(pairs, pairs == NULL ? 0 : PyTuple_GET_SIZE(pairs), pair_name, uid, out);
        Py_XDECREF(pairs);
    }
    if (res != DECLINE)
        return res;
    PyObject *names = call(h->listxattr, swap(h, ino), NULL);
    if (names == NULL)
        return raised();
    res = PyList_CheckExact(names) ? joined_names(names, PyList_GET_SIZE(names), list_name, uid, out) : DECLINE;
    Py_DECREF(names);
    return res;
}

/* --- readdirplus: a listing with each entry's attributes ------------------------------------- */

/* ReadOnlyOperations' cookies: "." and "..", then the reader's shifted past them. */
#define DOT_COOKIE 1
#define DOTDOT_COOKIE 2
/* A name in a listing is at most this long (_listing.h's MAX_NAME). */
#define LISTED_NAME_MAX 256

/* "." or ".." with the attributes of `ino` (as getattr answers) handed to `add`: 0, 1 when the reply
 * is full, DECLINE (an error too: the Python path meets it again and says what it is). */
static int add_dot(Handlers *h, uint64_t ino, const char *name, uint64_t cookie, fast_add add, void *ctx) {
    fast_entry e;
    if (fast_getattr(h, swap(h, ino), &e) != 0)
        return DECLINE;
    return add(ctx, name, &e, cookie);
}

/* The parent of directory `dir` for "..", as _dots finds it (the root when not learnt); 0 on an
 * error (cleared). */
static uint64_t parent_of(const Handlers *h, uint64_t dir) {
    PyObject *key = PyLong_FromUnsignedLongLong(dir);
    PyObject *up = key == NULL ? NULL : PyDict_GetItemWithError(h->parents, key); /* borrowed */
    Py_XDECREF(key);
    unsigned long long parent = up == NULL ? (PyErr_Occurred() ? 0 : h->root) : PyLong_AsUnsignedLongLong(up);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return parent;
}

typedef struct {
    const Handlers *h;
    uint64_t dir;
    fast_add add;
    void *ctx;
} Listing;

/* The tree's readdir hands over an entry (_tree.h's TreeEmit): as _entries yields it. */
static int take_entry(void *ctx, const unsigned char *name, size_t size, const TreeStat *st, uint64_t cookie) {
    Listing *l = ctx;
    fast_entry e;
    fill_values(l->h, st->f, &e);
    if (S_ISDIR(e.attr.st_mode) && remember_dir(l->h, st->f[TS_INO], l->dir) != 0)
        return -1;
    char cname[LISTED_NAME_MAX + 1];
    if (size > LISTED_NAME_MAX)
        return -1;
    memcpy(cname, name, size);
    cname[size] = '\0'; /* the binding takes a C string, as readdir_reply does */
    return l->add(l->ctx, cname, &e, cookie + DOTDOT_COOKIE);
}

static int fast_readdirplus(void *data, uint64_t fh, uint64_t off, fast_add add, void *ctx) {
    Handlers *h = data;
    if (h->api == NULL)
        return DECLINE;
    uint64_t dir = swap(h, fh);
    int full = 0;
    if (off < DOT_COOKIE)
        full = add_dot(h, dir, ".", DOT_COOKIE, add, ctx);
    if (full == 0 && off < DOTDOT_COOKIE) {
        uint64_t parent = parent_of(h, dir);
        full = parent == 0 ? DECLINE : add_dot(h, parent, "..", DOTDOT_COOKIE, add, ctx);
    }
    if (full != 0)
        return full == 1 ? 0 : DECLINE;
    Listing l = {h, dir, add, ctx};
    int rc = h->api->readdir(h->native, dir, off > DOTDOT_COOKIE ? off - DOTDOT_COOKIE : 0, take_entry, &l);
    return rc == TREE_FOUND ? 0 : rc == TREE_ERROR ? raised() : DECLINE;
}

/* --- the Python type ------------------------------------------------------------------------ */

static int Handlers_traverse(Handlers *self, visitproc visit, void *arg) {
    Py_VISIT(self->lookup);
    Py_VISIT(self->getattr);
    Py_VISIT(self->read);
    Py_VISIT(self->readlink);
    Py_VISIT(self->listxattr);
    Py_VISIT(self->getxattr);
    Py_VISIT(self->parents);
    Py_VISIT(self->native);
    Py_VISIT(self->stat_type);
    return 0;
}

static int Handlers_clear(Handlers *self) {
    Py_CLEAR(self->lookup);
    Py_CLEAR(self->getattr);
    Py_CLEAR(self->read);
    Py_CLEAR(self->readlink);
    Py_CLEAR(self->listxattr);
    Py_CLEAR(self->getxattr);
    Py_CLEAR(self->parents);
    Py_CLEAR(self->native);
    self->api = NULL;
    Py_CLEAR(self->stat_type);
    return 0;
}

static void Handlers_dealloc(Handlers *self) {
    PyObject_GC_UnTrack(self);
    Handlers_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Handlers_init(Handlers *self, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"tree", "stat_type", "parents", "root", "uid", "gid", "name_max", "timeout",
                         "blksize", NULL};
    PyObject *tree, *stat_type, *parents;
    unsigned long long root;
    long long uid, gid;
    Py_ssize_t name_max;
    double timeout;
    long blksize;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!O!KLLndl", kw, &tree, &PyType_Type, &stat_type,
                                     &PyDict_Type, &parents, &root, &uid, &gid, &name_max, &timeout,
                                     &blksize))
        return -1;
    if (name_max < 0) {
        PyErr_SetString(PyExc_ValueError, "name_max must not be negative");
        return -1;
    }
    Handlers_clear(self);
    static const char *names[] = {"lookup", "getattr", "read", "readlink", "listxattr", "getxattr"};
    PyObject **slots[] = {&self->lookup,   &self->getattr,   &self->read,
                          &self->readlink, &self->listxattr, &self->getxattr};
    for (int i = 0; i < 6; i++) {
        *slots[i] = PyObject_GetAttrString(tree, names[i]);
        if (*slots[i] == NULL)
            return -1;
    }
    /* The reader's Tree, if it has one, answers as C values first (_tree.h). */
    PyObject *native = PyObject_GetAttrString(tree, "native_tree");
    if (native == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return -1;
        PyErr_Clear(); /* another tree (a composite of several): its methods alone */
    } else if (native != Py_None) {
        self->api = PyCapsule_Import(TREE_API_NAME, 0);
        if (self->api == NULL)
            return -1;
        self->native = native;
        native = NULL;
    }
    Py_XDECREF(native);
    Py_INCREF(parents);
    self->parents = parents;
    Py_INCREF(stat_type);
    self->stat_type = (PyTypeObject *)stat_type;
    self->root = root;
    self->uid = uid;
    self->gid = gid;
    self->name_max = (size_t)name_max;
    self->timeout = timeout;
    self->blksize = blksize;
    self->ops = (fast_ops){self,          fast_lookup,    fast_getattr,  fast_read,
                           fast_readlink, fast_listxattr, fast_getxattr, fast_readdirplus};
    return 0;
}

static void capsule_release(PyObject *capsule) { Py_XDECREF((PyObject *)PyCapsule_GetContext(capsule)); }

static PyObject *Handlers_capsule(Handlers *self, PyObject *args) {
    int version = 1;
    if (!PyArg_ParseTuple(args, "|i", &version))
        return NULL;
    if (self->lookup == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Handlers were not initialised");
        return NULL;
    }
    if (version != 1 && version != 2) {
        PyErr_Format(PyExc_ValueError, "no fast_ops version %d here (1 or 2)", version);
        return NULL;
    }
    PyObject *capsule = PyCapsule_New(&self->ops, version == 2 ? FAST_OPS_V2_NAME : FAST_OPS_NAME, capsule_release);
    if (capsule == NULL)
        return NULL;
    /* The capsule keeps the handlers (and so the structure it points to) alive. */
    Py_INCREF(self);
    if (PyCapsule_SetContext(capsule, self) < 0) {
        Py_DECREF(self);
        Py_DECREF(capsule);
        return NULL;
    }
    return capsule;
}

/* The handlers called through the structure, for the tests (which need no mount for this):
 * (errno or -1, value) where value is an attribute tuple, bytes or None. */
static PyObject *entry_values(const fast_entry *e) {
    const struct stat *a = &e->attr;
    return Py_BuildValue("(KKddKIIIKLlLL)", (unsigned long long)e->ino, (unsigned long long)e->generation,
                         e->attr_timeout, e->entry_timeout, (unsigned long long)a->st_mode,
                         (unsigned int)a->st_nlink, (unsigned int)a->st_uid, (unsigned int)a->st_gid,
                         (unsigned long long)a->st_rdev, (long long)a->st_size, (long)a->st_blksize,
                         (long long)a->st_blocks, (long long)a->st_mtim.tv_sec);
}

static PyObject *entry_tuple(int res, const fast_entry *e) {
    if (res != 0)
        return Py_BuildValue("(iO)", res, Py_None);
    return Py_BuildValue("(iN)", 0, entry_values(e));
}

/* A listing as the binding would take it, for the tests: at most `left` entries. */
typedef struct {
    PyObject *entries; /* [(name, attributes, next_off)] */
    unsigned long long left;
} Collected;

static int collect(void *ctx, const char *name, const fast_entry *e, uint64_t next_off) {
    Collected *c = ctx;
    if (c->left == 0)
        return 1;
    c->left--;
    PyObject *item = Py_BuildValue("(yNK)", name, entry_values(e), (unsigned long long)next_off);
    if (item == NULL || PyList_Append(c->entries, item) < 0)
        PyErr_Clear(); /* the test sees an entry missing */
    Py_XDECREF(item);
    return 0;
}

static PyObject *bytes_tuple(int res, PyObject *out) {
    if (res != 0)
        return Py_BuildValue("(iO)", res, Py_None);
    PyObject *r = Py_BuildValue("(iO)", 0, out);
    Py_DECREF(out);
    return r;
}

static PyObject *Handlers_call(Handlers *self, PyObject *args) {
    const char *op, *name = "";
    unsigned long long ino, off = 0, size = 0;
    unsigned int uid = 0;
    if (!PyArg_ParseTuple(args, "sK|yKKI", &op, &ino, &name, &off, &size, &uid))
        return NULL;
    if (self->lookup == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Handlers were not initialised");
        return NULL;
    }
    fast_entry e;
    PyObject *out = NULL;
    int res;
    /* Each handler runs before its result is read (argument evaluation order is unspecified). */
    if (strcmp(op, "lookup") == 0) {
        res = fast_lookup(self, ino, name, &e);
        return entry_tuple(res, &e);
    }
    if (strcmp(op, "getattr") == 0) {
        res = fast_getattr(self, ino, &e);
        return entry_tuple(res, &e);
    }
    if (strcmp(op, "readdir") == 0) {
        Collected c = {PyList_New(0), size == 0 ? ULLONG_MAX : size};
        if (c.entries == NULL)
            return NULL;
        res = fast_readdirplus(self, ino, off, collect, &c);
        if (res == 0)
            return Py_BuildValue("(iN)", 0, c.entries);
        Py_DECREF(c.entries);
        return Py_BuildValue("(iO)", res, Py_None);
    }
    if (strcmp(op, "read") == 0)
        res = fast_read(self, ino, off, (size_t)size, &out);
    else if (strcmp(op, "readlink") == 0)
        res = fast_readlink(self, ino, &out);
    else if (strcmp(op, "listxattr") == 0)
        res = fast_listxattr(self, ino, uid, &out);
    else if (strcmp(op, "getxattr") == 0)
        res = fast_getxattr(self, ino, name, &out);
    else
        res = -2;
    if (res != -2)
        return bytes_tuple(res, out);
    PyErr_Format(PyExc_ValueError, "no fast handler %s with these arguments", op);
    return NULL;
}

static PyMethodDef Handlers_methods[] = {
    {"capsule", (PyCFunction)Handlers_capsule, METH_VARARGS,
     "capsule(version=1): the pyfuse3.fast_ops.v1 (or .v2, with readdirplus) capsule for "
     "Operations.fast_ops (it keeps these handlers alive)."},
    {"call", (PyCFunction)Handlers_call, METH_VARARGS,
     "call(op, ino, name=b'', off=0, size=0, uid=0) -> (errno or -1 declined or 0, value): one "
     "handler as the binding calls it, for tests. readdir: the entries from cookie off, at most "
     "size of them (0: all), as [(name, attributes, next_off)]."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HandlersType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "siffs.fs._fast.Handlers",
    .tp_basicsize = sizeof(Handlers),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Handlers(tree, stat_type, parents, root, uid, gid, name_max, timeout, blksize): "
              "pyfuse3 fast handlers over a tree reader's bound methods.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Handlers_init,
    .tp_dealloc = (destructor)Handlers_dealloc,
    .tp_traverse = (traverseproc)Handlers_traverse,
    .tp_clear = (inquiry)Handlers_clear,
    .tp_methods = Handlers_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "siffs.fs._fast", "pyfuse3 fast request handlers (see _fast.c).", -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fast(void) {
    if (PyType_Ready(&HandlersType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "ABI", ABI) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&HandlersType);
    if (PyModule_AddObject(m, "Handlers", (PyObject *)&HandlersType) < 0) {
        Py_DECREF(&HandlersType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
