#!/usr/bin/env python3
"""Regenerates tests/data/templates/expected.json: the chat templates of tests/data/templates
(*.jinja, each with its bos/eos in *.tokens.json) rendered for every conversation of
tests/data/templates/conversations.json by Python's jinja2, in the environment Hugging Face
transformers renders chat templates with (the one scripts/gen_jinja_cases.py sets up). kiln must
match these byte for byte (tests/chat_template_test.cpp). Needs `pip install jinja2`.

    python3 scripts/gen_template_cases.py
"""
import glob
import json
import os

from gen_jinja_cases import env

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "templates")


def main():
    with open(os.path.join(HERE, "conversations.json"), encoding="utf-8") as f:
        conversations = json.load(f)
    out = []
    for path in sorted(glob.glob(os.path.join(HERE, "*.jinja"))):
        name = os.path.basename(path)
        with open(path, encoding="utf-8") as f:
            src = f.read()
        with open(path[: -len(".jinja")] + ".tokens.json", encoding="utf-8") as f:
            tokens = json.load(f)
        tmpl = env.from_string(src)
        for conv_name, ctx in conversations.items():
            case = {"template": name, "conversation": conv_name}
            try:
                case["output"] = tmpl.render(**ctx, bos_token=tokens["bos_token"], eos_token=tokens["eos_token"])
            except Exception as e:  # noqa: BLE001 - a template's own raise_exception is an expected case
                case["error"] = f"{type(e).__name__}: {e}"
            out.append(case)
    with open(os.path.join(HERE, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(out)} cases to {os.path.normpath(os.path.join(HERE, 'expected.json'))}")


if __name__ == "__main__":
    main()
