/* The MySQL conversation's walk over a result, compiled: the optional speedup of
 * `Conversation._result` (conversation.py), which follows every answer to a query or a
 * prepared statement's execution and reads only what ends it.
 *
 * Why C: a result's packets are relayed unchanged; the gateway only counts its column
 * definitions and rows and finds the packet that ends it. In Python each packet costs a
 * header read and a few comparisons, and a whole point select's answer about 270
 * bytecodes; here the packets are counted in a loop of a few instructions each and Python
 * sees only what it must act on (the end of a result set, an error, the end of the column
 * definitions when their bytes are kept, anything unusual).
 *
 * `walk` does no more than the Python loop's state changes; everything with a side effect
 * (outcomes, errors, a prepared statement's kept head) stays in conversation.py, and so
 * does the Python loop: the fallback where no compiler was at hand, and the other side of
 * the property tests (tests/gateway/mysql/test_protocol.py) that hold the two to the same
 * output on every input.
 *
 * Untrusted input: `data` comes from the upstream server. A packet is read only when its
 * four-byte header and its whole payload are in `data`; a long packet (0xFFFFFF bytes, the
 * start of a packet continued in the next) stops the walk for the Python side.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* The parser states of conversation.py (S_FIRST ...) and what `walk` stopped at. */
enum { S_FIRST = 0, S_COLUMNS = 1, S_COLUMNS_EOF = 2, S_ROWS = 3 };
enum {
    EV_STOP = 0,     /* the data ends, a packet is cut short, or a long packet is next */
    EV_END = 1,      /* a result set ended (EOF or OK); its status, or -1: read it in Python */
    EV_ERROR = 2,    /* an ERR packet among the rows */
    EV_HEAD = 3,     /* the column definitions (and their EOF) just ended: keep the head */
    EV_OTHER = 4,    /* a packet for `Conversation._answer`, at pos (not read) */
    EV_PYTHON = 5    /* arguments out of this walk's range: walk in Python */
};
#define MAX_PAYLOAD 0xFFFFFF
#define MORE_RESULTS 0x0008

static PyObject *
result(int event, Py_ssize_t pos, Py_ssize_t last, long state, Py_ssize_t rows,
       unsigned long long left, long status)
{
    PyObject *t = PyTuple_New(7);
    if (t == NULL)
        return NULL;
    PyObject *items[7] = {PyLong_FromLong(event), PyLong_FromSsize_t(pos),
                          PyLong_FromSsize_t(last), PyLong_FromLong(state),
                          PyLong_FromSsize_t(rows), PyLong_FromUnsignedLongLong(left),
                          PyLong_FromLong(status)};
    for (int i = 0; i < 7; i++) {
        if (items[i] == NULL) {
            for (int j = 0; j < 7; j++)
                Py_XDECREF(items[j]);
            Py_DECREF(t);
            return NULL;
        }
    }
    for (int i = 0; i < 7; i++)
        PyTuple_SET_ITEM(t, i, items[i]);
    return t;
}

/* EV_PYTHON, with the arguments as they came (pos, state, rows, left). */
static PyObject *
unchanged(PyObject *const *args)
{
    return Py_BuildValue("(iOiOOOi)", EV_PYTHON, args[1], -1, args[3], args[4], args[5], -1);
}

/* walk(data, pos, n, state, rows, left, deprecate_eof, cursor, keep_head)
 *   -> (event, pos, last, state, rows, left, status)
 *
 * Follows the whole packets of `data[pos:n]` in a result's states as
 * `Conversation._result` does; `last` is where the last packet it consumed starts (-1:
 * none). EV_END and EV_ERROR consume the packet that ends the result set (it starts at
 * `last`, ends at `pos`); EV_OTHER leaves its packet at `pos`. */
static PyObject *
walk(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "walk takes 9 arguments");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *d = (const unsigned char *)view.buf;
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    Py_ssize_t n = PyLong_AsSsize_t(args[2]);
    long state = PyLong_AsLong(args[3]);
    Py_ssize_t rows = PyLong_AsSsize_t(args[4]);
    unsigned long long left = PyLong_AsUnsignedLongLong(args[5]);
    int deprecate_eof = PyObject_IsTrue(args[6]);
    int cursor = PyObject_IsTrue(args[7]);
    int keep_head = PyObject_IsTrue(args[8]);
    if (PyErr_Occurred() || deprecate_eof < 0 || cursor < 0 || keep_head < 0) {
        /* A count out of this walk's range (negative, or beyond 64 bits): the Python
         * loop takes it, from where it was. */
        PyBuffer_Release(&view);
        if (!PyErr_ExceptionMatches(PyExc_OverflowError) &&
            !PyErr_ExceptionMatches(PyExc_ValueError))
            return NULL;
        PyErr_Clear();
        return unchanged(args);
    }
    if (pos < 0 || n > view.len || pos > n || rows < 0 || state < 0) {
        PyBuffer_Release(&view);
        return unchanged(args);
    }
    Py_ssize_t last = -1;
    int event = EV_STOP;
    long status = -1;
    for (;;) {
        if (n - pos < 4)
            break;
        Py_ssize_t length = d[pos] | (d[pos + 1] << 8) | (d[pos + 2] << 16);
        Py_ssize_t end = pos + 4 + length;
        if (end > n || length >= MAX_PAYLOAD)
            break;
        int first = length ? d[pos + 4] : -1;
        if (state == S_ROWS) {
            if (first != 0xFE && first != 0xFF) { /* a row: counted */
                rows++;
                last = pos;
                pos = end;
                continue;
            }
            last = pos;
            pos = end;
            if (first == 0xFF) {
                event = EV_ERROR;
                break;
            }
            event = EV_END;
            if (length >= 5) {
                const unsigned char *p = d + last + 4;
                /* OK (DEPRECATE_EOF): affected rows and insert id of one byte each, then
                 * the status; EOF: warnings, then the status. Else Python reads it. */
                if (!deprecate_eof || (p[1] < 251 && p[2] < 251))
                    status = p[3] | (p[4] << 8);
            }
            break;
        }
        if (state == S_COLUMNS) {
            if (left == 0) { /* not a state the Python walk reaches: its confusion */
                event = EV_OTHER;
                break;
            }
            left--;
            last = pos;
            pos = end;
            if (left == 0) {
                if (deprecate_eof && !cursor) {
                    state = S_ROWS;
                    if (keep_head) {
                        event = EV_HEAD;
                        break;
                    }
                } else {
                    state = S_COLUMNS_EOF;
                }
            }
            continue;
        }
        if (state == S_COLUMNS_EOF && !cursor && !deprecate_eof && first != 0xFF) {
            /* The EOF after the column definitions (of a result without a cursor): its
             * status does not matter there. */
            last = pos;
            pos = end;
            state = S_ROWS;
            if (keep_head) {
                event = EV_HEAD;
                break;
            }
            continue;
        }
        if (state == S_FIRST && first > 0 && first < 0xFB) { /* a column count */
            left = (unsigned long long)first;
            rows = 0;
            state = S_COLUMNS;
            last = pos;
            pos = end;
            continue;
        }
        event = EV_OTHER; /* OK, ERR, a file asked for, a long column count, a cursor's EOF */
        break;
    }
    PyBuffer_Release(&view);
    return result(event, pos, last, state, rows, left, status);
}

static PyMethodDef methods[] = {
    {"walk", (PyCFunction)(void (*)(void))walk, METH_FASTCALL,
     "walk(data, pos, n, state, rows, left, deprecate_eof, cursor, keep_head) -> "
     "(event, pos, last, state, rows, left, status)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_walk",
    "The MySQL conversation's result walk, compiled (see conversation.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__walk(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
#ifndef WALK_SOURCE_SHA256
#define WALK_SOURCE_SHA256 "unknown"
#endif
    if (PyModule_AddStringConstant(m, "SOURCE_SHA256", WALK_SOURCE_SHA256) < 0 ||
        PyModule_AddIntConstant(m, "EV_STOP", EV_STOP) < 0 ||
        PyModule_AddIntConstant(m, "EV_END", EV_END) < 0 ||
        PyModule_AddIntConstant(m, "EV_ERROR", EV_ERROR) < 0 ||
        PyModule_AddIntConstant(m, "EV_HEAD", EV_HEAD) < 0 ||
        PyModule_AddIntConstant(m, "EV_OTHER", EV_OTHER) < 0 ||
        PyModule_AddIntConstant(m, "EV_PYTHON", EV_PYTHON) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
