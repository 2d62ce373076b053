"""ViL-Seg pretraining configuration: dataclasses, read like the SemiVL config (YAML + ``base:`` + dotted overrides).

Every choice the paper leaves open (see the README's ViL-Seg section) is a field here, with the reconstruction's
default. The model and data sections are the library's ``ViLSegModelConfig`` and ``CaptionDataConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from semivl_fast.training.config import build, load, recipe_path
from semivl_fast.training.precision import check_amp
from semivl_fast.vilseg.data import CaptionDataConfig
from semivl_fast.vilseg.model import DENSE_SOURCES, GLOBAL_EMBEDS, ViLSegModelConfig

VISION_MODES = ("global", "dense", "both")
DEFAULT_RECIPE = "vilseg_synthetic"  # the default prior's recipe


@dataclass
class LossConfig:
    clip_weight: float = 1.0  # cross-modal contrast (symmetric InfoNCE, learnable temperature)
    clip_pool: str = "global"  # global (the global image embedding) | patch (text-conditioned pooling of the patch
    #                            embeddings, PACL-style) | both (the mean of the two losses)
    pool_temp: float = 0.1  # softmax temperature of the text-conditioned pooling
    ground_weight: float = 1.0  # phrase grounding: every caption phrase vs text-conditioned pooled patches (the
    #                             dense form of the cross-modal contrast; 0 = off, the paper's global-only form)
    ground_template: str = "a photo of a {}"  # how a phrase is put to the text encoder (as the zero-shot prompts)
    ground_max_text: int = 256  # vocabularies larger than this encode only the batch's mentioned phrases per step
    vision_weight: float = 0.5  # vision-based contrast between the local views and the global view
    vision_mode: str = "dense"  # global (local embedding -> own image's global embedding) | dense (every local patch
    #                             -> the global-view patch at the same scene point, other patches negatives) | both
    vision_temp: float = 0.1
    cluster_weight: float = 0.5  # IIC mutual information between the two views' cluster assignments
    cluster_balance: float = 1.0  # lambda on the marginal entropies (1 = plain mutual information; >1 balances more)
    cluster_views: str = "global"  # global (the two global views: same geometry, other photometry) | local (each
    #                                local-view patch paired with the global-view patch at the same scene point;
    #                                the second global view is then not computed)
    max_logit_scale: float = 100.0


@dataclass
class PretrainTrainConfig:
    iters: int = 500
    lr: float = 2e-3
    head_lr_mult: float = 1.0
    weight_decay: float = 0.1  # on weight matrices only (not on norms, biases, embeddings' gains, logit scale)
    warmup_iters: int = 30
    poly_power: float = 1.0
    amp: str = "none"  # none | bf16 | fp16 (GPU) | auto (bf16 where native; semivl_fast.training.precision)
    compile: bool = False
    seed: int = 0
    log_every: int = 25
    save_every: int = 0  # resumable checkpoint every N iterations (0 = at the end and at each evaluation)
    out_dir: str = "runs/vilseg"
    resume: str = ""
    tensorboard: bool = True
    progress: bool = True


@dataclass
class ZeroShotConfig:
    classes: str = "dataset"  # class names, a class file, a built-in set, or "dataset" (the eval dataset's classes)
    templates: str = "single"  # single | imagenet80 | a template with {}
    text_mode: str = "max"  # single | max (concept max over class definitions) | avg
    bg_thresh: float | None = None  # a cluster whose best cosine is below this becomes the background class
    background: str = "background"  # the class that takes below-threshold clusters (must be in the class list)


@dataclass
class PretrainEvalConfig:
    dataset: str = "auto"  # auto (the synthetic world when pretraining on it, else none) | "" | voc | coco | ...
    root: str = ""
    split_dir: str = ""
    norm: str = ""  # "" = the pretraining normalisation
    crop_size: int = 96
    mode: str = "whole"  # whole | sliding
    every: int = 0  # zero-shot evaluation every N iterations (0 = at the end only)
    max_images: int = 0  # 0 = the whole validation set
    methods: tuple[str, ...] = ("vilseg", "maskclip")


@dataclass
class PretrainConfig:
    model: ViLSegModelConfig = field(default_factory=ViLSegModelConfig)
    data: CaptionDataConfig = field(default_factory=CaptionDataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: PretrainTrainConfig = field(default_factory=PretrainTrainConfig)
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    eval: PretrainEvalConfig = field(default_factory=PretrainEvalConfig)

    def validate(self) -> None:
        """Value checks the types cannot express; one clear error naming the key."""
        m, d = self.model, self.data
        if m.dense not in DENSE_SOURCES:
            raise ValueError(f"model.dense={m.dense!r}; choose one of {DENSE_SOURCES}")
        if m.global_embed not in GLOBAL_EMBEDS:
            raise ValueError(f"model.global_embed={m.global_embed!r}; choose one of {GLOBAL_EMBEDS}")
        if self.loss.clip_pool not in ("global", "patch", "both"):
            raise ValueError(f"loss.clip_pool={self.loss.clip_pool!r}; choose global, patch or both")
        if self.loss.cluster_views not in ("global", "local"):
            raise ValueError(f"loss.cluster_views={self.loss.cluster_views!r}; choose global or local")
        check_amp(self.train.amp)
        if self.loss.vision_mode not in VISION_MODES:
            raise ValueError(f"loss.vision_mode={self.loss.vision_mode!r}; choose one of {VISION_MODES}")
        if m.num_clusters < 2:
            raise ValueError(f"model.num_clusters must be >= 2, got {m.num_clusters}")
        if m.cluster_temp <= 0 or self.loss.vision_temp <= 0:
            raise ValueError("model.cluster_temp and loss.vision_temp must be positive")
        if "{}" not in self.loss.ground_template:
            raise ValueError(f"loss.ground_template={self.loss.ground_template!r} must contain {{}} for the phrase")
        if d.batch_size < 2:
            raise ValueError(f"data.batch_size must be >= 2 (contrastive losses need negatives), got {d.batch_size}")
        if not 0 <= d.phrase_sampling <= 1:
            raise ValueError(f"data.phrase_sampling must lie in [0, 1], got {d.phrase_sampling}")
        if not 0 <= d.word_dropout < 1:
            raise ValueError(f"data.word_dropout must lie in [0, 1), got {d.word_dropout}")
        if d.local_crops < 0 or d.global_size < 8 or d.local_size < 8:
            raise ValueError("data.local_crops must be >= 0 and the view sizes >= 8 pixels")
        for key, (lo, hi) in (("global_scale", d.global_scale), ("local_scale", d.local_scale)):
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"data.{key}={[lo, hi]} must satisfy 0 < lo <= hi <= 1")
        if self.train.iters < 1:
            raise ValueError(f"train.iters must be >= 1, got {self.train.iters}")
        bad = [x for x in self.eval.methods if x not in ("vilseg", "maskclip")]
        if bad:
            raise ValueError(f"eval.methods {bad}: choose from vilseg, maskclip")


def from_dict(data: dict) -> PretrainConfig:
    """A PretrainConfig from a (possibly partial) nested dict, e.g. one stored in a checkpoint."""
    return build(PretrainConfig, data)


def load_pretrain_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PretrainConfig:
    """Defaults, then the YAML file or recipe ``path`` (with its ``base:`` chain), then dotted ``overrides``."""
    return load(PretrainConfig, path, overrides)


def default_pretrain_config() -> Path:
    """The default prior's recipe file (``semivl_fast/training/configs/vilseg_synthetic.yaml``)."""
    return recipe_path(DEFAULT_RECIPE)
