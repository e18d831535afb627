"""atlas_fast: fast, faithful Atlas training machinery.

Importing this package imports neither Triton nor the native module `_C`; both
load on first use (see atlas_fast._dispatch and atlas_fast._ext).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("atlas_fast")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
