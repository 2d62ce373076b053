"""Recipe configs (YAML), installed as ``semivl_fast.configs``; ``synthetic.yaml`` is the built-in default run."""
