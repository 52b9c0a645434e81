"""Build the native core, torrent._fast, from torrent/_fast.pyx (Cython 3)."""
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "torrent._fast",
        ["torrent/_fast.pyx"],
        depends=["torrent/_sha1.h"],
        extra_compile_args=["-O3"],
        libraries=["dl"],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
