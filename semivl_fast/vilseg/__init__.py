"""ViL-Seg (Liu et al., ECCV 2022), reconstructed: open-world segmentation learned from image-caption pairs only.

- ``config``: ``PretrainConfig`` (model, data, loss, train, zeroshot, eval sections).
- ``model``: ``ViLSeg`` = open_clip CLIP + online clustering head; ``build_vilseg``.
- ``losses``: cross-modal InfoNCE, phrase grounding (multi-positive InfoNCE), multi-crop and dense vision InfoNCE,
  IIC mutual information.
- ``data``: image-caption sources (synthetic world, TSV/CSV, folders, WebDataset shards) and the multi-view dataset.
- ``zeroshot``: ``ViLSegZeroShot`` (clusters classified by text) and ``MaskClipZeroShot`` (training-free baseline).
- ``checkpoint``: ``load_vilseg`` / ``export_vilseg`` (``clip.safetensors`` loads with ``create_clip``).
- ``prior``: ``ensure_synthetic_prior`` and the ``vilseg:`` pretrained-name hook (SemiVL's default initialisation).

Training: ``python -m semivl_fast.pretrain``.
"""

from semivl_fast.vilseg.checkpoint import export_vilseg, load_vilseg
from semivl_fast.vilseg.config import PretrainConfig, load_pretrain_config
from semivl_fast.vilseg.model import ClusterHead, ViLSeg, build_vilseg
from semivl_fast.vilseg.zeroshot import MaskClipZeroShot, ViLSegZeroShot, build_segmenter

__all__ = ["ClusterHead", "MaskClipZeroShot", "PretrainConfig", "ViLSeg", "ViLSegZeroShot", "build_segmenter",
           "build_vilseg", "export_vilseg", "load_pretrain_config", "load_vilseg"]
