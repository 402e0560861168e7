#!/usr/bin/python3
"""The competitor of bench/loader: the PIL + torchvision multi-crop pipeline that PyTorch MIRA
code runs (docs/mira-spec.md section 5), on the same photos, images/s.

ImageNet recipe: 2 global crops of 224 (scale 0.14-1, bicubic) + 6 local crops of 96 (scale
0.05-0.14, bicubic); ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2, PIL Gaussian blur
(sigma ~ U(0.1, 2)) with p 1.0 / 0.1 / 0.5, solarize p 0.2 on the second global crop, flip,
ToTensor + normalise. A DataLoader with `--workers` processes (0: in the main process) and
batch collation, as a training script runs it. `--decode-only`: PIL open + convert('RGB')
alone (full-size decode through Pillow's libjpeg-turbo), the baseline of that pipeline.

    /usr/bin/python3 bench/pytorch_loader.py [--data DIR] [--images N] [--workers 0,1,2]
        [--batch B] [--epochs E] [--decode-only]

Prints one JSON object per line, like bench/loader.
"""
import argparse
import json
import os
import random
import sys
import time

import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Blur:
    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        if random.random() < self.p:
            return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
        return img


class Solarize:
    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        return ImageOps.solarize(img, 128) if random.random() < self.p else img


def view(size, scale, blur_p, solarize_p):
    return T.Compose([
        T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        Blur(blur_p),
        Solarize(solarize_p),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])


class Photos(torch.utils.data.Dataset):
    def __init__(self, files, decode_only):
        self.files = files
        self.decode_only = decode_only
        self.views = [view(224, (0.14, 1.0), 1.0, 0.0), view(224, (0.14, 1.0), 0.1, 0.2)]
        self.views += [view(96, (0.05, 0.14), 0.5, 0.0) for _ in range(6)]

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with open(self.files[i], "rb") as f:
            img = Image.open(f).convert("RGB")
        if self.decode_only:
            return img.width * img.height
        return [v(img) for v in self.views]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(here, "..", "data_cache", "photos", "x"))
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--decode-only", action="store_true")
    a = ap.parse_args()
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(a.data) for f in fs
                   if f.lower().endswith((".jpg", ".jpeg")))
    if not files:
        sys.exit(f"no .jpg files under {a.data}")
    files = [files[i % len(files)] for i in range(a.images)]
    torch.set_num_threads(1)
    for workers in [int(w) for w in a.workers.split(",")]:
        ds = Photos(files, a.decode_only)
        dl = torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0)
        for _ in dl:  # warm-up epoch (page cache, worker start)
            pass
        images, pixels = 0, 0
        t0 = time.perf_counter()
        for _ in range(a.epochs):
            for b in dl:
                if a.decode_only:
                    images += len(b)
                    pixels += int(b.sum())
                else:
                    images += b[0].shape[0]
        dt = time.perf_counter() - t0
        out = {"bench": "pytorch_loader", "mode": "pil_decode_only" if a.decode_only else "torchvision_multicrop",
               "workers": workers, "batch": a.batch, "images": images, "seconds": round(dt, 3),
               "images_per_s": round(images / dt, 1), "torch": torch.__version__}
        if a.decode_only:
            out["megapixels_per_s"] = round(pixels / 1e6 / dt, 1)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
