"""Quantization of DiT linears in pure torch: one entry point, pipeline.quant.apply.quantize."""
