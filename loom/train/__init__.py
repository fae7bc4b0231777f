"""Training: `python -m loom.train CONFIG [k=v]` — config (config.py), loop (trainer.py), FSDP2 (parallel.py),
losses, optimizer/freeze/LoRA (optim.py), EMA, checkpoints + exports, metrics."""
