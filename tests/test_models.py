"""Encoders and heads: shapes, the features/embedding split, cosine cluster logits, rebuilding."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from coincide.errors import UserError
from coincide.models import (
    ARCHS,
    ClassifierHead,
    ClusterHead,
    CoincidenceHead,
    CosineCoincidenceHead,
    EncoderConfig,
    build_encoder,
    images_to_tensor,
)

torch.set_num_threads(1)

INPUTS = {"audio": (1, 64, 96), "image": (3, 128, 128)}
FEATURES = {"resnet50": 2048, "vgg": 512, "small": 128, "tiny": 8}


@pytest.mark.parametrize("modality", ["audio", "image"])
@pytest.mark.parametrize("arch", ARCHS)
def test_encoder_shapes_and_feature_split(arch: str, modality: str) -> None:
    torch.manual_seed(0)
    encoder = build_encoder(EncoderConfig(arch=arch, modality=modality, embed_dim=128)).eval()
    x = torch.rand(2, *INPUTS[modality])
    with torch.no_grad():
        features = encoder.forward_features(x)
        embeddings = encoder(x)
    assert features.shape == (2, FEATURES[arch]) == (2, encoder.feat_dim)
    assert embeddings.shape == (2, 128)
    assert torch.allclose(embeddings, encoder.embedding(features))
    assert not torch.allclose(embeddings[0], embeddings[1])


def test_resnet50_is_torchvisions_with_a_new_stem_and_embedding() -> None:
    encoder = build_encoder(EncoderConfig(arch="resnet50", modality="audio"))
    stem = encoder.backbone.conv1
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride) == (
        1,
        64,
        (7, 7),
        (2, 2),
    )
    assert isinstance(encoder.backbone.fc, torch.nn.Identity)
    assert (encoder.embedding.in_features, encoder.embedding.out_features) == (2048, 128)
    # torchvision's ResNet-50 has 25.56M parameters with its 1000-way fc (2048*1000 + 1000) and
    # a 3-channel stem (64*3*49): swap those for the audio stem and the 128-d embedding.
    expected = 25_557_032 - (2048 * 1000 + 1000) - 64 * 3 * 49 + 64 * 1 * 49 + (2048 * 128 + 128)
    assert sum(p.numel() for p in encoder.parameters()) == expected


def test_tiny_encoder_trains_with_gradients_everywhere() -> None:
    torch.manual_seed(0)
    encoder = build_encoder(EncoderConfig(arch="tiny", modality="audio", embed_dim=16))
    encoder(torch.randn(4, 1, 64, 96)).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_audio_input_is_standardised_by_running_statistics() -> None:
    encoder = build_encoder(EncoderConfig(arch="tiny", modality="audio"))
    log_mel = torch.randn(32, 1, 64, 96) * 3.0 - 7.0  # a log(mel + eps) range far from N(0, 1)
    encoder.input_norm.momentum = None  # cumulative average: one batch gives its exact stats
    encoder.train()(log_mel)
    assert encoder.input_norm.running_mean.item() == pytest.approx(float(log_mel.mean()), abs=1e-3)
    normalised = encoder.eval().input_norm(log_mel)
    assert float(normalised.mean()) == pytest.approx(0.0, abs=1e-3)
    assert float(normalised.std()) == pytest.approx(1.0, abs=1e-2)


def test_window_input_norms_remove_a_bands_level_before_the_batchnorm() -> None:
    torch.manual_seed(0)
    sound = torch.randn(4, 1, 64, 96)
    colour = torch.linspace(-3.0, 3.0, 64).view(1, 1, 64, 1)  # a channel or place colour
    cmn = build_encoder(EncoderConfig(arch="tiny", input_norm="cmn")).input_norm[0]
    floor = build_encoder(EncoderConfig(arch="tiny", input_norm="floor")).input_norm[0]
    # Both are blind to a constant per-band offset: the same output with or without it.
    torch.testing.assert_close(cmn(sound + colour), cmn(sound))
    torch.testing.assert_close(floor(sound + colour), floor(sound))
    assert cmn(sound).mean(dim=-1).abs().max() < 1e-5
    quietest = torch.topk(floor(sound), 10, dim=-1, largest=False).values  # 10 of 96 frames
    assert quietest.mean(dim=-1).abs().max() < 1e-5
    assert isinstance(build_encoder(EncoderConfig(arch="tiny")).input_norm, torch.nn.BatchNorm2d)
    with pytest.raises(UserError, match="input_norm 'pcen' is unknown"):
        EncoderConfig(arch="tiny", input_norm="pcen")


def test_images_to_tensor_converts_uint8_nhwc_to_unit_float_nchw() -> None:
    frames = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    images = images_to_tensor(frames)
    assert images.shape == (2, 3, 4, 5) and images.dtype == torch.float32
    assert images[1, 2, 3, 4].item() == pytest.approx(frames[1, 3, 4, 2] / 255.0)
    assert images.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError):
        images_to_tensor(frames.astype(np.float32))


def test_image_encoder_normalises_with_imagenet_statistics() -> None:
    encoder = build_encoder(EncoderConfig(arch="tiny", modality="image"))
    grey = torch.full((1, 3, 2, 2), 0.5)
    expected = (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(encoder.input_norm(grey)[0, :, 0, 0], expected)


def test_config_round_trip_rebuilds_an_identical_model() -> None:
    torch.manual_seed(0)
    cfg = EncoderConfig(arch="small", modality="image", embed_dim=32)
    original = build_encoder(cfg)
    original.train()(torch.rand(4, 3, 128, 128))  # move the BatchNorm running stats off their init
    stored = {"config": dataclasses.asdict(cfg), "model": original.state_dict()}

    torch.manual_seed(1)
    rebuilt = build_encoder(EncoderConfig(**stored["config"]))
    assert EncoderConfig(**stored["config"]) == cfg
    rebuilt.load_state_dict(stored["model"])
    x = torch.rand(3, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(original.eval()(x), rebuilt.eval()(x))


def test_config_defaults_and_errors() -> None:
    assert EncoderConfig(modality="image").in_channels == 3
    assert EncoderConfig().in_channels == 1
    assert EncoderConfig() == EncoderConfig(arch="resnet50", modality="audio", embed_dim=128)
    with pytest.raises(UserError, match="resnet18"):
        EncoderConfig(arch="resnet18")
    with pytest.raises(UserError, match="video"):
        EncoderConfig(modality="video")


# --- coincidence head --------------------------------------------------------------------------


def test_pairwise_logits_equal_forward_on_every_concatenation() -> None:
    torch.manual_seed(0)
    head = CoincidenceHead(embed_dim=8, hidden=16).double()
    e1, e2 = torch.randn(5, 8).double(), torch.randn(7, 8).double()
    pairs = head.pairwise_logits(e1, e2)
    explicit = torch.stack([head(e1[i].expand(7, 8), e2) for i in range(5)])
    assert pairs.shape == (5, 7)
    assert torch.allclose(pairs, explicit)
    assert torch.allclose(head(e1[:5], e2[:5]), pairs.diagonal())


def test_chunked_pairwise_logits_give_the_same_values_and_gradients() -> None:
    torch.manual_seed(0)
    head = CoincidenceHead(embed_dim=8, hidden=16).double()
    e1 = torch.randn(9, 8, dtype=torch.float64, requires_grad=True)
    e2 = torch.randn(9, 8, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(9, 9, dtype=torch.float64)

    def value_and_grads(max_elements: int) -> list[torch.Tensor]:
        logits = head.pairwise_logits(e1, e2, max_elements=max_elements)
        grads = torch.autograd.grad((logits * weights).sum(), [e1, e2, *head.parameters()])
        return [logits.detach(), *grads]

    whole = value_and_grads(2**28)
    chunked = value_and_grads(2 * 9 * 16)  # blocks of 2 rows: 5 blocks, the last one short
    for a, b in zip(whole, chunked, strict=True):
        assert torch.allclose(a, b)


def test_coincidence_head_is_one_hidden_layer_of_512() -> None:
    head = CoincidenceHead()
    assert head.hidden.in_features == 256 and head.hidden.out_features == 512
    assert head.output.out_features == 1
    assert head(torch.randn(3, 128), torch.randn(3, 128)).shape == (3,)


def test_cosine_head_is_a_learned_scale_and_bias_on_the_cosine() -> None:
    torch.manual_seed(0)
    head = CosineCoincidenceHead(init_scale=10.0, init_bias=-10.0).double()
    e1 = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    e2 = torch.randn(7, 8, dtype=torch.float64)
    pairs = head.pairwise_logits(e1, e2)
    cosine = F.cosine_similarity(e1[:, None], e2[None], dim=-1)
    torch.testing.assert_close(pairs, 10.0 * cosine - 10.0)
    torch.testing.assert_close(head(e1[:5], e2[:5]), pairs.diagonal())
    # The length of an embedding does not matter, only its direction.
    torch.testing.assert_close(head.pairwise_logits(3.0 * e1, e2), pairs)
    # Scale, bias and both embeddings get gradients.
    pairs.sum().backward()
    assert e1.grad is not None and head.log_scale.grad is not None and head.bias.grad is not None


# --- cluster and classifier heads -----------------------------------------------------------------


def test_cluster_logits_are_sixty_times_the_cosine() -> None:
    torch.manual_seed(0)
    head = ClusterHead(embed_dim=16, num_clusters=10)
    embeddings = torch.randn(6, 16) * 5.0
    logits = head(embeddings)
    unit_e = embeddings / embeddings.norm(dim=1, keepdim=True)
    unit_w = head.weight / head.weight.norm(dim=1, keepdim=True)
    assert logits.shape == (6, 10)
    assert torch.allclose(logits, 60.0 * unit_e @ unit_w.T, atol=1e-5)
    assert logits.abs().max() <= 60.0 + 1e-4
    assert torch.allclose(head.probs(embeddings).sum(-1), torch.ones(6))
    # The embedding's length must not matter, only its direction.
    assert torch.allclose(head(embeddings * 0.01), logits, atol=1e-4)


def test_cluster_head_reaches_sixty_for_an_aligned_embedding() -> None:
    head = ClusterHead(embed_dim=4, num_clusters=3)
    logits = head(head.weight.detach()[1:2] * 7.0)
    assert logits[0, 1].item() == pytest.approx(60.0, rel=1e-5)


def test_cluster_head_with_a_million_clusters_runs_on_cpu() -> None:
    head = ClusterHead(embed_dim=128, num_clusters=1_000_000)
    with torch.no_grad():
        logits = head(torch.randn(2, 128))
    assert logits.shape == (2, 1_000_000)
    assert logits.dtype == torch.float32
    assert logits.abs().max() <= 60.0 + 1e-3


def test_cluster_head_rejects_fewer_than_two_clusters() -> None:
    with pytest.raises(UserError):
        ClusterHead(embed_dim=4, num_clusters=1)


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("hidden", [0, 512])
def test_classifier_head_probabilities(multilabel: bool, hidden: int) -> None:
    torch.manual_seed(0)
    head = ClassifierHead(embed_dim=16, num_classes=5, multilabel=multilabel, hidden=hidden)
    embeddings = torch.randn(4, 16)
    logits, probs = head(embeddings), head.probs(embeddings)
    assert logits.shape == probs.shape == (4, 5)
    expected = torch.sigmoid(logits) if multilabel else F.softmax(logits, dim=-1)
    assert torch.allclose(probs, expected)
    assert len(head.layers) == (3 if hidden else 1)
