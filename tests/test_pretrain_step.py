"""PretrainStep branch by branch on the tiny model with random inputs: the loss against a value worked out here
(plain log-softmax / mutual-information formulas, not the library's loss functions), the log keys, and which
parameters each loss trains (and which it must not)."""

import dataclasses
import math

import pytest
import torch

from semivl_fast.clip import get_tokenizer
from semivl_fast.training.optim import decay_matrices, param_groups
from semivl_fast.training.vilseg.config import LossConfig
from semivl_fast.training.vilseg.step import PretrainStep, freeze_untrained
from semivl_fast.vilseg.model import ViLSegModelConfig, build_vilseg

B, L, K = 3, 2, 4  # images, local views per image, clusters; global views 32 px (4x4 patches), local 16 px (2x2)
CAPTIONS = ["a red ball on sand", "a gold coin on grass", "a green leaf on snow"]
PHRASES = ["red ball", "gold coin", "green leaf", "sand", "grass", "snow"]
MENTIONS = torch.tensor([[1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 0, 1]], dtype=torch.bool)

# Local-view boxes (y0, x0, y1, x1) in view 1's normalised coordinates and, worked out by hand, which global patch
# (row-major on the 4x4 grid) lies under each local patch centre (row-major on the 2x2 grid); missing = outside.
BOX_A = (0.0, 0.0, 0.5, 0.5)  # top-left quarter: local (r, c) -> global (r, c)
BOX_B = (0.5, 1.0, 1.0, 0.5)  # bottom-right quarter, mirrored: local columns run right to left
BOX_C = (-0.5, 0.5, 0.5, 1.5)  # half outside: only local (1, 0) (centre y .25, x .75) is inside, at global (1, 3)
PAIRS = {BOX_A: {0: 0, 1: 1, 2: 4, 3: 5}, BOX_B: {0: 11, 1: 10, 2: 15, 3: 14}, BOX_C: {2: 7}}
IMAGE_BOXES = [(BOX_A, BOX_B), (BOX_B, BOX_C), (BOX_C, BOX_A)]

QUIET = dict(clip_weight=0.0, ground_weight=0.0, vision_weight=0.0, cluster_weight=0.0)  # every loss off


def _model(**cfg) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_vilseg(ViLSegModelConfig(num_clusters=K, **cfg))


def _tokens(texts) -> torch.Tensor:
    return get_tokenizer("semivl-tiny")(list(texts)).long()


def _batch(view2_nan: bool = False) -> tuple:
    """(view1, view2, flipped, local, boxes, tokens, mentions) of fresh random images; ``view2_nan``: view 2 is NaN
    (a branch that must not encode it then still gives a finite loss)."""
    view1 = torch.randn(B, 3, 32, 32)
    view2 = torch.full_like(view1, float("nan")) if view2_nan else view1 + 0.3 * torch.randn_like(view1)
    flipped = torch.tensor([True, False, True])
    local = torch.randn(B, L, 3, 16, 16)
    boxes = torch.tensor(IMAGE_BOXES, dtype=torch.float32)
    return view1, view2, flipped, local, boxes, _tokens(CAPTIONS), MENTIONS


def _run(model, loss_cfg: LossConfig, batch, phrases: bool = False):
    step = PretrainStep(model, loss_cfg, _tokens(f"a photo of a {p}" for p in PHRASES) if phrases else None)
    model.zero_grad(set_to_none=True)
    loss, logs = step(*batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert all(torch.isfinite(v).all() for v in logs.values())
    loss.backward()
    return loss.detach(), logs


def _groups(model) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    out = {"visual": [], "text": [], "scale": [], "prototypes": []}
    for name, p in model.named_parameters():
        key = ("prototypes" if name.startswith("head.") else "scale" if name == "clip.logit_scale" else
               "visual" if name.startswith("clip.visual.") else "text")
        out[key].append((name, p))
    return out


def _trained(params) -> bool:
    """Every parameter of the group received a non-zero gradient."""
    return all(p.grad is not None and bool(p.grad.abs().sum() > 0) for _, p in params)


def _untouched(params) -> bool:
    return all(p.grad is None or not p.grad.any() for _, p in params)


# ---------------------------------------------------------------------------------------- formulas worked out here

def _nce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of -log softmax(logits)[i, targets[i]]."""
    return -logits.log_softmax(dim=1)[torch.arange(len(targets)), targets].mean()


def _sym_ce(sim: torch.Tensor) -> torch.Tensor:
    diag = torch.arange(sim.shape[0])
    return 0.5 * (_nce(sim, diag) + _nce(sim.t(), diag))


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, D) x (M, D) -> (N, M) cosines."""
    return (a / a.norm(dim=1, keepdim=True)) @ (b / b.norm(dim=1, keepdim=True)).t()


def _pooled_cos(dense: torch.Tensor, text: torch.Tensor, pool_temp: float) -> torch.Tensor:
    """PACL pooling, one (image, caption) pair at a time: softmax(cos / T)-weighted mean of the unit patches."""
    out = torch.zeros(dense.shape[0], text.shape[0])
    for i in range(dense.shape[0]):
        patches = dense[i].flatten(1).t()  # (N, D)
        patches = patches / patches.norm(dim=1, keepdim=True)
        for j in range(text.shape[0]):
            t = text[j] / text[j].norm()
            weights = torch.softmax(patches @ t / pool_temp, dim=0)
            pooled = (weights[:, None] * patches).sum(0)
            out[i, j] = pooled @ t / pooled.norm()
    return out


def _assign(model, dense: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) -> (B*h*w, K) softmax(cos(patch, prototype) / T), patches row-major per image."""
    patches = dense.permute(0, 2, 3, 1).reshape(-1, dense.shape[1])
    return (_cos(patches, model.head.prototypes) / model.cfg.cluster_temp).softmax(dim=1)


def _mutual_information(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """I(z; z') = sum P_ij log(P_ij / (P_i P_j)) of the symmetrised joint of paired soft assignments (N, K)."""
    joint = sum(torch.outer(a[n], b[n]) for n in range(a.shape[0])) / a.shape[0]
    joint = (joint + joint.t()) / 2
    rows, cols = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    return (joint * (joint / (rows * cols)).log()).sum()


def _scale(model) -> torch.Tensor:
    return model.clip.logit_scale.detach().exp().clamp(max=100.0)


# ---------------------------------------------------------------------------------------- the branches

def test_vision_global_is_the_image_level_multi_crop_contrast():
    """loss.vision_mode=global (DINO-style): each local view's embedding against every image's global embedding."""
    model, batch = _model(), _batch(view2_nan=True)  # no clustering: view 2 must not be encoded
    view1, _, _, local = batch[:4]
    cfg = LossConfig(**{**QUIET, "vision_weight": 0.7}, vision_mode="global", vision_temp=0.2)
    loss, logs = _run(model, cfg, batch)
    assert set(logs) == {"clip", "temp", "vision", "loss"}
    with torch.no_grad():
        g = model.encode_image(view1).global_embed  # (B, D): the mean of the patch embeddings (global_embed=avg)
        q = model.encode_image(local.flatten(0, 1)).global_embed  # (B*L, D), image-major
    expected = _nce(_cos(q, g) / 0.2, torch.tensor([0, 0, 1, 1, 2, 2]))
    torch.testing.assert_close(logs["vision"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, 0.7 * expected, atol=1e-5, rtol=1e-5)
    groups = _groups(model)
    assert _trained(groups["visual"])
    assert _untouched(groups["text"]) and _untouched(groups["scale"]) and _untouched(groups["prototypes"])
    # "both" adds the dense form; "dense" alone is a different loss on the same inputs
    _, dense_logs = _run(model, dataclasses.replace(cfg, vision_mode="dense"), batch)
    _, both_logs = _run(model, dataclasses.replace(cfg, vision_mode="both"), batch)
    torch.testing.assert_close(both_logs["vision"], expected + dense_logs["vision"], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(dense_logs["vision"], expected, atol=1e-3)


@pytest.mark.parametrize("pool", ["global", "patch", "both"])
def test_clip_pool_global_patch_and_both(pool):
    model, batch = _model(), _batch(view2_nan=True)
    view1, tokens = batch[0], batch[5]
    cfg = LossConfig(**{**QUIET, "clip_weight": 1.3}, clip_pool=pool, pool_temp=0.2)
    loss, logs = _run(model, cfg, batch)
    assert set(logs) == {"clip", "temp", "loss"}
    with torch.no_grad():
        feats, text, scale = model.encode_image(view1), model.encode_text(tokens), _scale(model)
    global_loss = _sym_ce(scale * _cos(feats.global_embed, text))
    patch_loss = _sym_ce(scale * _pooled_cos(feats.dense, text, 0.2))
    expected = {"global": global_loss, "patch": patch_loss, "both": (global_loss + patch_loss) / 2}[pool]
    torch.testing.assert_close(logs["clip"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, 1.3 * expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logs["temp"], 1 / scale)
    groups = _groups(model)
    assert _trained(groups["visual"]) and _trained(groups["text"]) and _trained(groups["scale"])
    assert _untouched(groups["prototypes"])


def test_clip_loss_averages_over_both_global_views_when_clustering():
    model, batch = _model(), _batch()
    view1, view2, tokens = batch[0], batch[1], batch[5]
    _, logs = _run(model, LossConfig(**{**QUIET, "clip_weight": 1.0, "cluster_weight": 0.5}), batch)
    with torch.no_grad():
        text, scale = model.encode_text(tokens), _scale(model)
        per_view = [_sym_ce(scale * _cos(model.encode_image(v).global_embed, text)) for v in (view1, view2)]
    torch.testing.assert_close(logs["clip"], (per_view[0] + per_view[1]) / 2, atol=1e-5, rtol=1e-5)


def _iic_global_views(model, batch) -> torch.Tensor:
    """-I(z; z') over the two global views, view 2's assignments mirrored back where ``flipped``."""
    view1, view2, flipped = batch[:3]
    with torch.no_grad():
        d1 = model.encode_image(view1).dense
        d2 = model.encode_image(view2).dense
    d2 = torch.stack([d.flip(-1) if f else d for d, f in zip(d2, flipped.tolist())])
    return -_mutual_information(_assign(model, d1), _assign(model, d2))


@pytest.mark.parametrize("detach", [False, True], ids=["joint", "detach_clusters"])
def test_iic_on_global_views_and_detach_clusters(detach):
    """model.detach_clusters: the same IIC loss, but its gradient stops at the prototypes (the encoder gets none)."""
    model, batch = _model(detach_clusters=detach), _batch()
    assert model.cfg.detach_clusters is detach
    loss, logs = _run(model, LossConfig(**{**QUIET, "cluster_weight": 0.8}), batch)
    assert set(logs) == {"clip", "temp", "iic", "clusters_used", "loss"}
    expected = _iic_global_views(model, batch)
    torch.testing.assert_close(logs["iic"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, 0.8 * expected, atol=1e-5, rtol=1e-5)
    assert 1 <= logs["clusters_used"].item() <= K
    groups = _groups(model)
    assert _trained(groups["prototypes"])
    assert _untouched(groups["text"]) and _untouched(groups["scale"])
    if detach:
        assert _untouched(groups["visual"])
    else:
        assert _trained(groups["visual"])


def test_iic_on_local_views_pairs_each_local_patch_with_the_global_patch_under_it():
    """loss.cluster_views=local: pairs from the boxes (worked out by hand above); the second view is not encoded."""
    model, batch = _model(), _batch(view2_nan=True)
    view1, _, _, local = batch[:4]
    loss, logs = _run(model, LossConfig(**{**QUIET, "cluster_weight": 1.0}, cluster_views="local"), batch)
    assert set(logs) == {"clip", "temp", "iic", "clusters_used", "loss"}
    with torch.no_grad():
        p_global = _assign(model, model.encode_image(view1).dense).view(B, 16, K)
        p_local = _assign(model, model.encode_image(local.flatten(0, 1)).dense).view(B, L, 4, K)
    a, b = [], []
    for i, boxes in enumerate(IMAGE_BOXES):
        for v, box in enumerate(boxes):
            for local_patch, global_patch in PAIRS[box].items():
                a.append(p_local[i, v, local_patch])
                b.append(p_global[i, global_patch])
    assert len(a) == 2 * (4 + 4 + 1)
    expected = -_mutual_information(torch.stack(a), torch.stack(b))
    torch.testing.assert_close(logs["iic"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    usage = p_global.reshape(-1, K).mean(0)  # clusters_used: perplexity of the global view's cluster usage
    torch.testing.assert_close(logs["clusters_used"], torch.exp(-(usage * usage.log()).sum()), atol=1e-5, rtol=1e-5)
    groups = _groups(model)
    assert _trained(groups["prototypes"]) and _trained(groups["visual"])
    assert _untouched(groups["text"]) and _untouched(groups["scale"])
    no_local = (*batch[:3], local[:, :0], batch[4][:, :0], *batch[5:])
    with pytest.raises(ValueError, match="local_crops"):
        PretrainStep(model, LossConfig(cluster_views="local"))(*no_local)


def test_ground_weight_zero_skips_the_phrases():
    """loss.ground_weight=0 with a phrase vocabulary: no grounding term, the phrases are never encoded, and the loss
    is exactly the one without a vocabulary; > 0 adds weight * ground."""
    model, batch = _model(), _batch(view2_nan=True)
    calls = []
    real = model.encode_text
    model.encode_text = lambda t: (calls.append(t.shape[0]), real(t))[1]
    base = LossConfig(**{**QUIET, "clip_weight": 1.0})
    off, off_logs = _run(model, base, batch, phrases=True)
    assert "ground" not in off_logs and calls == [B]  # the captions only
    plain, _ = _run(model, base, batch, phrases=False)
    torch.testing.assert_close(off, plain)
    calls.clear()
    on, on_logs = _run(model, dataclasses.replace(base, ground_weight=0.7), batch, phrases=True)
    assert set(on_logs) == {"clip", "temp", "ground", "loss"} and sorted(calls) == [B, len(PHRASES)]
    torch.testing.assert_close(on_logs["clip"], off_logs["clip"])
    torch.testing.assert_close(on, off + 0.7 * on_logs["ground"], atol=1e-6, rtol=1e-6)
    assert on_logs["ground"].item() > 0


# ---------------------------------------------------------------------------------------- learnable parameters

def test_temperature_and_prototypes_learn():
    """The default recipe (all losses, grounding on): CLIP's logit_scale and the prototypes get gradients, sit in the
    no-weight-decay groups, and one optimiser step (as pretrain's AdamW) moves them."""
    model, batch = _model(), _batch()
    _, logs = _run(model, LossConfig(), batch, phrases=True)
    assert set(logs) == {"clip", "temp", "ground", "vision", "iic", "clusters_used", "loss"}
    scale, protos = model.clip.logit_scale, model.head.prototypes
    torch.testing.assert_close(logs["temp"], torch.exp(-scale.detach()))
    assert scale.grad is not None and scale.grad.abs().item() > 0
    assert protos.grad is not None and protos.grad.abs().sum().item() > 0
    groups = param_groups(model, 1e-3, 0.1, {"head": 2.0}, decay=decay_matrices)
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert by_id[id(scale)]["weight_decay"] == 0 and by_id[id(protos)]["weight_decay"] == 0
    assert by_id[id(protos)]["lr"] == pytest.approx(2e-3) and by_id[id(scale)]["lr"] == pytest.approx(1e-3)
    before = scale.detach().clone(), protos.detach().clone()
    torch.optim.AdamW(groups, lr=1e-3).step()
    # Adam's first step moves every coordinate with a non-zero gradient by about lr against its sign
    assert (scale.detach() - before[0]).item() == pytest.approx(-1e-3 * math.copysign(1, scale.grad.item()),
                                                                rel=1e-2)
    moved = protos.detach() - before[1]
    assert (moved[protos.grad != 0].sign() == -protos.grad[protos.grad != 0].sign()).all()


def test_logit_scale_is_clamped():
    model, batch = _model(), _batch(view2_nan=True)
    with torch.no_grad():
        model.clip.logit_scale.fill_(math.log(200.0))
    _, logs = _run(model, LossConfig(**{**QUIET, "clip_weight": 1.0}, max_logit_scale=50.0), batch)
    assert logs["temp"].item() == pytest.approx(1 / 50)
    assert not model.clip.logit_scale.grad.any()  # past the clamp the temperature stops learning


CONFIGS = {
    "default": ({}, {}),
    "vision_global": ({"vision_mode": "global"}, {}),
    "vision_both": ({"vision_mode": "both"}, {}),
    "clip_patch": ({"clip_pool": "patch"}, {}),
    "cluster_local": ({"cluster_views": "local"}, {}),
    "no_clustering": ({"cluster_weight": 0.0}, {}),
    "no_vision": ({"vision_weight": 0.0}, {}),
    "no_grounding": ({"ground_weight": 0.0}, {}),
    "detach_clusters": ({}, {"detach_clusters": True}),
    "cls_token": ({}, {"global_embed": "cls", "dense": "token"}),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_trainable_parameter_gets_a_gradient(name):
    """What DDP (no unused-parameter search) needs: each trainable parameter takes part in every step's loss.
    Parameters no loss of the recipe trains (the prototypes without clustering) are frozen by freeze_untrained, as
    pretrain does before building the optimiser (without it, 2-process DDP with loss.cluster_weight=0 failed at the
    second iteration)."""
    loss_kw, model_kw = CONFIGS[name]
    model, cfg = _model(**model_kw), LossConfig(**loss_kw)
    freeze_untrained(model, cfg)
    _run(model, cfg, _batch(), phrases=True)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == ({"head.prototypes"} if loss_kw.get("cluster_weight") == 0 else set())
