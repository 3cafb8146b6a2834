"""DRLIH: Deep Reinforcement Learning for Image Hashing, in JAX/Flax."""

__version__ = "0.1.0"
