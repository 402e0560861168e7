"""The MIRA training step in PyTorch (eager), the competitor of bench/train_step: same model
(torchvision ResNet without fc, or the tiny ResNet; projector + weight-normalised prototypes),
EMA teacher updated before its forward, the official mira() targets for the two global crops,
swapped-prediction loss over all (target, other view) pairs, SGD or LARS. CPU: f32. CUDA:
autocast (bf16) + channels_last, as a tuned PyTorch user would run it.

    python3 bench/pytorch_mira_step.py [--arch resnet_tiny] [--batch 128] [--global-size 32]
        [--local-crops 0] [--local-size 16] [--steps 20] [--warmup 3] [--device cpu] ...
Prints one JSON line (same fields as bench/train_step).
"""
import argparse
import contextlib
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from golden_models import Heads, backbone  # noqa: E402
from golden_train import mira_official as mira  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet_tiny")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--global-size", type=int, default=32)
    p.add_argument("--local-crops", type=int, default=0)
    p.add_argument("--local-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--optim", default="sgd")
    p.add_argument("--proj-hidden", type=int, default=256)
    p.add_argument("--proj-out", type=int, default=64)
    p.add_argument("--prototypes", type=int, default=300)
    p.add_argument("--cifar-stem", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--cudnn-benchmark", type=int, default=0, help="1: torch.backends.cudnn.benchmark = True")
    p.add_argument("--profile", type=int, default=0, help="1: torch.profiler table of the timed steps (stderr)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.backends.cudnn.benchmark = bool(a.cudnn_benchmark)
    cuda = dev.type == "cuda"
    net = nn.Module()
    net.backbone = backbone(a.arch, 1 if a.cifar_stem else None)
    feat = {"resnet_tiny": 128, "resnet18": 512, "resnet50": 2048}[a.arch]
    h = Heads(feat, a.proj_hidden, a.proj_out, a.prototypes)
    net.projector, net.prototypes = h.projector, h.prototypes
    net = net.to(dev)
    if cuda:
        net = net.to(memory_format=torch.channels_last)
    teacher = nn.ModuleDict({"backbone": copy.deepcopy(net.backbone), "projector": copy.deepcopy(net.projector)})
    for q in teacher.parameters():
        q.requires_grad = False
    decay = [q for q in net.parameters() if q.requires_grad and q.ndim > 1]
    no_decay = [q for q in net.parameters() if q.requires_grad and q.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0}],
                          lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    views = []
    for i in range(2 + a.local_crops):
        s = a.global_size if i < 2 else a.local_size
        x = torch.randn(a.batch, 3, s, s, generator=g).to(dev)
        views.append(x.to(memory_format=torch.channels_last) if cuda else x)
    s_params = dict(net.named_parameters())
    t_pairs = [(t, s_params[n]) for n, t in teacher.named_parameters()]

    def step():
        with torch.no_grad():
            torch._foreach_mul_([t for t, _ in t_pairs], 0.99)
            torch._foreach_add_([t for t, _ in t_pairs], [s for _, s in t_pairs], alpha=0.01)
        amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
        with amp:
            with torch.no_grad():
                ks = [net.prototypes(F.normalize(teacher["projector"](teacher["backbone"](v)), dim=1)) for v in views[:2]]
            targets = [mira(k.float(), 0.225, 0.7, 30) for k in ks]
            qs = [net.prototypes(F.normalize(net.projector(net.backbone(v)), dim=1)) for v in views]

            def ce(t, q):
                return -(t.repeat(len(q), 1) * F.log_softmax(torch.cat(q, 0).float() / 0.1, dim=1)).sum(1).mean()

            loss = (ce(targets[0], qs[1:]) + ce(targets[1], qs[:1] + qs[2:])) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    for _ in range(a.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    prof = None
    if a.profile:
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        prof = torch.profiler.profile(activities=acts)
        prof.__enter__()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    if cuda:
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    if prof is not None:
        prof.__exit__(None, None, None)
        key = "self_device_time_total" if cuda else "self_cpu_time_total"
        try:
            table = prof.key_averages().table(sort_by=key, row_limit=40)
        except Exception:  # older PyTorch: the CUDA name
            table = prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else key, row_limit=40)
        print(table, file=sys.stderr)
    print(json.dumps({"bench": "mira_train_step", "impl": f"pytorch {torch.__version__} eager", "arch": a.arch,
                      "device": a.device, "batch": a.batch, "global": a.global_size, "local_crops": a.local_crops,
                      "local_size": a.local_size, "steps": a.steps, "threads": torch.get_num_threads(),
                      "cudnn_benchmark": a.cudnn_benchmark,
                      "ms_per_step": round(1e3 * sec / a.steps, 2), "img_per_s": round(a.batch * a.steps / sec, 1),
                      "loss": float(loss)}))


if __name__ == "__main__":
    main()
