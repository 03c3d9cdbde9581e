namespace QLoRA.Text.Tests;

/// <summary>Templates written to exercise the engine's constructs one family at a time (rendered against jinja2 too).</summary>
internal static class FeatureTemplates
{
    public static readonly (string Name, string Source)[] All =
    [
        ("chatml", """
            {% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
            """),
        ("zephyr-like", """
            {% for message in messages %}
            {% if message['role'] == 'user' %}
            {{ '<|user|>\n' + message['content'] + eos_token }}
            {% elif message['role'] == 'system' %}
            {{ '<|system|>\n' + message['content'] + eos_token }}
            {% elif message['role'] == 'assistant' %}
            {{ '<|assistant|>\n'  + message['content'] + eos_token }}
            {% endif %}
            {% if loop.last and add_generation_prompt %}
            {{ '<|assistant|>' }}
            {% endif %}
            {% endfor %}
            """),
        ("mistral-like", """
            {{- bos_token }}
            {%- if messages[0]['role'] == 'system' %}
                {%- set system_message = messages[0]['content'] %}
                {%- set loop_messages = messages[1:] %}
            {%- else %}
                {%- set loop_messages = messages %}
            {%- endif %}
            {%- for message in loop_messages %}
                {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
                    {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
                {%- endif %}
                {%- if message['role'] == 'user' %}
                    {%- if loop.first and system_message is defined %}
                        {{- ' [INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}
                    {%- else %}
                        {{- ' [INST] ' + message['content'] + ' [/INST]' }}
                    {%- endif %}
                {%- elif message['role'] == 'assistant' %}
                    {{- ' ' + message['content'] + eos_token}}
                {%- else %}
                    {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
                {%- endif %}
            {%- endfor %}
            """),
        ("namespace-and-loop", """
            {%- set ns = namespace(count=0, last_user=-1, roles=[]) -%}
            {%- for m in messages -%}
              {%- set ns.count = ns.count + 1 -%}
              {%- if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif -%}
              {%- set ns.roles = ns.roles + [m.role] -%}
              [{{ loop.index }}/{{ loop.length }} rev{{ loop.revindex0 }} {{ 'first' if loop.first else '' }}{{ 'last' if loop.last }}] {{ m.role|upper }}{% if loop.previtem is defined %} after {{ loop.previtem.role }}{% endif %}
            {% endfor -%}
            count={{ ns.count }} last_user={{ ns.last_user }} roles={{ ns.roles|join(',') }} {{ ns.roles }} unique={{ ns.roles|unique|list }}
            """),
        ("macros-and-call", """
            {%- macro render(m, prefix='> ', upper=false) -%}
            {{ prefix }}{{ m.role ~ ': ' }}{{ (m.content if m.content is defined else '<none>') | upper if upper else m.content | default('<none>', true) }}
            {%- endmacro -%}
            {%- macro box(title) -%}[{{ title }}|{{ caller() }}|{{ varargs|length }}]{%- endmacro -%}
            {%- for m in messages %}{{ render(m) }}
            {{ render(m, upper=true, prefix='# ') }}
            {% endfor -%}
            {% call box('T') %}inside {{ messages|length }}{% endcall %}
            """),
        ("filters", """
            {%- for m in messages -%}
            {{ m.content | trim | length }};{{ m.content | replace('a', 'A') }}|{{ m.content | replace('a', 'A', 1) }};{{ m.role | capitalize }};{{ m.role | title }};{{ (m.content ~ ' x') | wordcount }}
            {{ m | tojson }}
            {{ m | tojson(indent=2) }}
            {{ m.content | indent(2) }}|{{ m.content | indent(4, first=true) }}
            {{ m.content[:5] }}|{{ m.content[-3:] }}|{{ m.content[::-1] }}|{{ m.content[1:10:2] }}
            {% endfor -%}
            {{ messages | map(attribute='role') | join('+') }} {{ messages | selectattr('role', 'equalto', 'user') | list | length }} {{ messages | rejectattr('role', 'eq', 'user') | map(attribute='role') | list }}
            {{ messages | first | tojson }} {{ (messages | last).role }} {{ [3, 1, 2] | sort | join }} {{ [3, 1, 2] | sort(reverse=true) | first }} {{ ['b', 'A', 'c'] | sort | list }}
            {{ [1, 2, 3] | sum }} {{ [1.5, 2] | sum }} {{ [4, 9] | max }} {{ [4, 9] | min }} {{ '42' | int + 1 }} {{ 'x' | int }} {{ '3.5' | float }} {{ -3 | abs }} {{ 2.567 | round(2) }} {{ 2.675 | round(2) }} {{ 0.5 | round }} {{ 1.5 | round }} {{ 2.5 | round }} {{ 2.45 | round(1, 'floor') }} {{ 2.41 | round(1, 'ceil') }}
            {{ {'b': 1, 'a': 2} | dictsort }} {{ {'k': 'v', 'n': none} | items | list }} {{ 'abc' | list }} {{ 'a,b' | reverse }}
            {{ undefined_thing | default('dflt') }} {{ '' | default('empty', true) }} {{ none | default('n') }} {{ [1,2,3,4,5] | batch(2) | list }}
            """),
        ("tests-and-operators", """
            {%- for m in messages -%}
            {{ m.content is string }}{{ m.content is defined }}{{ m.tool_calls is defined }}{{ m.tool_calls is none }}{{ m is mapping }}{{ m.content is iterable }}{{ loop.index is odd }}{{ loop.index is even }}{{ loop.index is divisibleby 2 }}{{ m.role is in ['user', 'system'] }}{{ m.role is sameas none }}
            {{ 'user' in m.role }} {{ 'x' not in m.content }} {{ 'role' in m }} {{ m.role == 'user' and m.content != '' or m.role == 'assistant' }} {{ not m.content }}
            {% endfor -%}
            {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1 + 2 * 3 - 4 }} {{ (1 + 2) * 3 }} {{ 'ab' * 3 }} {{ [1] + [2, 3] }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 5 }} {{ 1 == 1.0 }} {{ true == 1 }}
            {{ 0.1 + 0.2 }} {{ 1e3 }} {{ 10 / 4 }} {{ 2.0 }} {{ 1.5e-7 }} {{ (1, 2) }} {{ (1,) }} {{ {'a': [1, {'b': none}], 'c': true} }} {{ "it's" }} {{ 'say "hi"' }}
            {{ 'a' if true }}|{{ 'a' if false }}|{{ 'x' ~ 1 ~ none ~ true }}|{{ -(3) }}|{{ 'abc'[1] }}|{{ [1,2,3][-1] }}|{{ {'a': 1}['a'] }}|{{ {'a': 1}.a }}
            """),
        ("string-methods", """
            {%- for m in messages %}
            {{ m.content.strip() }}|{{ m.content.lstrip() }}|{{ m.content.rstrip('\n') }}|{{ m.content.upper() }}|{{ m.content.lower() }}|{{ m.content.title() }}|{{ m.content.capitalize() }}
            {{ m.content.split() }}|{{ m.content.split('\n') }}|{{ m.content.split(' ', 1) }}|{{ m.content.startswith('H') }}|{{ m.content.endswith(('!', '?')) }}|{{ m.content.replace(' ', '_') }}
            {{ m.content.find('a') }}|{{ m.content.count('a') }}|{{ '-'.join(['x', m.role]) }}|{{ '{}:{}'.format(m.role, loop.index) }}|{{ '{0}{0}'.format('z') }}|{{ m.content.split('</think>')[-1].lstrip('\n') }}
            {{- '' }}
            {% endfor %}
            """),
        ("whitespace-control", """
            A
              {% if true %}
                B
              {% endif %}
            C {# a comment #}
            D{# trimmed comment -#}
               E
            {%- if true -%}   F   {%- endif -%}
            G {%+ if true %}H{% endif %}
              {{- ' I ' -}}
            J
            {% raw %}{{ not rendered }} {% if %}{% endraw %}
            {% for m in messages %}
                {% if loop.first %}
                    first: {{ m.role }}
                {% endif %}
            {% endfor %}
            end
            """),
        ("set-and-scope", """
            {%- set outer = 'o' -%}
            {%- for m in messages -%}{%- set outer = m.role -%}{%- set inner = 1 -%}{%- endfor -%}
            outer={{ outer }} inner={{ inner is defined }}
            {%- if true %}{% set inif = 'yes' %}{% endif %} inif={{ inif }}
            {%- set a, b = 1, 2 %} {{ a }}{{ b }}
            {%- set block %}Block {{ messages|length }} lines{% endset %} {{ block }}
            {%- set up | upper %}filtered block{% endset %} {{ up }}
            {%- filter upper %} filter tag {{ 'x' }}{% endfilter %}
            {%- set d = {'k': 1} %} {{ d.k }} {{ d['k'] }} {{ d.get('k') }} {{ d.get('z', 'dz') }} {{ d.items() | list }} {{ d.keys() | list }} {{ d.values() | list }}
            {%- for k, v in {'x': 1, 'y': 2}.items() %} {{ k }}={{ v }}{% endfor %}
            {%- for i in range(3) %}{{ i }}{% if i == 1 %}{% break %}{% endif %}{% endfor %}
            {%- for i in range(5) %}{% if i is odd %}{% continue %}{% endif %}{{ i }}{% else %}none{% endfor %}
            {%- for i in [] %}{{ i }}{% else %} empty-else{% endfor %}
            {%- for m in messages if m.role == 'user' %} u{{ loop.index }}/{{ loop.length }}{% endfor %}
            {%- for i in range(10, 0, -3) %} {{ i }}{% endfor %} {{ range(3) | list }}
            """),
        ("generation-blocks", """
            {%- for m in messages -%}
            {%- if m.role == 'assistant' -%}
            {{ '<|assistant|>' }}{% generation %}{{ m.content }}{{ eos_token }}{% endgeneration %}
            {%- else -%}
            {{ '<|' + m.role + '|>' + (m.content if m.content is defined else '') }}
            {%- endif %}

            {% endfor -%}
            {%- if add_generation_prompt %}<|assistant|>{% endif -%}
            """),
        ("tools-json", """
            {%- if tools is defined and tools %}Tools:{{ tools | tojson }}
            {% for t in tools %}- {{ t.function.name }}: {{ t.function.parameters.properties | tojson(indent=4) }}
            {% endfor %}{% endif -%}
            {%- for m in messages -%}
            {%- if m.tool_calls is defined %}{% for c in m.tool_calls %}CALL {{ c.function.name }}({{ c.function.arguments | tojson }}) {{ c.function.arguments.city }}{% endfor %}
            {% elif m.role == 'tool' %}RESULT {{ m.content }}
            {% else %}{{ m.role }}: {{ m.content }}
            {% endif -%}
            {%- endfor -%}
            {{ strftime_now('%d %b %Y') }} {{ strftime_now('%-d %B %y %H:%M:%S %A %j %p %I') }}
            """),
    ];
}
