"""The image task: federated LoRA fine-tuning of a conditional GAN on CIFAR-10 (see task.py)."""
