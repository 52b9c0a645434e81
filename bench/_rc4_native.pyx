# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""A minimal native RC4, for bench/test_bench_rc4.py only: what a ``_fast.pyx``
kernel would give against OpenSSL's RC4 through ``cryptography``."""


cdef void _crypt(unsigned char* s, unsigned char* pi, unsigned char* pj,
                 unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef unsigned char i = pi[0]
    cdef unsigned char j = pj[0]
    cdef unsigned char a, b
    cdef Py_ssize_t k
    for k in range(n):
        i = <unsigned char>(i + 1)
        a = s[i]
        j = <unsigned char>(j + a)
        b = s[j]
        s[i] = b
        s[j] = a
        p[k] ^= s[<unsigned char>(a + b)]
    pi[0] = i
    pj[0] = j


cdef class NativeRC4:
    """RC4 with ``discard`` keystream bytes dropped; calling it rewrites a buffer in place."""

    cdef unsigned char s[256]
    cdef unsigned char i, j

    def __init__(self, const unsigned char[::1] key, Py_ssize_t discard=1024):
        cdef int a
        cdef unsigned char j = 0, t
        for a in range(256):
            self.s[a] = <unsigned char>a
        for a in range(256):
            j = <unsigned char>(j + self.s[a] + key[a % key.shape[0]])
            t = self.s[a]
            self.s[a] = self.s[j]
            self.s[j] = t
        self.i = 0
        self.j = 0
        if discard:
            self(bytearray(discard))

    def __call__(self, unsigned char[::1] view):
        if view.shape[0]:
            with nogil:
                _crypt(self.s, &self.i, &self.j, &view[0], view.shape[0])
