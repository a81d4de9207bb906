"""The toy world's judge: a patch classifier of modality (photo / painting / cartoon) and class.

It is fully convolutional with stride 8, so a 64x64 image gives an 8x8 grid of patch verdicts,
each a modality and a class. Trained only on renders of training scenes (every modality, and the
user-style scribbles as paintings), each as drawn and as the toy VAE reconstructs it (every
generated image is a VAE decoding), never on any method's samples. It answers the questions the
paper's claims are about:

* realism — the share of an image's patches judged in the target modality (photo by default);
* semantic accuracy — the share of a region's patches judged its intended class.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .world import CLASSES, MODALITIES

PATCH = 8
WEIGHTS = Path(__file__).parent / "judge.safetensors"


class PatchJudge(nn.Module):
    """[B, 3, H, W] images in [0, 1] -> [B, 3 + 10, H/8, W/8] logits per 8x8 patch: modality, then class.

    `verdicts`, `modality_verdicts`, `classes`, `modalities` and `patch` are what `gradop.metrics.realism`
    and `semantic_accuracy` use."""

    classes, modalities, patch = CLASSES, MODALITIES, PATCH

    def __init__(self, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(),  # pixel-level texture
            nn.Conv2d(width, 2 * width, 4, stride=4), nn.GELU(),  # 4x4 cells: texture statistics
            nn.Conv2d(2 * width, 2 * width, 2, stride=2), nn.GELU(),  # one 8x8 patch
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, padding_mode="replicate"), nn.GELU(),  # its neighbours: context
            nn.Conv2d(2 * width, len(MODALITIES) + len(CLASSES), 1),
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Modality logits [B, 3, h, w] and class logits [B, 10, h, w]."""
        logits = self.net(images * 2 - 1)
        return logits[:, :len(MODALITIES)], logits[:, len(MODALITIES):]

    @torch.no_grad()
    def _logits(self, images):
        param = next(self.parameters())
        return self(images.to(param.device, param.dtype))

    def verdicts(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> [B, H/8, W/8] predicted class indices (into `classes`)."""
        return self._logits(images)[1].argmax(1).cpu()

    def modality_verdicts(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> [B, H/8, W/8] predicted modality indices (into `modalities`)."""
        return self._logits(images)[0].argmax(1).cpu()


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
