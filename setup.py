"""The one thing pyproject.toml cannot say: the optional C fast path of the stream decoder.

`optional=True`: on a machine without a C compiler the build goes on without it, and
deepconf.backends.sse decodes every read with msgspec instead (same results, slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "deepconf.backends._chunkscan",
            ["backends/_chunkscan.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
