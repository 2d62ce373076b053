"""The training side: run configs and recipes, checkpoints and resume, the training steps and loops' machinery,
the ViL-Seg pretraining recipe and the cached prior, and the command-line skeleton of the entry points.

It builds on the library (``semivl_fast.ops``, ``models``, ``text``, ``data``, ``vilseg``, ``metrics``, ...), which
never imports it (tests/test_layers.py keeps it so). The entry points are ``semivl_fast.train``, ``pretrain``,
``evaluate`` and ``predict``.
"""
