# Shared by torrent/_fast.pyx and torrent/_io.pyx (``include "_buffers.pxi"``):
# each module gets its own copy of these helpers, compiled in.  Keep this file
# to what both need; a helper one module alone uses stays in that module.

from cpython.buffer cimport (
    PyBUF_C_CONTIGUOUS,
    PyBUF_FORMAT,
    PyBUF_WRITABLE,
    PyBuffer_Release,
    PyObject_GetBuffer,
)


cdef int _acquire_bytes(object obj, Py_buffer *view, bint writable) except -1:
    """Fill ``view`` like a ``const unsigned char[::1]`` argument, without an object.

    The same rules and exception types as a typed memoryview argument (and the
    pure twin): TypeError if ``obj`` has no buffer, BufferError if it is not
    writable (when asked) or not C-contiguous, ValueError unless it is
    one-dimensional with byte items. On success the caller must release it.
    """
    if obj is None:
        raise TypeError("a bytes-like object is required, not 'NoneType'")
    PyObject_GetBuffer(obj, view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS
                       | (PyBUF_WRITABLE if writable else 0))
    cdef const char *fmt = view.format
    if fmt is not NULL and fmt[0] in b"@=<>!":
        fmt += 1
    if view.ndim != 1:
        PyBuffer_Release(view)
        raise ValueError(f"Buffer has wrong number of dimensions (expected 1, got {view.ndim})")
    if fmt is not NULL and not ((fmt[0] == b"B" or fmt[0] == b"c") and fmt[1] == 0):
        PyBuffer_Release(view)
        raise ValueError("Buffer dtype mismatch: expected a buffer of bytes")
    return 0
