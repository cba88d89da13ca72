"""Cheaper models a dishonest service could run instead of the one it promises, made locally.

Inspection is only as good as the substitutes it was tested against (docs/inspect.md). These are the ones a
provider saving memory or compute would reach for: the same model quantized harder (Q2_K) or differently
(Q8_0) with llama.cpp's own quantizer, the same model cut short after fewer layers (the shard engine's
``exit_at``), or another, smaller model (Gemma instead of Qwen). Quantized files are cached next to the
bundled models (``<cache>/substitutes``), so a second call costs nothing.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

from edgeinfer.engine.base import Backend
from edgeinfer.engine.load import LoadOptions, open_backend
from edgeinfer.models.registry import cache_dir, resolve

QUANT_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_0", "Q3_K_M", "Q2_K")


class SubstituteError(ValueError):
    pass


@dataclass(frozen=True)
class Substitute:
    """One substitute: ``kind`` is ``quant`` (arg: a llama.cpp type such as Q8_0), ``exit`` (arg: the number
    of layers run before the output head) or ``model`` (arg: another model spec). Spelled ``kind:arg``."""

    kind: str
    arg: str

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.arg}"

    @classmethod
    def parse(cls, spec: str) -> Substitute:
        kind, sep, arg = spec.partition(":")
        if not sep or not arg:
            raise SubstituteError(
                f"substitute {spec!r}: write kind:arg, e.g. quant:Q2_K, exit:18, model:gemma"
            )
        if kind == "quant":
            if arg.upper() not in QUANT_TYPES:
                raise SubstituteError(
                    f"substitute {spec!r}: quantization must be one of {', '.join(QUANT_TYPES)}"
                )
            return cls(kind, arg.upper())
        if kind == "exit":
            if not arg.isdigit() or int(arg) < 1:
                raise SubstituteError(f"substitute {spec!r}: exit takes a positive layer count")
            return cls(kind, arg)
        if kind == "model":
            return cls(kind, arg)
        raise SubstituteError(f"substitute {spec!r}: kind must be quant, exit or model")


DEFAULT_SUBSTITUTES = tuple(
    Substitute.parse(s) for s in ("quant:Q8_0", "quant:Q2_K", "exit:18", "model:gemma")
)


def quantize(source: str | Path, qtype: str, out_dir: str | Path | None = None, threads: int = 2) -> Path:
    """``source`` re-quantized to ``qtype`` (e.g. Q8_0, Q2_K) with llama.cpp's quantizer; cached by name."""
    import llama_cpp

    qtype = qtype.upper()
    if qtype not in QUANT_TYPES:
        raise SubstituteError(f"quantization must be one of {', '.join(QUANT_TYPES)}, got {qtype!r}")
    src = Path(source)
    folder = Path(out_dir) if out_dir else cache_dir().parent / "substitutes"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{src.stem}-as-{qtype.lower()}.gguf"
    if out.is_file() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}")
    params.nthread = threads
    params.allow_requantize = True  # the bundled files are already quantized (Q4_K_M)
    tmp = out.with_suffix(".part")
    code = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if code != 0:
        tmp.unlink(missing_ok=True)
        raise SubstituteError(f"llama.cpp could not quantize {src} to {qtype} (code {code})")
    tmp.replace(out)
    return out


def early_exit_backend(
    model_path: str | Path,
    exit_at: int,
    threads: int | None = None,
    n_ctx: int = 4096,
    name: str | None = None,
) -> Backend:
    """The shard engine running only the first ``exit_at`` layers, then the output head."""
    from edgeinfer.engine.shard import Shard, layer_count
    from edgeinfer.engine.shard_backend import ShardBackend, shard_model_info
    from edgeinfer.engine.vocab import Vocab

    path = Path(model_path)
    n = layer_count(path)
    if not 0 < exit_at < n:
        raise SubstituteError(f"exit_at must lie in [1, {n - 1}] for this model, got {exit_at}")

    class EarlyExitBackend(ShardBackend):
        def __init__(self) -> None:  # one shard that stops at ``exit_at``
            shard = Shard(path, 0, n, threads=threads, max_seq_len=n_ctx, exit_at=exit_at)
            self.shards = [shard]
            self.vocab = Vocab(path)
            self.info = shard_model_info(name or f"{path.stem}-exit{exit_at}", path, [shard], self.vocab)

    return EarlyExitBackend()


def substitute_model(sub: Substitute, reference: str) -> Path:
    """The GGUF file a substitute runs (quantized on first use)."""
    _, ref_path = resolve(reference, progress=False)
    if sub.kind == "quant":
        return quantize(ref_path, sub.arg)
    if sub.kind == "model":
        return resolve(sub.arg, progress=False)[1]
    return ref_path


def open_substitute(
    sub: Substitute, reference: str, threads: int | None = None, n_ctx: int = 4096, name: str | None = None
) -> Backend:
    """Load ``sub`` (a substitute for the model ``reference``) as a Backend, served as ``name``."""
    path = substitute_model(sub, reference)
    if sub.kind == "exit":
        return early_exit_backend(path, int(sub.arg), threads=threads, n_ctx=n_ctx, name=name)
    return open_backend(str(path), LoadOptions(n_ctx=n_ctx, threads=threads), name=name)
