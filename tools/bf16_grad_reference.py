"""How far bf16 autocast moves a tiny MIRA model's gradients in PyTorch: the reference for the
bf16 test of tests/test_models_gpu.cpp (same model shape, crops and loss; PyTorch's own random
initialisation). Prints, per seed, the f32 and bf16 losses, the cosine between the two flattened
gradients and the ratio of their norms. Runs on the CPU (CPU autocast):

    /usr/bin/python3 tools/bf16_grad_reference.py

Seen 2026-11-26 (torch 1.13, Debian): cosines 0.962, 0.964, 0.969, 0.950; norm ratios 0.99-1.02.
"""
import sys, torch, torch.nn.functional as F
sys.path.insert(0, "tools")
from golden_models import Heads, backbone
torch.set_num_threads(2)
for seed in range(4):
    torch.manual_seed(seed)
    bb = backbone("resnet_tiny", 1); h = Heads(128, 64, 32, 50)
    x = torch.randn(16, 3, 32, 32); x2 = torch.randn(16, 3, 16, 16); t = torch.rand(16, 50)
    def run(amp):
        for p in list(bb.parameters()) + list(h.parameters()): p.grad = None
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if amp else torch.autocast("cpu", enabled=False)
        with ctx:
            ls = []
            for v in (x, x2):
                z = h.prototypes(F.normalize(h.projector(bb(v)).float(), dim=1))
                ls.append(-(t * F.log_softmax(10 * z.float(), 1)).sum(1).mean())
            loss = ls[0] + ls[1]
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten().float() for p in list(bb.parameters()) + list(h.parameters()) if p.grad is not None])
    l32, g32 = run(False); l16, g16 = run(True)
    print(seed, "loss", l32, l16, "cos", float(g32 @ g16 / g32.norm() / g16.norm()), "ratio", float(g16.norm() / g32.norm()))
