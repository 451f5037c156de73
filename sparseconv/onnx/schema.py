"""The ONNX operators of sparseconv's custom ops: one table gives their schema (registered with
``onnx.defs``), their translation from the torch op, and the kernel that runs them.

Domain ``ai.onnx.contrib`` (the one onnxruntime-extensions binds Python kernels to), version 1.
Integer lists travel as comma-separated string attributes (``"3,3,3"``), because that runtime
passes only int, float and string attributes; ``bounds=""`` means an unbounded grid.

==========================  ===========================================  =========================
operator                    inputs -> outputs                            attributes
==========================  ===========================================  =========================
``SparseSubmanifoldMap``    coords int32 [N, 4] -> nbmap int32 [N, K]    kernel_size, dilation,
                                                                         tensor_stride
``SparseStridedMap``        coords int32 [N, 4] -> out_coords int32      kernel_size, stride,
                            [M, 4], nbmap int32 [M, K] (M from data)     dilation, tensor_stride,
                                                                         padding, mode, bounds,
                                                                         transposed, submanifold
``SparseTransposeMap``      nbmap int32 [M, K], n_in int64 [] ->         (none)
                            nbmap int32 [n_in, K]
``SparseConv``              feats T [N, Cin], weight T [K, Cin, Cout],   submanifold
                            nbmap int32 [M, K] -> T [M, Cout]
``SparseLookup``            keys int64 [N], queries int64 [Q] ->         (none)
                            rows int32 [Q]
==========================  ===========================================  =========================

``nbmap[j, k]`` is the input row that output ``j`` reads through kernel offset ``k`` (x-major,
z fastest), -1 where there is none; ``SparseConv`` computes ``out[j] = sum_k feats[nbmap[j, k]]
@ weight[k]``. Coordinates are ``(batch, x, y, z)`` in voxel units of the input grid, multiples
of the tensor stride; ``SparseLookup`` keys pack them as :mod:`sparseconv.maps.keys` describes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sparseconv.functional import ops

DOMAIN = "ai.onnx.contrib"
VERSION = 1
FLOATS = ["tensor(float)", "tensor(double)", "tensor(float16)", "tensor(bfloat16)"]


def _ints(value) -> str:
    return ",".join(str(int(v)) for v in value)


def _parse(text: str) -> list[int]:
    return [int(v) for v in text.split(",")] if text else []


@dataclass(frozen=True)
class OpSpec:
    name: str
    torch_op: Callable
    inputs: tuple[tuple[str, str], ...]  # (name, ONNX type or "T")
    outputs: tuple[tuple[str, str], ...]
    attributes: tuple[tuple[str, str], ...]  # (name, "ints" | "int" | "string")
    # torch op arguments -> (ONNX inputs, ONNX attributes); ONNX values -> torch op arguments
    to_onnx: Callable
    to_torch: Callable


def _geometry_attrs(names, values) -> dict:
    return {n: _ints(v) for n, v in zip(names, values)}


SPECS = (
    OpSpec(
        "SparseSubmanifoldMap", ops.submanifold_map,
        (("coords", "tensor(int32)"),), (("nbmap", "tensor(int32)"),),
        (("kernel_size", "ints"), ("dilation", "ints"), ("tensor_stride", "ints")),
        lambda coords, ks, d, ts: ([coords], _geometry_attrs(("kernel_size", "dilation",
                                                              "tensor_stride"), (ks, d, ts))),
        lambda inputs, a: (inputs[0], _parse(a["kernel_size"]), _parse(a["dilation"]),
                           _parse(a["tensor_stride"])),
    ),
    OpSpec(
        "SparseStridedMap", ops.strided_map,
        (("coords", "tensor(int32)"),),
        (("out_coords", "tensor(int32)"), ("nbmap", "tensor(int32)")),
        (("kernel_size", "ints"), ("stride", "ints"), ("dilation", "ints"),
         ("tensor_stride", "ints"), ("padding", "ints"), ("mode", "string"), ("bounds", "ints"),
         ("transposed", "int"), ("submanifold", "int")),
        lambda coords, ks, s, d, ts, pad, mode, bounds, transposed, subm: (
            [coords],
            {**_geometry_attrs(("kernel_size", "stride", "dilation", "tensor_stride", "padding",
                                "bounds"), (ks, s, d, ts, pad, bounds)),
             "mode": mode, "transposed": int(transposed), "submanifold": int(subm)},
        ),
        lambda inputs, a: (inputs[0], _parse(a["kernel_size"]), _parse(a["stride"]),
                           _parse(a["dilation"]), _parse(a["tensor_stride"]), _parse(a["padding"]),
                           a["mode"], _parse(a["bounds"]), bool(a["transposed"]),
                           bool(a["submanifold"])),
    ),
    OpSpec(
        "SparseTransposeMap", ops.transpose_map,
        (("nbmap", "tensor(int32)"), ("n_in", "tensor(int64)")), (("out", "tensor(int32)"),), (),
        lambda nbmap, n_in: ([nbmap, n_in], {}),
        lambda inputs, a: (inputs[0], int(inputs[1])),
    ),
    OpSpec(
        "SparseConv", ops.conv,
        (("feats", "T"), ("weight", "T"), ("nbmap", "tensor(int32)")), (("out", "T"),),
        (("submanifold", "int"),),
        lambda feats, weight, nbmap, subm: ([feats, weight, nbmap], {"submanifold": int(subm)}),
        lambda inputs, a: (*inputs, bool(a["submanifold"])),
    ),
    OpSpec(
        "SparseLookup", ops.lookup,
        (("keys", "tensor(int64)"), ("queries", "tensor(int64)")), (("rows", "tensor(int32)"),),
        (),
        lambda keys, queries: ([keys, queries], {}),
        lambda inputs, a: tuple(inputs),
    ),
)  # fmt: skip


def register_schemas() -> None:
    """Make ``onnx.defs`` (and so onnxscript and the checker) know the operators; idempotent."""
    import onnx
    from onnx.defs import OpSchema

    kinds = {"ints": OpSchema.AttrType.STRING, "int": OpSchema.AttrType.INT,
             "string": OpSchema.AttrType.STRING}  # fmt: skip
    for spec in SPECS:
        if onnx.defs.has(spec.name, DOMAIN):
            continue
        uses_t = any(t == "T" for _, t in spec.inputs + spec.outputs)
        schema = OpSchema(
            spec.name, DOMAIN, VERSION, doc=f"sparseconv: {spec.name} (see sparseconv.onnx.schema)",
            inputs=[OpSchema.FormalParameter(n, t) for n, t in spec.inputs],
            outputs=[OpSchema.FormalParameter(n, t) for n, t in spec.outputs],
            type_constraints=[("T", FLOATS, "feature type")] if uses_t else [],
            attributes=[OpSchema.Attribute(n, kinds[k], n) for n, k in spec.attributes],
        )  # fmt: skip
        onnx.defs.register_schema(schema)


def run(spec: OpSpec, *inputs, **attributes):
    """The operator on numpy arrays, through the torch op it came from."""
    args = spec.to_torch([torch.from_numpy(v) for v in inputs], attributes)
    out = spec.torch_op(*args)
    return tuple(t.numpy() for t in out) if isinstance(out, tuple) else out.numpy()
