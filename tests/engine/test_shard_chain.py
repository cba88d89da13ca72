"""Shards chained in one process compute exactly what the whole model computes; per-sequence KV caches
(create, extend, truncate, drop) and exit_at behave as documented."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeinfer.engine.shard import Shard, layer_count, layer_weight_bytes
from edgeinfer.models.common import rms_norm
from edgeinfer.models.gguf_file import GGUFFile
from edgeinfer.models.synthetic import write_tiny_gguf

PROMPT = [1, 300, 301, 260, 270, 280, 290, 302, 303, 304, 305, 306]  # ids of the tiny vocabulary


def greedy(shards: list[Shard], prompt: list[int], n: int, seq: str = "s") -> tuple[list[int], torch.Tensor]:
    """Greedy tokens of a chain and the logits of its last step; the sequence is dropped afterwards."""
    x = torch.tensor(prompt)
    out = []
    try:
        for _ in range(n):
            for shard in shards:
                x = shard.forward(seq, x)
            logits = x
            out.append(int(torch.argmax(logits)))
            x = torch.tensor(out[-1:])
    finally:
        for shard in shards:
            shard.drop(seq)
    return out, logits


def chains(path: Path, cuts: list[list[int]], **kw) -> list[list[Shard]]:
    n = layer_count(path)
    return [[Shard(path, a, b, **kw) for a, b in zip([0, *c], [*c, n], strict=True)] for c in cuts]


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def tiny(request, tmp_path_factory) -> Path:
    return write_tiny_gguf(
        tmp_path_factory.mktemp("chain") / f"{request.param}.gguf", request.param, n_layers=6
    )


@pytest.mark.parametrize("fmt", ["gguf", "int8", "bf16", "f32"])
def test_tiny_chains_of_1_2_3_shards_are_token_identical(tiny, fmt):
    whole, two, three = chains(tiny, [[], [3], [1, 4]], threads=1, weight_format=fmt)
    ref, ref_logits = greedy(whole, PROMPT, 24)
    for chain in (two, three):
        toks, logits = greedy(chain, PROMPT, 24)
        assert toks == ref
        assert torch.equal(logits, ref_logits)  # not just the argmax: the same float computation
    assert len(set(ref)) > 3  # a real sequence, not one token repeated


def test_shards_load_only_their_layers(tiny):
    whole, (first, middle, last) = chains(tiny, [[], [2, 4]], threads=1)
    assert whole[0].is_first and whole[0].is_last
    assert first.is_first and not first.is_last and first.head is None
    assert not middle.is_first and not middle.is_last and middle.head is None
    assert last.is_last and last.head is not None
    assert [len(s.blocks) for s in (first, middle, last)] == [2, 2, 2]
    layers = sum(b.nbytes for s in (first, middle, last) for b in s.blocks)
    assert layers == sum(b.nbytes for b in whole[0].blocks)
    h = first.forward("a", torch.tensor(PROMPT))
    assert h.shape == (len(PROMPT), first.hidden_size) and h.dtype == torch.float32
    with pytest.raises(ValueError, match="hidden states"):
        middle.forward("a", torch.tensor(PROMPT))  # token ids into a middle shard
    with pytest.raises(ValueError, match="token ids"):
        first.forward("a", h)
    with pytest.raises(ValueError, match="invalid"):
        Shard(tiny, 4, 9)


def test_kv_cache_create_extend_truncate_drop(tiny):
    (shard,) = chains(tiny, [[]], threads=1, weight_format="f32")[0]
    prompt = torch.tensor(PROMPT)
    full = shard.forward("a", prompt, all_logits=True)  # create + prefill
    assert shard.seq_len("a") == len(PROMPT) and shard.sequences() == ["a"]

    # extend token by token from a 4-token prefix: the same logits as the one-pass prefill
    shard.truncate("a", 4)
    assert shard.seq_len("a") == 4
    for i in range(4, len(PROMPT)):
        step = shard.forward("a", prompt[i : i + 1])
        torch.testing.assert_close(step, full[i], atol=1e-2, rtol=0)
    assert shard.seq_len("a") == len(PROMPT)

    # a second sequence is independent; interleaving does not disturb the first
    other = shard.forward("b", torch.tensor([1, 310, 311]))
    again = shard.forward("a", torch.tensor([320]))
    shard.truncate("a", len(PROMPT))
    torch.testing.assert_close(shard.forward("a", torch.tensor([320])), again, atol=0, rtol=0)
    assert not torch.allclose(other, again)

    shard.drop("a")
    assert shard.sequences() == ["b"] and shard.seq_len("a") == 0
    with pytest.raises(KeyError):
        shard.truncate("a", 1)
    # a dropped id starts from scratch: the first position again
    torch.testing.assert_close(shard.forward("a", prompt[:1]), full[0], atol=1e-2, rtol=0)


def test_cache_grows_past_its_first_allocation_and_respects_max_seq_len(tiny):
    shard = Shard(tiny, 0, layer_count(tiny), threads=1, weight_format="f32", max_seq_len=150)
    ids = torch.tensor((PROMPT * 20)[:140])
    full = shard.forward("a", ids, all_logits=True)
    shard.drop("a")
    shard.forward("a", ids[:60])  # first allocation (64 positions) ...
    for i in range(60, 140):  # ... then doubles while decoding
        last = shard.forward("a", ids[i : i + 1])
    torch.testing.assert_close(last, full[-1], atol=1e-2, rtol=0)
    with pytest.raises(ValueError, match="max_seq_len"):
        shard.forward("a", ids[:11])
    assert shard.seq_len("a") == 140  # the refused call changed nothing


def test_exit_at_applies_final_norm_and_head_to_that_layer(tiny):
    n = layer_count(tiny)
    early = Shard(tiny, 0, n, exit_at=2, threads=1, weight_format="f32")
    assert len(early.blocks) == 2
    logits = early.forward("a", torch.tensor(PROMPT))
    hidden = Shard(tiny, 0, 2, threads=1, weight_format="f32").forward("a", torch.tensor(PROMPT))[-1:]
    f = GGUFFile(tiny)
    head = torch.from_numpy(f.load("output.weight"))
    expected = rms_norm(hidden, torch.from_numpy(f.load("output_norm.weight")), early.cfg.eps) @ head.T
    torch.testing.assert_close(logits, expected[0], atol=1e-3, rtol=1e-4)
    full = Shard(tiny, 0, n, threads=1, weight_format="f32").forward("a", torch.tensor(PROMPT))
    assert not torch.allclose(logits, full, atol=1e-2)  # two layers are not the whole model
    last = Shard(tiny, 0, n, exit_at=n, threads=1, weight_format="f32").forward("a", torch.tensor(PROMPT))
    torch.testing.assert_close(last, full, atol=0, rtol=0)
    with pytest.raises(ValueError, match="exit_at"):
        Shard(tiny, 2, 4, exit_at=2)


@pytest.mark.slow
def test_real_model_chains_are_token_identical(gemma_path):
    whole, two, three = chains(gemma_path, [[], [9], [6, 12]], threads=2, max_seq_len=256)
    prompt = [2, *np.random.default_rng(0).integers(1000, 20000, 8).tolist()]
    ref, ref_logits = greedy(whole, prompt, 12)
    for chain in (two, three):
        toks, logits = greedy(chain, prompt, 12)
        assert toks == ref
        assert torch.equal(logits, ref_logits)


@pytest.mark.parametrize("fmt", ["gguf", "int8", "bf16", "f32"])
def test_layer_weight_bytes_from_metadata_equal_the_loaded_layers(tiny, fmt):
    # the tiny files mix storage types per layer: in the gguf format the layers differ in size
    sizes = layer_weight_bytes(tiny, fmt)
    loaded = [Shard(tiny, i, i + 1, threads=1, weight_format=fmt) for i in range(layer_count(tiny) - 1)]
    assert sizes[:-1] == [s.weight_bytes for s in loaded]
    if fmt == "gguf":
        assert len(set(sizes)) > 1
