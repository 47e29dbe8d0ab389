"""The KV cache: one fixed slot per running sequence, every slot as long as the longest one.

Why slots rather than paged blocks: on these small models the cost of a decode step is framework
overhead and memory traffic, and a paged cache must gather each sequence's blocks into a
contiguous tensor before attention (one copy per layer per step). With slots, decode attention
reads a contiguous window of the cache in place. The price is memory: every slot is as long as
the longest sequence in flight. Capacity grows by doubling (one copy, rare) up to the context
length, so a server running short requests holds a small cache, and the worst case is bounded
and known at startup: `slots × context × bytes_per_token`, reported by `worst_case_bytes`.

Keys are stored transposed, [slots, kv_heads, head_dim, capacity]: decode attention multiplies
queries by a window of them, and the CPU's bf16 batched matrix product is fast for a strided
window only when the window is the product's plain (untransposed) right operand. tokenwire's own
decode kernel (decode_attention.cpp) likes it too: each dimension's keys are a run of positions,
so 32 positions' scores take one cache line per dimension.

Admission is by slot: a request with n sequences is admitted when n slots are free; any slot can
hold any request the servicer accepted (prompt + max_new_tokens ≤ context). Lowest slots are
handed out first, so the running sequences stay packed at the start of the cache.
"""
from __future__ import annotations

import heapq

import torch

_INITIAL_CAPACITY = 256


class SlotCache:
    def __init__(
        self,
        *,
        layers: int,
        slots: int,
        kv_heads: int,
        head_dim: int,
        max_length: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.slots = slots
        self.max_length = max_length
        self._shape = (slots, kv_heads, head_dim)
        self._dtype, self._device = dtype, device
        self._free = list(range(slots))
        self.capacity = 0
        self.keys: list[torch.Tensor] = [torch.empty(0)] * layers  # [slots, kv_heads, head_dim, capacity]
        self.values: list[torch.Tensor] = [torch.empty(0)] * layers  # [slots, kv_heads, capacity, head_dim]
        self.reserve(min(_INITIAL_CAPACITY, max_length))

    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def worst_case_bytes(self) -> int:
        slots, kv_heads, head_dim = self._shape
        element = torch.empty((), dtype=self._dtype).element_size()
        return 2 * len(self.keys) * slots * kv_heads * head_dim * self.max_length * element

    def allocate(self) -> int:
        """The lowest free slot. The caller checks `free_slots` first."""
        return heapq.heappop(self._free)

    def release(self, slot: int) -> None:
        heapq.heappush(self._free, slot)

    @torch.inference_mode()
    def copy_prefix(self, source: int, target: int, length: int) -> None:
        """Copies the first `length` positions of one slot into another (n > 1 shares a prefill)."""
        for keys, values in zip(self.keys, self.values):
            keys[target, ..., :length] = keys[source, ..., :length]
            values[target, :, :length] = values[source, :, :length]

    @torch.inference_mode()
    def reserve(self, length: int) -> None:
        """Makes every slot hold at least `length` positions."""
        if length <= self.capacity:
            return
        if length > self.max_length:
            raise ValueError(f"a sequence of {length} positions exceeds the cache's {self.max_length}")
        capacity = max(self.capacity, _INITIAL_CAPACITY)
        while capacity < length:
            capacity *= 2
        capacity = min(capacity, self.max_length)
        slots, kv_heads, head_dim = self._shape

        def grown(old: torch.Tensor, transposed: bool) -> torch.Tensor:
            # Zeros, not empty: masked positions still enter the attention product, and
            # uninitialised memory could hold NaN.
            shape = (slots, kv_heads, head_dim, capacity) if transposed else (slots, kv_heads, capacity, head_dim)
            new = torch.zeros(shape, dtype=self._dtype, device=self._device)
            if self.capacity:
                if transposed:
                    new[..., : self.capacity] = old
                else:
                    new[:, :, : self.capacity] = old
            return new

        self.keys = [grown(k, transposed=True) for k in self.keys]
        self.values = [grown(v, transposed=False) for v in self.values]
        self.capacity = capacity
