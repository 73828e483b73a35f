// Scripted conversations with the official Anthropic and OpenAI SDKs against a live `kiln serve`
// (run by tests/server_clients_test.cpp, which installs the SDKs under the build folder and copies
// this file beside them). The server replays KILN_SERVE_SCRIPTED_OUTPUT: thinking, the text
// "I will list them." and a Bash tool call {"command": "ls -la"}.
//   KILN_URL=http://127.0.0.1:PORT KILN_KEY=key node sdk_conversations.mjs
// Prints "ok"/"FAIL" per check; exits 1 when any check failed.
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';

const url = process.env.KILN_URL;
const key = process.env.KILN_KEY;
let failures = 0;
function check(cond, what, detail) {
  if (cond) {
    console.log(`ok   ${what}`);
  } else {
    failures++;
    console.log(`FAIL ${what}${detail === undefined ? '' : ': ' + JSON.stringify(detail)}`);
  }
}
async function expectError(what, cls, status, fn) {
  try {
    const r = await fn();
    check(false, what, { unexpected_success: r });
  } catch (e) {
    check(e instanceof cls && e.status === status, what, { name: e?.constructor?.name, status: e?.status, message: e?.message });
    return e;
  }
}

// ---- Anthropic ----------------------------------------------------------------------------------
const a = new Anthropic({ baseURL: url, apiKey: key, maxRetries: 0 });
const tools = [{
  name: 'Bash',
  description: 'Run a shell command',
  input_schema: { type: 'object', properties: { command: { type: 'string' } }, required: ['command'] },
}];
const ask = { role: 'user', content: 'List the files in this directory' };

const m1 = await a.messages.create({ model: 'local', max_tokens: 300, tools, messages: [ask] });
check(m1.type === 'message' && m1.role === 'assistant', 'anthropic create: a message', m1);
check(m1.stop_reason === 'tool_use', 'anthropic create: stop_reason tool_use', m1.stop_reason);
const tu1 = m1.content.find((b) => b.type === 'tool_use');
check(tu1 && tu1.name === 'Bash' && tu1.input.command === 'ls -la', 'anthropic create: tool_use Bash {command: "ls -la"}', m1.content);
check(m1.content.some((b) => b.type === 'text' && b.text.includes('I will list them')), 'anthropic create: a text block', m1.content);
check(m1.usage.input_tokens + m1.usage.cache_read_input_tokens > 10 && m1.usage.output_tokens > 0, 'anthropic create: usage', m1.usage);

let text = '';
const seen = new Set();
const stream = a.messages.stream({
  model: 'local', max_tokens: 300, tools, thinking: { type: 'enabled', budget_tokens: 1024 }, messages: [ask],
});
stream.on('text', (d) => { text += d; });
stream.on('streamEvent', (e) => seen.add(e.type));
const m2 = await stream.finalMessage();
check(text.includes('I will list them'), 'anthropic stream: text deltas', text);
check(m2.content.map((b) => b.type).join(',') === 'thinking,text,tool_use', 'anthropic stream: thinking, text, tool_use blocks', m2.content);
check(m2.content[0]?.thinking?.includes('Let me look'), 'anthropic stream: thinking text', m2.content[0]);
check(m2.content[2]?.input?.command === 'ls -la', 'anthropic stream: tool input assembled from input_json_delta', m2.content[2]);
check(m2.stop_reason === 'tool_use', 'anthropic stream: stop_reason tool_use', m2.stop_reason);
check(['message_start', 'content_block_start', 'content_block_delta', 'content_block_stop', 'message_delta', 'message_stop'].every((t) => seen.has(t)),
  'anthropic stream: every event type', [...seen]);

// The tool result goes back with the whole history: the prefix is reused.
const history = [ask, { role: 'assistant', content: m2.content }, {
  role: 'user',
  content: [{ type: 'tool_result', tool_use_id: m2.content[2]?.id, content: 'a.txt\nb.txt', cache_control: { type: 'ephemeral' } }],
}];
const m3 = await a.messages.stream({ model: 'local', max_tokens: 300, tools, messages: history }).finalMessage();
check(m3.type === 'message' && m3.content.length > 0, 'anthropic tool_result round trip: an answer', m3);
check(m3.usage.cache_read_input_tokens > 0, 'anthropic tool_result round trip: cache_read_input_tokens > 0', m3.usage);
const m4 = await a.messages.create({
  model: 'local', max_tokens: 300, tools, messages: [ask, { role: 'assistant', content: m1.content }, {
    role: 'user', content: [{ type: 'tool_result', tool_use_id: tu1?.id, is_error: true, content: [{ type: 'text', text: 'permission denied' }] }],
  }],
});
check(m4.type === 'message', 'anthropic tool_result is_error round trip (non-streaming)', m4);

const count = await a.messages.countTokens({ model: 'local', tools, messages: [ask] });
check(count.input_tokens > 10, 'anthropic countTokens', count);

await expectError('anthropic bad request -> BadRequestError 400', Anthropic.BadRequestError, 400,
  () => a.messages.create({ model: 'local', max_tokens: 10, messages: [{ role: 'robot', content: 'hi' }] }));
const e1 = await expectError('anthropic bad request while streaming -> BadRequestError 400', Anthropic.BadRequestError, 400,
  () => a.messages.stream({ model: 'local', max_tokens: 10, messages: [] }).finalMessage());
check(e1?.error?.error?.type === 'invalid_request_error', 'anthropic error body: invalid_request_error', e1?.error);
const bad = new Anthropic({ baseURL: url, apiKey: 'not-the-key', maxRetries: 0 });
await expectError('anthropic wrong key -> AuthenticationError 401', Anthropic.AuthenticationError, 401,
  () => bad.messages.create({ model: 'local', max_tokens: 10, messages: [ask] }));

// ---- OpenAI -------------------------------------------------------------------------------------
const o = new OpenAI({ baseURL: `${url}/v1`, apiKey: key, maxRetries: 0 });
const otools = [{ type: 'function', function: { name: 'Bash', description: 'Run a shell command', parameters: tools[0].input_schema } }];
const oask = { role: 'user', content: 'List the files in this directory' };

const c1 = await o.chat.completions.create({ model: 'local', max_tokens: 300, tools: otools, messages: [oask] });
const msg1 = c1.choices[0]?.message;
check(c1.choices[0]?.finish_reason === 'tool_calls', 'openai create: finish_reason tool_calls', c1.choices[0]);
check(msg1?.tool_calls?.[0]?.function?.name === 'Bash' && JSON.parse(msg1.tool_calls[0].function.arguments).command === 'ls -la',
  'openai create: tool_calls Bash', msg1);
check(msg1?.content?.includes('I will list them'), 'openai create: content', msg1);
check(c1.usage.prompt_tokens > 10 && c1.usage.completion_tokens > 0, 'openai create: usage', c1.usage);

const s = await o.chat.completions.create({
  model: 'local', max_tokens: 300, tools: otools, messages: [oask], stream: true, stream_options: { include_usage: true },
});
let content = '', args = '', name = '', id = '', finish = null, usage = null, reasoning = '';
for await (const ch of s) {
  if (ch.usage) usage = ch.usage;
  const c = ch.choices[0];
  if (!c) continue;
  if (c.delta.content) content += c.delta.content;
  if (c.delta.reasoning_content) reasoning += c.delta.reasoning_content;
  for (const tc of c.delta.tool_calls ?? []) {
    if (tc.id) id = tc.id;
    if (tc.function?.name) name = tc.function.name;
    if (tc.function?.arguments) args += tc.function.arguments;
  }
  if (c.finish_reason) finish = c.finish_reason;
}
check(content.includes('I will list them'), 'openai stream: content deltas', content);
check(reasoning.includes('Let me look'), 'openai stream: reasoning_content deltas', reasoning);
check(name === 'Bash' && id !== '' && JSON.parse(args || '{}').command === 'ls -la', 'openai stream: tool call assembled', { id, name, args });
check(finish === 'tool_calls', 'openai stream: finish_reason tool_calls', finish);
check(usage?.prompt_tokens > 10, 'openai stream: include_usage chunk', usage);

const c3 = await o.chat.completions.create({
  model: 'local', max_tokens: 300, tools: otools,
  messages: [oask, { role: 'assistant', content, tool_calls: [{ id, type: 'function', function: { name, arguments: args } }] },
    { role: 'tool', tool_call_id: id, content: 'a.txt\nb.txt' }],
});
check(c3.choices[0]?.message?.role === 'assistant', 'openai tool round trip: an answer', c3);
check(c3.usage?.prompt_tokens_details?.cached_tokens > 0, 'openai tool round trip: cached_tokens > 0', c3.usage);

await expectError('openai n=2 -> BadRequestError 400', OpenAI.BadRequestError, 400,
  () => o.chat.completions.create({ model: 'local', n: 2, messages: [oask] }));
await expectError('openai bad request while streaming -> BadRequestError 400', OpenAI.BadRequestError, 400,
  () => o.chat.completions.create({ model: 'local', messages: [{ role: 'robot', content: 'x' }], stream: true }));
const obad = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'not-the-key', maxRetries: 0 });
await expectError('openai wrong key -> AuthenticationError 401', OpenAI.AuthenticationError, 401,
  () => obad.chat.completions.create({ model: 'local', messages: [oask] }));

console.log(failures === 0 ? 'ALL OK' : `${failures} check(s) failed`);
process.exit(failures === 0 ? 0 : 1);
