"""Read a mira-engine checkpoint (safetensors) without the `safetensors` package.

    from mira_checkpoint import load_file   # same result as safetensors.torch.load_file
    state = load_file("run/checkpoint.safetensors")

Only the format's essentials: 8-byte little-endian header length, JSON header, raw tensors.
"""
import json
import struct

import torch

_DTYPES = {"F32": torch.float32, "F64": torch.float64, "BF16": torch.bfloat16, "U8": torch.uint8,
           "I64": torch.int64, "I32": torch.int32, "F16": torch.float16}


def load_file(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        t = torch.frombuffer(bytearray(data[b:end]), dtype=_DTYPES[e["dtype"]]) if end > b else \
            torch.empty(0, dtype=_DTYPES[e["dtype"]])
        out[name] = t.reshape(e["shape"]).clone()
    return out


def metadata(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)).get("__metadata__", {})
