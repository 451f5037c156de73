"""Drop-in front ends for code written against other sparse-conv libraries.

``import sparseconv.compat.spconv as spconv`` replaces ``import spconv.pytorch as spconv``;
``import sparseconv.compat.torchsparse as torchsparse`` replaces ``import torchsparse``. Each keeps
its library's tensor type, coordinate order, module and parameter names and weight layout, so a
peer's ``state_dict`` loads unchanged, and runs every convolution on sparseconv's maps and
dataflows. Neither is imported by ``import sparseconv``.
"""
