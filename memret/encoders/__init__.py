"""Vision encoders behind one contract, created by name.

    enc = memret.encoders.create("vit_small_cifar", parallel=True, qk_norm=True)
    enc.embed_dim; enc(x) -> (B, D); enc.forward_features(x) -> (B, N, D)
    memret.encoders.list()

Families: ViT (tiny/small/base, any patch size, ViT-22B knobs), FlexiViT, XCiT,
ResMLP (all on timm), ResNet-18 (timm) and ResNet-32 (CIFAR); label-free, fitted on images
(``fit``): ``kmeans_patches`` (Coates & Ng) and ``patch_dictionary`` (Thiry et al.). ``*_cifar`` names
take 32x32 inputs. Weights: ``pretrained=True`` or a timm name (needs the hub),
``checkpoint=PATH`` for a local timm/DINO/MSN file. Needs ``pip install 'memret[vision]'``.
"""

from __future__ import annotations

from memret.encoders.base import Encoder, load_weights, timm_model
from memret.encoders.cnn import resnet18_encoder, resnet32_encoder
from memret.encoders.kmeans import PatchKMeansEncoder
from memret.encoders.patches import PatchDictionaryEncoder
from memret.encoders.vit import FlexiViT, flexivit_encoder, pi_resize_patch_embed, resize_pos_embed, vit_encoder
from memret.registry import Registry

ENCODERS = Registry("encoder")
FLEXI_SIZES_240 = (8, 10, 12, 15, 16, 20, 24, 30, 40, 48)  # FlexiViT's list: every size divides 240


# ============ ViT (ViT-22B knobs: parallel, qk_norm, qkv_bias, norm_bias) ============
@ENCODERS.register
def vit_tiny(**kw) -> Encoder:
    return vit_encoder("tiny", **kw)


@ENCODERS.register
def vit_small(**kw) -> Encoder:
    return vit_encoder("small", **kw)


@ENCODERS.register
def vit_base(**kw) -> Encoder:
    return vit_encoder("base", **kw)


@ENCODERS.register
def vit_small_22b(**kw) -> Encoder:
    """ViT-S/16 with the whole ViT-22B recipe switched on."""
    return vit_encoder("small", **{"parallel": True, "qk_norm": True, "qkv_bias": False, "norm_bias": False, **kw})


@ENCODERS.register
def vit_tiny_cifar(**kw) -> Encoder:
    return vit_encoder("tiny", **{"img_size": 32, "patch_size": 4, **kw})


@ENCODERS.register
def vit_small_cifar(**kw) -> Encoder:
    return vit_encoder("small", **{"img_size": 32, "patch_size": 4, **kw})


# ============ FlexiViT ============
@ENCODERS.register
def flexivit_small(**kw) -> FlexiViT:
    return flexivit_encoder("small", **{"img_size": 240, "base_patch": 32, "patch_sizes": FLEXI_SIZES_240, **kw})


@ENCODERS.register
def flexivit_base(**kw) -> FlexiViT:
    return flexivit_encoder("base", **{"img_size": 240, "base_patch": 32, "patch_sizes": FLEXI_SIZES_240, **kw})


@ENCODERS.register
def flexivit_tiny_cifar(**kw) -> FlexiViT:
    return flexivit_encoder("tiny", **{"img_size": 32, "base_patch": 8, "patch_sizes": (4, 8), **kw})


# ============ XCiT, ResMLP (timm) ============
@ENCODERS.register
def xcit_nano_12_p16(**kw) -> Encoder:
    return Encoder(timm_model("xcit_nano_12_p16_224", **kw))


@ENCODERS.register
def xcit_small_12_p16(**kw) -> Encoder:
    return Encoder(timm_model("xcit_small_12_p16_224", **kw))


@ENCODERS.register
def xcit_nano_12_p8_cifar(**kw) -> Encoder:
    return Encoder(timm_model("xcit_nano_12_p8_224", **{"img_size": 32, **kw}))


def _resmlp(depth: int, img_size: int = 224, patch_size: int = 16, pretrained: bool | str = False,
            checkpoint=None) -> Encoder:
    """ResMLP (Touvron et al. 2021): affine norms, a linear cross-patch layer, timm's MlpMixer blocks."""
    if pretrained:
        return Encoder(timm_model(f"resmlp_{depth}_224", pretrained=pretrained, checkpoint=checkpoint))
    from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock

    model = MlpMixer(num_classes=0, img_size=img_size, patch_size=patch_size, num_blocks=depth, embed_dim=384,
                     mlp_ratio=4, block_layer=ResBlock, norm_layer=Affine, stem_norm=False)
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return Encoder(model)


@ENCODERS.register
def resmlp_12(**kw) -> Encoder:
    return _resmlp(12, **kw)


@ENCODERS.register
def resmlp_12_cifar(**kw) -> Encoder:
    return _resmlp(12, **{"img_size": 32, "patch_size": 4, **kw})


# ============ unsupervised, no outside weights ============
@ENCODERS.register
def kmeans_patches(**kw) -> PatchKMeansEncoder:
    """Coates-Ng k-means patch features; ``fit(images)`` before use (memret.incremental does)."""
    return PatchKMeansEncoder(**kw)


@ENCODERS.register
def patch_dictionary(**kw) -> PatchDictionaryEncoder:
    """Thiry et al. (ICLR 2021) k-nearest-patches indicators over a dictionary of random whitened patches.

    Defaults (1,024 patches, stride 2, 2x2 grid: 8,192 dimensions) were chosen on a validation split of
    Split CIFAR-10's first task, with the clock in mind: stride 1 scored +1.95 points there at 3.3x the
    encoding time (notes in experiments/RESULTS.md). ``fit(images)`` before use (memret.incremental does,
    on the first task's training images only).
    """
    return PatchDictionaryEncoder(**{"n_patches": 1024, "stride": 2, "grid": 2, **kw})


# ============ ResNets: the class-incremental baselines ============
@ENCODERS.register
def resnet18(**kw) -> Encoder:
    return resnet18_encoder(**kw)


@ENCODERS.register
def resnet18_cifar(**kw) -> Encoder:
    return resnet18_encoder(cifar_stem=True, **kw)


@ENCODERS.register
def resnet32_cifar(**kw) -> Encoder:
    """He et al.'s CIFAR ResNet-32 (0.46M parameters); ``depth=6n+2`` and ``width`` give its smaller siblings, and a
    checkpoint's own depth and width are read back from the file."""
    return resnet32_encoder(**kw)


@ENCODERS.register
def resnet8_cifar(**kw) -> Encoder:
    """The CIFAR ResNet at depth 8 (78k parameters): the CPU pre-training encoder of ``memret.pretrain``'s
    CIFAR-10 recipe (~12 DINO epochs in 30 minutes on 2 CPU cores; experiments/RESULTS.md section 11)."""
    return resnet32_encoder(**{"depth": 8, **kw})


def create(name: str, **kwargs) -> Encoder:
    """Build the encoder registered as ``name``; unknown names raise ``KeyError`` listing the known ones."""
    return ENCODERS.create(name, **kwargs)


def list() -> list[str]:  # noqa: A001  (the issue's public name: memret.encoders.list())
    """Names of every registered encoder."""
    return ENCODERS.names()


__all__ = ["ENCODERS", "Encoder", "FlexiViT", "PatchDictionaryEncoder", "PatchKMeansEncoder", "create", "list",
           "load_weights", "pi_resize_patch_embed", "resize_pos_embed"]
