// The official OpenAI Node.js SDK against the gateway's /v1/chat/completions
// (tests/e2e/test_gateway_node_openai.py): streams one answer, then asks once without
// streaming, and prints one JSON line with what it got.
//   node openai_chat.mjs http://127.0.0.1:8080/v1 "What is 2 + 2?"
import OpenAI from "openai";

const [baseURL, question] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: process.env.GATEWAY_TOKEN || "development-mode", timeout: 30_000 });
const messages = [{ role: "user", content: question }];

const stream = await client.chat.completions.create({ model: "southwest-agent", messages, stream: true });
let content = "";
let reasoning = "";
let finish = null;
let chunks = 0;
for await (const chunk of stream) {
  chunks += 1;
  const choice = chunk.choices[0];
  content += choice.delta.content ?? "";
  reasoning += choice.delta.reasoning_content ?? "";
  finish = choice.finish_reason ?? finish;
}
const models = [];
for await (const model of client.models.list()) models.push(model.id);
const whole = await client.chat.completions.create({ model: "southwest-agent", messages });
console.log(JSON.stringify({
  chunks, content, reasoning, finish, models,
  whole: { object: whole.object, content: whole.choices[0].message.content, finish: whole.choices[0].finish_reason },
}));
