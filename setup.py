"""The one thing pyproject.toml cannot say: the optional C fast paths of stream reading.

_chunkscan decodes the common chat chunk, _framing takes whole HTTP chunks and plain SSE
events. `optional=True`: on a machine without a C compiler the build goes on without them,
and every read takes the Python steps they stand in for (same results, slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            f"deepconf.backends.{name}",
            [f"backends/{name}.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
        for name in ("_chunkscan", "_framing")
    ]
)
