"""The toy world's realism judge: a patch classifier over the world's classes plus "flat paint".

It is fully convolutional with stride 8, so a 64x64 image gives an 8x8 grid of patch verdicts.
Trained on patches of real scenes (their majority class) and of paintings ("flat paint"), each
also as the toy VAE reconstructs it (every generated image is a VAE decoding, so the VAE's
rendering of a real scene is the best any method can reach), it answers the two questions the
paper's claims are about:

* realism — the share of an image's patches judged a real texture (anything but flat paint);
* semantic accuracy — the share of a region's patches judged its intended class.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .world import CLASSES

JUDGE_CLASSES = CLASSES + ("flat paint",)
FLAT = len(CLASSES)
PATCH = 8
WEIGHTS = Path(__file__).parent / "judge.safetensors"


class PatchJudge(nn.Module):
    """[B, 3, H, W] images in [0, 1] -> [B, 11, H/8, W/8] class logits, one per 8x8 patch.

    `verdicts`, `classes`, `flat` and `patch` are what `gradop.metrics.realism` and `semantic_accuracy` use."""

    classes, flat, patch = JUDGE_CLASSES, FLAT, PATCH

    def __init__(self, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(),  # pixel-level texture
            nn.Conv2d(width, 2 * width, 4, stride=4), nn.GELU(),  # 4x4 cells: texture statistics
            nn.Conv2d(2 * width, 2 * width, 2, stride=2), nn.GELU(),  # one 8x8 patch
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, padding_mode="replicate"), nn.GELU(),  # its neighbours: context
            nn.Conv2d(2 * width, len(JUDGE_CLASSES), 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2 - 1)

    def verdicts(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> [B, H/8, W/8] predicted class indices (`flat` is flat paint)."""
        return judge_patches(self, images)


def patch_labels(labels: torch.Tensor, purity: float = 0.75, ignore: int = -100) -> torch.Tensor:
    """[B, H, W] class maps -> [B, H/8, W/8] majority class of each patch, `ignore` where mixed."""
    onehot = nn.functional.one_hot(labels.long(), len(CLASSES)).permute(0, 3, 1, 2).float()
    shares = nn.functional.avg_pool2d(onehot, PATCH)
    best, index = shares.max(1)
    return torch.where(best >= purity, index, torch.full_like(index, ignore))


def load_judge(path: str | Path = WEIGHTS, device="cpu") -> PatchJudge:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no judge weights at {path}; train them with `python -m gradop.toy.train`")
    judge = PatchJudge()
    judge.load_state_dict(load_file(path))
    return judge.eval().to(device)


@torch.no_grad()
def judge_patches(judge: PatchJudge, images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> [B, H/8, W/8] predicted class indices (`FLAT` is flat paint)."""
    param = next(judge.parameters())
    return judge(images.to(param.device, param.dtype)).argmax(1).cpu()
