#!/usr/bin/python3
"""Golden fixtures made with PyTorch / torchvision for the C++ tests, which read them and need
no Python. Run with Debian's interpreter (it has python3-torch and python3-torchvision):

    /usr/bin/python3 tools/gen_golden.py augment      # -> tests/data/aug/
    /usr/bin/python3 tools/gen_golden.py all

Each section is one function registered in SECTIONS; add yours the same way. Fixtures are small
.npy files (committed), so regenerating is only needed when a section changes. Everything is
deterministic: inputs come from a fixed seed, augmentation parameters are fixed numbers (the
C++ side draws its own random parameters; here we test the ops, not the draws).
"""
import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def save(dirname, name, array):
    os.makedirs(dirname, exist_ok=True)
    np.save(os.path.join(dirname, name + ".npy"), np.ascontiguousarray(array))


# ---- augment ---------------------------------------------------------------------------------

def gen_augment(out_dir):
    """Each augmentation op of data/augment.h through torchvision's functional API (tensor
    path, float images in [0, 1]). Images are stored HWC (our layout); torchvision works on CHW."""
    import torch
    import torchvision.transforms as T
    import torchvision.transforms.functional as F

    torch.manual_seed(0)
    rng = np.random.default_rng(1234)

    def smooth_image(h, w):
        # Random but smooth-ish u8 photo stand-in: a gradient, blobs, and noise, covering 0..255.
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        img = np.empty((h, w, 3))
        for c in range(3):
            fx, fy, ph = rng.uniform(0.1, 0.6), rng.uniform(0.1, 0.6), rng.uniform(0, 6.28)
            img[..., c] = 0.5 + 0.45 * np.sin(fx * xx + ph) * np.cos(fy * yy) + rng.normal(0, 0.08, (h, w))
        img[0, 0] = [1.0, 1.0, 1.0]  # exact white, black and gray pixels for the HSV edge cases
        img[0, 1] = [0.0, 0.0, 0.0]
        img[1, 0] = [0.5, 0.5, 0.5]
        return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)

    index = {"cases": []}

    def case(name, inp, out, **params):
        save(out_dir, name, out.astype(np.float32))
        index["cases"].append(dict(name=name, input=inp, **params))

    def to_chw(u8):
        return torch.from_numpy(u8).permute(2, 0, 1).float() / 255.0

    def to_hwc(t):
        return t.permute(1, 2, 0).contiguous().numpy()

    small = smooth_image(13, 17)   # H=13, W=17
    large = smooth_image(40, 31)   # for strong antialiased downscaling
    save(out_dir, "in_small", small)
    save(out_dir, "in_large", large)
    imgs = {"in_small": to_chw(small), "in_large": to_chw(large)}

    # Resize and resized crop; bilinear / bicubic, antialias on / off, up and down.
    modes = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}
    resizes = [
        ("in_small", None, (7, 9)),            # down
        ("in_small", None, (29, 23)),          # up
        ("in_small", (2, 3, 9, 11), (6, 8)),   # crop then down
        ("in_small", (1, 2, 5, 4), (12, 15)),  # crop then up
        ("in_large", None, (9, 7)),            # strong down (factor 4.4)
        ("in_large", (5, 4, 30, 20), (11, 10)),
    ]
    k = 0
    for inp, box, size in resizes:
        for mode in ("bilinear", "bicubic"):
            for aa in (True, False):
                x = imgs[inp]
                if box is None:
                    y = F.resize(x, list(size), interpolation=modes[mode], antialias=aa)
                    top, left, bh, bw = 0, 0, x.shape[1], x.shape[2]
                else:
                    top, left, bh, bw = box
                    y = F.resized_crop(x, top, left, bh, bw, list(size), interpolation=modes[mode], antialias=aa)
                case(f"resize_{k}", inp, to_hwc(y), op="resize", top=top, left=left, height=bh, width=bw,
                     out_h=size[0], out_w=size[1], interp=mode, antialias=aa)
                k += 1

    x = imgs["in_small"]
    for i, f in enumerate([0.6, 1.3, 1.4]):
        case(f"brightness_{i}", "in_small", to_hwc(F.adjust_brightness(x, f)), op="brightness", factor=f)
    for i, f in enumerate([0.6, 0.75, 1.4]):
        case(f"contrast_{i}", "in_small", to_hwc(F.adjust_contrast(x, f)), op="contrast", factor=f)
    for i, f in enumerate([0.8, 1.2, 0.0]):
        case(f"saturation_{i}", "in_small", to_hwc(F.adjust_saturation(x, f)), op="saturation", factor=f)
    for i, f in enumerate([-0.1, 0.07, 0.5, -0.5]):
        case(f"hue_{i}", "in_small", to_hwc(F.adjust_hue(x, f)), op="hue", factor=f)
    case("gray_0", "in_small", to_hwc(F.rgb_to_grayscale(x, num_output_channels=3)), op="gray")
    for i, sigma in enumerate([0.1, 0.7, 1.9]):
        radius = max(1, int(np.ceil(3 * np.float32(sigma))))
        y = F.gaussian_blur(x, [2 * radius + 1] * 2, [sigma, sigma])
        case(f"blur_{i}", "in_small", to_hwc(y), op="blur", sigma=sigma, radius=radius)
    # a blur wider than the image (reflect padding needs radius < size; torch refuses otherwise)
    tiny = x[:, :7, :8]
    save(out_dir, "in_tiny", (to_hwc(tiny) * 255).round().astype(np.uint8))
    case("blur_3", "in_tiny", to_hwc(F.gaussian_blur(tiny, [13, 13], [1.9, 1.9])), op="blur", sigma=1.9, radius=6)
    case("solarize_0", "in_small", to_hwc(F.solarize(x, 128 / 255)), op="solarize", threshold=128 / 255)
    case("hflip_0", "in_small", to_hwc(F.hflip(x)), op="hflip")
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    case("normalize_0", "in_small", to_hwc(F.normalize(x, mean, std)), op="normalize", mean=mean, std=std)

    # ColorJitter's body with fixed draws: ops in the given order (0 b, 1 c, 2 s, 3 h).
    jitters = [([2, 0, 3, 1], 1.3, 0.7, 1.15, -0.08), ([3, 1, 0, 2], 0.65, 1.35, 0.85, 0.1)]
    for i, (order, b, c, s, h) in enumerate(jitters):
        y = x
        for op in order:
            y = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue][op](y, [b, c, s, h][op])
        case(f"jitter_{i}", "in_small", to_hwc(y), op="jitter", order=order, brightness=b, contrast=c,
             saturation=s, hue=h)

    # RandomResizedCrop's centre-crop fallback (no try can succeed on these shapes).
    # Shapes chosen so that no try can succeed, which makes get_params deterministic.
    boxes = []
    for (h, w, scale) in [(10, 100, (0.9, 1.0)), (100, 10, (0.9, 1.0)), (30, 50, (1.0, 1.0)), (9, 5, (1.0, 1.0))]:
        i, j, bh, bw = T.RandomResizedCrop.get_params(torch.zeros(3, h, w), list(scale), [3 / 4, 4 / 3])
        boxes.append(dict(h=h, w=w, scale=list(scale), box=[i, j, bh, bw]))
    index["crop_fallback"] = boxes
    # Statistics of accepted boxes on a 375x500 image (the C++ sampler must match them; its
    # draws differ, its distribution must not).
    fr, ar = [], []
    for _ in range(20000):
        i, j, bh, bw = T.RandomResizedCrop.get_params(torch.zeros(1, 375, 500), [0.14, 1.0], [3 / 4, 4 / 3])
        fr.append(bh * bw / (375 * 500))
        ar.append(bw / bh)
    index["crop_stats"] = dict(h=375, w=500, scale=[0.14, 1.0], n=20000, mean_area=float(np.mean(fr)),
                               std_area=float(np.std(fr)), mean_log_ratio=float(np.mean(np.log(ar))),
                               std_log_ratio=float(np.std(np.log(ar))))

    with open(os.path.join(out_dir, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
    total = sum(os.path.getsize(os.path.join(out_dir, n)) for n in os.listdir(out_dir))
    print(f"augment: {len(index['cases'])} cases, {total / 1024:.0f} KiB in {out_dir}")


SECTIONS = {
    "augment": lambda: gen_augment(os.path.join(ROOT, "tests", "data", "aug")),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("section", choices=sorted(SECTIONS) + ["all"])
    args = ap.parse_args()
    for name in (sorted(SECTIONS) if args.section == "all" else [args.section]):
        SECTIONS[name]()


if __name__ == "__main__":
    sys.exit(main())
