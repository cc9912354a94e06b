"""Training: recipes (typed YAML), the stage loop, checkpoints, DDP / FSDP2, logs and plots.

    vlm train llava-tiny [--out DIR] [--resume] [key=value ...]
    torchrun --nproc_per_node 2 -m vlm.cli train llava-tiny runtime.strategy=ddp

Parts: `recipe` (schema, overrides, validation, built-ins), `trainer` (the loop), `schedules`,
`checkpoint`, `distributed`, `logging`, `data` (stage -> shard pipeline glue), `cli`.
"""
