"""ViL-Seg (Liu et al., ECCV 2022), reconstructed: open-world segmentation learned from image-caption pairs only.

- ``model``: ``ViLSeg`` = open_clip CLIP + online clustering head; ``ViLSegModelConfig``, ``build_vilseg``.
- ``losses``: cross-modal InfoNCE, phrase grounding (multi-positive InfoNCE), multi-crop and dense vision InfoNCE,
  IIC mutual information.
- ``data``: image-caption sources (synthetic world, TSV/CSV, folders, WebDataset shards) and the multi-view dataset.
- ``zeroshot``: ``ViLSegZeroShot`` (clusters classified by text) and ``MaskClipZeroShot`` (training-free baseline).

The pretraining recipe, its checkpoints and the cached prior are on the training side (``semivl_fast.training``);
run it with ``python -m semivl_fast.pretrain``.
"""

from semivl_fast.vilseg.data import CaptionDataConfig
from semivl_fast.vilseg.model import ClusterHead, ViLSeg, ViLSegModelConfig, build_vilseg
from semivl_fast.vilseg.zeroshot import MaskClipZeroShot, ViLSegZeroShot, build_segmenter

__all__ = ["CaptionDataConfig", "ClusterHead", "MaskClipZeroShot", "ViLSeg", "ViLSegModelConfig", "ViLSegZeroShot",
           "build_segmenter", "build_vilseg"]
