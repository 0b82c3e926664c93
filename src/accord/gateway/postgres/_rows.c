/* The gateway's row loops, compiled: the optional speedup of `mask.rewrite_rows` for a
 * result whose masked columns are replaced whole (no detector reads their values), and of
 * the conversation's walk over the rows it only counts (`walk_rows`).
 *
 * Why C: the loop runs once per DataRow of every masked result. In Python it costs about
 * 0.5-0.9 us a row (field lengths read one `unpack_from` at a time, the row rebuilt from
 * slices); here it is a few nanoseconds, so a masked session costs what an unmasked one
 * does (benchmarks/README.md, gateway_rules.py). The Python loop in mask.py stays: it is
 * the fallback where no compiler was at hand when Accord was installed, and the other side
 * of the property tests (tests/gateway/test_masking.py) that hold the two to
 * the same output on every input.
 *
 * Untrusted input: `data` comes from the upstream server. Every length is checked against
 * the row's end before it is used; a row that is malformed, cut by the end of the buffer,
 * or has fewer fields than the plan masks stops the walk, and the Python side takes it
 * (it raises the protocol error or rewrites the row carefully).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static inline uint32_t
be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void
put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* The length of the DataRow at `p` once masked, or -1 when the walk stops there (not a
 * whole, regular DataRow with at least `ncols` fields). `hits[i]` is set for each column
 * replaced, by the caller once the row proved regular (`row_hits` holds them until then). */
static Py_ssize_t
masked_length(const unsigned char *d, Py_ssize_t p, Py_ssize_t n, Py_ssize_t ncols,
              const Py_ssize_t *rlen, char *row_hits)
{
    if (n - p < 7 || d[p] != 'D')
        return -1;
    uint32_t length = be32(d + p + 1);
    if (length < 6 || length > INT32_MAX || (Py_ssize_t)length > n - p - 1)
        return -1; /* malformed (a negative length read signed), or cut by the read */
    Py_ssize_t end = p + 1 + (Py_ssize_t)length;
    int16_t count = (int16_t)((d[p + 5] << 8) | d[p + 6]);
    if (count < ncols)
        return -1;
    Py_ssize_t f = p + 7;
    int64_t out = (int64_t)length;
    for (Py_ssize_t i = 0; i < ncols; i++) {
        if (end - f < 4)
            return -1;
        int32_t fl = (int32_t)be32(d + f);
        Py_ssize_t next;
        if (fl == -1)
            next = f + 4; /* NULL: kept as it is */
        else if (fl < 0 || (Py_ssize_t)fl > end - f - 4)
            return -1;
        else
            next = f + 4 + fl;
        row_hits[i] = rlen[i] >= 0 && fl != -1;
        if (row_hits[i])
            out += rlen[i] - (next - f);
        f = next;
    }
    if (out > INT32_MAX)
        return -1;
    return (Py_ssize_t)out;
}

PyDoc_STRVAR(mask_rows_doc,
"mask_rows(data, pos, n, replacements) -> (end, rows, out, hits)\n\n"
"Walk the whole DataRows of data[pos:n] while each is regular, replacing the fields\n"
"whose entry in `replacements` (a tuple, one entry per column up to the last masked\n"
"one) is bytes (the field as sent: its length, then its value) unless they are NULL.\n"
"Returns where the walk stopped, how many rows it passed, the rewritten bytes of\n"
"data[pos:end] (None when no value changed) and the indexes of the columns replaced.");

static PyObject *
mask_rows(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    Py_ssize_t pos, n;
    PyObject *repl;
    if (!PyArg_ParseTuple(args, "y*nnO!", &buf, &pos, &n, &PyTuple_Type, &repl))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t ncols = PyTuple_GET_SIZE(repl);
    const char **rptr = NULL;
    Py_ssize_t *rlen = NULL;
    char *hits = NULL, *row_hits = NULL;
    if (pos < 0 || n > buf.len || pos > n) {
        PyErr_SetString(PyExc_ValueError, "mask_rows: pos and n must lie within data");
        goto done;
    }
    if (ncols < 1) {
        PyErr_SetString(PyExc_ValueError, "mask_rows: no columns to mask");
        goto done;
    }
    rptr = PyMem_Malloc(ncols * sizeof(*rptr));
    rlen = PyMem_Malloc(ncols * sizeof(*rlen));
    hits = PyMem_Calloc(ncols, 1);
    row_hits = PyMem_Calloc(ncols, 1);
    if (rptr == NULL || rlen == NULL || hits == NULL || row_hits == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < ncols; i++) {
        PyObject *item = PyTuple_GET_ITEM(repl, i);
        if (item == Py_None) {
            rptr[i] = NULL;
            rlen[i] = -1;
        } else if (PyBytes_Check(item)) {
            rptr[i] = PyBytes_AS_STRING(item);
            rlen[i] = PyBytes_GET_SIZE(item);
        } else {
            PyErr_SetString(PyExc_TypeError, "mask_rows: replacements are bytes or None");
            goto done;
        }
    }
    const unsigned char *d = (const unsigned char *)buf.buf;

    /* First pass: how far the rows are regular, and the size of their masked form. */
    Py_ssize_t p = pos, total = 0, rows = 0;
    for (;;) {
        Py_ssize_t length = masked_length(d, p, n, ncols, rlen, row_hits);
        if (length < 0 || length > PY_SSIZE_T_MAX - 1 - total)
            break;
        for (Py_ssize_t i = 0; i < ncols; i++)
            hits[i] |= row_hits[i];
        total += 1 + length;
        rows++;
        p += 1 + (Py_ssize_t)be32(d + p + 1);
    }
    Py_ssize_t end = p;
    int changed = 0;
    for (Py_ssize_t i = 0; i < ncols; i++)
        changed |= hits[i];

    PyObject *out;
    if (!changed) {
        out = Py_NewRef(Py_None);
    } else {
        /* Second pass over the rows the first one checked: copy, replacing. */
        out = PyBytes_FromStringAndSize(NULL, total);
        if (out == NULL)
            goto done;
        unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
        p = pos;
        while (p < end) {
            Py_ssize_t row_end = p + 1 + (Py_ssize_t)be32(d + p + 1);
            unsigned char *head = o;
            o += 5; /* kind and length, written once the length is known */
            memcpy(o, d + p + 5, 2);
            o += 2;
            Py_ssize_t f = p + 7;
            for (Py_ssize_t i = 0; i < ncols; i++) {
                int32_t fl = (int32_t)be32(d + f);
                Py_ssize_t next = fl == -1 ? f + 4 : f + 4 + fl;
                if (rptr[i] != NULL && fl != -1) {
                    memcpy(o, rptr[i], rlen[i]);
                    o += rlen[i];
                } else {
                    memcpy(o, d + f, next - f);
                    o += next - f;
                }
                f = next;
            }
            memcpy(o, d + f, row_end - f);
            o += row_end - f;
            head[0] = 'D';
            put_be32(head + 1, (uint32_t)(o - head - 1));
            p = row_end;
        }
        if (o != (unsigned char *)PyBytes_AS_STRING(out) + total) {
            Py_DECREF(out);
            PyErr_SetString(PyExc_SystemError, "mask_rows: the two passes disagree");
            goto done;
        }
    }
    PyObject *replaced = PyList_New(0);
    if (replaced == NULL) {
        Py_DECREF(out);
        goto done;
    }
    for (Py_ssize_t i = 0; i < ncols; i++) {
        if (hits[i]) {
            PyObject *index = PyLong_FromSsize_t(i);
            if (index == NULL || PyList_Append(replaced, index) < 0) {
                Py_XDECREF(index);
                Py_DECREF(replaced);
                Py_DECREF(out);
                goto done;
            }
            Py_DECREF(index);
        }
    }
    result = Py_BuildValue("nnNN", end, rows, out, replaced);
done:
    PyMem_Free(rptr);
    PyMem_Free(rlen);
    PyMem_Free(hits);
    PyMem_Free(row_hits);
    PyBuffer_Release(&buf);
    return result;
}

PyDoc_STRVAR(walk_rows_doc,
"walk_rows(data, pos, n, copy, whole) -> (end, rows, rest)\n\n"
"Pass over the run of DataRow ('D') messages, and CopyData ('d') ones when `copy`, at\n"
"data[pos:n], as the conversation passes rows it only counts. Returns where the run ends,\n"
"how many messages it held and, when the last is cut by the end of the read, how many of\n"
"its bytes are still to come (`end` is then n), 0 otherwise; with `whole`, a cut message\n"
"ends the run before it instead (rest 0). A message too short for its kind (a DataRow\n"
"under 6 bytes of length, a CopyData under 4) ends the run before it: the caller judges it.");

static PyObject *
walk_rows(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    Py_ssize_t pos, n;
    int copy, whole;
    if (!PyArg_ParseTuple(args, "y*nnpp", &buf, &pos, &n, &copy, &whole))
        return NULL;
    if (pos < 0 || n > buf.len || pos > n) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "walk_rows: pos and n must lie within data");
        return NULL;
    }
    const unsigned char *d = (const unsigned char *)buf.buf;
    const unsigned char other = copy ? 'd' : 'D';
    Py_ssize_t rows = 0, rest = 0;
    while (n - pos >= 5 && (d[pos] == 'D' || d[pos] == other)) {
        int32_t length = (int32_t)be32(d + pos + 1);
        if (length < (d[pos] == 'D' ? 6 : 4))
            break;
        Py_ssize_t end = pos + 1 + (Py_ssize_t)length;
        if (end > n) {
            if (!whole) {
                rows++;
                rest = end - n;
                pos = n;
            }
            break;
        }
        rows++;
        pos = end;
    }
    PyBuffer_Release(&buf);
    return Py_BuildValue("nnn", pos, rows, rest);
}

static PyMethodDef methods[] = {
    {"mask_rows", mask_rows, METH_VARARGS, mask_rows_doc},
    {"walk_rows", walk_rows, METH_VARARGS, walk_rows_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "accord.gateway.postgres._rows",
    "Masking's row loop, compiled (see mask.py).", -1, methods,
};

#ifndef ROWS_SOURCE_SHA256
#define ROWS_SOURCE_SHA256 "unknown"
#endif

PyMODINIT_FUNC
PyInit__rows(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddStringConstant(m, "SOURCE_SHA256", ROWS_SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
