"""effbench's Hydra launcher plugin: `hydra/launcher=gpu_pinned` (one GPU per job)."""
