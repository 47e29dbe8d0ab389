"""The KV cache's bookkeeping alone: blocks, reference counts, the hash chain and the prefix cache."""
from __future__ import annotations

import pytest

from service.engine.block_pool import BlockPool, block_hash, chain_root, extend_hashes

ROOT = chain_root("model", "v1")


def _hashes(tokens: list[int], block_size: int = 4, root: bytes = ROOT) -> list[bytes]:
    hashes: list[bytes] = []
    extend_hashes(hashes, tokens, block_size, root, len(tokens))
    return hashes


def test_blocks_are_handed_out_once_and_come_back_when_released():
    pool = BlockPool(4, 4)
    first = pool.allocate(3)
    assert len(set(first)) == 3 and pool.free_blocks == 1 and pool.used_blocks == 3
    with pytest.raises(ValueError, match="2 blocks asked, 1 free"):
        pool.allocate(2)
    pool.release(first[:2])
    assert pool.free_blocks == 3
    second = pool.allocate(3)
    assert first[2] not in second and pool.free_blocks == 0


def test_a_shared_block_is_free_only_when_every_holder_released_it():
    pool = BlockPool(2, 4)
    blocks = pool.allocate(2)
    pool.share(blocks)
    assert pool.is_shared(blocks[0]) and pool.used_blocks == 2
    pool.release(blocks)
    assert not pool.is_shared(blocks[0]) and pool.used_blocks == 2
    pool.release(blocks)
    assert pool.used_blocks == 0


def test_the_hash_chain_names_whole_prefixes():
    tokens = list(range(10))
    hashes = _hashes(tokens)
    assert len(hashes) == 2  # full blocks only: 10 tokens are 2 blocks of 4 and 2 more
    assert hashes == _hashes(tokens + [99])[:2]
    assert hashes[1] == block_hash(hashes[0], tokens[4:8])
    # A different first token changes every block after it, though their own tokens are equal.
    changed = _hashes([100] + tokens[1:])
    assert changed[0] != hashes[0] and changed[1] != hashes[1]
    # So does another model (the chain's root).
    assert _hashes(tokens, root=chain_root("model", "v2")) != hashes
    # Extending goes on from where the chain stopped.
    partial = hashes[:1]
    extend_hashes(partial, tokens, 4, ROOT, 8)
    assert partial == hashes


def test_registered_blocks_stay_cached_after_release_and_are_found_by_prefix():
    pool = BlockPool(8, 4)
    tokens = list(range(12))
    hashes = _hashes(tokens)
    blocks = pool.allocate(3)
    for block, block_hash_ in zip(blocks, hashes):
        pool.register(block, block_hash_)
    pool.release(blocks)
    assert pool.used_blocks == 0 and pool.cached_blocks == 3 and pool.free_blocks == 8
    # Another sequence with the same first 8 tokens, then others.
    other = _hashes(tokens[:8] + [50, 51, 52, 53])
    assert pool.cached_prefix(other) == 2 and pool.idle_count(other[:2]) == 2
    held = pool.hold_cached(other)
    assert held == blocks[:2] and pool.used_blocks == 2 and pool.idle_count(other[:2]) == 0


def test_a_hash_already_cached_keeps_its_first_block():
    pool = BlockPool(4, 4)
    block_hash_ = _hashes([1, 2, 3, 4])[0]
    first, second = pool.allocate(2)
    pool.register(first, block_hash_)
    pool.register(second, block_hash_)
    pool.release([first, second])
    assert pool.cached_blocks == 1 and pool.hold_cached([block_hash_]) == [first]


def test_eviction_takes_the_least_recently_released_and_a_sequences_last_blocks_first():
    pool = BlockPool(5, 4)
    old, new = _hashes(list(range(8))), _hashes(list(range(100, 108)))
    old_blocks, new_blocks = pool.allocate(2), pool.allocate(2)
    for blocks, hashes in ((old_blocks, old), (new_blocks, new)):
        for block, block_hash_ in zip(blocks, hashes):
            pool.register(block, block_hash_)
    pool.release(old_blocks)
    pool.release(new_blocks)
    assert pool.allocate(1) != []  # the never-used block first: nothing evicted
    assert pool.cached_blocks == 4
    pool.allocate(1)  # evicts the old sequence's second block: its first stays findable
    assert pool.cached_prefix(old) == 1 and pool.cached_prefix(new) == 2
    pool.allocate(1)
    assert pool.cached_prefix(old) == 0 and pool.cached_prefix(new) == 2


def test_a_cached_block_in_use_is_never_evicted():
    pool = BlockPool(3, 4)
    hashes = _hashes(list(range(4)))
    (block,) = pool.allocate(1)
    pool.register(block, hashes[0])
    pool.allocate(2)
    assert pool.free_blocks == 0
    with pytest.raises(ValueError):
        pool.allocate(1)
    assert pool.hold_cached(hashes) == [block]


def test_without_caching_nothing_is_registered():
    pool = BlockPool(2, 4, caching=False)
    (block,) = pool.allocate(1)
    pool.register(block, _hashes(list(range(4)))[0])
    pool.release([block])
    assert pool.cached_blocks == 0 and pool.free_blocks == 2
