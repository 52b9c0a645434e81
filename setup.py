"""Build the native core (Cython 3): torrent._fast, the kernels (torrent/_fast.pyx),
and torrent._io, the native I/O thread (torrent/_io.pyx)."""
from Cython.Build import cythonize
from setuptools import Extension, setup

# Both modules compile in the SHA-1 and SHA-256 headers, the BEP 52 merkle
# roots (_merkle.h) and the shared buffer helpers.
DEPENDS = ["torrent/_sha1.h", "torrent/_sha256.h", "torrent/_merkle.h", "torrent/_ossl_digest.h",
           "torrent/_md32.h", "torrent/_buffers.pxi"]


def native(name: str, source: str) -> Extension:
    """One extension module, built with the flags every module of the core shares."""
    return Extension(name, [source], depends=DEPENDS, extra_compile_args=["-O3"],
                     libraries=["dl"])


extensions = [
    native("torrent._fast", "torrent/_fast.pyx"),
    native("torrent._io", "torrent/_io.pyx"),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
