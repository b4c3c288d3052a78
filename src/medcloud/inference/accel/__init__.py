"""Accelerated inference: faster ways to run the same model, each checked against the exact run.

`modes` names the modes and decides which one a machine can run, `networks` wraps a torch network so
it runs in a faster mode, `compare` compares the output files of two runs (Dice per label,
classification top-1), and `checked` is the predictor wrapper that runs the check and falls back.
"""
