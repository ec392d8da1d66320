/** Test models whose chat template ends an assistant turn with a token of the test's choosing. */
import { join } from "node:path";
import { fixturePath } from "./_test_utils.ts";

/**
 * Copies tests/fixtures/gpt2_tiny into a new temp dir (the caller removes it) and declares its vocabulary
 * token `endId` a special added token that the chat template writes after every assistant message, the
 * way ChatML writes `<|im_end|>`. Tests pick a token that greedy decoding emits, so that generation must
 * stop exactly there. User turns do not end with it, so a prompt's continuation does not depend on it.
 */
export async function writeChatModel(endId: number): Promise<{ dir: string; endToken: string }> {
  const src = fixturePath("gpt2_tiny");
  const dir = await Deno.makeTempDir({ prefix: "chat_model_" });
  for (const file of ["config.json", "model.safetensors"]) await Deno.copyFile(join(src, file), join(dir, file));
  const tokenizer = JSON.parse(await Deno.readTextFile(join(src, "tokenizer.json")));
  const endToken = Object.entries(tokenizer.model.vocab as Record<string, number>).find(([, id]) => id === endId)?.[0];
  if (endToken === undefined) throw new Error(`Cannot make a chat model as gpt2_tiny has no token ${endId}`);
  tokenizer.added_tokens.push({
    id: endId,
    content: endToken,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  });
  await Deno.writeTextFile(join(dir, "tokenizer.json"), JSON.stringify(tokenizer));
  const config = JSON.parse(await Deno.readTextFile(join(src, "tokenizer_config.json")));
  // gpt2_tiny's template, with the end token after assistant messages.
  config.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}" +
    `{{ ${JSON.stringify(endToken)} if m['role'] == 'assistant' else '' }}\n{% endfor %}` +
    "{% if add_generation_prompt %}assistant:{% endif %}";
  await Deno.writeTextFile(join(dir, "tokenizer_config.json"), JSON.stringify(config));
  return { dir, endToken };
}
