"""Leaf helpers the library and its tools share; each imports only torch and the standard library.

``timing`` (interleaved timing, used by ``prune.accelerate_nm`` and by ``bench``), ``precision``
(the accumulation dtype every dataflow uses), ``optional`` (imports of optional dependencies
with the install line in the error), ``stamps`` (when data kept from a tensor is stale).
"""
