"""The audio embedding f and the image embedding g (paper section 4).

"We use the ResNet-50 architecture for the audio embedding networks (f), with the final average
pool followed by a d = 128-dimensional embedding layer. For simplicity we use the identical
architecture for the image network (g), changing only the input size."

Every encoder is built from an `EncoderConfig` (plain data, stored inside checkpoints) and splits
into `forward_features` (input normalisation + backbone + global pool, `(batch, feat_dim)`) and
the embedding layer on top (`forward`, `(batch, embed_dim)`).

Input contract:
- audio: float log-mel windows `(batch, in_channels=1, mel=64, time=96)`. The encoder standardises
  them itself with a BatchNorm without affine parameters: its running mean/variance learn the
  level and spread of the store's log-mel values during training, so neither the log offset of
  the frontend nor a statistics pass over the store is baked into the model, and the checkpoint
  carries the statistics it was trained with.
- image: float RGB `(batch, 3, 128, 128)` with values in [0, 1] (use `images_to_tensor` on the
  store's uint8 `(batch, 128, 128, 3)` frames). The encoder subtracts the ImageNet channel mean
  and divides by its std (fixed constants, the usual scale for conv nets trained from scratch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision.models import resnet50
from torchvision.models.resnet import BasicBlock

from coincide.errors import UserError

ARCHS = ("resnet50", "vgg", "small", "tiny")
AUDIO_NORMS = ("batch", "cmn", "floor")
FLOOR_SHARE = 0.1  # "floor": the quietest tenth of a window's frames estimate its background
MODALITIES = ("audio", "image")
_DEFAULT_CHANNELS = {"audio": 1, "image": 3}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class EncoderConfig:
    """Hyperparameters of one encoder; `EncoderConfig(**dataclasses.asdict(cfg))` rebuilds it.

    arch: "resnet50" (the paper's f and g), "vgg" (the L3 / VGGish recipe: conv3x3 blocks with
        64-128-256-512 channels, Table 1 rows d and g), "small" (a narrow ResNet that trains on a
        laptop CPU) or "tiny" (unit tests).
    modality: "audio" (log-mel windows) or "image" (RGB frames); picks the input normalisation.
    in_channels: input channels; None means the modality's own (1 for audio, 3 for image).
    embed_dim: d, the size of the embedding layer.
    input_norm: how an audio window is normalised before the backbone. "batch" (the paper's
        setting): one BatchNorm without affine parameters over all log-mel values. "cmn": first
        subtract each mel band's mean over the window's frames (cepstral mean normalisation), so a
        stationary background or channel colour no longer sets the input. "floor": first subtract
        each band's background level, the mean of its quietest tenth of frames (log-domain
        spectral subtraction: what is left is how far a sound rises above the background). Image
        encoders ignore it.
    """

    arch: str = "resnet50"
    modality: str = "audio"
    in_channels: int | None = None
    embed_dim: int = 128
    input_norm: str = "batch"

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise UserError(
                f"Encoder arch '{self.arch}' is unknown; use one of {', '.join(ARCHS)}."
            )
        if self.modality not in MODALITIES:
            raise UserError(
                f"Encoder modality '{self.modality}' is unknown; use 'audio' or 'image'."
            )
        if self.input_norm not in AUDIO_NORMS:
            raise UserError(
                f"Encoder input_norm '{self.input_norm}' is unknown; use one of "
                f"{', '.join(AUDIO_NORMS)}."
            )
        if self.in_channels is None:
            self.in_channels = _DEFAULT_CHANNELS[self.modality]
        if self.in_channels < 1 or self.embed_dim < 1:
            raise UserError(
                f"Encoder in_channels ({self.in_channels}) and embed_dim ({self.embed_dim}) "
                "must be positive; fix them in the model config."
            )


class _FixedNorm(nn.Module):
    """Per-channel `(x - mean) / std` with constant statistics (not saved in the state dict)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class _WindowNorm(nn.Module):
    """Subtract each mel band's level over the window's frames: its mean ("cmn") or the mean of
    its quietest `FLOOR_SHARE` of frames ("floor"). Input and output `(batch, ch, mel, time)`."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "cmn":
            return x - x.mean(dim=-1, keepdim=True)
        k = max(1, int(round(FLOOR_SHARE * x.shape[-1])))
        quietest = torch.topk(x, k, dim=-1, largest=False).values
        return x - quietest.mean(dim=-1, keepdim=True)


def _input_norm(cfg: EncoderConfig) -> nn.Module:
    if cfg.modality == "image" and cfg.in_channels == 3:
        return _FixedNorm(_IMAGENET_MEAN, _IMAGENET_STD)
    if cfg.modality == "image":
        # No published statistics for other channel counts: centre [0, 1] pixels on 0.
        return _FixedNorm((0.5,) * cfg.in_channels, (0.25,) * cfg.in_channels)
    if cfg.input_norm == "batch":
        return nn.BatchNorm2d(cfg.in_channels, affine=False)
    return nn.Sequential(_WindowNorm(cfg.input_norm), nn.BatchNorm2d(cfg.in_channels, affine=False))


def _resnet50_backbone(in_channels: int) -> tuple[nn.Module, int]:
    net = resnet50(weights=None)
    if in_channels != 3:
        # Same stem geometry as torchvision's, only the input channels change.
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    feat_dim = net.fc.in_features
    net.fc = nn.Identity()  # torchvision's forward ends with avgpool + flatten + fc
    return net, feat_dim


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def _vgg_backbone(in_channels: int) -> tuple[nn.Module, int]:
    """The L3-Net subnetwork (Arandjelovic & Zisserman 2017): four blocks of two conv3x3 layers,
    2x2 max pooling between blocks, then a global max pool as in L3."""
    layers: list[nn.Module] = []
    channels = in_channels
    widths = (64, 128, 256, 512)
    for block, width in enumerate(widths):
        layers += _conv_bn_relu(channels, width) + _conv_bn_relu(width, width)
        if block < len(widths) - 1:
            layers.append(nn.MaxPool2d(2))
        channels = width
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), channels


def _basic_stage(in_channels: int, out_channels: int) -> nn.Module:
    downsample = nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=2, bias=False),
        nn.BatchNorm2d(out_channels),
    )
    return BasicBlock(in_channels, out_channels, stride=2, downsample=downsample)


def _narrow_resnet(in_channels: int, widths: tuple[int, ...]) -> tuple[nn.Module, int]:
    """A strided conv3x3 stem and one residual block (stride 2) per width, then average pool."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
    ]
    for previous, width in zip(widths[:-1], widths[1:], strict=True):
        layers.append(_basic_stage(previous, width))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), widths[-1]


def _backbone(cfg: EncoderConfig) -> tuple[nn.Module, int]:
    assert cfg.in_channels is not None  # filled in by EncoderConfig.__post_init__
    if cfg.arch == "resnet50":
        return _resnet50_backbone(cfg.in_channels)
    if cfg.arch == "vgg":
        return _vgg_backbone(cfg.in_channels)
    if cfg.arch == "small":
        return _narrow_resnet(cfg.in_channels, (16, 32, 64, 128))
    return _narrow_resnet(cfg.in_channels, (4, 8))


class Encoder(nn.Module):
    """An embedding network: input normalisation, backbone with global pooling, embedding layer.

    Attributes: `config` (the EncoderConfig it was built from), `feat_dim` (backbone output size).
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.input_norm = _input_norm(cfg)
        self.backbone, self.feat_dim = _backbone(cfg)
        self.embedding = nn.Linear(self.feat_dim, cfg.embed_dim)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """`(batch, channels, height, width)` -> pooled backbone features `(batch, feat_dim)`."""
        return self.backbone(self.input_norm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(batch, channels, height, width)` -> embeddings `(batch, embed_dim)`."""
        return self.embedding(self.forward_features(x))


def build_encoder(cfg: EncoderConfig) -> Encoder:
    """Build the encoder `cfg` describes, with freshly initialised weights."""
    return Encoder(cfg)


def images_to_tensor(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 frames `(batch, height, width, 3)` -> float `(batch, 3, height, width)` in [0, 1].

    Works on any device (move the uint8 tensor to the GPU first: 4x fewer bytes to copy). The
    result is a permuted view, so its memory is already channels_last, the layout conv layers
    prefer on GPU. The mean/std normalisation happens inside the image encoder.
    """
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.dim() != 4:
        raise ValueError(
            f"expected uint8 frames (batch, height, width, channels), got {frames.dtype} "
            f"with shape {tuple(frames.shape)}"
        )
    return frames.permute(0, 3, 1, 2).float().div_(255.0)
