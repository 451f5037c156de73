"""ONNX export of sparse-conv networks, and a runtime for the exported model.

``sparseconv.onnx.export(model, example, path)`` exports through ``torch.onnx.export(...,
dynamo=True)`` with a dynamic number of voxels; the sparse ops become the ``ai.onnx.contrib``
operators of :mod:`sparseconv.onnx.schema`, everything else standard ONNX.
``sparseconv.onnx.session(path)`` opens it in onnxruntime with those operators backed by
sparseconv's kernels (through onnxruntime-extensions' Python operators: correct everywhere,
but every output crosses Python as a list, so it is a reference runtime, not a fast one).
Needs the ``deploy`` extra (``pip install sparseconv[deploy]``). What a TensorRT user must still
write is in ``docs/porting.md``.
"""

from __future__ import annotations

import os

import torch

from sparseconv.onnx import schema
from sparseconv.tensor import SparseTensor
from sparseconv.utils.optional import require

__all__ = ["export", "session", "schema"]

_KERNELS_BOUND = False


def export(model: torch.nn.Module, example: SparseTensor, path: str | os.PathLike, **kwargs):
    """Export ``model(example)`` to ``path``; the voxel count is dynamic (inputs ``x_feats``,
    ``x_coords``). Returns torch's ``ONNXProgram``."""
    require("onnxscript", "ONNX export")
    import onnxscript

    schema.register_schemas()
    opset = onnxscript.values.Opset(schema.DOMAIN, schema.VERSION)
    table = {spec.torch_op._opoverload: _translation(opset, spec) for spec in schema.SPECS}
    voxels = torch.export.Dim("voxels", min=2)
    program = torch.export.export(model, (example,), dynamic_shapes=([{0: voxels}, {0: voxels}],))
    onnx_program = torch.onnx.export(program, dynamo=True, custom_translation_table=table,
                                     report=False, verbose=False, **kwargs)  # fmt: skip
    onnx_program.save(str(path))
    return onnx_program


def _translation(opset, spec: schema.OpSpec):
    def translate(*args):
        inputs, attributes = spec.to_onnx(*args)
        return getattr(opset, spec.name)(*inputs, **attributes)

    translate.__name__ = spec.name
    return translate


def session(path: str | os.PathLike, providers: list[str] | None = None):
    """An onnxruntime ``InferenceSession`` of an exported model, its sparse operators running
    sparseconv's kernels; feed ``{"x_feats": ..., "x_coords": ...}`` as numpy arrays."""
    require("onnxruntime", "an ONNX runtime session")
    require("onnxruntime_extensions", "an ONNX runtime session")
    import onnxruntime
    from onnxruntime_extensions import get_library_path

    _bind_kernels()
    options = onnxruntime.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    return onnxruntime.InferenceSession(str(path), options,
                                        providers=providers or ["CPUExecutionProvider"])  # fmt: skip


def _bind_kernels() -> None:
    """Declare every operator to onnxruntime-extensions once per process."""
    global _KERNELS_BOUND
    if _KERNELS_BOUND:
        return
    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    types = {"tensor(int32)": PyCustomOpDef.dt_int32, "tensor(int64)": PyCustomOpDef.dt_int64,
             "T": PyCustomOpDef.dt_float}  # fmt: skip
    kinds = {"ints": PyCustomOpDef.dt_string, "string": PyCustomOpDef.dt_string,
             "int": PyCustomOpDef.dt_int64}  # fmt: skip
    for spec in schema.SPECS:
        onnx_op(
            op_type=spec.name,
            inputs=[types[t] for _, t in spec.inputs],
            outputs=[types[t] for _, t in spec.outputs],
            attrs={n: kinds[k] for n, k in spec.attributes},
        )(_kernel(spec))
    _KERNELS_BOUND = True


def _kernel(spec: schema.OpSpec):
    def kernel(*inputs, **attributes):
        return schema.run(spec, *inputs, **attributes)

    return kernel
