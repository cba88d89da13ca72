"""Turning OpenAI chat messages into a prompt.

Models that carry a chat template in their GGUF (``tokenizer.chat_template``) are formatted with it, rendered
in a sandboxed Jinja environment as Hugging Face does. Base models have no template and were never trained on
chat tokens; for them we use a plain-text transcript that a base model continues sensibly, and stop at the
next speaker's turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PLAIN_STOPS = ("\nUser:", "\nuser:", "\nSystem:")


class ChatFormatError(ValueError):
    pass


@dataclass(frozen=True)
class ChatPrompt:
    text: str
    extra_stops: tuple[str, ...] = ()
    add_bos: bool = True  # False when the template writes the BOS token itself


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
        self.template_source = template
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

    @property
    def has_template(self) -> bool:
        return self._template is not None

    def format(self, messages: Sequence[dict[str, Any]]) -> ChatPrompt:
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
        try:
            text = self._template.render(
                messages=msgs,
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except ChatFormatError:
            raise
        except Exception as exc:  # a template bug must not take the server down
            raise ChatFormatError(f"the model's chat template failed: {exc}") from exc
        add_bos = not (self.bos_token and text.startswith(self.bos_token))
        return ChatPrompt(text=text, add_bos=add_bos)

    @staticmethod
    def _plain(msgs: list[dict[str, str]]) -> ChatPrompt:
        names = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
        lines = [f"{names.get(m['role'], m['role'].title())}: {m['content'].strip()}" for m in msgs]
        lines.append("Assistant:")
        return ChatPrompt(text="\n".join(lines), extra_stops=PLAIN_STOPS)
