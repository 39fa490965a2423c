"""Q-DiT post-training quantization of Diffusion Transformers: the importable package."""
