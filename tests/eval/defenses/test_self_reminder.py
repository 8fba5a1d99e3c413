"""``self-reminder``: a system prompt and a reminder after the request, with or without a system turn."""

from __future__ import annotations

from mogu.eval.defenses.none import NoDefense
from mogu.eval.defenses.self_reminder import SELF_REMINDER_SUFFIX, SELF_REMINDER_SYSTEM, SelfReminder
from mogu.model.chat import format_chat


def test_self_reminder_changes_the_chat(model, prompts, decoding, spy):
    NoDefense(model).generate(prompts[:1], decoding)
    SelfReminder(model).generate(prompts[:1], decoding)
    (plain,), _ = spy[0]
    (reminded,), reminded_decoding = spy[1]
    assert plain == prompts[0].text
    assert reminded == [{"role": "system", "content": SELF_REMINDER_SYSTEM},
                        {"role": "user", "content": prompts[0].text + SELF_REMINDER_SUFFIX}]
    assert reminded_decoding.mode == "base"
    assert format_chat(model.tokenizer, plain) != format_chat(model.tokenizer, reminded)  # the model sees another prompt


def test_self_reminder_without_a_system_turn(model, prompts, monkeypatch):
    template = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
                "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    monkeypatch.setattr(model.config, "chat_template", template)
    chat = SelfReminder(model).chat(prompts[0])
    assert chat == [{"role": "user", "content": f"{SELF_REMINDER_SYSTEM}\n\n{prompts[0].text}{SELF_REMINDER_SUFFIX}"}]
