"""The text task: federated LoRA fine-tuning of a causal LM on Penn Treebank (see task.py)."""
