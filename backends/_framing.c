/* The common case of the two framings a stream read goes through, in C: HTTP/1.1 chunked
 * transfer coding (backends/h1_transport.py) and server-sent events (backends/sse_framing.py).
 *
 * whole_chunks(buf: bytearray, pos: int) -> (pos: int, data: bytes)
 *     The chunks "SIZE\r\nDATA\r\n" that lie whole in buf from pos, back to back: their
 *     data joined, and where they end. It stops at anything else (a chunk extension, a
 *     size with signs or spaces, the last chunk, a chunk the read cut), which the caller's
 *     general steps then read: so it may stop earlier than h1_transport._whole_chunks, the
 *     Python twin the tests compare it with, but never reads past where that one stops.
 *
 * data_events(pending: bytearray, chunk: bytes, limit: int) -> list[bytes] | None
 *     SSEDecoder.feed for a read of the common shape: pending + chunk is "data: X\n\n"
 *     events back to back, then at most an incomplete line (which becomes the new pending).
 *     The payloads X, or None (nothing changed) for any other read: a CR, a comment, an
 *     event of two lines, a line past `limit`, a read without a line end. The caller's
 *     Python steps then read it as they always have.
 *
 * Why C: at one event per token, splitting a read of a hundred events into lines and
 * slicing each costs Python a few hundred objects per read; here one bytes per event.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *whole_chunks(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *buf;
    Py_ssize_t pos;
    if (!PyArg_ParseTuple(args, "O!n", &PyByteArray_Type, &buf, &pos)) return NULL;
    const char *b = PyByteArray_AS_STRING(buf);
    Py_ssize_t n = PyByteArray_GET_SIZE(buf), start = pos, total = 0;
    if (pos < 0 || pos > n) {
        PyErr_SetString(PyExc_ValueError, "pos outside the buffer");
        return NULL;
    }
    /* First pass: where the whole chunks end and how much data they hold. */
    for (;;) {
        Py_ssize_t i = pos, size = 0;
        while (i < n && i - pos < 15) { /* 15 hex digits: no overflow */
            char c = b[i];
            int d = c >= '0' && c <= '9'   ? c - '0'
                    : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                           : -1;
            if (d < 0) break;
            size = size * 16 + d;
            i++;
        }
        if (i == pos || size == 0 || n - i < 2 || b[i] != '\r' || b[i + 1] != '\n') break;
        Py_ssize_t data = i + 2;
        if (n - data < size + 2 || b[data + size] != '\r' || b[data + size + 1] != '\n') break;
        total += size;
        pos = data + size + 2;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (!out) return NULL;
    /* Second pass: copy the data (the sizes are known good now). */
    char *o = PyBytes_AS_STRING(out);
    for (Py_ssize_t p = start; p < pos;) {
        Py_ssize_t size = 0;
        while (b[p] != '\r') {
            char c = b[p++];
            size = size * 16 + (c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
        }
        memcpy(o, b + p + 2, size);
        o += size;
        p += 2 + size + 2;
    }
    return Py_BuildValue("nN", pos, out);
}

static PyObject *data_events(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *pending;
    const char *c;
    Py_ssize_t n, limit;
    if (!PyArg_ParseTuple(args, "O!y#n", &PyByteArray_Type, &pending, &c, &n, &limit))
        return NULL;
    const char *pend = PyByteArray_AS_STRING(pending);
    Py_ssize_t np = PyByteArray_GET_SIZE(pending);
    if (memchr(c, '\r', n)) Py_RETURN_NONE;
    const char *last = c + n - 1; /* the last line end */
    while (last >= c && *last != '\n') last--;
    if (last < c) Py_RETURN_NONE; /* no line end: the caller appends in place */
    Py_ssize_t rest = n - (last - c + 1);
    if (rest > limit) Py_RETURN_NONE;
    /* Validate first: "data: ..." then an empty line, again and again, up to `last`. */
    Py_ssize_t events = 0, at = 0, end = last - c + 1;
    while (at < end) {
        const char *nl = memchr(c + at, '\n', end - at);
        Py_ssize_t len = nl - (c + at) + (events == 0 ? np : 0); /* the first line has pending */
        if (len > limit || len < 6) Py_RETURN_NONE;
        if (events == 0 && np) {
            char head[6];
            Py_ssize_t from_pending = np < 6 ? np : 6;
            memcpy(head, pend, from_pending);
            memcpy(head + from_pending, c, 6 - from_pending);
            if (memcmp(head, "data: ", 6) != 0) Py_RETURN_NONE;
        } else if (memcmp(c + at, "data: ", 6) != 0) {
            Py_RETURN_NONE;
        }
        at = nl - c + 1;
        if (at >= end || c[at] != '\n') Py_RETURN_NONE; /* not a blank line next */
        at++;
        events++;
    }
    PyObject *out = PyList_New(events);
    if (!out) return NULL;
    at = 0;
    for (Py_ssize_t e = 0; e < events; e++) {
        const char *nl = memchr(c + at, '\n', end - at);
        PyObject *payload;
        if (e == 0 && np) { /* pending + the read's first line, less "data: " */
            Py_ssize_t len = np + (nl - c) - 6;
            payload = PyBytes_FromStringAndSize(NULL, len);
            if (payload) {
                char *p = PyBytes_AS_STRING(payload);
                if (np >= 6) {
                    memcpy(p, pend + 6, np - 6);
                    memcpy(p + np - 6, c, nl - c);
                } else {
                    memcpy(p, c + (6 - np), len);
                }
            }
        } else {
            payload = PyBytes_FromStringAndSize(c + at + 6, nl - (c + at) - 6);
        }
        if (!payload) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, e, payload);
        at = nl - c + 2;
    }
    /* The incomplete line left is the new pending. */
    if (PyByteArray_Resize(pending, rest) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    memcpy(PyByteArray_AS_STRING(pending), c + end, rest);
    return out;
}

static PyMethodDef methods[] = {
    {"whole_chunks", whole_chunks, METH_VARARGS,
     "whole_chunks(buf, pos) -> (pos, data): the whole HTTP chunks from pos, data joined."},
    {"data_events", data_events, METH_VARARGS,
     "data_events(pending, chunk, limit) -> list[bytes] | None: the payloads of a read of\n"
     "plain 'data: ' events, or None (nothing changed) for any other read."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_framing", "HTTP chunked and SSE framing: the common case.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__framing(void) { return PyModule_Create(&module); }
