"""Encoders f and g (features vs embedding head) and the coincidence, cluster and class heads."""

from coincide.models.encoders import (
    ARCHS,
    Encoder,
    EncoderConfig,
    build_encoder,
    images_to_tensor,
)
from coincide.models.heads import (
    ClassifierHead,
    ClusterHead,
    CoincidenceHead,
    CosineCoincidenceHead,
)

__all__ = [
    "ARCHS",
    "ClassifierHead",
    "ClusterHead",
    "CoincidenceHead",
    "CosineCoincidenceHead",
    "Encoder",
    "EncoderConfig",
    "build_encoder",
    "images_to_tensor",
]
