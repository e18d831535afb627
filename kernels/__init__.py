"""Triton kernels of atlas_fast, installed as `atlas_fast.kernels`.

Each module holds one op: its kernels, host launchers and autograd.Function.
Importing a module here imports Triton; atlas_fast only does so after
atlas_fast._dispatch chose the Triton backend for a call.
"""
