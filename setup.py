"""Build script for the compiled part of atlas_fast.

Metadata lives in pyproject.toml; this file only declares what setuptools cannot
express there: the pybind11 extension `atlas_fast._C` (numpy buffers only, no torch headers, so it
builds in an isolated environment with pybind11 as its only requirement).
"""

import os
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

# OpenMP is what lets the C++ loops use the cores; on Linux gcc and clang ship it.
openmp_flags = ["-fopenmp"] if sys.platform.startswith("linux") else []
compile_flags = ["-O3", *openmp_flags]

c_extension = Pybind11Extension(
    "atlas_fast._C",
    sources=sorted(os.path.join("csrc", name) for name in os.listdir("csrc") if name.endswith(".cpp")),
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=compile_flags,
    extra_link_args=openmp_flags,
    # Recorded in the module so `python -m atlas_fast.info` can report how it was built.
    define_macros=[("ATLAS_FAST_BUILD_FLAGS", '"' + " ".join(compile_flags) + '"')],
)

setup(
    # Every subpackage of atlas_fast/, discovered (the Triton kernels are atlas_fast/kernels/).
    packages=find_packages(include=["atlas_fast", "atlas_fast.*"]),
    package_data={"atlas_fast": ["py.typed", "_C.pyi"]},
    ext_modules=[c_extension],
    cmdclass={"build_ext": build_ext},
)
