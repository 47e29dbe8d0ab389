"""The CPU backend: the lean Llama-family forward and BERT encoder as TorchScript, over tokenwire's
C++ kernels (compiled on the machine that runs them) and the paged KV cache's CPU layout."""
