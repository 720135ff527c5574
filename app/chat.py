"""Chat templates: how a model folder turns a conversation into a prompt.

A generation model's `config.json` may hold a `chat_template`, declarative (no code runs):

    "chat_template": {
      "turn": "{name}:\\n{content}\\n\\n",
      "names": {"system": "CHORUS", "user": "ROMEO", "assistant": "JULIET"},
      "stop": ["\\n\\n"]
    }

Each message becomes `turn` with `{name}` replaced by the message's own `name`, or else the
name of its role, and `{content}` by its text. The prompt ends with the assistant's opening:
`turn` up to `{content}`, with the assistant's name. Generation stops at any of `stop`
(default: what follows `{content}` in `turn`), which is not part of the answer. A model
without one gets `DEFAULT_TEMPLATE` (names SYSTEM, USER, ASSISTANT).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.errors import InvalidInput

__all__ = ["DEFAULT_TEMPLATE", "ChatTemplate", "template_of"]

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatTemplate:
    """A model's chat format: one turn's text, each role's name, the end of a turn."""

    turn: str
    names: dict[str, str]
    stop: list[str]

    @staticmethod
    def parse(raw: Any) -> ChatTemplate:
        """The template of a config's `chat_template`; ValueError saying what is wrong."""
        if not isinstance(raw, dict):
            raise ValueError("chat_template must be an object")
        turn = raw.get("turn")
        if not isinstance(turn, str) or turn.count("{content}") != 1 or "{name}" not in turn:
            raise ValueError("chat_template.turn must be a string with one {content} and {name}")
        names = raw.get("names")
        if not isinstance(names, dict) or not all(
                isinstance(names.get(role), str) for role in ROLES):
            raise ValueError(f"chat_template.names must name each role: {', '.join(ROLES)}")
        end = turn.split("{content}", 1)[1]
        stop = raw.get("stop", [end] if end else [])
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise ValueError("chat_template.stop must be a list of non-empty strings")
        return ChatTemplate(turn, {k: names[k] for k in ROLES}, stop)

    def _turn(self, name: str, content: str) -> str:
        head, tail = self.turn.split("{content}", 1)
        return head.replace("{name}", name) + content + tail.replace("{name}", name)

    def render(self, messages: Sequence[tuple[str, str | None, str]]) -> str:
        """The prompt for (role, name or None, content) messages, ending where the assistant
        speaks next."""
        parts = [self._turn(name or self.names[role], content) for role, name, content in messages]
        opening = self.turn.split("{content}", 1)[0].replace("{name}", self.names["assistant"])
        return "".join(parts) + opening


# For a model whose config declares none: the same play-script form, with plain names.
DEFAULT_TEMPLATE = ChatTemplate("{name}:\n{content}\n\n",
                                {"system": "SYSTEM", "user": "USER", "assistant": "ASSISTANT"},
                                ["\n\n"])


def template_of(config: dict[str, Any], model: str) -> ChatTemplate:
    """The chat template a model's config declares (`DEFAULT_TEMPLATE` when none); 422 for a
    bad one."""
    raw = config.get("chat_template")
    if raw is None:
        return DEFAULT_TEMPLATE
    try:
        return ChatTemplate.parse(raw)
    except ValueError as e:
        raise InvalidInput(f"model '{model}' has a bad chat template: {e}") from None
