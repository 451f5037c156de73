"""Triton kernels of sparseconv (one module per kernel family).

Each kernel's docstring names its algorithm and the plain-torch reference in ``sparseconv`` that
tests compare it with. Kernels run on CUDA, and on CPU tensors under ``TRITON_INTERPRET=1``
(slow; tests use small inputs). This package imports only torch and triton.
"""
