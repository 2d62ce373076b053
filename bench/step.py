"""Benchmark one complete SemiVL training iteration: the reference's step against this engine's, side by side.

    python bench/step.py                                   # shapes voc (N=21), ade (N=150) and tiny; every provider
    python bench/step.py --shapes voc tiny --providers port engine --rounds 2

An iteration is everything the trainer does per step: the mix partner's pseudo-labels (student in eval mode), the
frozen guidance CLIP, the student on the labeled, weak and two strong views with feature perturbation, every loss,
backward and the optimizer step. Random weights; one labeled and one unlabeled image (the tiny shape: the default
recipe's batch of 4 + 4).

Providers:
- ``port``: an eager port of the reference's step (bench/reference_step.py): three student forwards, logits
  upsampled to the crop, unfused losses, fp32 - what the reference trains with.
- ``port-compiled``: the same with ``torch.compile`` of the model (the losses stay eager, as a user would add it).
- ``engine``: ``semivl_fast.training.semi.semi_step`` as ``python -m semivl_fast.train`` runs it: one student
  forward, fused losses on the decoder's logits, ``train.amp=auto`` (bf16 autocast where the CPU or GPU computes
  bf16 natively).
- ``engine-compiled``: the same with ``train.compile=true``.

Shapes: ``voc`` (ViT-B/16, 512² crop: a 32×32 grid and logits at 128² upsampled to 512², 21 classes, the
guidance through 98 concepts), ``ade`` (the same with 150 classes), ``tiny`` (the synthetic default: the 6-block
``semivl-tiny`` at 96² with 9 classes). The port is skipped where its estimated peak (fp32 activations of six
decoder image-sets at about 30 MB per class, plus the ViT's) exceeds ``--max-gb`` (default: 90 % of the RAM).

Each shape prints time and peak memory per provider, then where the eager providers' time goes (bench/stages.py).
Rows are appended to bench/results/step.jsonl (``--results`` another folder).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import semivl_fast.training.semi as semi
from semivl_fast.clip import create_clip
from semivl_fast.models.backbone import ClipBackbone
from semivl_fast.models.decoder import DecoderConfig, LanguageGuidedDecoder
from semivl_fast.models.maskclip import MaskClip
from semivl_fast.models.reference_head import ReferenceVLGHead
from semivl_fast.models.semivl import SemiVL
from semivl_fast.text import TextEmbeddings
from semivl_fast.training.config import TrainConfig
from semivl_fast.training.optim import adamw, param_groups, update, warmup_poly
from semivl_fast.training.precision import PassContext, resolve_amp, vit_tokens

import reference_step
from harness import Machine, Row, environment, parser, peak_memory_mb, save_results, time_interleaved
from reference_step import ReferenceBackbone, ReferenceBatch, ReferenceGuidance, ReferenceModel, reference_optimizer
from stages import breakdown, format_breakdown, stage_hooks

PROVIDERS = ("port", "port-compiled", "engine", "engine-compiled")
STAGES = ["backbone", "guidance CLIP", "cost volume + embedding", "ASPP", "class attention", "upsampling", "losses",
          "optimizer", "other"]
TINY_DECODER = DecoderConfig(embed_dim=64, channels=64, text_channels=64, ffn_channels=128, aspp_rates=(2, 4, 6),
                             up_channels=(32, 16), skip_in_channels=(128, 128), skip_channels=(16, 8))


@dataclass(frozen=True)
class Shape:
    name: str
    clip: str
    crop: int
    classes: int
    concepts: int  # guidance text rows (concept max over classes); 0 = one per class
    guidance_layers: tuple[int, ...]
    decoder: DecoderConfig
    batch: int  # labeled images, and as many unlabeled
    lr: tuple[float, float, float]  # base lr, backbone multiplier, head multiplier (the recipe's)


SHAPES = {
    "voc": Shape("voc", "ViT-B-16", 512, 21, 98, (0, 4), DecoderConfig(), 1, (1e-4, 0.01, 10.0)),
    "ade": Shape("ade", "ViT-B-16", 512, 150, 0, (0, 4), DecoderConfig(), 1, (4e-4, 0.001, 10.0)),
    "tiny": Shape("tiny", "semivl-tiny", 96, 9, 27, (0, 2), TINY_DECODER, 4, (1e-4, 1.0, 10.0)),
}


def port_estimate_gb(shape: Shape) -> float:
    """The port's expected peak: six decoder image-sets of fp32 activations (about 30 MB per class at a 32² grid,
    measured with bench/decoder.py, scaling with the grid's area) plus the ViT's (about 1.5 GB per grad-carrying
    ViT-B/16 image at 512², attention probabilities included)."""
    grid = shape.crop // 16
    decoder = 6 * shape.batch * shape.classes * 30 * (grid / 32) ** 2 / 1024
    vit = 4 * shape.batch * 1.5 * (shape.crop / 512) ** 4 if shape.clip == "ViT-B-16" else 0.5
    return decoder + vit


def _data(shape: Shape, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random views, labels, padding and CutMix boxes for one iteration."""
    g = torch.Generator().manual_seed(seed)
    b, s, n = shape.batch, shape.crop, shape.classes
    img = lambda: torch.randn(b, 3, s, s, generator=g)
    pad = torch.zeros(b, s, s, dtype=torch.uint8)
    pad[:, -s // 8:] = 1  # the bottom rows are crop padding
    box1 = torch.tensor([[s // 8, s // 4, s // 2, 3 * s // 4]] * b)  # [y0, x0, y1, x1)
    box2 = torch.tensor([[s // 4, s // 8, 3 * s // 4, s // 2]] * b)
    mask = torch.randint(0, n, (b, s, s), generator=g)
    mask[pad == 1] = 255
    return {"img_x": img(), "mask_x": mask, "img_w": img(), "img_s1": img(), "img_s2": img(), "pad": pad,
            "box1": box1, "box2": box2, "img_w_mix": img(), "img_s1_mix": img(),
            "img_s2_mix": img(), "pad_mix": pad.clone()}


def _box_map(boxes: torch.Tensor, size: int) -> torch.Tensor:
    ys = torch.arange(size).view(1, size, 1)
    xs = torch.arange(size).view(1, 1, size)
    b = boxes.view(-1, 4, 1, 1)
    return ((ys >= b[:, 0]) & (ys < b[:, 2]) & (xs >= b[:, 1]) & (xs < b[:, 3])).long()


def _texts(shape: Shape, embed_dim: int) -> tuple[TextEmbeddings, TextEmbeddings]:
    """Random unit text rows: the decoder's (one per class) and the guidance's (concepts grouped by class)."""
    g = torch.Generator().manual_seed(1)
    n, r = shape.classes, shape.concepts or shape.classes
    names = tuple(f"class{i}" for i in range(n))
    single = TextEmbeddings(F.normalize(torch.randn(n, embed_dim, generator=g), dim=-1), torch.arange(n), n,
                            "single", classes=names)
    groups = torch.cat([torch.arange(n), torch.randint(0, n, (r - n,), generator=g)]) if r > n else torch.arange(n)
    concepts = TextEmbeddings(F.normalize(torch.randn(r, embed_dim, generator=g), dim=-1), groups, n,
                              "max" if r > n else "single", classes=names)
    return single, concepts


def port_setup(shape: Shape, compiled: bool):
    """The reference's model, guidance CLIP, optimizer and one iteration (bench/reference_step.py)."""
    torch.manual_seed(0)
    visual = create_clip(shape.clip).visual
    single, concepts = _texts(shape, int(visual.proj.shape[1]))
    cfg = _decoder_config(shape, visual)
    model = ReferenceModel(ReferenceBackbone(copy.deepcopy(visual), shape.crop, shape.guidance_layers),
                           ReferenceVLGHead(cfg), single.embeddings)
    guidance = ReferenceGuidance(ReferenceBackbone(copy.deepcopy(visual), shape.crop, (), trainable=False),
                                 concepts.embeddings, concepts.groups, shape.classes)
    lr, backbone_mult, head_mult = shape.lr
    optimizer = reference_optimizer(model, lr, backbone_mult, head_mult)
    d = _data(shape)
    to255 = lambda pad: pad.long() * 255
    batch = ReferenceBatch(d["img_x"], d["mask_x"], d["img_w"], d["img_s1"], d["img_s2"], to255(d["pad"]),
                           _box_map(d["box1"], shape.crop), _box_map(d["box2"], shape.crop), d["img_w_mix"],
                           d["img_s1_mix"], d["img_s2_mix"], to255(d["pad_mix"]))
    net = torch.compile(model) if compiled else model
    step = lambda: reference_step.reference_step(net, model, guidance, optimizer, batch, lam=0.05)
    stages = {"backbone": [model.backbone], "guidance CLIP": [guidance],
              "cost volume + embedding": [model.decode_head.conv1], "ASPP": [model.decode_head.aspp],
              "class attention": [*model.decode_head.layers, model.decode_head.text_proj],
              "upsampling": [model.decode_head.up1, model.decode_head.up2, model.decode_head.head,
                             *model.decode_head.skip_proj]}
    losses = [(reference_step, name) for name in ("pseudo_labels", "clip_labels", "confidence_weighted", "mixed",
                                                    "mean_all")]
    functions = {"losses": [*losses, (reference_step.F, "cross_entropy"), (ReferenceModel, "to_crop")],
                 "optimizer": [(optimizer, "step")]}
    return step, stages, functions


def _decoder_config(shape: Shape, visual) -> DecoderConfig:
    """The shape's decoder with input widths taken from the CLIP (value-path maps of the guidance layers)."""
    width = int(visual.conv1.out_channels)
    return dataclasses.replace(shape.decoder, embed_dim=int(visual.proj.shape[1]),
                               skip_in_channels=(width,) * len(shape.guidance_layers))


def engine_setup(shape: Shape, compiled: bool):
    """This engine's SemiVL, guidance (MaskCLIP), AdamW and ``semi_step`` + ``update``, at ``train.amp=auto``."""
    torch.manual_seed(0)
    visual = create_clip(shape.clip).visual
    single, concepts = _texts(shape, int(visual.proj.shape[1]))
    backbone = ClipBackbone(copy.deepcopy(visual), shape.crop, shape.guidance_layers, "attn", reference_port=True)
    model = SemiVL(backbone, LanguageGuidedDecoder(_decoder_config(shape, visual)), single)
    guidance = MaskClip(ClipBackbone(copy.deepcopy(visual), shape.crop, (), "frozen", reference_port=True), concepts)
    lr, backbone_mult, head_mult = shape.lr
    optimizer = adamw(param_groups(model, lr, 0.01, {"backbone": backbone_mult, "decoder": head_mult}), lr=lr,
                      betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    scheduler = warmup_poly(optimizer, 10**9)
    device = torch.device("cpu")
    context = PassContext(resolve_amp("auto", device), device, vit_tokens(shape.crop, backbone.patch_size))
    d = _data(shape)
    u = semi.UnlabeledBatch(d["img_w"], d["img_s1"], d["img_s2"], d["pad"], d["box1"], d["box2"])
    other = semi.UnlabeledBatch(d["img_w_mix"], d["img_s1_mix"], d["img_s2_mix"], d["pad_mix"], d["box1"], d["box2"])
    cfg = TrainConfig(mix_partner="loader")
    net = torch.compile(model, dynamic=False) if compiled else model

    def step():
        loss, _ = semi.semi_step(net, model, guidance, d["img_x"], d["mask_x"], u, other, cfg, 0.5, context)
        update(loss, optimizer, scheduler, None, 0)
        return loss.detach()

    dec = model.decoder
    stages = {"backbone": [model.backbone], "guidance CLIP": [guidance],
              "cost volume + embedding": [dec.cost_volume, dec.cost_embed], "ASPP": [dec.spatial_aggregation],
              "class attention": [dec.class_aggregation], "upsampling": [dec.upsampling, dec.head]}
    functions = {"losses": [(semi, "pseudo_label_loss")], "optimizer": [(optimizer, "step")]}
    return step, stages, functions


SETUPS = {"port": lambda s: port_setup(s, False), "port-compiled": lambda s: port_setup(s, True),
          "engine": lambda s: engine_setup(s, False), "engine-compiled": lambda s: engine_setup(s, True)}


def _ram_gb() -> float:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemTotal")) / 2**20


def run_shape(shape: Shape, providers: list[str], rounds: int, memory: bool, max_gb: float) -> list[Row]:
    device = torch.device("cpu")
    runnable = [p for p in providers if not p.startswith("port") or port_estimate_gb(shape) <= max_gb]
    for p in sorted(set(providers) - set(runnable), key=providers.index):
        print(f"{shape.name}: {p} skipped: its estimated peak {port_estimate_gb(shape):.0f} GB exceeds "
              f"--max-gb {max_gb:.0f}")
    built = {p: SETUPS[p](shape) for p in runnable}
    times = time_interleaved({p: b[0] for p, b in built.items()}, device, rounds)
    base = "port" if "port" in times else runnable[0]
    rows, columns = [], {}
    print(f"\n{shape.name}: {shape.clip} at {shape.crop}², N={shape.classes}, batch {shape.batch}+{shape.batch}")
    print(f"{'provider':18s} {'s/step':>8s} {'speed-up':>9s} {'peak GB':>8s} {'mem ratio':>10s}")
    peaks = {p: peak_memory_mb(built[p][0], device) if memory else None for p in runnable}
    for p in runnable:
        if not p.endswith("compiled"):  # compiled regions hide the stages
            step, stages, functions = built[p]
            with stage_hooks(stages, functions):
                columns[p], _ = breakdown(step)
        ratio = times[base] / times[p]
        mem = (f"{peaks[p] / 1024:8.2f} {peaks[base] / peaks[p]:9.2f}x" if peaks[p] else f"{'-':>8s} {'-':>10s}")
        print(f"{p:18s} {times[p] / 1e3:8.2f} {ratio:8.2f}x {mem}")
        rows.append(Row("step", f"{shape.name} N={shape.classes}", p, times[p], peaks[p], 0.0, 0.0, 0.0,
                        {"baseline": base, "stages_ms": columns.get(p, {})}))
    if columns:
        print("\nwhere the time goes (one profiled step):")
        print(format_breakdown(columns, STAGES))
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    p = parser(__doc__)
    p.set_defaults(rounds=3)
    p.add_argument("--shapes", nargs="+", default=["voc", "ade", "tiny"], choices=sorted(SHAPES))
    p.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=PROVIDERS)
    p.add_argument("--max-gb", type=float, default=0.9 * _ram_gb(), help="skip the port above this estimated peak")
    args = p.parse_args(argv)
    if args.device != "cpu":
        raise SystemExit("bench/step.py times the CPU step; GPU steps are not wired yet")
    env = environment(torch.device("cpu"))
    amp = resolve_amp("auto", torch.device("cpu"))
    print(f"{env['device']} | torch {env['torch']} | {os.cpu_count()} CPUs, {torch.get_num_threads()} threads | "
          f"train.amp=auto -> {amp} | commit {env['commit']}")
    rows = []
    for name in args.shapes:
        rows += run_shape(SHAPES[name], args.providers, args.rounds, not args.no_memory, args.max_gb)
    path = save_results("step", rows, Machine("cpu", 0.0, 0.0), env, args.results)
    print(f"\nappended {len(rows)} rows to {path}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
