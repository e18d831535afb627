"""Triton kernels of atlas_fast.

Each module holds one op: its kernels, host launchers and autograd.Function.
Importing a module here imports Triton; atlas_fast only does so after
atlas_fast._dispatch chose the Triton backend for a call.

They live inside the package, not in a top-level `kernels/` folder: any folder of that name at the
checkout's root is found first whenever the root is on sys.path (`python -m ...`, pytest, notebooks)
and shadows Hugging Face's `kernels` distribution, which transformers >= 5.25 imports on load.
"""
