"""Request bodies of the OpenAI routes, validated strictly enough to give useful 400s.

Types are strict, as in OpenAI's API: ``"max_tokens": "8"``, ``"stream": "yes"`` or ``[true]`` as a token id
are errors, not coerced (an integer is still accepted where a number is expected).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.logprobs import MAX_TOP

MAX_COMPLETION_LOGPROBS = 5  # OpenAI's bound for the legacy completions' ``logprobs``


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)

    include_usage: bool = False


_DEFAULTED = ("temperature", "top_p", "top_k", "stream", "n")  # fields whose default is not None


class SamplingFields(BaseModel):
    # Unknown fields are accepted and ignored only if they are harmless OpenAI extras; see UNSUPPORTED.
    model_config = ConfigDict(extra="allow", strict=True)

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1)
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        # OpenAI treats an explicit null like an omitted field; some clients send nulls for unset options
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (v is None and k in _DEFAULTED)}
        return data

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return v

    def logprob_count(self) -> int | None:
        """How many alternatives to report with each token; None when no logprobs are asked for."""
        return None

    def sampling(self, extra_stops: tuple[str, ...] = ()) -> SamplingParams:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_tokens=self.max_completion_tokens or self.max_tokens,
            stop=tuple(stops) + tuple(extra_stops),
            seed=self.seed,
            logprobs=self.logprob_count(),
        )


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None  # required; null only in an assistant message (OpenAI's rule)

    @model_validator(mode="after")
    def _content_present(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content (a string or a list of text parts)")
        return self


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP)

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs requires logprobs to be true")
        return v

    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)

    def logprob_count(self) -> int | None:
        return self.logprobs


# Features a client may set that this server does not implement: rejected with a clear 400 rather than
# silently ignored (a non-default value would otherwise change what the client gets).
UNSUPPORTED = {
    "tools": "tool calling is not supported",
    "functions": "function calling is not supported",
    "response_format": "response_format is not supported",
    "logit_bias": "logit_bias is not supported",
    "best_of": "best_of is not supported",
    "suffix": "suffix (insertion) is not supported",
}
