"""Training machinery shared by SemiVL and ViL-Seg: optimiser, guidance, distributed helpers, logging, steps."""
