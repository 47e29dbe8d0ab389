"""The KV cache's bookkeeping: blocks handed out with reference counts, and the prefix cache.

Plain Python, no torch: a block id indexes the runner's cache tensors (kv_cache.PagedKVCache),
and only the engine thread touches a pool.

Prefix caching. A full block is named by a chained hash: of its parent block's hash and its token
ids, the chain starting from a root that names the model and its numbers, so equal hashes mean
equal prefixes computed alike. sha256, so that a crafted prompt cannot collide with another
client's prefix to read or poison it. Once computed, a full block is registered under its hash.
When no sequence holds it any more it stays cached, evictable, least recently released first,
until an allocation needs its room; a sequence's later blocks are evicted before its earlier
ones, which its prefix-sharing siblings are more likely to need. A new sequence takes the longest
run of cached blocks that starts its tokens and computes only the rest.
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence


def chain_root(*names: object) -> bytes:
    """The hash a chain of blocks starts from: everything besides the tokens that decides the keys
    and values (the model, its weights' version, dtype and kernels)."""
    return hashlib.sha256(repr(names).encode()).digest()


def block_hash(parent: bytes, tokens: Sequence[int]) -> bytes:
    return hashlib.sha256(parent + array("q", tokens).tobytes()).digest()


def extend_hashes(hashes: list[bytes], tokens: Sequence[int], block_size: int, root: bytes, length: int) -> None:
    """Appends to `hashes` (the chain of tokens' first full blocks) the hashes of the full blocks
    of tokens[:length] it lacks."""
    for index in range(len(hashes), length // block_size):
        parent = hashes[-1] if hashes else root
        hashes.append(block_hash(parent, tokens[index * block_size : (index + 1) * block_size]))


class BlockPool:
    def __init__(self, blocks: int, block_size: int, *, caching: bool = True) -> None:
        """`caching`: whether computed full blocks are kept and shared (prefix caching)."""
        self.blocks = blocks
        self.block_size = block_size
        self.caching = caching
        self._refs = [0] * blocks
        self._hash_of: list[bytes | None] = [None] * blocks
        self._free = list(range(blocks - 1, -1, -1))  # a stack: low ids first
        # Cached blocks that nothing holds, least recently released first.
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._cached: dict[bytes, int] = {}

    @property
    def free_blocks(self) -> int:
        """Blocks an allocation can take: never used, or cached and held by no sequence."""
        return len(self._free) + len(self._evictable)

    @property
    def used_blocks(self) -> int:
        """Blocks held by at least one sequence."""
        return self.blocks - self.free_blocks

    @property
    def cached_blocks(self) -> int:
        return len(self._cached)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def allocate(self, count: int) -> list[int]:
        """`count` blocks, each held once; cached blocks nothing holds are evicted for room.
        The caller checks `free_blocks` first."""
        if count > self.free_blocks:
            raise ValueError(f"{count} blocks asked, {self.free_blocks} free")
        allocated = []
        for _ in range(count):
            if self._free:
                block = self._free.pop()
            else:
                block, _ = self._evictable.popitem(last=False)
                del self._cached[self._hash_of[block]]  # type: ignore[index]
                self._hash_of[block] = None
            self._refs[block] = 1
            allocated.append(block)
        return allocated

    def cached_prefix(self, hashes: Iterable[bytes]) -> int:
        """How many of the leading `hashes` are cached (nothing is held)."""
        count = 0
        for block_hash_ in hashes:
            if block_hash_ not in self._cached:
                break
            count += 1
        return count

    def idle_count(self, hashes: Iterable[bytes]) -> int:
        """How many of these cached blocks nothing holds (an allocation could evict them)."""
        return sum(1 for block_hash_ in hashes if self._refs[self._cached[block_hash_]] == 0)

    def hold_cached(self, hashes: Sequence[bytes]) -> list[int]:
        """The cached blocks of the leading `hashes` (stopping at the first that is not cached),
        each held once more."""
        held = []
        for block_hash_ in hashes:
            block = self._cached.get(block_hash_)
            if block is None:
                break
            if self._refs[block] == 0:
                del self._evictable[block]
            self._refs[block] += 1
            held.append(block)
        return held

    def share(self, blocks: Sequence[int]) -> None:
        """Holds each of these held blocks once more (the n sequences of one request share their
        prompt's blocks)."""
        for block in blocks:
            self._refs[block] += 1

    def is_shared(self, block: int) -> bool:
        """Whether more than one sequence holds the block (so it is copied before it is written)."""
        return self._refs[block] > 1

    def release(self, blocks: Sequence[int]) -> None:
        """Lets go of one hold on each block. A block nothing holds becomes free, or, when it is
        cached, evictable: the last blocks of `blocks` first."""
        for block in reversed(blocks):
            self._refs[block] -= 1
            if self._refs[block] == 0:
                if self._hash_of[block] is None:
                    self._free.append(block)
                else:
                    self._evictable[block] = None

    def register(self, block: int, block_hash_: bytes) -> None:
        """Caches a computed full block under its hash. Nothing happens without caching, or when
        a block with that hash is cached already (this one is then freed as usual)."""
        if self.caching and self._hash_of[block] is None and block_hash_ not in self._cached:
            self._cached[block_hash_] = block
            self._hash_of[block] = block_hash_
