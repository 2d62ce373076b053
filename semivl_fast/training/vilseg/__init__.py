"""The ViL-Seg pretraining recipe: its config, the training step, checkpoints and zero-shot evaluation."""
