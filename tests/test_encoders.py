import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm", reason="pip install memret[vision]")
import timm  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import memret.encoders as E  # noqa: E402


LABEL_FREE = {"kmeans_patches": {"n_centroids": 8}, "patch_dictionary": {"n_patches": 16}}  # fitted on data


def input_size(name: str) -> int:
    return 32 if name.endswith("_cifar") or name in LABEL_FREE else 240 if name.startswith("flexivit") else 224


@pytest.mark.parametrize("name", E.list())
def test_registry_sweep(name):
    torch.manual_seed(0)
    enc = E.create(name, **LABEL_FREE.get(name, {}))
    s = input_size(name)
    x = torch.randn(2, 3, s, s)
    if isinstance(enc, E.PatchKMeansEncoder):  # unsupervised: fitted on data, no trainable parameters
        enc.fit(torch.randn(16, 3, s, s), n_patches=2000)
        x.requires_grad_(True)
    if isinstance(enc, E.PatchDictionaryEncoder):  # indicator features: fitted on data, no gradient by design
        enc.fit(torch.randn(16, 3, s, s))
    kw = {"patch_size": max(enc.patch_sizes)} if isinstance(enc, E.FlexiViT) else {}  # keep CPU time small
    enc.train()
    y = enc(x, **kw)
    assert y.shape == (2, enc.embed_dim) and torch.isfinite(y).all()
    f = enc.forward_features(x, **kw)
    assert f.ndim == 3 and f.shape[0] == 2 and f.shape[2] == enc.embed_dim
    if not isinstance(enc, E.PatchDictionaryEncoder):
        y.square().mean().backward()
        grads = [p.grad for p in enc.parameters() if p.requires_grad] or [x.grad]
        assert all(g is not None for g in grads[:3]) and grads[0].abs().sum() > 0  # gradients reach the stem
    enc.eval()
    with torch.no_grad():
        assert torch.equal(enc(x, **kw), enc(x, **kw))  # eval is deterministic and returns one tensor, not a tuple


def test_unknown_name_lists_known():
    with pytest.raises(KeyError, match="vit_small"):
        E.create("vit_gigantic")


@pytest.mark.parametrize("ours,ref", [("vit_tiny", "vit_tiny_patch16_224"), ("vit_small", "vit_small_patch16_224"),
                                      ("vit_base", "vit_base_patch16_224"), ("xcit_nano_12_p16", "xcit_nano_12_p16_224"),
                                      ("resmlp_12", "resmlp_12_224"), ("resnet18", "resnet18")])
def test_parameter_counts_match_reference_configs(ours, ref):
    n = sum(p.numel() for p in E.create(ours).parameters())
    n_ref = sum(p.numel() for p in timm.create_model(ref, pretrained=False, num_classes=0).parameters())
    assert n == n_ref


def test_resnet32_is_the_cifar_resnet():
    enc = E.create("resnet32_cifar")
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 31 and enc.embed_dim == 64  # 31 conv layers + the classifier = 32
    assert 0.45e6 < sum(p.numel() for p in enc.parameters()) < 0.48e6  # PyCIL: 0.46M


def test_vit22b_knobs_change_block_structure():
    from timm.models.vision_transformer import Block, ParallelScalingBlock

    plain = E.create("vit_tiny_cifar")
    assert all(type(b) is Block for b in plain.model.blocks)
    assert plain.model.blocks[0].attn.qkv.bias is not None
    assert isinstance(plain.model.blocks[0].attn.q_norm, torch.nn.Identity)
    v22 = E.create("vit_tiny_cifar", parallel=True, qk_norm=True, qkv_bias=False, norm_bias=False)
    assert all(type(b) is ParallelScalingBlock for b in v22.model.blocks)
    blk = v22.model.blocks[0]
    assert isinstance(blk.q_norm, torch.nn.LayerNorm) and isinstance(blk.k_norm, torch.nn.LayerNorm)
    # one fused in-projection feeds attention (3 x 192) and MLP (4 x 192); it has no bias, the MLP half
    # gets its own, so queries, keys and values carry none
    assert blk.in_proj.out_features == 7 * 192 and blk.in_proj.bias is None
    assert blk.mlp_bias.shape == (4 * 192,)
    lns = [m for m in v22.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert lns and all(m.bias is None for m in lns)
    # parallel: attention and MLP both read the same normalised input, and their outputs are summed
    assert not hasattr(blk, "norm2")


def test_pi_resize_matches_timm():
    from timm.layers import resample_patch_embed

    w = torch.randn(4, 3, 8, 8, dtype=torch.float64).float()
    for new in (5, 12, 16):
        ref = resample_patch_embed(w, [new, new], interpolation="bilinear", antialias=False)
        torch.testing.assert_close(E.pi_resize_patch_embed(w, (new, new)), ref, atol=1e-4, rtol=1e-4)


def test_pi_resize_identity_and_token_invariance():
    torch.manual_seed(0)
    w = torch.randn(5, 3, 8, 8)
    assert torch.equal(E.pi_resize_patch_embed(w, (8, 8)), w)
    for new in (12, 16):
        w2 = E.pi_resize_patch_embed(w, (new, new))
        x = torch.randn(4, 3, 8, 8)
        x_up = F.interpolate(x, size=(new, new), mode="bilinear", antialias=False)
        tok = F.conv2d(x, w).flatten(1)
        tok_up = F.conv2d(x_up, w2).flatten(1)
        torch.testing.assert_close(tok_up, tok, atol=1e-3, rtol=1e-3)


def test_flexivit_patch_sizes():
    torch.manual_seed(0)
    enc = E.create("flexivit_tiny_cifar")
    x = torch.randn(2, 3, 32, 32)
    enc.eval()
    base_shapes = {k: v.shape for k, v in enc.state_dict().items()}
    with torch.no_grad():
        for p, n_tokens in ((4, 1 + 64), (8, 1 + 16)):
            assert enc.forward_features(x, patch_size=p).shape == (2, n_tokens, enc.embed_dim)
            assert enc(x, patch_size=p).shape == (2, enc.embed_dim)
    assert {k: v.shape for k, v in enc.state_dict().items()} == base_shapes  # parameters stay at base size
    draws = [enc.patch_size_for(s) for s in range(200)]
    assert set(draws) == {4, 8} and draws == [enc.patch_size_for(s) for s in range(200)]  # seeded per step
    enc.train()
    enc(x)
    enc(x)
    assert enc.train_step == 2
    with pytest.raises(ValueError, match="do not divide"):
        E.create("flexivit_tiny_cifar", patch_sizes=(5,))


def test_flexivit_resume_continues_the_patch_size_sequence(tmp_path):
    """train_step is saved with the weights: save after 3 steps, load into a fresh model, the draws go on."""

    def sizes(enc, n):
        x = torch.zeros(1, 3, 32, 32)
        with torch.no_grad():  # the token count tells the patch size drawn for that step
            return [32 // int((enc.forward_features(x).shape[1] - 1) ** 0.5) for _ in range(n)]

    torch.manual_seed(0)
    straight = E.create("flexivit_tiny_cifar").train()
    expected = sizes(straight, 10)
    assert len(set(expected[3:])) == 2  # both sizes occur, so a restart at step 0 would show
    first = E.create("flexivit_tiny_cifar").train()
    assert sizes(first, 3) == expected[:3]
    torch.save(first.state_dict(), tmp_path / "flexi.pt")
    resumed = E.create("flexivit_tiny_cifar")
    resumed.load_state_dict(torch.load(tmp_path / "flexi.pt", weights_only=True))
    assert int(resumed.train_step) == 3
    assert sizes(resumed.train(), 7) == expected[3:]
    # weights saved before train_step was part of the state still load, starting at step 0
    old = {k: v for k, v in first.state_dict().items() if k != "train_step"}
    legacy = E.create("flexivit_tiny_cifar")
    legacy.load_state_dict(old)
    assert int(legacy.train_step) == 0


@pytest.mark.parametrize("fmt", ["timm", "dino", "msn"])
def test_checkpoint_formats(tmp_path, fmt):
    torch.manual_seed(0)
    src = E.create("vit_tiny_cifar")
    state = src.model.state_dict()
    wrapped = {
        "timm": state,
        "dino": {"teacher": {f"backbone.{k}": v for k, v in state.items()} | {"head.mlp.0.weight": torch.zeros(3)},
                 "student": {}},
        "msn": {"target_encoder": {f"module.{k}": v for k, v in state.items()}, "prototypes": torch.zeros(4, 2)},
    }[fmt]
    torch.save(wrapped, tmp_path / "w.pth")
    dst = E.create("vit_tiny_cifar", checkpoint=tmp_path / "w.pth")
    x = torch.randn(1, 3, 32, 32)
    src.eval(), dst.eval()
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))


def test_checkpoint_errors(tmp_path):
    torch.save(E.create("vit_tiny_cifar").model.state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(ValueError, match="other shapes"):
        E.create("vit_small_cifar", checkpoint=tmp_path / "tiny.pth")
    with pytest.raises(FileNotFoundError):
        E.create("vit_tiny_cifar", checkpoint=tmp_path / "none.pth")


def test_pretrained_offline_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import; fail fast
    with pytest.raises(OSError, match="cannot fetch pretrained weights"):
        E.create("resnet18", pretrained=True)
