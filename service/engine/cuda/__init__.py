"""The CUDA backend: the Llama-family forward in bf16 over a paged KV cache in device memory,
decode attention by a Triton kernel over the block tables, decode steps replayed as CUDA graphs.
It shares nothing with the CPU backend (no TorchScript, no C++ kernels)."""
