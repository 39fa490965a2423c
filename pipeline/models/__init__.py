"""The FP models: the embedded digits DiT and classifier, and the diffusers loader."""
