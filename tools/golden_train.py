"""Golden fixture for the MIRA training step (issue 7): three steps of the tiny model in
PyTorch following the spec (student on every crop with its own BN statistics, EMA update
before the teacher forward, one MIRA target per global view from the official fixed-point
function, swapped-prediction loss over all (target, other view) pairs, LARS, prototypes frozen
in the first step as in epoch 0).

Run with Debian's interpreter: /usr/bin/python3 tools/golden_train.py [OUT_DIR]
Weights and inputs come from the closed-form formula of tools/golden_models.py, so the
fixture stores only per-step losses and the final values of selected tensors.
"""
import copy
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from golden_models import Heads, backbone, f32, formula_init, formula_value, scaled_err, write_safetensors  # noqa: E402

CFG = dict(n=8, global_hw=32, local_hw=16, n_local=2, hidden=256, out=64, k=300, tau_s=0.1, tau_t=0.225, iters=30,
           wd=1e-4, momentum=0.9, eta=0.001,
           lr=[0.5, 0.9, 0.7], beta=[0.7, 0.69, 0.68], ema=[0.99, 0.992, 0.995], freeze=[1, 0, 0])


def mira_official(k, tau, beta, iters):
    """The official function (train.py), one process."""
    bs = k.size(0)
    k = F.softmax(k / tau / (1 - beta), dim=1)
    temp = k.sum(dim=0)
    v = (temp / bs).pow(1 - beta)
    for _ in range(iters):
        temp = k / (v.pow(-beta / (1 - beta)) * k).sum(dim=1, keepdim=True)
        temp = temp.sum(dim=0)
        v = (temp / bs).pow(1 - beta)
    temp = v.pow(-beta / (1 - beta)) * k
    return temp / temp.sum(dim=1, keepdim=True)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = backbone("resnet_tiny", 1)
        h = Heads(128, CFG["hidden"], CFG["out"], CFG["k"])
        self.projector = h.projector
        self.prototypes = h.prototypes


def lars_step(params, lr, frozen):
    """MoCo-v3 LARS as the official code: decay and trust ratio for ndim > 1 only."""
    with torch.no_grad():
        for name, p, state in params:
            if p.grad is None or name in frozen:
                continue
            d = p.grad
            if p.ndim > 1:
                d = d.add(p, alpha=CFG["wd"])
                pn, dn = torch.norm(p), torch.norm(d)
                q = torch.where(pn > 0, torch.where(dn > 0, CFG["eta"] * pn / dn, torch.ones_like(pn)),
                                torch.ones_like(pn))
                d = d.mul(q)
            if "mu" not in state:
                state["mu"] = torch.zeros_like(p)
            state["mu"].mul_(CFG["momentum"]).add_(d)
            p.add_(state["mu"], alpha=-lr)


def views_for(step, dtype):
    v = []
    for i in range(2 + CFG["n_local"]):
        hw = CFG["global_hw"] if i < 2 else CFG["local_hw"]
        v.append(f32(formula_value(f"step{step}.view{i}", (CFG["n"], 3, hw, hw))).to(dtype))
    return v


def run(dtype):
    net = Net()
    formula_init(net)
    net = net.to(dtype)
    teacher = nn.ModuleDict({"backbone": copy.deepcopy(net.backbone), "projector": copy.deepcopy(net.projector)})
    for p in teacher.parameters():
        p.requires_grad = False
    params = [(n, p, {}) for n, p in net.named_parameters() if p.requires_grad]
    losses = []
    for step in range(3):
        x = views_for(step, dtype)
        # EMA update before the teacher forward (parameters only).
        m = CFG["ema"][step]
        with torch.no_grad():
            for name, pt in teacher.named_parameters():
                ps = dict(net.named_parameters())[name]
                pt.mul_(m).add_(ps, alpha=1 - m)
            # Teacher: train-mode BN, its own running stats; the student's prototypes.
            ks = [net.prototypes(F.normalize(teacher["projector"](teacher["backbone"](v)), dim=1)) for v in x[:2]]
            targets = [mira_official(k, CFG["tau_t"], CFG["beta"][step], CFG["iters"]) for k in ks]
        qs = [net.prototypes(F.normalize(net.projector(net.backbone(v)), dim=1)) for v in x]

        def ce(t, q):
            return -(t.repeat(len(q), 1) * F.log_softmax(torch.cat(q, 0) / CFG["tau_s"], dim=1)).sum(1).mean()

        loss = (ce(targets[0], qs[1:]) + ce(targets[1], qs[:1] + qs[2:])) / 2
        net.zero_grad()
        loss.backward()
        frozen = {"prototypes.weight_v"} if CFG["freeze"][step] else set()
        lars_step(params, CFG["lr"][step], frozen)
        losses.append(loss.detach())
    p = dict(net.named_parameters())
    sd_t = teacher.state_dict()
    out = {"loss": torch.stack(losses),
           "backbone.conv1.weight": p["backbone.conv1.weight"].detach(),
           "backbone.layer4.0.bn2.weight": p["backbone.layer4.0.bn2.weight"].detach(),
           "projector.6.bias": p["projector.6.bias"].detach(),
           "prototypes.weight_v": p["prototypes.weight_v"].detach(),
           "ema.backbone.conv1.weight": sd_t["backbone.conv1.weight"],
           "ema.backbone.bn1.running_var": sd_t["backbone.bn1.running_var"],
           "backbone.bn1.running_mean": net.state_dict()["backbone.bn1.running_mean"]}
    return out


def main():
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "tests/data/train")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    ref = run(torch.float64)
    low = run(torch.float32)
    meta = {k: str(v) for k, v in CFG.items()}
    for k in ref:
        meta["err." + k] = repr(scaled_err(low[k], ref[k]))
    write_safetensors(out_dir / "tiny_3steps.safetensors", ref, meta)
    print("losses", [float(v) for v in ref["loss"]], "f32 errors", {k: float(meta["err." + k]) for k in ref})


if __name__ == "__main__":
    main()
