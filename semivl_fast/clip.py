"""Create open_clip models by name, from a pretrained tag (``openai``, ...) or a local checkpoint file.

The library takes a tag or a file and nothing else; names of training-side priors (``vilseg:synthetic``) are resolved
to their file by the trainer (``semivl_fast.training.prior``) before a model is built.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import save_file
from torch import nn

from semivl_fast.files import atomic_write

CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


def register_builtin_configs() -> None:
    """Make the package's own model configs (``semivl-tiny``) known to open_clip."""
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def pretrained_identity(pretrained: str | None) -> str:
    """A string that changes when the weights change: the tag itself, or path + size + mtime for a file."""
    if not pretrained:
        return "random"
    if os.path.isfile(pretrained):
        st = os.stat(pretrained)
        return f"file:{os.path.abspath(pretrained)}:{st.st_size}:{int(st.st_mtime)}"
    return f"tag:{pretrained}"


def create_clip(model_name: str, pretrained: str | None = None, **kwargs: Any) -> nn.Module:
    """An open_clip CLIP model; ``pretrained`` is an open_clip tag, a local checkpoint file, or None (random init)."""
    register_builtin_configs()
    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {model_name!r}; choose one of open_clip.list_models() "
                         f"(e.g. 'ViT-B-16') or add a JSON config with open_clip.add_model_config(dir)")
    if pretrained and not os.path.isfile(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in tags:
            hint = f"known tags: {', '.join(tags)}" if tags else "this model has no pretrained tags"
            raise ValueError(f"pretrained={pretrained!r} is neither a file nor an open_clip tag for {model_name} "
                             f"({hint})")
    if pretrained and not os.path.isfile(pretrained) and "force_quick_gelu" not in kwargs:
        # the tag's weights were trained with QuickGELU (OpenAI's): build the towers with it, as CLIP itself is
        kwargs["force_quick_gelu"] = bool(open_clip.get_pretrained_cfg(model_name, pretrained).get("quick_gelu"))
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained or None, **kwargs)
    except Exception as e:  # network failure or a corrupt file: say which, and what to do
        if pretrained and not os.path.isfile(pretrained):
            raise RuntimeError(f"could not fetch open_clip weights {model_name}/{pretrained}: {e}. Without network "
                               "access, download the checkpoint elsewhere and pass its path as pretrained") from e
        raise
    return model


def get_tokenizer(model_name: str):
    """The open_clip tokenizer of ``model_name`` (ships with the wheel: no download for CLIP BPE models)."""
    register_builtin_configs()
    return open_clip.get_tokenizer(model_name)


@torch.no_grad()
def save_clip_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model``'s weights as safetensors that ``create_clip(name, pretrained=path)`` loads back."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))
