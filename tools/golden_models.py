"""Golden fixtures for the models (issue 4): torchvision's ResNets and the MIRA heads run in
PyTorch with weights from a closed-form formula that the C++ tests compute too, so the
fixtures hold only outputs and gradients (small), never weights.

Run with Debian's interpreter: /usr/bin/python3 tools/golden_models.py [OUT_DIR]
(needs python3-torch, python3-torchvision; writes tests/data/models/*.safetensors).

The formula: for a tensor named NAME with n elements in PyTorch's layout (OIHW for convs,
NCHW for images), s_i = sqrt(3) * (2 u_i - 1) with u_i = splitmix64((fnv1a32(NAME) << 32) + i)
/ 2^64 (53 bits): hash noise of unit variance, computed in float64 and rounded to float32.
Scales per kind are in formula_value() and mirrored in tests/test_models.cpp.
"""
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torchvision


def fnv1a32(s):
    h = 0x811C9DC5
    for b in s.encode():
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def unit_noise(name, shape):
    """Hash noise, uniform with unit variance: splitmix64(fnv1a32(name) << 32 | i)."""
    n = int(np.prod(shape)) if len(shape) else 1
    with np.errstate(over="ignore"):
        z = (np.uint64(fnv1a32(name)) << np.uint64(32)) + np.arange(n, dtype=np.uint64)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return (math.sqrt(3.0) * (2.0 * u - 1.0)).reshape(shape)


def formula_value(name, shape):
    """float64 values for a parameter/buffer/input named `name` (PyTorch layout)."""
    s = unit_noise(name, shape)
    leaf = name.split(".")[-1]
    if leaf == "running_var":
        return 1.0 + 0.5 * s * s
    if leaf == "running_mean":
        return 0.1 * s
    if leaf == "bias":
        return 0.1 * s
    if leaf == "weight_g":
        return np.ones(shape)
    if leaf == "weight_v":
        return s
    if leaf == "weight" and len(shape) == 1:  # BN gamma
        return 1.0 + 0.2 * s
    if leaf == "weight" and len(shape) == 4:  # conv: kaiming fan_out scale
        fan_out = shape[0] * shape[2] * shape[3]
        return math.sqrt(2.0 / fan_out) * s
    if leaf == "weight" and len(shape) == 2:  # linear
        return s / math.sqrt(shape[1])
    return s  # inputs and head vectors


def f32(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64).astype(np.float32))


def formula_init(module):
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            t.copy_(f32(formula_value(name, tuple(t.shape))))


def write_safetensors(path, tensors, metadata=None):
    header = {}
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    blobs, off = [], 0
    for name, t in tensors.items():
        a = t.detach().cpu().contiguous()
        dt = {torch.float32: "F32", torch.int64: "I64", torch.float64: "F64"}[a.dtype]
        if dt == "F64" and name.startswith("grad.") and a.numel() > 4096:
            a, dt = a.float(), "F32"  # large gradients stored in f32 to keep fixtures small
        b = a.numpy().tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    hs = json.dumps(header, separators=(",", ":")).encode()
    hs += b" " * ((8 - len(hs) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hs)))
        f.write(hs)
        for b in blobs:
            f.write(b)


def backbone(arch, cifar_stem_padding):
    if arch == "resnet_tiny":
        from torchvision.models.resnet import BasicBlock, ResNet

        class Tiny(ResNet):
            def __init__(self):
                super().__init__(BasicBlock, [1, 1, 1, 1], zero_init_residual=True)
                # widths 16/32/64/128: rebuild the stages at those widths
                self.inplanes = 16
                self.conv1 = nn.Conv2d(3, 16, 3, 1, cifar_stem_padding, bias=False)
                self.bn1 = nn.BatchNorm2d(16)
                self.layer1 = self._make_layer(BasicBlock, 16, 1)
                self.layer2 = self._make_layer(BasicBlock, 32, 1, stride=2)
                self.layer3 = self._make_layer(BasicBlock, 64, 1, stride=2)
                self.layer4 = self._make_layer(BasicBlock, 128, 1, stride=2)
                self.maxpool = nn.Identity()

        m = Tiny()
    else:
        m = getattr(torchvision.models, arch)(zero_init_residual=True)
        if cifar_stem_padding is not None:
            m.conv1 = nn.Conv2d(3, 64, 3, 1, cifar_stem_padding, bias=False)
            m.maxpool = nn.Identity()
    m.fc = nn.Identity()
    return m


def scaled_err(a, ref):
    """max |a - ref| / max |ref|: the error measure the C++ tests use for f32 runs."""
    a, ref = a.double(), ref.double()
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def run_backbone(arch, cifar_stem_padding, n, hw, grad_names, dtype):
    m = backbone(arch, cifar_stem_padding)
    formula_init(m)  # float32 values, then widened: both precisions start from the same numbers
    m = m.to(dtype)
    x = f32(formula_value("input", (n, 3, hw, hw))).to(dtype)
    out = {}
    m.eval()
    with torch.no_grad():
        out["features_eval"] = m(x)
    m.train()
    feats = m(x)
    out["features_train"] = feats.detach()
    r = f32(formula_value("head_r", tuple(feats.shape))).to(dtype)
    loss = (feats * r).sum()
    loss.backward()
    out["loss"] = loss.detach().reshape(())
    # The loss is a sum of terms of both signs: its error is measured against sum |terms|.
    out["loss_scale"] = (feats * r).abs().sum().detach().reshape(())
    params = dict(m.named_parameters())
    for g in grad_names:
        out["grad." + g] = params[g].grad
    sd = m.state_dict()
    for b in ["bn1.running_mean", "bn1.running_var", "layer4.0.bn1.running_var"]:
        out["after." + b] = sd[b]
    return out


def golden_backbone(out_dir, tag, arch, cifar_stem_padding, n, hw, grad_names):
    """Reference in float64; metadata err.<key> = PyTorch's own float32 error on that key."""
    ref = run_backbone(arch, cifar_stem_padding, n, hw, grad_names, torch.float64)
    low = run_backbone(arch, cifar_stem_padding, n, hw, grad_names, torch.float32)
    meta = {"arch": arch, "n": n, "hw": hw, "cifar_stem_padding": -1 if cifar_stem_padding is None else cifar_stem_padding,
            "torch": torch.__version__, "torchvision": torchvision.__version__}
    for k in ref:
        meta["err." + k] = repr(scaled_err(low[k], ref[k]))
    meta["err.loss"] = repr(float((low["loss"].double() - ref["loss"]).abs() / ref["loss_scale"]))
    write_safetensors(Path(out_dir) / f"{tag}.safetensors", ref, meta)
    print(tag, "loss", float(ref["loss"]), "torch f32 errors",
          {k: float(meta["err." + k]) for k in ref if k.startswith(("grad", "features"))})


class Heads(nn.Module):
    """The official MIRA projector + weight-normalised prototypes (gain fixed at 1)."""

    def __init__(self, in_dim, hidden, out, k):
        super().__init__()
        self.projector = nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                                       nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                                       nn.Linear(hidden, out))
        self.prototypes = nn.utils.weight_norm(nn.Linear(out, k, bias=False))
        self.prototypes.weight_g.data.fill_(1)
        self.prototypes.weight_g.requires_grad = False

    def forward(self, f):
        z = nn.functional.normalize(self.projector(f), dim=1)
        return self.prototypes(z)


def golden_heads(out_dir):
    n, in_dim, hidden, out_dim, k, tau_s = 8, 128, 256, 64, 300, 0.1
    h = Heads(in_dim, hidden, out_dim, k)
    formula_init(h)
    h = h.double()
    f = f32(formula_value("head_input", (n, in_dim))).double()
    logits = h(f)
    t = torch.softmax(f32(formula_value("head_targets", (n, k))).double() * 5.0, dim=1)
    loss = -(t * torch.log_softmax(logits / tau_s, dim=1)).sum(dim=1).mean()
    loss.backward()
    p = dict(h.named_parameters())
    out = {"logits": logits.detach(), "loss": loss.detach().reshape(()),
           "grad.projector.0.weight": p["projector.0.weight"].grad, "grad.projector.1.weight": p["projector.1.weight"].grad,
           "grad.projector.6.bias": p["projector.6.bias"].grad, "grad.prototypes.weight_v": p["prototypes.weight_v"].grad}
    write_safetensors(Path(out_dir) / "heads.safetensors", out,
                      {"n": n, "in": in_dim, "hidden": hidden, "out": out_dim, "k": k, "tau_s": tau_s})
    print("heads loss", float(loss))


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parent.parent / "tests/data/models")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    golden_backbone(out_dir, "resnet_tiny", "resnet_tiny", 1, 4, 32, ["conv1.weight", "bn1.weight", "layer2.0.conv1.weight"])
    golden_backbone(out_dir, "resnet18", "resnet18", None, 2, 64, ["conv1.weight", "bn1.weight", "layer1.0.bn2.bias"])
    golden_backbone(out_dir, "resnet18_cifar2", "resnet18", 2, 2, 32, ["conv1.weight", "layer2.0.downsample.0.weight"])
    golden_backbone(out_dir, "resnet50", "resnet50", None, 2, 64, ["conv1.weight", "bn1.weight", "layer1.0.conv1.weight"])
    golden_heads(out_dir)


if __name__ == "__main__":
    main()
