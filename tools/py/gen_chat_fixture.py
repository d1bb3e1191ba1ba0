#!/usr/bin/env python3
"""Writes tests/fixtures/chat_templates.json: chat templates rendered by Python jinja2 configured the way
transformers' apply_chat_template configures it (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks,
loopcontrols, raise_exception, a json.dumps tojson). Templates: the vendored Qwen2 GGUF's tokenizer.chat_template
and a feature template using what HF templates commonly use (string methods, loop controls, namespace, tojson).

Run with the reference environment: /work/ref/REF/bin/python tools/py/gen_chat_fixture.py
"""
import json
import pathlib

import gguf
import jinja2
import jinja2.ext
import jinja2.sandbox

ROOT = pathlib.Path(__file__).resolve().parents[2]
GGUF = ROOT / "vendor/qwen2-vocab/ggml-vocab-qwen2.gguf"
OUT = ROOT / "tests/fixtures/chat_templates.json"

FEATURES = """{%- set ns = namespace(n_user=0) -%}
{{ bos_token }}
{%- for m in messages %}
  {%- if m['role'] == 'system' and not loop.first %}{{ raise_exception('system message must come first') }}{% endif %}
  {%- if m.role == 'user' %}{% set ns.n_user = ns.n_user + 1 %}{% endif %}
  {%- if m.content.strip() == 'skip' %}{% continue %}{% endif %}
  {%- if m.content.startswith('STOP') %}{% break %}{% endif %}
<{{ m.role | upper }} n={{ loop.index }}>{{ m.content.strip() }}
{% if m.get('role') == 'assistant' %}{{ eos_token }}{% endif %}
{% endfor %}
users={{ ns.n_user }} json={{ messages[-1] | tojson }} {{ messages[:1] | tojson(indent=2) }}
{%- if add_generation_prompt %}
<ASSISTANT>
{%- endif %}
"""

CONVERSATIONS = {
    "user": [{"role": "user", "content": "Hello!"}],
    "system_user": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
    ],
    "multi_turn": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "  What is 2+2?  "},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "skip"},
        {"role": "user", "content": "And \"3+3\"?\nThanks — ünïcode"},
        {"role": "user", "content": "STOP here"},
        {"role": "user", "content": "never shown"},
    ],
}


def render(source: str, messages, add_generation_prompt: bool) -> str:
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source).render(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token="<s>", eos_token="</s>"
    )


def main() -> None:
    reader = gguf.GGUFReader(str(GGUF))
    templates = {"qwen2_gguf": reader.fields["tokenizer.chat_template"].contents(), "features": FEATURES}
    cases = []
    for tname, source in templates.items():
        for cname, messages in CONVERSATIONS.items():
            for agp in (False, True):
                cases.append({
                    "template": tname, "conversation": cname, "add_generation_prompt": agp,
                    "expected": render(source, messages, agp),
                })
    fixture = {"source": f"jinja2 {jinja2.__version__}", "bos_token": "<s>", "eos_token": "</s>",
               "templates": templates, "conversations": CONVERSATIONS, "cases": cases}
    OUT.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT}: {len(cases)} cases")


if __name__ == "__main__":
    main()
