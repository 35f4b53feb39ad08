"""Benchmarks for spot_jax: prompt-tuning throughput, decode speed, FLOPs, and the HF PEFT peer.

`python -m bench --help` (or `spot-jax bench`). Importing this package imports nothing heavy, so the
PEFT peer script (`bench/peer_peft.py`) can run under a separate Python that has torch but no JAX.
"""
