"""Chat templates: a conversation becomes the model's prompt, as its config declares."""

from __future__ import annotations

import json

import pytest

from app.chat import DEFAULT_TEMPLATE, ChatTemplate, template_of
from app.errors import InvalidInput
from tests.app.conftest import ROOT, SHAKESPEARE_CHAT


def test_the_shakespeare_template_writes_a_play_script() -> None:
    template = ChatTemplate.parse(SHAKESPEARE_CHAT)
    prompt = template.render([("system", None, "Verona."), ("user", None, "Good morrow."),
                              ("assistant", None, "And to you."), ("user", "NURSE", "Madam!")])
    assert prompt == ("CHORUS:\nVerona.\n\nROMEO:\nGood morrow.\n\nJULIET:\nAnd to you.\n\n"
                      "NURSE:\nMadam!\n\nJULIET:\n")
    assert template.stop == ["\n\n"]


def test_stop_defaults_to_what_ends_a_turn_and_braces_in_content_are_text() -> None:
    template = ChatTemplate.parse({"turn": "<{name}> {content}\n", "names": {
        "system": "s", "user": "u", "assistant": "a"}})
    assert template.stop == ["\n"]
    assert template.render([("user", None, "{content} {name}")]) == "<u> {content} {name}\n<a> "


@pytest.mark.parametrize(("raw", "needle"), [
    ("x", "must be an object"),
    ({"turn": "{name}", "names": {}}, "{content}"),
    ({"turn": "{name}:{content}", "names": {"user": "U"}}, "each role"),
    ({"turn": "{name}:{content}", "names": {"system": "S", "user": "U", "assistant": "A"},
      "stop": [""]}, "non-empty"),
])
def test_a_bad_template_is_refused_with_the_reason(raw: object, needle: str) -> None:
    with pytest.raises(InvalidInput, match="bad chat template") as info:
        template_of({"chat_template": raw}, "m")
    assert needle in str(info.value)


def test_a_model_without_a_template_gets_the_default() -> None:
    assert template_of({}, "m") is DEFAULT_TEMPLATE


def test_the_shipped_shakespeare_model_declares_the_play_script_template() -> None:
    config = json.loads((ROOT / "models" / "shakespeare" / "config.json").read_text())
    assert ChatTemplate.parse(config["chat_template"]) == ChatTemplate.parse(SHAKESPEARE_CHAT)
