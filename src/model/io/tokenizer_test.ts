import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createDecodeStream, loadTokenizer, type Tokenizer } from "./tokenizer.ts";

/** GPT-2's bytes_to_unicode, written out independently of the module under test. */
function bytesToUnicode(): string[] {
  const bs: number[] = [];
  for (let b = "!".charCodeAt(0); b <= "~".charCodeAt(0); b++) bs.push(b);
  for (let b = "¡".charCodeAt(0); b <= "¬".charCodeAt(0); b++) bs.push(b);
  for (let b = "®".charCodeAt(0); b <= "ÿ".charCodeAt(0); b++) bs.push(b);
  const out: string[] = new Array(256);
  let n = 0;
  for (let b = 0; b < 256; b++) out[b] = String.fromCharCode(bs.includes(b) ? b : 256 + n++);
  return out;
}

const B2U = bytesToUnicode();
/** The byte-level spelling of a string: what a GPT-2 vocabulary entry looks like. */
const bl = (s: string) => [...new TextEncoder().encode(s)].map((b) => B2U[b]).join("");

// Ids 0..255 are the bytes; merge i makes id 256 + i. The last one joins the first two bytes of
// 😀 (F0 9F 98 80), so that character spans three tokens.
const MERGES: [string, string][] = [
  [bl(" "), "t"],
  ["h", "e"],
  [bl(" t"), "he"],
  ["l", "l"],
  ["he", "ll"],
  ["hell", "o"],
  [B2U[0xf0]!, B2U[0x9f]!],
];

const ENDOFTEXT_ID = 256 + MERGES.length;

function tokenizerJson(): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  B2U.forEach((ch, b) => (vocab[ch] = b));
  MERGES.forEach(([a, b], i) => (vocab[a + b] = 256 + i));
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [{
      id: ENDOFTEXT_ID,
      content: "<|endoftext|>",
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: true,
      special: true,
    }],
    normalizer: null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: "ByteLevel", add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: "",
      end_of_word_suffix: "",
      fuse_unk: false,
      byte_fallback: false,
      vocab,
      merges: MERGES.map(([a, b]) => `${a} ${b}`),
    },
  };
}

/** Writes the given files into a fresh temp dir, loads the tokenizer, and removes the dir. */
async function withTokenizer(
  files: Record<string, string>,
  fn: (tok: Tokenizer, dir: string) => Promise<void> | void,
  options?: { eosTokenId?: number; stopTokenIds?: number[] },
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tokenizer_test_" });
  try {
    for (const [name, text] of Object.entries(files)) await Deno.writeTextFile(join(dir, name), text);
    await fn(await loadTokenizer(dir, options), dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const BASE = { "tokenizer.json": JSON.stringify(tokenizerJson()) };

async function assertLoadFails(files: Record<string, string>, pattern: RegExp): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tokenizer_test_" });
  try {
    for (const [name, text] of Object.entries(files)) await Deno.writeTextFile(join(dir, name), text);
    await assert.rejects(loadTokenizer(dir), (err: Error) => {
      assert.match(err.message, pattern);
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("encode/decode round-trips ASCII and multi-byte UTF-8", async () => {
  await withTokenizer(BASE, (tok) => {
    for (
      const text of [
        "Hello world, the hello! 123\n\tend  ",
        "Café naïve façade — déjà vu",
        "emoji 😀👍🏽 and 日本語 and 🇫🇷",
        "",
      ]
    ) {
      const ids = tok.encode(text);
      assert.ok(ids.every((id) => Number.isInteger(id) && id >= 0 && id < tok.vocabSize));
      assert.equal(tok.decode(ids), text);
    }
  });
});

Deno.test("encode applies merges and adds no BOS/EOS", async () => {
  await withTokenizer(BASE, (tok) => {
    assert.deepEqual(tok.encode("hello"), [256 + 5]);
    assert.deepEqual(tok.encode(" the"), [256 + 2]);
    assert.deepEqual(tok.encode("hello the"), [256 + 5, 256 + 2]);
    // No merge applies: one id per byte.
    assert.deepEqual(tok.encode("xyz"), [..."xyz"].map((c) => c.charCodeAt(0)));
    // 😀 = F0 9F 98 80, with F0 9F merged.
    assert.deepEqual(tok.encode("😀"), [256 + 6, 0x98, 0x80]);
  });
});

Deno.test("special token ids, vocabSize and token lookups", async () => {
  await withTokenizer(BASE, (tok) => {
    assert.equal(tok.vocabSize, ENDOFTEXT_ID + 1);
    assert.equal(tok.tokenToId("<|endoftext|>"), ENDOFTEXT_ID);
    assert.equal(tok.idToToken(ENDOFTEXT_ID), "<|endoftext|>");
    assert.equal(tok.idToToken(256 + 5), "hello");
    assert.equal(tok.tokenToId("no such token"), undefined);
    // Without tokenizer_config.json, EOS falls back to <|endoftext|>.
    assert.equal(tok.eosTokenId, ENDOFTEXT_ID);
    assert.equal(tok.bosTokenId, undefined);
    assert.equal(tok.padTokenId, undefined);
    assert.equal(tok.chatTemplate, undefined);
    // Special tokens written in the text are recognised, as transformers does by default.
    const ids = tok.encode("hello<|endoftext|>");
    assert.deepEqual(ids, [256 + 5, ENDOFTEXT_ID]);
    assert.equal(tok.decode(ids), "hello<|endoftext|>");
    assert.equal(tok.decode(ids, { skipSpecialTokens: true }), "hello");
    assert.equal(tok.decode([]), "");
  });
});

Deno.test("eos/bos/pad come from tokenizer_config.json; eosTokenId option overrides", async () => {
  const config = {
    bos_token: "<|endoftext|>",
    eos_token: { __type: "AddedToken", content: "<|endoftext|>", lstrip: false },
    pad_token: "!",
    model_max_length: 1024,
  };
  const files = { ...BASE, "tokenizer_config.json": JSON.stringify(config) };
  await withTokenizer(files, (tok) => {
    assert.equal(tok.eosTokenId, ENDOFTEXT_ID);
    assert.equal(tok.bosTokenId, ENDOFTEXT_ID);
    assert.equal(tok.padTokenId, "!".charCodeAt(0));
    assert.equal(tok.modelMaxLength, 1024);
  });
  await withTokenizer(files, (tok) => assert.equal(tok.eosTokenId, 256 + 5), { eosTokenId: 256 + 5 });
  await assertLoadFails(
    { ...BASE, "tokenizer_config.json": JSON.stringify({ eos_token: "</s>" }) },
    /tokenizer\.json' as its eos_token "<\/s>" is not in the vocabulary/,
  );
});

Deno.test("no EOS anywhere is an error", async () => {
  const json = tokenizerJson();
  json.added_tokens = [];
  await assertLoadFails({ "tokenizer.json": JSON.stringify(json) }, /names no end-of-sequence token/);
});

const TEMPLATE = "{{ bos_token }}{% for m in messages %}" +
  "{% if m['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('Unknown role: ' + m['role']) }}{% endif %}" +
  "<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}\n{% endfor %}" +
  "{% if tools is none %}{% else %}TOOLS{% endif %}" +
  "{% if add_generation_prompt %}<|assistant|>{% endif %}";

Deno.test("applyChatTemplate renders with special tokens and add_generation_prompt", async () => {
  const config = { bos_token: "<s>", eos_token: "<|endoftext|>", chat_template: TEMPLATE };
  await withTokenizer({ ...BASE, "tokenizer_config.json": JSON.stringify(config) }, (tok) => {
    const messages = [{ role: "system", content: "Be brief." }, { role: "user", content: "Hi" }];
    assert.equal(
      tok.applyChatTemplate(messages),
      "<s><|system|>Be brief.<|endoftext|>\n<|user|>Hi<|endoftext|>\n",
    );
    assert.equal(
      tok.applyChatTemplate(messages, { addGenerationPrompt: true }),
      "<s><|system|>Be brief.<|endoftext|>\n<|user|>Hi<|endoftext|>\n<|assistant|>",
    );
  });
});

Deno.test("applyChatTemplate surfaces raise_exception as a clear error", async () => {
  const config = { eos_token: "<|endoftext|>", chat_template: TEMPLATE };
  await withTokenizer({ ...BASE, "tokenizer_config.json": JSON.stringify(config) }, (tok) => {
    assert.throws(
      () => tok.applyChatTemplate([{ role: "robot", content: "beep" }]),
      /Cannot apply the chat template of tokenizer '.*tokenizer\.json' to 1 message\(s\): Unknown role: robot$/,
    );
  });
});

Deno.test("chat templates: list form picks 'default'; chat_template.jinja takes precedence", async () => {
  const listForm = {
    chat_template: [
      { name: "tool_use", template: "TOOL" },
      { name: "default", template: "{% for m in messages %}{{ m.content }}{% endfor %}" },
    ],
  };
  await withTokenizer({ ...BASE, "tokenizer_config.json": JSON.stringify(listForm) }, (tok) => {
    assert.equal(tok.applyChatTemplate([{ role: "user", content: "x" }]), "x");
  });
  await withTokenizer(
    {
      ...BASE,
      "tokenizer_config.json": JSON.stringify(listForm),
      "chat_template.jinja": "FILE{{ messages | length }}",
    },
    (tok) => assert.equal(tok.applyChatTemplate([{ role: "user", content: "x" }]), "FILE1"),
  );
  await assertLoadFails(
    { ...BASE, "tokenizer_config.json": JSON.stringify({ chat_template: [{ name: "a", template: "" }] }) },
    /chat templates \(a\) include none named 'default'/,
  );
});

Deno.test("applyChatTemplate without a template says the model has none", async () => {
  await withTokenizer(BASE, (tok) => {
    assert.throws(() => tok.applyChatTemplate([{ role: "user", content: "hi" }]), /has none/);
  });
});

Deno.test("malformed tokenizer files give errors naming the file and the problem", async () => {
  await assertLoadFails(
    { "tokenizer.json": "{not json" },
    /^Cannot load tokenizer from '.*tokenizer\.json': the file is not valid JSON \(.+\)$/,
  );
  const noModel = tokenizerJson();
  delete noModel.model;
  await assertLoadFails(
    { "tokenizer.json": JSON.stringify(noModel) },
    /^Cannot load tokenizer from '.*tokenizer\.json': 'model': .*expected object/,
  );
  await assertLoadFails({ "tokenizer.json": "[1, 2]" }, /tokenizer\.json': the file: .*expected object/);
  await assertLoadFails({}, /^Cannot load tokenizer from '.*tokenizer\.json': the file does not exist$/);
  await assertLoadFails(
    { ...BASE, "tokenizer_config.json": "{,}" },
    /^Cannot load tokenizer config from '.*tokenizer_config\.json': the file is not valid JSON/,
  );
  await assertLoadFails(
    { ...BASE, "tokenizer_config.json": JSON.stringify({ eos_token: 5 }) },
    /^Cannot load tokenizer config from '.*tokenizer_config\.json': 'eos_token': /,
  );
  const badType = tokenizerJson();
  (badType.model as Record<string, unknown>).type = "Nonsense";
  delete (badType.model as Record<string, unknown>).vocab;
  await assertLoadFails(
    { "tokenizer.json": JSON.stringify(badType) },
    /tokenizer\.json': the tokenizers library rejected it \(Unknown TokenizerModel type: Nonsense\)/,
  );
});

Deno.test("createDecodeStream holds back a character split across tokens", async () => {
  await withTokenizer(BASE, (tok) => {
    const text = "a😀b hello, café<|endoftext|>!";
    const ids = tok.encode(text);
    const stream = createDecodeStream(tok);
    const chunks = ids.map((id) => stream.push(id));
    // "a", then 😀 as [F0 9F][98][80]: nothing until its last byte arrives.
    assert.deepEqual(chunks.slice(0, 5), ["a", "", "", "😀", "b"]);
    assert.ok(chunks.every((c) => !c.includes("\uFFFD")));
    assert.equal(chunks.join("") + stream.flush(), tok.decode(ids));
    assert.equal(chunks.join(""), text);

    // é is C3 A9: two single-byte tokens.
    const skip = createDecodeStream(tok, { skipSpecialTokens: true });
    const out = tok.encode("é<|endoftext|>").map((id) => skip.push(id));
    assert.deepEqual(out, ["", "é", ""]);

    // A dangling lead byte is flushed as U+FFFD, as decode() renders it.
    const partial = createDecodeStream(tok);
    assert.equal(partial.push(256 + 6), "");
    assert.equal(partial.flush(), tok.decode([256 + 6]));
  });
});

Deno.test("createDecodeStream works through the generic window for other decoders", async () => {
  const config = { clean_up_tokenization_spaces: true };
  await withTokenizer({ ...BASE, "tokenizer_config.json": JSON.stringify(config) }, (tok) => {
    assert.equal(tok.isByteLevel, false);
    const ids = tok.encode("a😀b hello");
    const stream = createDecodeStream(tok);
    const chunks = ids.map((id) => stream.push(id));
    assert.deepEqual(chunks.slice(0, 5), ["a", "", "", "😀", "b"]);
    assert.equal(chunks.join("") + stream.flush(), tok.decode(ids));
  });
});

Deno.test("the fixture tokenizer encodes like the independent Python BPE, and decodes back", async () => {
  const dir = fileURLToPath(new URL("../../../tests/fixtures/gpt2_tiny", import.meta.url));
  const tokenizer = await loadTokenizer(dir);
  const { cases, eos_token_id } = JSON.parse(await Deno.readTextFile(join(dir, "..", "tokenizer_cases.json"))) as {
    cases: { text: string; ids: number[] }[];
    eos_token_id: number;
  };
  assert.equal(tokenizer.eosTokenId, eos_token_id);
  for (const c of cases) {
    assert.deepEqual(tokenizer.encode(c.text), c.ids, JSON.stringify(c.text));
    assert.equal(tokenizer.decode(c.ids), c.text);
  }
});

/** BASE with more special tokens after <|endoftext|>, numbered from ENDOFTEXT_ID + 1. */
function withSpecials(tokens: string[], config: Record<string, unknown>): Record<string, string> {
  const json = tokenizerJson();
  const added = json.added_tokens as Record<string, unknown>[];
  tokens.forEach((content, i) => added.push({ ...added[0], id: ENDOFTEXT_ID + 1 + i, content, normalized: false }));
  return { "tokenizer.json": JSON.stringify(json), "tokenizer_config.json": JSON.stringify(config) };
}

const CHATML = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}" +
  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
const LLAMA3 = "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n" +
  "{{ m['content'] | trim }}<|eot_id|>{% endfor %}" +
  "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";
const LLAMA2 =
  "{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + m['content'] + ' [/INST]' }}" +
  "{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}";

Deno.test("endOfTurnId: the special token a template writes right after an assistant's answer", async () => {
  const cases: [string, string[], Record<string, unknown>, string | undefined][] = [
    ["ChatML (Qwen2.5 base: eos is not the end-of-turn)", ["<|im_start|>", "<|im_end|>"], {
      eos_token: "<|endoftext|>",
      chat_template: CHATML,
    }, "<|im_end|>"],
    ["Llama 3", ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], {
      bos_token: "<|begin_of_text|>",
      eos_token: "<|endoftext|>",
      chat_template: LLAMA3,
    }, "<|eot_id|>"],
    ["Llama 2 (a space before eos)", ["<s>", "</s>"], {
      bos_token: "<s>",
      eos_token: "</s>",
      chat_template: LLAMA2,
    }, "</s>"],
    ["eos after every turn", [], { eos_token: "<|endoftext|>", chat_template: TEMPLATE }, "<|endoftext|>"],
    ["plain text after the answer", [], {
      chat_template: "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}",
    }, undefined],
    [
      "nothing after the answer",
      [],
      { chat_template: "{% for m in messages %}{{ m.content }}{% endfor %}" },
      undefined,
    ],
    ["a template that refuses the probe", [], {
      chat_template: "{% if messages | length > 1 %}{{ raise_exception('one message only') }}{% endif %}x",
    }, undefined],
    ["no template", [], {}, undefined],
  ];
  for (const [name, specials, config, end] of cases) {
    await withTokenizer(withSpecials(specials, config), (tok) => {
      assert.equal(tok.endOfTurnId, end === undefined ? undefined : tok.tokenToId(end), name);
      assert.ok(tok.stopTokenIds.has(tok.eosTokenId), `${name}: eos always ends generation`);
      assert.equal(tok.stopTokenIds.size, end === undefined || tok.endOfTurnId === tok.eosTokenId ? 1 : 2, name);
    });
  }
  // The probe swallows the template's error; using the template still reports it.
  await withTokenizer(withSpecials([], cases[6]![2]), (tok) => {
    assert.throws(
      () => tok.applyChatTemplate([{ role: "user", content: "a" }, { role: "user", content: "b" }]),
      /one message only/,
    );
  });
});

Deno.test("stopTokenIds: eos, the stopTokenIds option and generation_config.json's eos_token_id", async () => {
  const files = withSpecials(["<|im_start|>", "<|im_end|>"], { eos_token: "<|endoftext|>", chat_template: CHATML });
  const imEnd = ENDOFTEXT_ID + 2;
  await withTokenizer(
    { ...files, "generation_config.json": JSON.stringify({ eos_token_id: [imEnd, 7], top_p: 0.8 }) },
    (tok) => {
      assert.deepEqual([...tok.stopTokenIds].sort((a, b) => a - b), [7, 9, ENDOFTEXT_ID, imEnd]);
    },
    { stopTokenIds: [9] },
  );
  await withTokenizer({ ...files, "generation_config.json": JSON.stringify({ eos_token_id: 5 }) }, (tok) => {
    assert.deepEqual([...tok.stopTokenIds].sort((a, b) => a - b), [5, ENDOFTEXT_ID, imEnd]);
  });
  await withTokenizer({ ...files, "generation_config.json": JSON.stringify({ do_sample: true }) }, (tok) => {
    assert.deepEqual([...tok.stopTokenIds].sort((a, b) => a - b), [ENDOFTEXT_ID, imEnd]);
  });
  await assertLoadFails(
    { ...files, "generation_config.json": JSON.stringify({ eos_token_id: "<|im_end|>" }) },
    /^Cannot load generation config from '.*generation_config\.json': 'eos_token_id': /,
  );
  await assertLoadFails(
    { ...files, "generation_config.json": "{" },
    /^Cannot load generation config from '.*generation_config\.json': the file is not valid JSON/,
  );
});

Deno.test("the chat fixtures: <|im_end|> ends a turn, generation_config.json adds its eos list", async () => {
  for (const name of ["llama_tiny", "qwen2_tiny", "llama_tiny_llama3"]) {
    const tok = await loadTokenizer(fileURLToPath(new URL(`../../../tests/fixtures/${name}`, import.meta.url)));
    assert.equal(tok.eosTokenId, tok.tokenToId("<|endoftext|>"), name);
    assert.equal(tok.endOfTurnId, tok.tokenToId("<|im_end|>"), name);
    assert.deepEqual([...tok.stopTokenIds].sort((a, b) => a - b), [316, 318], name);
  }
});
