"""Paddle's own file formats, read without paddle (numpy only), so that every reader checks them —
FastDeploy front ends included, which must never load paddle: the program description
(model.pdmodel, a protobuf ProgramDesc read at the wire level) and the weights (model.pdiparams,
Paddle's save_combine stream). export_format.py holds the export contract built on them."""
import contextlib
from typing import List, Tuple

import numpy as np


class FormatError(ValueError):
    """A file that is not what Paddle writes; the message names the file."""


# ----------------------------------------------------------------------------- model.pdmodel
# Paddle's ProgramDesc (paddle/fluid/framework/framework.proto) read at the protobuf wire level, so
# that readers without paddle (FastDeploy front ends) check it too: ProgramDesc.blocks = 1;
# BlockDesc.vars = 3, .ops = 4; VarDesc.name = 1, .type = 2; VarType.lod_tensor = 3;
# LoDTensorDesc.tensor = 1; TensorDesc.dims = 2; OpDesc.inputs = 1, .type = 3; OpDesc.Var.parameter = 1, .arguments = 2.


def _varint(buf: bytes, i: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes):
    """(field number, value) of one protobuf message: varints as int, length-delimited fields as bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i : i + size], i + size
        elif wire in (1, 5):
            value, i = None, i + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"wire type {wire}")
        if i > len(buf):
            raise ValueError("message cut short")
        yield field, value


def _first(buf: bytes, field: int) -> bytes:
    return next((v for f, v in _fields(buf) if f == field), b"")


def _dims(tensor_desc: bytes) -> List[int]:
    dims = []
    for field, value in _fields(tensor_desc):
        if field == 2:
            packed = [value] if isinstance(value, int) else []
            if isinstance(value, bytes):  # packed repeated int64
                i = 0
                while i < len(value):
                    v, i = _varint(value, i)
                    packed.append(v)
            dims += [v - (1 << 64) if v >= 1 << 63 else v for v in packed]
    return dims


@contextlib.contextmanager
def _program_block(graph_path: str):
    """The first block of a Paddle program file, as bytes; a parse error inside the block turns
    into a FormatError naming the file."""
    with open(graph_path, "rb") as f:
        program = f.read()
    try:
        yield _first(program, 1)
    except (ValueError, IndexError, KeyError, UnicodeDecodeError) as e:
        raise FormatError(f"{graph_path}: not a readable Paddle program ({type(e).__name__}: {e})") from None


def lookup_tables(graph_path: str) -> List[Tuple[str, List[int]]]:
    """(ids variable, table shape) of every embedding lookup (lookup_table_v2) in a graph's first
    block, in op order; raises FormatError when the file is no Paddle program."""
    with _program_block(graph_path) as block:
        shapes, tables = {}, []
        for field, value in _fields(block):
            if field == 3:  # a variable
                name = _first(value, 1).decode("utf-8")
                shapes[name] = _dims(_first(_first(_first(value, 2), 3), 1))
            elif field == 4 and _first(value, 3) == b"lookup_table_v2":
                inputs = {}
                for f, var in _fields(value):
                    if f == 1:
                        inputs[_first(var, 1).decode("utf-8")] = [a.decode("utf-8") for k, a in _fields(var) if k == 2]
                tables.append((inputs["Ids"][0], inputs["W"][0]))
        return [(ids, shapes[table]) for ids, table in tables]


def op_types(graph_path: str) -> List[str]:
    """The operator types of a graph's first block, in op order; raises FormatError when the file
    is no Paddle program."""
    with _program_block(graph_path) as block:
        return [_first(op, 3).decode("utf-8") for field, op in _fields(block) if field == 4]


# ----------------------------------------------------------------------------- model.pdiparams
# model.pdiparams is Paddle's save_combine stream: per tensor, uint32 version, uint64 LoD level
# (each level: uint64 byte size + its offsets), uint32 tensor version, int32 size of a TensorDesc
# (framework.proto: data_type = 1, dims = 2), then the raw data, little-endian.
_DTYPES = {0: "bool", 1: "int16", 2: "int32", 3: "int64", 4: "float16", 5: "float32", 6: "float64", 20: "uint8", 21: "int8",
           22: "bfloat16"}


def _tensor_desc(desc: bytes) -> Tuple[str, List[int]]:
    code = next((v for f, v in _fields(desc) if f == 1), None)
    if code not in _DTYPES:
        raise ValueError(f"unknown data type {code}")
    return _DTYPES[code], _dims(desc)


def weight_tensors(params_path: str):
    """(dtype, dims, raw bytes) of every tensor of a pdiparams file, in file order; ValueError
    when the file is cut short, has bytes left over, or is no such stream."""
    with open(params_path, "rb") as f:
        data = f.read()
    i, tensors = 0, []

    def take(n: int) -> bytes:
        nonlocal i
        if n < 0 or i + n > len(data):
            raise ValueError(f"cut short: tensor {len(tensors) + 1} needs bytes {i}..{i + n}, the file has {len(data)}")
        i += n
        return data[i - n : i]

    while i < len(data):
        if int.from_bytes(take(4), "little") != 0:
            raise ValueError(f"tensor {len(tensors) + 1} at byte {i - 4}: unknown version")
        for _ in range(int.from_bytes(take(8), "little")):
            take(int.from_bytes(take(8), "little"))
        if int.from_bytes(take(4), "little") != 0:
            raise ValueError(f"tensor {len(tensors) + 1} at byte {i - 4}: unknown tensor version")
        dtype, dims = _tensor_desc(take(int.from_bytes(take(4), "little", signed=True)))
        if any(d < 0 for d in dims):
            raise ValueError(f"tensor {len(tensors) + 1}: negative dimension in {dims}")
        size = int(np.prod(dims, dtype="int64")) * (2 if dtype == "bfloat16" else np.dtype(dtype).itemsize)
        tensors.append((dtype, dims, take(size)))
    return tensors
