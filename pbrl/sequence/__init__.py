"""Sequence-level preference objectives for language models on pbrl's loss core and training loop.

- :mod:`pbrl.sequence.lm`: completion log-probabilities of Hugging Face causal LMs, the reference, LoRA;
- :mod:`pbrl.sequence.data`: TRL-format pair datasets (JSON Lines, Parquet, ``datasets``), checked row by row;
- :mod:`pbrl.sequence.objectives`: the methods (DPO family, RSO, IS-DAA, TGDPO, TVKD, iREPO, inverse soft-Q);
- :mod:`pbrl.sequence.train`: ``pbrl seq train`` on :func:`pbrl.train.loop.run_loop`;
- :mod:`pbrl.sequence.synthetic`: a small grammar with a known preference, for learning checks.

Imports only :mod:`pbrl.core`, the generic loop and pbrl's error/IO helpers (never agents, envs or the control
wiring); ``transformers``, ``peft`` and ``tokenizers`` come with the ``sequence`` extra.
"""
