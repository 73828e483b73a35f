#!/usr/bin/env python3
"""Regenerates tests/data/jinja_cases.json: small templates with the output (or error) Python's
jinja2 gives in the environment Hugging Face transformers renders chat templates with. kiln's
interpreter must match these byte for byte (tests/jinja_test.cpp). Needs `pip install jinja2`.

    python3 scripts/gen_jinja_cases.py
"""
import json
import os
from datetime import datetime

from jinja2.ext import loopcontrols
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(fmt):
    return datetime(2026, 1, 26, 12, 0, 0).strftime(fmt)


env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
env.globals["strftime_now"] = strftime_now

MSGS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
]

CASES = [
    # ---- text, output, whitespace control -----------------------------------------------------------
    ("text_only", "hello\nworld\n", {}),
    ("text_two_trailing_newlines", "hello\n\n", {}),
    ("output_basic", "a{{ x }}b", {"x": 1}),
    ("output_none", "[{{ x }}]", {"x": None}),
    ("output_bool", "{{ true }} {{ false }} {{ True }} {{ none }}", {}),
    ("output_undefined", "[{{ nope }}]", {}),
    ("output_float", "{{ 1.0 }} {{ 2.5 }} {{ 1e20 }} {{ 1.5e-5 }} {{ 0.1 + 0.2 }} {{ 1e16 }} {{ 1e15 }} {{ 3.0 * 2 }}", {}),
    ("output_float_ctx", "{{ a }} {{ b }} {{ c }} {{ d }}", {"a": 1.0, "b": 0.5, "c": 123456789.125, "d": -0.0}),
    ("output_list", "{{ [1, 'a', none, 1.0, true] }}", {}),
    ("output_list_ctx", "{{ x }}", {"x": [1, "it's", {"k": "v"}, [2.5]]}),
    ("output_dict", "{{ {'a': 1, 'b': [1, 2]} }}", {}),
    ("output_tuple", "{{ (1, 2) }} {{ (1,) }} {{ () }}", {}),
    ("output_implicit_tuple", "{{ 1, 2 }}", {}),
    ("output_str_repr_quotes", "{{ ['it\\'s', \"say \\\"hi\\\"\", 'both \\' \"', 'tab\\there', 'nl\\n'] }}", {}),
    ("output_unicode", "{{ s }}|{{ [s] }}", {"s": "héllo 🦙 ü"}),
    ("ws_dash_left", "a   {{- 'b' }}", {}),
    ("ws_dash_right", "{{ 'a' -}}   \n  b", {}),
    ("ws_dash_block", "x  \n  {%- if true -%}  \n  y  \n  {%- endif -%}  \n  z", {}),
    ("ws_trim_blocks", "{% if true %}\nyes\n{% endif %}\nafter", {}),
    ("ws_lstrip_blocks", "    {% if true %}\n    yes\n    {% endif %}\ndone", {}),
    ("ws_lstrip_not_variable", "    {{ 'v' }}\n", {}),
    ("ws_lstrip_not_after_text", "x   {% if true %}y{% endif %}", {}),
    ("ws_plus_disables_lstrip", "    {%+ if true %}y{% endif %}", {}),
    ("ws_plus_disables_trim", "{% if true +%}\ny{% endif %}", {}),
    ("ws_comment", "a\n  {# comment #}\nb", {}),
    ("ws_comment_dash", "a  {#- c -#}  b", {}),
    ("ws_comment_multiline", "a{# line1\nline2 #}b", {}),
    ("ws_variable_no_trim", "{{ 'a' }}\nb", {}),
    ("ws_nested_blocks", "{% for i in [1,2] %}\n  {% if i == 2 %}\n    two\n  {% endif %}\n{% endfor %}\n", {}),
    ("ws_set_line", "  {% set x = 1 %}\n{{ x }}", {}),
    ("ws_tabs_lstrip", "\t\t{% if true %}a{% endif %}", {}),
    ("ws_crlf", "a\r\n{% if true %}\r\nb\r\n{% endif %}\r\nc", {}),
    ("ws_trailing_newline_kept_once", "x\n\n\n", {}),
    ("ws_raw", "  {% raw %}\n {{ x }} {% if %} {% endraw %}\nb", {}),
    ("ws_raw_dash", "a  {%- raw -%}  {{ x }}  {%- endraw -%}  b", {}),
    ("ws_after_var_then_block", "{{ 'a' }}\n    {% if true %}b{% endif %}", {}),
    ("ws_block_after_trimmed_newline", "{% set a = 1 %}\n    {% set b = 2 %}\n{{ a }}{{ b }}", {}),
    ("ws_dash_var_inside", "{{- 'a' -}}\n\n{{- 'b' -}}", {}),
    ("ws_unicode_space_dash", "a\u00a0\u3000{{- 'b' }}", {}),
    ("ws_plus_variable", "  {{+ 'a' }}|{{-1}}", {}),
    ("ws_comment_plus", "a  {#+ c #}  b\n  {# c +#}\nz", {}),
    ("ws_plus_both", "  {%+ if true +%}\nx{%- endif %}", {}),
    ("ws_raw_lstrip_dash", "x\n  {%- raw %}  a  {% endraw %}\n  y|{% raw %}a\n  {% endraw %}b", {}),
    ("ws_nbsp_line_lstrip", "\u00a0 {% if true %}x{% endif %}", {}),
    ("ws_brace_balancing", "{{ {'a': {'b': 1}} }}|{{ {'a': 1}}}", {}),
    ("ws_percent_in_string", "{{ '%}' }}{% set s = '}}' %}{{ s }}", {}),
    # ---- literals and operators ---------------------------------------------------------------------
    ("lit_strings", "{{ 'a' \"b\" 'c' }}|{{ '\\n\\t\\\\\\x41\\u00e9\\U0001F999' }}|{{ 'q\\d' }}", {}),
    ("lit_numbers", "{{ 1_000 }} {{ 0x1F }} {{ 0o17 }} {{ 0b101 }} {{ 1.5e3 }} {{ 2E2 }}", {}),
    ("lit_backslash_non_ascii", "{{ 'a\\é' }}|{{ 'b\\🦙' }}", {}),
    ("lit_int_then_attr", "[{{ 1.e5 }}]{{ x.0.1 }}", {"x": [[1, 2]]}),
    ("err_leading_zero", "{{ 01 }}", {}),
    ("arith_special_floats", "{{ 10 / 4 }} {{ 1e300 * 1e300 }} {{ -(1e300 * 1e300) }} {{ (1e300 * 1e300) - (1e300 * 1e300) }}", {}),
    ("percent_format_more", "{{ '%s' % none }} {{ '%d' % 3.7 }} {{ '%.2f' % 1 }} {{ '%5s|%-5s|' % ('a', 'b') }} {{ '%r' % 'x' }}", {}),
    ("round_more", "{{ 0.1 | round(1) }} {{ 1234.5 | round(-2) }} {{ 1250 | round(-2) }} {{ 1350 | round(-2) }}", {}),
    ("err_sort_mixed", "{{ [1, 'a'] | sort }}", {}),
    ("arith_int", "{{ 7 + 3 }} {{ 7 - 10 }} {{ 7 * 3 }} {{ 7 / 2 }} {{ 8 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 2 ** 10 }} {{ 2 ** -1 }}", {}),
    ("arith_float", "{{ 7.5 // 2 }} {{ -7.5 // 2 }} {{ 7.5 % 2 }} {{ -7.5 % 2 }} {{ 1.5 + 1 }} {{ 2 ** 0.5 }}", {}),
    ("arith_precedence", "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ -2 ** 2 }} {{ 2 ** 3 ** 2 }} {{ 10 - 2 - 3 }} {{ 2 * 3 ~ 4 }} {{ 1 ~ 2 * 3 }}", {}),
    ("arith_bool", "{{ true + 1 }} {{ true * 3 }} {{ false - 1 }}", {}),
    ("arith_str", "{{ 'ab' + 'cd' }} {{ 'ab' * 3 }} {{ 3 * 'x' }} {{ [1] + [2, 3] }} {{ [0] * 3 }} {{ 'a' * 0 }}|", {}),
    ("concat_tilde", "{{ 'a' ~ 1 ~ none ~ undefined_thing ~ 1.0 ~ [1] }}", {}),
    ("unary", "{{ -x }} {{ +x }} {{ - -x }} {{ -1.5 }} {{ not x }} {{ not not x }}", {"x": 3}),
    ("compare", "{{ 1 < 2 }} {{ 2 <= 2 }} {{ 3 > 4 }} {{ 'a' < 'b' }} {{ 1 == 1.0 }} {{ 1 != 2 }} {{ [1, 2] < [1, 3] }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }}", {}),
    ("compare_eq_types", "{{ 1 == '1' }} {{ none == none }} {{ [1] == [1] }} {{ {'a': 1} == {'a': 1} }} {{ (1,) == [1] }} {{ true == 1 }}", {}),
    ("in_operator", "{{ 'a' in 'cat' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 3 not in [1] }} {{ 'z' not in 'abc' }} {{ 1 in x }}", {}),
    ("and_or_values", "{{ 0 or 'b' }} {{ 'a' or 'b' }} {{ 1 and 2 }} {{ 0 and 2 }} {{ none or [] }} {{ '' and x }}", {}),
    ("ternary", "{{ 'y' if x else 'n' }} {{ 'y' if not x else 'n' }} [{{ 'only' if false }}] {{ 1 if false else 2 if true else 3 }}", {"x": True}),
    ("list_dict_literals", "{{ [1, [2, 3], []] }} {{ {'a': {'b': none}} }} {{ [1, 2,] }} {{ {'x': 1,} }}", {}),
    ("truthiness", "{% for v in [0, 1, '', 'a', [], [0], {}, none, 0.0, 0.1] %}{{ 'T' if v else 'F' }}{% endfor %}", {}),
    # ---- variables, attributes, indexing, slicing -----------------------------------------------
    ("attr_and_item", "{{ m.role }} {{ m['content'] }} {{ m.missing }}|{{ m['missing'] }}|", {"m": {"role": "user", "content": "hi"}}),
    ("attr_dict_method_wins", "{{ d['items'] }} {{ d.get('items') }} {{ d.keys() | list }}", {"d": {"items": 3, "k": 1}}),
    ("index_list", "{{ l[0] }} {{ l[-1] }} {{ l[5] }}| {{ l.1 }}", {"l": ["a", "b", "c"]}),
    ("index_str", "{{ s[0] }}{{ s[-1] }}{{ s[1] }}", {"s": "héllo"}),
    ("slices", "{{ l[1:] }} {{ l[:2] }} {{ l[::-1] }} {{ l[::2] }} {{ l[-2:] }} {{ l[1:-1] }} {{ l[5:] }} {{ l[3:1] }} {{ l[3:1:-1] }}", {"l": [0, 1, 2, 3, 4]}),
    ("slices_str", "{{ s[1:3] }} {{ s[::-1] }} {{ s[-3:] }} {{ s[:100] }}", {"s": "héllo 🦙"}),
    ("nested_access", "{{ m[0].tool_calls[0].function.arguments.city }}", {"m": [{"tool_calls": [{"function": {"arguments": {"city": "Paris"}}}]}]}),
    ("none_attr_is_undefined", "[{{ x.a }}] {{ x.a is defined }}", {"x": None}),
    ("messages_negative_index", "{{ messages[-1].content }} {{ messages[1:]|length }}", {"messages": MSGS}),
    # ---- if / for ------------------------------------------------------------------------------
    ("if_elif_else", "{% for x in [1, 2, 3] %}{% if x == 1 %}one{% elif x == 2 %}two{% else %}other{% endif %},{% endfor %}", {}),
    ("if_undefined_falsy", "{% if nope %}y{% else %}n{% endif %}{% if not nope %}!{% endif %}", {}),
    ("for_loop_vars", "{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }} {% endfor %}", {}),
    ("for_prev_next", "{% for x in [1, 2, 3] %}[{{ loop.previtem }}|{{ x }}|{{ loop.nextitem }}]{% endfor %}", {}),
    ("for_prev_defined", "{% for x in [1, 2] %}{{ loop.previtem is defined }}{{ loop.nextitem is defined }} {% endfor %}", {}),
    ("for_else", "{% for x in [] %}x{% else %}empty{% endfor %}{% for x in [1] %}x{% else %}empty{% endfor %}", {}),
    ("for_else_undefined", "{% for x in nope %}x{% else %}none{% endfor %}", {}),
    ("for_filter", "{% for x in range(10) if x is odd %}{{ x }}{{ loop.index }}{{ loop.length }} {% endfor %}", {}),
    ("for_filter_else", "{% for x in [1, 2] if x > 5 %}x{% else %}no{% endfor %}", {}),
    ("for_dict", "{% for k in d %}{{ k }}={{ d[k] }};{% endfor %}", {"d": {"b": 1, "a": 2}}),
    ("for_items_unpack", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|{% for k, v in d|items %}{{ k }}{{ v }}{% endfor %}|{% for (a, b) in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %}", {"d": {"x": 1, "y": [2]}}),
    ("for_nested_loop", "{% for a in [1, 2] %}{% for b in 'xy' %}{{ loop.index }}{{ b }}{% endfor %}{{ loop.index }};{% endfor %}", {}),
    ("for_break_continue", "{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 5 %}{% break %}{% endif %}{{ x }}{% endfor %}", {}),
    ("for_cycle_changed", "{% for x in [1, 1, 2, 3, 3] %}{{ loop.cycle('a', 'b') }}{{ loop.changed(x) }} {% endfor %}", {}),
    ("for_scope_no_leak", "{% set x = 'outer' %}{% for i in [1, 2] %}{% set x = i %}{{ x }}{% endfor %}{{ x }}", {}),
    ("for_scope_per_iteration", "{% for i in [1, 2] %}[{{ y }}]{% set y = i %}{% endfor %}[{{ y }}]", {}),
    ("for_over_string", "{% for c in 'hé🦙' %}<{{ c }}>{% endfor %}", {}),
    ("for_reversed_messages", "{% for m in messages[::-1] %}{{ m.role }} {% endfor %}", {"messages": MSGS}),
    ("for_loop_outer_loop_var", "{% for a in [1, 2] %}{% set outer = loop %}{% for b in [3] %}{{ outer.index }}{{ loop.index }}{% endfor %}{% endfor %}", {}),
    ("if_in_loop_sets_loop_scope", "{% set found = false %}{% for m in messages %}{% if m.role == 'user' %}{% set found = true %}{% endif %}{% endfor %}{{ found }}", {"messages": MSGS}),
    # ---- set, namespace, with ------------------------------------------------------------------
    ("set_basic", "{% set a = 1 %}{% set b, c = [2, 3] %}{% set t = 1, 2 %}{{ a }}{{ b }}{{ c }}{{ t }}", {}),
    ("set_block", "{% set x %}\n  hello {{ 1 + 1 }}\n{% endset %}[{{ x }}]", {}),
    ("set_block_filter", "{% set x | upper | trim %}  abc  {% endset %}[{{ x }}]", {}),
    ("namespace", "{% set ns = namespace(a=1, b='x') %}{% for i in [1, 2, 3] %}{% set ns.a = ns.a + i %}{% endfor %}{{ ns.a }}{{ ns.b }}{{ ns.c }}|", {}),
    ("namespace_dict_arg", "{% set ns = namespace({'a': 1}, b=2) %}{{ ns.a }}{{ ns.b }}{{ ns['a'] }}", {}),
    ("namespace_repr", "{% set ns = namespace(a=1) %}{{ ns }}", {}),
    ("with_block", "{% set a = 1 %}{% with a = 2, b = a %}{{ a }}{{ b }}{% endwith %}{{ a }}", {}),
    # ---- macros and call -----------------------------------------------------------------------
    ("macro_basic", "{% macro greet(name, greeting='Hello') %}{{ greeting }}, {{ name }}!{% endmacro %}{{ greet('Bob') }} {{ greet('Ann', greeting='Hi') }} {{ greet(greeting='Yo', name='Z') }}", {}),
    ("macro_missing_arg", "{% macro m(a, b) %}[{{ a }}|{{ b }}|{{ b is defined }}]{% endmacro %}{{ m(1) }}", {}),
    ("macro_default_refers_param", "{% macro m(a, b=a * 2) %}{{ a }}{{ b }}{% endmacro %}{{ m(3) }}{{ m(3, 1) }}", {}),
    ("macro_returns_string", "{% macro m(x) %}{{ x }}/nothink{% endmacro %}{{ m('a').endswith('/nothink') }} {{ m('a') | length }} {{ (m('<') + '<') }}", {}),
    ("macro_sees_globals_at_call", "{% macro m() %}{{ x }}{% endmacro %}{% set x = 1 %}{{ m() }}{% set x = 2 %}{{ m() }}", {}),
    ("macro_lexical_scope", "{% macro m() %}[{{ i }}]{% endmacro %}{% for i in [7] %}{{ m() }}{% endfor %}", {}),
    ("macro_varargs_kwargs", "{% macro m(a) %}{{ a }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1, 2, 3, k='v') }}", {}),
    ("macro_recursion", "{% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * fact(n - 1) | int }}{% endif %}{% endmacro %}{{ fact(5) }}", {}),
    ("macro_whitespace", "{%- macro visible(content) -%}\n    {%- if content is string -%}\n        {{- content }}\n    {%- else -%}\n        {%- for item in content -%}\n            {{- item.text }}\n        {%- endfor -%}\n    {%- endif -%}\n{%- endmacro -%}\n[{{ visible('a') }}][{{ visible([{'text': 'b'}, {'text': 'c'}]) }}]", {}),
    ("macro_namespace_mutation", "{% set ns = namespace(n=0) %}{% macro bump() %}{% set ns.n = ns.n + 1 %}{% endmacro %}{{ bump() }}{{ bump() }}{{ ns.n }}", {}),
    ("call_block", "{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}bold {{ 1 }}{% endcall %}", {}),
    ("call_block_args", "{% macro each(items) %}{% for i in items %}{{ caller(i) }}{% endfor %}{% endmacro %}{% call(x) each([1, 2]) %}[{{ x }}]{% endcall %}", {}),
    ("filter_block", "{% filter upper %}hello {{ 'world' }}{% endfilter %}", {}),
    # ---- filters -----------------------------------------------------------------------------
    ("f_trim", "[{{ '  a b \\n' | trim }}][{{ 'xxaxx' | trim('x') }}][{{ '\u00a0a\u3000' | trim }}]", {}),
    ("f_tojson", "{{ x | tojson }}", {"x": {"b": 1, "a": [1, 2.5, None, True, "é\"\\\n\t\u0001"], "c": {}}}),
    ("f_tojson_indent", "{{ x | tojson(indent=2) }}|{{ x | tojson(indent=0) }}|{{ [] | tojson(indent=2) }}", {"x": {"a": [1, {"b": None}], "c": "d"}}),
    ("f_tojson_options", "{{ x | tojson(ensure_ascii=True) }} {{ x | tojson(sort_keys=True) }} {{ x | tojson(separators=(',', ':')) }}", {"x": {"z": "é🦙\u007f", "a": 1}}),
    ("f_tojson_scalars", "{{ 1 | tojson }} {{ 1.0 | tojson }} {{ 'x' | tojson }} {{ none | tojson }} {{ true | tojson }} {{ (1, 2) | tojson }} {{ 1e100 | tojson }}", {}),
    ("f_tojson_str_in_template", "{{ {'a': 'b', 1: 2} | tojson }}", {}),
    ("f_length", "{{ 'héllo' | length }} {{ [1, 2] | length }} {{ {'a': 1} | count }} {{ nope | length }}", {}),
    ("f_first_last", "{{ [1, 2, 3] | first }} {{ [1, 2, 3] | last }} {{ 'abc' | first }} {{ 'abc' | last }} [{{ [] | first }}]", {}),
    ("f_join", "{{ [1, 2, 3] | join(', ') }} {{ ['a', 'b'] | join }} {{ users | join(', ', attribute='name') }}", {"users": [{"name": "x"}, {"name": "y"}]}),
    ("f_replace", "{{ 'aaa' | replace('a', 'b') }} {{ 'aaa' | replace('a', 'b', 2) }} {{ 'abc' | replace('', '-') }}", {}),
    ("f_case", "{{ 'hELLo wORLD' | lower }} {{ 'hello' | upper }} {{ 'hello world-foo (bar)' | title }} {{ 'hELLO' | capitalize }} {{ 'éà' | upper }} {{ 'straße' | upper }}", {}),
    ("f_items_keys", "{{ d | items | list }} {{ d.keys() | list }} {{ d.values() | list }}", {"d": {"a": 1, "b": 2}}),
    ("f_selectattr", "{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(',') }} {{ messages | rejectattr('role', 'eq', 'user') | list | length }}", {"messages": MSGS}),
    ("f_selectattr_truthy", "{{ items | selectattr('on') | map(attribute='n') | list }}", {"items": [{"n": 1, "on": True}, {"n": 2, "on": False}, {"n": 3}]}),
    ("f_select_reject", "{{ [1, 2, 3, 4] | select('odd') | list }} {{ [1, 2, 3, 4] | reject('even') | list }} {{ [0, 1, '', 'a'] | select | list }} {{ [1, 5, 9] | select('>', 4) | list }}", {}),
    ("f_map", "{{ ['a', 'b'] | map('upper') | list }} {{ [[1, 2], [3]] | map('length') | list }} {{ d | map(attribute='x.y', default='D') | list }}", {"d": [{"x": {"y": 1}}, {"x": {}}]}),
    ("f_default", "{{ nope | default('dflt') }} {{ '' | default('e') }} {{ '' | default('e', true) }} {{ none | d('n') }} {{ 0 | d(5, boolean=true) }}", {}),
    ("f_string_int_float", "{{ 42 | string }} {{ '42' | int + 1 }} {{ '3.7' | int }} {{ 'x' | int }} {{ 'x' | int(7) }} {{ '2.5' | float }} {{ 3 | float }} {{ 'ff' | int(base=16) }} {{ ' 12 ' | int }} {{ 3.9 | int }}", {}),
    ("f_list_unique_sort", "{{ 'cab' | list }} {{ [3, 1, 2, 1] | unique | list }} {{ ['b', 'A', 'a', 'B'] | unique | list }} {{ [3, 1, 2] | sort }} {{ ['b', 'A', 'c'] | sort }} {{ ['b', 'A', 'c'] | sort(case_sensitive=true) }} {{ [3, 1, 2] | sort(reverse=true) }}", {}),
    ("f_sort_attribute", "{{ people | sort(attribute='age') | map(attribute='name') | join(' ') }}", {"people": [{"name": "a", "age": 30}, {"name": "b", "age": 20}, {"name": "c", "age": 30}]}),
    ("f_dictsort", "{{ d | dictsort }} {{ d | dictsort(by='value') }} {{ d | dictsort(reverse=true) }}", {"d": {"b": 1, "a": 3, "C": 2}}),
    ("f_round_abs", "{{ 2.5 | round }} {{ 3.5 | round }} {{ 2.675 | round(2) }} {{ 3.14159 | round(2, 'floor') }} {{ 3.14159 | round(1, 'ceil') }} {{ 5 | round }} {{ -3 | abs }} {{ -2.5 | abs }}", {}),
    ("f_min_max_sum", "{{ [3, 1, 2] | min }} {{ [3, 1, 2] | max }} {{ [1, 2, 3] | sum }} {{ items | sum(attribute='v') }} {{ ['b', 'A'] | max }}", {"items": [{"v": 1}, {"v": 2.5}]}),
    ("f_reverse", "{{ 'abc' | reverse }} {{ [1, 2, 3] | reverse | list }}", {}),
    ("f_batch", "{{ [1, 2, 3, 4, 5] | batch(2) | list }} {{ [1, 2, 3] | batch(2, 'x') | list }}", {}),
    ("f_indent", "{{ 'a\\nb\\n\\nc' | indent(2) }}|{{ 'a\\nb' | indent(2, true) }}|{{ 'a\\n\\nb' | indent('>', blank=true) }}", {}),
    ("f_center_truncate_wordcount", "[{{ 'ab' | center(7) }}] {{ 'one two three four' | truncate(9) }} {{ 'one two three four' | truncate(9, true) }} {{ 'hello world' | truncate(20) }} {{ 'a b, c' | wordcount }}", {}),
    ("f_escape_safe", "{{ '<a href=\"x\">&\\'</a>' | e }} {{ '<b>' | safe }} {{ '<i>' | escape }}", {}),
    ("f_format", "{{ '%s-%d' | format('a', 3) }} {{ '%05.1f|%-4s|%x' | format(3.14159, 'ab', 255) }} {{ '%(a)s' | format(a=1) }} {{ '%s%%' % 5 }} {{ '%s and %s' % (1, 2) }}", {}),
    ("f_attr", "{% set ns = namespace(a=1) %}{{ ns | attr('a') }}|{{ {'a': 1} | attr('a') }}|{{ 'x' | attr('upper') is callable }}", {}),
    ("err_concat_precedence", "{{ 1 + 1 ~ 1 + 1 }}", {}),
    ("f_chain", "{{ messages | map(attribute='role') | unique | list | length }}", {"messages": MSGS}),
    # ---- tests -------------------------------------------------------------------------------
    ("t_types", "{% for v in [1, 1.5, 'a', [1], {'a': 1}, none, true] %}{{ v is number }}{{ v is integer }}{{ v is float }}{{ v is string }}{{ v is sequence }}{{ v is mapping }}{{ v is iterable }}{{ v is none }}{{ v is boolean }} {% endfor %}", {}),
    ("t_defined", "{{ x is defined }} {{ y is defined }} {{ y is undefined }} {{ x is not none }} {{ z is none }}", {"x": 1, "z": None}),
    ("t_undefined_types", "{{ u is iterable }} {{ u is sequence }} {{ u is mapping }} {{ u is string }} {{ u is none }}", {}),
    ("t_true_false", "{{ true is true }} {{ 1 is true }} {{ false is false }} {{ 0 is false }} {{ x is false }}", {"x": False}),
    ("t_math", "{{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(4) }} {{ 3.0 is odd }}", {}),
    ("t_compare", "{{ 1 is eq 1 }} {{ 1 is equalto 2 }} {{ 2 is gt 1 }} {{ 2 is lt 1 }} {{ 2 is ge 2 }} {{ 2 is le 1 }} {{ 1 is ne 2 }} {{ 1 is sameas 1 }} {{ none is sameas none }}", {}),
    ("t_in", "{{ 2 is in [1, 2] }} {{ 'a' is in 'cat' }} {{ 'x' is not in ['y'] }}", {}),
    ("t_string_case", "{{ 'abc' is lower }} {{ 'ABC' is upper }} {{ 'aBc' is lower }} {{ '12' is lower }}", {}),
    ("t_callable", "{% macro m() %}{% endmacro %}{{ m is callable }} {{ 'x'.strip is callable }} {{ 1 is callable }} {{ range is callable }}", {}),
    ("t_not_precedence", "{{ not x is defined }} {{ x is not defined }} {{ not (x is defined) }}", {}),
    ("t_is_filter_combo", "{{ [1, 2] | length is odd }} {{ 'a' ~ 'b' is string }}", {}),
    # ---- string / dict / list methods --------------------------------------------------------------
    ("m_strip", "[{{ '  a  '.strip() }}][{{ '  a  '.lstrip() }}][{{ '  a  '.rstrip() }}][{{ '\\n\\nx\\n'.strip('\\n') }}][{{ 'xyax'.strip('xy') }}]", {}),
    ("m_split", "{{ 'a,b,,c'.split(',') }} {{ ' a  b \\t c '.split() }} {{ 'a,b,c'.split(',', 1) }} {{ 'a,b,c'.rsplit(',', 1) }} {{ '  a b  c '.split(none, 1) }} {{ ' a b c '.rsplit(none, 1) }}", {}),
    ("m_split_think", "{% set c = '<think>\\nplan\\n</think>\\n\\nanswer' %}[{{ c.split('</think>')[-1].lstrip('\\n') }}][{{ c.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') }}]", {}),
    ("m_startswith", "{{ 'hello'.startswith('he') }} {{ 'hello'.endswith('lo') }} {{ 'hello'.startswith(('x', 'h')) }} {{ 'hello'.startswith('l', 2) }} {{ 'hello'.endswith('ll', 0, 4) }}", {}),
    ("m_find_count", "{{ 'hello'.find('l') }} {{ 'hello'.rfind('l') }} {{ 'hello'.find('z') }} {{ 'héllo'.find('l') }} {{ 'banana'.count('an') }} {{ 'banana'.count('') }} {{ 'hello'.index('e') }}", {}),
    ("m_replace_case", "{{ 'a-b-c'.replace('-', '+') }} {{ 'a-b-c'.replace('-', '', 1) }} {{ 'hello world'.title() }} {{ \"they're bill's\".title() }} {{ 'Hello'.upper() }} {{ 'Hello'.lower() }} {{ 'hello'.capitalize() }} {{ 'HeLLo'.swapcase() }}", {}),
    ("m_join_format", "{{ ', '.join(['a', 'b']) }} {{ '-'.join('abc') }} {{ '{} and {}'.format('x', 'y') }} {{ '{1}{0}'.format('a', 'b') }} {{ '{name}!'.format(name='Z') }} {{ '{{}}{}'.format(1) }}", {}),
    ("m_predicates", "{{ '123'.isdigit() }} {{ 'abc'.isalpha() }} {{ 'a1'.isalnum() }} {{ '  '.isspace() }} {{ 'abc'.islower() }} {{ 'ABC'.isupper() }} {{ ''.isdigit() }}", {}),
    ("m_pad", "[{{ 'ab'.ljust(5, '.') }}][{{ 'ab'.rjust(5) }}][{{ 'ab'.center(6, '*') }}][{{ '-42'.zfill(6) }}]", {}),
    ("m_prefix_partition", "{{ 'foobar'.removeprefix('foo') }} {{ 'foobar'.removesuffix('bar') }} {{ 'a=b=c'.partition('=') }} {{ 'a=b=c'.rpartition('=') }} {{ 'abc'.partition('x') }}", {}),
    ("m_splitlines", "{{ 'a\\nb\\r\\nc\\rd'.splitlines() }} {{ 'a\\nb\\n'.splitlines(true) }}", {}),
    ("m_dict", "{{ d.get('a') }} {{ d.get('z') }} {{ d.get('z', 5) }} {{ d.items() | list }} {{ d.keys() | list }} {{ d.values() | list }}", {"d": {"a": 1, "b": 2}}),
    ("m_list", "{{ l.index(2) }} {{ l.count(1) }} {{ l.copy() }}", {"l": [1, 2, 1]}),
    # ---- globals --------------------------------------------------------------------------------
    ("g_range", "{{ range(3) | list }} {{ range(1, 4) | list }} {{ range(10, 0, -3) | list }} {% for i in range(2) %}{{ i }}{% endfor %}", {}),
    ("g_dict", "{{ dict(a=1, b=2) }} {{ dict([['x', 1]]) }}", {}),
    ("g_joiner", "{% set j = joiner(' | ') %}{% for x in [1, 2, 3] %}{{ j() }}{{ x }}{% endfor %}", {}),
    ("g_strftime_now", "{{ strftime_now('%Y-%m-%d %H:%M:%S') }} {{ strftime_now('%d %b %Y') }} {{ strftime_now('%A %B %-d') }}", {}),
    ("g_raise_exception", "{% if true %}{{ raise_exception('Bad role: ' ~ role) }}{% endif %}", {"role": "x"}),
    # ---- errors ----------------------------------------------------------------------------------
    ("err_undefined_attr", "{{ nope.attr }}", {}),
    ("err_undefined_attr_chain", "{{ d.missing.x }}", {"d": {}}),
    ("err_list_element_attr", "{{ l[5].a }}", {"l": [1]}),
    ("err_str_plus_int", "{{ 'a' + 1 }}", {}),
    ("err_str_plus_dict", "{{ 'a' + d }}", {"d": {"x": 1}}),
    ("err_undefined_plus", "{{ 1 + nope }}", {}),
    ("err_compare_types", "{{ 1 < 'a' }}", {}),
    ("err_iterate_none", "{% for x in none %}{% endfor %}", {}),
    ("err_iterate_int", "{% for x in 5 %}{% endfor %}", {}),
    ("err_div_zero", "{{ 1 / 0 }}", {}),
    ("err_mod_zero", "{{ 1 % 0 }}", {}),
    ("err_unknown_filter", "{{ x | nosuchfilter }}", {}),
    ("err_unknown_filter_untaken", "{% if false %}{{ x | nosuchfilter }}{% endif %}", {}),
    ("err_unknown_test", "{{ x is nosuchtest }}", {}),
    ("err_unknown_tag", "{% nosuchtag %}", {}),
    ("err_stray_end", "{% endif %}", {}),
    ("err_unclosed_if", "{% if true %}x", {}),
    ("err_unclosed_for", "{% for x in y %}{% if x %}{% endfor %}", {}),
    ("err_unclosed_var", "{{ x ", {}),
    ("err_unclosed_block", "{% if x ", {}),
    ("err_unclosed_comment", "{# x ", {}),
    ("err_unclosed_string", "{{ 'abc }}", {}),
    ("err_bad_expression", "{{ 1 + }}", {}),
    ("err_empty_output", "{{ }}", {}),
    ("err_bad_char", "{{ a $ b }}", {}),
    ("err_mismatched_paren", "{{ (1 + 2] }}", {}),
    ("err_break_outside_loop", "{% break %}", {}),
    ("err_macro_too_many_args", "{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}", {}),
    ("err_macro_unknown_kwarg", "{% macro m(a) %}{% endmacro %}{{ m(b=1) }}", {}),
    ("err_set_attr_non_namespace", "{% set d = {} %}{% set d.a = 1 %}", {}),
    ("err_list_append", "{% set l = [] %}{{ l.append(1) }}", {}),
    ("err_dict_update", "{{ d.update({'a': 1}) }}", {"d": {}}),
    ("err_call_undefined", "{{ nofunc() }}", {}),
    ("err_call_non_callable", "{{ x() }}", {"x": 1}),
    ("err_tojson_undefined", "{{ nope | tojson }}", {}),
    ("err_unpack", "{% for a, b in [[1, 2, 3]] %}{% endfor %}", {}),
    ("err_range_too_big", "{{ range(200000) | length }}", {}),
    ("err_items_on_list", "{{ [1] | items | list }}", {}),
    ("err_in_non_string", "{{ 1 in 'abc' }}", {}),
    ("err_undefined_in_comparison", "{{ nope < 1 }}", {}),
    ("err_join_non_str", "{{ ', '.join([1, 2]) }}", {}),
    ("err_raise_in_macro", "{% macro check(r) %}{% if r != 'user' %}{{ raise_exception('role ' + r) }}{% endif %}{% endmacro %}{{ check('user') }}{{ check('bot') }}", {}),
    ("err_unsupported_include", "{% include 'x.html' %}", {}),
]

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Get the weather for a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                                    "unit": {"type": "string", "enum": ["c", "f"]},
                                                    "days": {"type": "array", "items": {"type": "integer"}}},
                    "required": ["city"]}}},
    {"type": "function", "function": {"name": "bash", "description": "Run a shell command",
     "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}},
]
TOOL_MSGS = [
    {"role": "system", "content": "  You can call tools.  "},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}}]},
    {"role": "tool", "content": {"temp": 18}},
    {"role": "assistant", "content": "It is 18 degrees."},
]

# Shapes of real templates (written for these tests, not copies): Llama 3.1 style tool prompts,
# a recursive schema-to-TypeScript macro like gpt-oss's, Mistral style role alternation.
LLAMA31_STYLE = """{{- bos_token }}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- Pull the system message out. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- if tools_in_user_message and not tools is none %}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}
{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

SCHEMA_MACRO = """{%- macro render_type(spec, required=[]) -%}
    {%- if spec.type == "array" -%}
        {{- render_type(spec['items']) }}[]
    {%- elif spec.type == "object" -%}
        {{- "{" }}
        {%- for name, prop in spec.properties | items %}
            {{- name }}{{ "?" if name not in spec.required | default([]) }}: {{ render_type(prop) }}
            {{- ", " if not loop.last }}
        {%- endfor %}
        {{- "}" }}
    {%- elif spec.enum is defined -%}
        {{- spec.enum | map("tojson") | join(" | ") }}
    {%- elif spec.type in ["integer", "number"] -%}
        number
    {%- elif spec.type == "string" -%}
        string
    {%- else -%}
        any
    {%- endif -%}
{%- endmacro -%}
namespace functions {
{% for tool in tools %}
{% set fn = tool.function if tool.function is defined else tool %}
// {{ fn.description | default("") | trim }}
type {{ fn.name }} = (_: {{ render_type(fn.parameters) }}) => any;
{% endfor %}
} // namespace functions
{% set ns = namespace(last_user=-1) %}
{% for m in messages %}{% if m.role == "user" %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}
last user message: {{ ns.last_user }}"""

MISTRAL_STYLE = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

CASES += [
    ("tmpl_llama31_style_tools", LLAMA31_STYLE, {"bos_token": "<|begin_of_text|>", "messages": TOOL_MSGS, "tools": TOOLS, "add_generation_prompt": True}),
    ("tmpl_llama31_style_plain", LLAMA31_STYLE, {"bos_token": "<|begin_of_text|>", "messages": MSGS, "add_generation_prompt": False, "date_string": "1 Jan 2025"}),
    ("tmpl_llama31_style_no_user", LLAMA31_STYLE, {"bos_token": "", "messages": [{"role": "system", "content": "x"}], "tools": TOOLS}),
    ("tmpl_schema_macro", SCHEMA_MACRO, {"tools": TOOLS, "messages": MSGS}),
    ("tmpl_mistral_style", MISTRAL_STYLE, {"bos_token": "<s>", "eos_token": "</s>", "messages": MSGS}),
    ("tmpl_mistral_style_bad_roles", MISTRAL_STYLE, {"bos_token": "<s>", "eos_token": "</s>", "messages": [MSGS[1], MSGS[1]]}),
]


def render(src, ctx):
    try:
        return {"output": env.from_string(src).render(**ctx)}
    except Exception as e:  # noqa: BLE001 - every jinja2 failure is an expected error case
        return {"error": {"kind": type(e).__name__, "message": str(e)}}


def main():
    out = []
    names = set()
    for name, src, ctx in CASES:
        assert name not in names, name
        names.add(name)
        case = {"name": name, "template": src, "context": ctx}
        case.update(render(src, ctx))
        out.append(case)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "jinja_cases.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(out)} cases ({sum('error' in c for c in out)} errors) to {os.path.normpath(path)}")


if __name__ == "__main__":
    main()
