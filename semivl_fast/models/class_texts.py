"""What every class-scoring module shares: the class text rows as device buffers, and switching to other classes."""

from __future__ import annotations

import torch
from torch import nn

from semivl_fast.text import TextEmbeddings


class ClassTextModule(nn.Module):
    """A module that scores class texts. The rows (R, C) and the class of every row (R,) are non-persistent buffers,
    so they follow the module to its device but stay out of its weights; ``set_text`` switches to any class list."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("text_embeddings", torch.empty(0), persistent=False)
        self.register_buffer("text_groups", torch.empty(0, dtype=torch.long), persistent=False)

    def set_text(self, text: TextEmbeddings) -> None:
        """Score these class texts from now on."""
        device = self.text_embeddings.device
        self.text_embeddings = text.embeddings.to(device)
        self.text_groups = text.groups.to(device)
        self.text_mode = text.mode
        self.num_classes = text.num_classes
        self.text = text  # class names and rows, for checkpoints
