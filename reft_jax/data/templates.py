"""Prompt templates: the text a model reads before its response.

The Alpaca template (the default in Vaccine / Lisa / Booster / T-Vaccine style work) or the tokenizer's own chat
template; a multi-turn chat rendered as one example whose every assistant turn is trained (`conversation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from reft_jax.errors import ConfigError, DataError

if TYPE_CHECKING:
    from reft_jax.data.examples import Example

ALPACA = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
TEMPLATES = ("alpaca", "chat")


def format_prompt(
    instruction: str, input: str = "", *, template: str = "alpaca", tokenizer: Any = None, system: str | None = None
) -> str:
    """The text fed to the model before the response: Alpaca, or the tokenizer's chat template with
    the generation prompt (an input is appended to the user turn after a blank line)."""
    if template == "alpaca":
        if input:
            return ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
        return ALPACA.format(instruction=instruction)
    if template == "chat":
        _check_chat_template(tokenizer)
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": user_message(instruction, input)})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ConfigError(f"data.template: unknown template {template!r} (known: {', '.join(TEMPLATES)})")


def user_message(instruction: str, input: str = "") -> str:
    """The user's turn of a chat: the instruction, and an input after a blank line."""
    return f"{instruction}\n\n{input}" if input else instruction


def _check_chat_template(tokenizer) -> None:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ConfigError("data.template: 'chat' needs a tokenizer with a chat template")


def conversation(messages: Sequence[dict], *, template: str, tokenizer: Any = None, where: str = "") -> Example:
    """A multi-turn chat as one example whose every assistant turn is trained: the prompt is the first user
    turn (where the refusal feature is read), the response the rest of the chat, and `response_spans` the
    character ranges of the response that are assistant turns (the user turns between them are context).

    With the chat template every turn is rendered by the tokenizer's template (the assistant turns with their
    end-of-turn tokens); with Alpaca each later exchange is one more Instruction / Response block."""
    first = next(j for j, m in enumerate(messages) if m["role"] == "user")
    last = max(j for j, m in enumerate(messages) if m["role"] == "assistant")
    if template == "alpaca":
        prompt = format_prompt(messages[first]["content"], template=template)
        parts, spans, length, pending = [], [], 0, ""
        for m in messages[first + 1: last + 1]:
            if m["role"] == "user":
                pending = f"\n\n### Instruction:\n{m['content']}\n\n### Response:\n"
            elif m["role"] == "assistant":
                parts += [pending, m["content"]]
                length += len(pending)
                spans.append((length, length + len(m["content"])))
                length += len(m["content"])
                pending = ""
        return {"prompt": prompt, "response": "".join(parts), "response_spans": spans}

    def render(turns, open_turn: bool) -> str:
        return tokenizer.apply_chat_template(list(turns), tokenize=False, add_generation_prompt=open_turn)

    _check_chat_template(tokenizer)
    prompt = render(messages[: first + 1], True)
    spans = []
    for k in range(first + 1, last + 1):
        if messages[k]["role"] != "assistant":
            continue
        before, through = render(messages[:k], True), render(messages[: k + 1], False)
        if not (through.startswith(before) and before.startswith(prompt)):
            raise DataError(f"{where}: the chat template does not render this conversation turn by turn "
                            "(an earlier turn's text changes when a later one is added)")
        spans.append((len(before) - len(prompt), len(through) - len(prompt)))
    full = render(messages[: last + 1], False)
    return {"prompt": prompt, "response": full[len(prompt):], "response_spans": spans}
