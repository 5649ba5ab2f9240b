"""MLVICX in JAX/Flax: multi-level VICReg pretraining for chest X-rays."""
