"""Turning OpenAI chat messages into prompt tokens: one recipe for the API, the CLI and the benchmarks.

Models that carry a chat template in their GGUF (``tokenizer.chat_template``) are formatted with it, rendered
in a sandboxed Jinja environment as Hugging Face does. Base models have no template and were never trained on
chat tokens; for them we use a plain-text transcript that a base model continues sensibly, and stop at the
next speaker's turn.

Message contents are user text: a user who types ``<|im_end|>`` must not close their turn with the control
token. The template's own text is tokenized with special tokens parsed; a content that spells a special
token is tokenized as plain text (unless ``allow_special_tokens``): then the template is rendered once more
with a unique placeholder per content, to find where each content sits in the prompt.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgeinfer.engine.base import Backend, ModelInfo

PLAIN_STOPS = ("\nUser:", "\nuser:", "\nSystem:")


class ChatFormatError(ValueError):
    pass


@dataclass(frozen=True)
class Segment:
    text: str
    content: bool  # True: a message's content (user text); False: text the template wrote


@dataclass(frozen=True)
class RenderedChat:
    """The formatted conversation; with ``separate=True`` also as pieces that say which text came from the
    messages (None when the template changes or inspects contents, so that they cannot be told apart)."""

    text: str
    contents: tuple[str, ...]  # the messages' contents, as sent
    segments: tuple[Segment, ...] | None = None
    extra_stops: tuple[str, ...] = ()
    add_bos: bool = True  # False when the template writes the BOS token itself


@dataclass(frozen=True)
class ChatPrompt:
    """What a generation needs from a chat: the prompt's token ids and the stop strings the format adds."""

    tokens: list[int]
    stops: tuple[str, ...] = ()


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts; only text is supported
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise ChatFormatError("only text content parts are supported")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise ChatFormatError("message content must be a string or a list of text parts")


class ChatFormatter:
    def __init__(self, template: str | None, bos_token: str = "", eos_token: str = ""):
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._template = None
        if template:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

            def raise_exception(message: str) -> None:
                raise ChatFormatError(message)

            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(template)

    @classmethod
    def for_model(cls, info: ModelInfo) -> ChatFormatter:
        return cls(info.chat_template, info.bos_token, info.eos_token)

    def format(self, messages: Sequence[dict[str, Any]], separate: bool = False) -> RenderedChat:
        # "developer" is OpenAI's newer name for the system role; templates only know "system"
        msgs = [
            {
                "role": "system" if m["role"] == "developer" else m["role"],
                "content": _content_text(m.get("content")),
            }
            for m in messages
        ]
        if self._template is None:
            return self._plain(msgs)
        text = self._render(msgs)
        add_bos = not (self.bos_token and text.startswith(self.bos_token))
        segments = self._segments(msgs, text) if separate else None
        return RenderedChat(text, tuple(m["content"] for m in msgs), segments, add_bos=add_bos)

    def _render(self, msgs: list[dict[str, str]]) -> str:
        assert self._template is not None
        try:
            return self._template.render(
                messages=msgs, add_generation_prompt=True, bos_token=self.bos_token, eos_token=self.eos_token
            )
        except ChatFormatError:
            raise
        except Exception as exc:  # a template bug must not take the server down
            raise ChatFormatError(f"the model's chat template failed: {exc}") from exc

    def _segments(self, msgs: list[dict[str, str]], text: str) -> tuple[Segment, ...] | None:
        """Split the rendered text into template text and contents, by rendering placeholders in place of
        the contents; None when the template changes or inspects contents (the placeholders do not give back
        ``text``)."""
        nonce = uuid.uuid4().hex
        marks = [f"\ue000{nonce}{i}\ue001" for i in range(len(msgs))]
        try:
            marked = self._render([{**m, "content": mark} for m, mark in zip(msgs, marks, strict=True)])
        except ChatFormatError:
            return None
        segments: list[Segment] = []
        rest = marked
        for m, mark in zip(msgs, marks, strict=True):
            if rest.count(mark) != 1:
                return None
            before, rest = rest.split(mark)
            segments += [Segment(before, content=False), Segment(m["content"], content=True)]
        segments.append(Segment(rest, content=False))
        if "".join(s.text for s in segments) != text:
            return None
        return tuple(s for s in segments if s.text)

    @staticmethod
    def _plain(msgs: list[dict[str, str]]) -> RenderedChat:
        names = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
        segments: list[Segment] = []
        for m in msgs:
            segments.append(Segment(f"{names.get(m['role'], m['role'].title())}: ", content=False))
            segments.append(Segment(m["content"].strip(), content=True))
            segments.append(Segment("\n", content=False))
        segments.append(Segment("Assistant:", content=False))
        pieces = tuple(s for s in segments if s.text)
        contents = tuple(m["content"] for m in msgs)
        return RenderedChat("".join(s.text for s in pieces), contents, pieces, extra_stops=PLAIN_STOPS)


def _spells_special_tokens(backend: Backend, text: str) -> bool:
    return backend.tokenize(text, add_bos=False, special=True) != backend.tokenize(
        text, add_bos=False, special=False
    )


def build_chat_prompt(
    backend: Backend,
    messages: Sequence[dict[str, Any]],
    formatter: ChatFormatter | None = None,
    allow_special_tokens: bool = False,
) -> ChatPrompt:
    """Format ``messages`` for ``backend``'s model and tokenize them, contents as plain text.

    ``formatter`` (built from the model's info when not given) can be kept between calls: compiling a chat
    template costs more than rendering it. Raises ``ChatFormatError`` for messages the template refuses."""
    formatter = formatter or ChatFormatter.for_model(backend.info)
    rendered = formatter.format(messages)
    if allow_special_tokens or not any(_spells_special_tokens(backend, c) for c in rendered.contents):
        # the usual case: nothing to keep apart, one pass over the whole text
        tokens = backend.tokenize(rendered.text, add_bos=rendered.add_bos, special=True)
        return ChatPrompt(tokens, rendered.extra_stops)
    rendered = formatter.format(messages, separate=True)  # render again, to find the contents
    if rendered.segments is None:
        raise ChatFormatError(
            "a message spells a special token (such as an end-of-turn marker) and this model's chat "
            "template does not allow keeping message text apart; remove it"
        )
    tokens: list[int] = []
    for i, seg in enumerate(rendered.segments):
        add_bos = rendered.add_bos and i == 0
        tokens += backend.tokenize(seg.text, add_bos=add_bos, special=not seg.content)
    return ChatPrompt(tokens, rendered.extra_stops)
