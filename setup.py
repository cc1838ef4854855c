"""Builds the optional C reader of OTLP requests (collector/_otlp_reader.c); everything else is in
pyproject.toml. ``optional=True``: without a C compiler the install still succeeds and the
collector uses its Python reader (same results, more CPU per span; the log says which)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "collector._otlp_reader",
            ["collector/_otlp_reader.c"],
            extra_compile_args=["-O2", "-std=c11"],
            optional=True,
        )
    ]
)
