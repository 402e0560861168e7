"""Run by tests/test_torchvision_interop.cpp: loads the engine's checkpoint into torchvision
with the lines of docs/checkpoints.md and compares the features with the engine's."""
import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
try:
    from safetensors.torch import load_file
except ImportError:
    from mira_checkpoint import load_file

ckpt, ref_path, arch = sys.argv[1], sys.argv[2], sys.argv[3]
state = load_file(ckpt)
backbone = {k[len("ema.backbone."):]: v for k, v in state.items() if k.startswith("ema.backbone.")}
model = getattr(torchvision.models, arch)()
model.fc = torch.nn.Identity()
missing, unexpected = model.load_state_dict(backbone, strict=False)
assert not unexpected and all(k.startswith("fc.") for k in missing), (missing, unexpected)
model.eval()

ref = load_file(ref_path)
images = ref["images_nhwc"].permute(0, 3, 1, 2).contiguous()
with torch.no_grad():
    feats = model(images)
err = (feats - ref["features"]).abs().max().item()
scale = ref["features"].abs().max().item()
print(f"torchvision {arch}: max |torchvision - engine| = {err:.3e} (features up to {scale:.3f})")
sys.exit(0 if err <= 1e-4 * max(scale, 1.0) else 1)
