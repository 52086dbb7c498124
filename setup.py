"""The one thing pyproject.toml cannot say: the optional C extension behind the tiled kernel's native
forward (src/attnkit/csrc/tiled_fwd.c), the decoding matmuls (src/attnkit/csrc/gemv.c) and a decoding step's layer
(src/attnkit/csrc/decode.c). It needs neither Python's nor PyTorch's headers, and
``optional=True`` lets attnkit install without a C compiler, keeping the PyTorch path."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "attnkit._native",
            sources=["src/attnkit/csrc/tiled_fwd.c", "src/attnkit/csrc/gemv.c", "src/attnkit/csrc/decode.c"],
            depends=["src/attnkit/csrc/elements.h"],
            extra_compile_args=["-O3", "-std=c11", "-fno-math-errno", "-fopenmp"],
            # resolves at run time to the libgomp.so.1 PyTorch ships and has loaded: its thread pool
            extra_link_args=["-fopenmp"],
            libraries=["m"],
            optional=True,
        )
    ]
)
