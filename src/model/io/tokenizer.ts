/** The text tokenizer: `tokenizer.json` through `@huggingface/tokenizers`, chat templates through `@huggingface/jinja`. */
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { Template } from "@huggingface/jinja";
import { join } from "node:path";
import { z } from "zod";

import type { ChatMessage } from "./messages.ts";

export { type ChatMessage, MessageSchema } from "./messages.ts";

/** Options of `loadTokenizer`. */
export interface LoadTokenizerOptions {
  /** End-of-sequence id to use instead of the one named in `tokenizer_config.json`. */
  eosTokenId?: number;
  /** More ids that end generation, such as every id of config.json's `eos_token_id` list (Llama 3). */
  stopTokenIds?: number[];
}

/** The files a tokenizer is built from, already read and parsed. */
export interface TokenizerSources {
  /** Parsed `tokenizer.json`. */
  tokenizerJson: unknown;
  /** Parsed `tokenizer_config.json`, if the model has one. */
  tokenizerConfig?: unknown;
  /** Contents of `chat_template.jinja`, which newer transformers saves instead of the config field. */
  chatTemplateFile?: string;
  /** Where `tokenizerJson` came from, for error messages. */
  origin: string;
  /** Where `tokenizerConfig` came from, for error messages; defaults to `origin`. */
  configOrigin?: string;
}

/** `tokenizer.json`: only what this module relies on is checked; the library reads the rest. */
const TokenizerJsonSchema = z.looseObject({
  model: z.looseObject({}),
  normalizer: z.unknown().default(null),
  pre_tokenizer: z.unknown().default(null),
  post_processor: z.unknown().default(null),
  decoder: z.unknown().default(null),
  added_tokens: z.array(z.looseObject({
    id: z.number().int().nonnegative(),
    content: z.string(),
    special: z.boolean().optional(),
  })).default([]),
});

/** A special token as `tokenizer_config.json` writes it: a string or a serialized `AddedToken`. */
const SpecialTokenSchema = z.union([z.string(), z.looseObject({ content: z.string() })]).nullish()
  .transform((t) => (t == null ? undefined : typeof t === "string" ? t : t.content));

/** `tokenizer_config.json`: the fields this module uses; others pass through to the library. */
const TokenizerConfigSchema = z.looseObject({
  bos_token: SpecialTokenSchema,
  eos_token: SpecialTokenSchema,
  pad_token: SpecialTokenSchema,
  unk_token: SpecialTokenSchema,
  sep_token: SpecialTokenSchema,
  cls_token: SpecialTokenSchema,
  mask_token: SpecialTokenSchema,
  additional_special_tokens: z.array(SpecialTokenSchema).optional()
    .transform((ts) => ts?.filter((t): t is string => t !== undefined)),
  chat_template: z.union([
    z.string(),
    z.array(z.object({ name: z.string(), template: z.string() })),
  ]).nullish(),
  model_max_length: z.number().nullish().describe("Very large values mean 'no limit' in transformers"),
  clean_up_tokenization_spaces: z.boolean().nullish(),
});

type TokenizerConfig = z.infer<typeof TokenizerConfigSchema>;

/** `generation_config.json`: only the ids that end generation are read (Qwen2.5-Instruct lists two). */
const GenerationConfigSchema = z.looseObject({
  eos_token_id: z.union([z.number().int().nonnegative(), z.array(z.number().int().nonnegative())]).nullish(),
});

/** Stands in for an assistant's answer when finding the token that a chat template ends a turn with. */
const TURN_PROBE = "TURNPROBE7f3a";

/** The id-level view of a Hugging Face tokenizer that the rest of the project uses. */
export class Tokenizer {
  /** End-of-sequence id; generation stops on it, plain-text completions end with it, padding uses it. */
  readonly eosTokenId: number;
  /**
   * The token the chat template closes an assistant turn with (`<|im_end|>`, `<|eot_id|>`), found by
   * rendering a probe answer; undefined without a template or when nothing special follows the answer.
   * A chat answer ends with it: generation stops on it and training scores it as the answer's last token.
   */
  readonly endOfTurnId?: number;
  /** Every id that ends generation: eos, the ids the model's configs list as eos, and the end-of-turn token. */
  readonly stopTokenIds: ReadonlySet<number>;
  /** Beginning-of-sequence id, if the model names one. */
  readonly bosTokenId?: number;
  /** Padding id, if the model names one. */
  readonly padTokenId?: number;
  /** Max token id + 1 over the model vocabulary and the added tokens. */
  readonly vocabSize: number;
  /** The Jinja chat template, if the model has one. */
  readonly chatTemplate?: string;
  /** `model_max_length` from `tokenizer_config.json`, if given. */
  readonly modelMaxLength?: number;
  /** Whether the incremental decoder can work on raw bytes (ByteLevel decoder, no text clean-up). */
  readonly isByteLevel: boolean;

  #inner: HfTokenizer;
  #config: TokenizerConfig;
  #template?: Template;
  #specialIds: Set<number>;
  #addedIds: Set<number>;
  #origin: string;

  /** Use `loadTokenizer` or `createTokenizer`; this constructor trusts its validated inputs. */
  constructor(init: {
    inner: HfTokenizer;
    config: TokenizerConfig;
    eosTokenId: number;
    stopTokenIds: number[];
    chatTemplate?: string;
    isByteLevel: boolean;
    specialIds: Set<number>;
    addedIds: Set<number>;
    origin: string;
  }) {
    this.#inner = init.inner;
    this.#config = init.config;
    this.#specialIds = init.specialIds;
    this.#addedIds = init.addedIds;
    this.#origin = init.origin;
    this.eosTokenId = init.eosTokenId;
    this.bosTokenId = init.config.bos_token === undefined ? undefined : this.tokenToId(init.config.bos_token);
    this.padTokenId = init.config.pad_token === undefined ? undefined : this.tokenToId(init.config.pad_token);
    this.chatTemplate = init.chatTemplate;
    this.modelMaxLength = init.config.model_max_length ?? undefined;
    this.isByteLevel = init.isByteLevel;
    let maxId = -1;
    for (const id of init.inner.get_vocab(true).values()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;
    this.endOfTurnId = this.#findEndOfTurn();
    const stops = [this.eosTokenId, ...init.stopTokenIds];
    this.stopTokenIds = new Set(this.endOfTurnId === undefined ? stops : [...stops, this.endOfTurnId]);
  }

  /** The special or added token that follows an assistant's answer in the rendered template, if any. */
  #findEndOfTurn(): number | undefined {
    if (this.chatTemplate === undefined) return undefined;
    let text: string;
    try {
      text = this.applyChatTemplate([{ role: "user", content: "Hi" }, { role: "assistant", content: TURN_PROBE }]);
    } catch {
      // A template that cannot render this conversation says nothing about its turns; using it reports why.
      return undefined;
    }
    const at = text.lastIndexOf(TURN_PROBE);
    if (at < 0) return undefined;
    // Llama 2's template writes a space before its `</s>`.
    const [next] = this.encode(text.slice(at + TURN_PROBE.length).trimStart());
    return next !== undefined && (this.isAddedId(next) || this.isSpecialId(next)) ? next : undefined;
  }

  /** Token ids of `text`, without BOS/EOS or any post-processor template (callers append EOS themselves). */
  encode(text: string): number[] {
    const { ids, tokens } = this.#inner.encode(text, { add_special_tokens: false });
    const bad = ids.findIndex((id) => id === undefined);
    if (bad >= 0) {
      throw new Error(
        `Cannot encode text with tokenizer '${this.#origin}' as token ${JSON.stringify(tokens[bad])} ` +
          "is not in the vocabulary and the model has no unk_token",
      );
    }
    return ids;
  }

  /** Text of `ids`; with `skipSpecialTokens`, special tokens such as `<|endoftext|>` are dropped. */
  decode(ids: number[], options: { skipSpecialTokens?: boolean } = {}): string {
    // The library rejects an empty list.
    if (ids.length === 0) return "";
    return this.#inner.decode(ids, { skip_special_tokens: options.skipSpecialTokens ?? false });
  }

  /** The id of a token string (special tokens included), or undefined if it is not in the vocabulary. */
  tokenToId(token: string): number | undefined {
    return this.#inner.token_to_id(token);
  }

  /** The token string of an id, or undefined if no token has that id. */
  idToToken(id: number): string | undefined {
    return this.#inner.id_to_token(id);
  }

  /** Whether `id` is a special token (skipped by `skipSpecialTokens`). */
  isSpecialId(id: number): boolean {
    return this.#specialIds.has(id);
  }

  /** Whether `id` is an added token (special or not); byte-level decoders emit these verbatim. */
  isAddedId(id: number): boolean {
    return this.#addedIds.has(id);
  }

  /** Renders `messages` with the model's chat template, with the variables transformers passes. */
  applyChatTemplate(messages: ChatMessage[], options: { addGenerationPrompt?: boolean } = {}): string {
    if (this.chatTemplate === undefined) {
      throw new Error(
        `Cannot apply a chat template as tokenizer '${this.#origin}' has none ` +
          "(no 'chat_template' in tokenizer_config.json and no chat_template.jinja): format the prompt as plain text",
      );
    }
    if (this.#template === undefined) {
      try {
        this.#template = new Template(this.chatTemplate);
      } catch (err) {
        throw new Error(
          `Cannot parse the chat template of tokenizer '${this.#origin}': ${(err as Error).message}`,
        );
      }
    }
    const c = this.#config;
    // transformers renders with `messages`, `tools`, `documents`, `add_generation_prompt` and its
    // special_tokens_map (only the tokens that are set); `tools`/`documents` are None there, so
    // `tools is none` must hold here too. Its `raise_exception` and `strftime_now` globals are
    // predefined by @huggingface/jinja (which refuses to redefine them): `raise_exception(msg)`
    // throws an Error whose message is `msg`, reported below like any other rendering error.
    const specialTokens = Object.fromEntries(
      (["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"] as const)
        .filter((k) => c[k] !== undefined).map((k) => [k, c[k]]),
    );
    try {
      return this.#template.render({
        messages,
        tools: null,
        documents: null,
        add_generation_prompt: options.addGenerationPrompt ?? false,
        ...specialTokens,
        ...(c.additional_special_tokens ? { additional_special_tokens: c.additional_special_tokens } : {}),
      });
    } catch (err) {
      throw new Error(
        `Cannot apply the chat template of tokenizer '${this.#origin}' to ${messages.length} message(s): ` +
          (err as Error).message,
      );
    }
  }
}

/** Builds a `Tokenizer` from already-parsed sources; validates them and names `origin` in errors. */
export function createTokenizer(sources: TokenizerSources, options: LoadTokenizerOptions = {}): Tokenizer {
  const { origin } = sources;
  const json = TokenizerJsonSchema.safeParse(sources.tokenizerJson);
  if (!json.success) {
    throw new Error(`Cannot load tokenizer from '${origin}': ${describeIssues(json.error)}`);
  }
  const cfg = TokenizerConfigSchema.safeParse(sources.tokenizerConfig ?? {});
  if (!cfg.success) {
    throw new Error(
      `Cannot load tokenizer config from '${sources.configOrigin ?? origin}': ${describeIssues(cfg.error)}`,
    );
  }
  const config = cfg.data;

  let inner: HfTokenizer;
  try {
    // transformers stopped cleaning up spaces by default (it breaks round trips); the library still does.
    inner = new HfTokenizer(json.data, {
      ...config,
      clean_up_tokenization_spaces: config.clean_up_tokenization_spaces ?? false,
    });
  } catch (err) {
    throw new Error(
      `Cannot load tokenizer from '${origin}': the tokenizers library rejected it (${(err as Error).message})`,
    );
  }

  const eosTokenId = resolveEosId(inner, config, options, origin);
  const chatTemplate = sources.chatTemplateFile ?? pickChatTemplate(config.chat_template, origin);
  const decoderType = (json.data.decoder as { type?: unknown } | null)?.type;
  const specialIds = new Set(json.data.added_tokens.filter((t) => t.special).map((t) => t.id));
  for (const t of config.additional_special_tokens ?? []) {
    const id = inner.token_to_id(t);
    if (id !== undefined) specialIds.add(id);
  }
  return new Tokenizer({
    inner,
    config,
    eosTokenId,
    stopTokenIds: options.stopTokenIds ?? [],
    chatTemplate,
    isByteLevel: decoderType === "ByteLevel" && !(config.clean_up_tokenization_spaces ?? false),
    specialIds,
    addedIds: new Set(json.data.added_tokens.map((t) => t.id)),
    origin,
  });
}

/**
 * Reads `tokenizer.json` (required), `tokenizer_config.json` and `chat_template.jinja` (optional) from `dir`,
 * and the ids that end generation from `generation_config.json` (optional).
 */
export async function loadTokenizer(dir: string, options: LoadTokenizerOptions = {}): Promise<Tokenizer> {
  const jsonPath = join(dir, "tokenizer.json");
  const configPath = join(dir, "tokenizer_config.json");
  const templatePath = join(dir, "chat_template.jinja");
  const tokenizerJson = parseJsonFile(await readText(jsonPath, "tokenizer", true), jsonPath, "tokenizer");
  const configText = await readText(configPath, "tokenizer config", false);
  const tokenizerConfig = configText === undefined
    ? undefined
    : parseJsonFile(configText, configPath, "tokenizer config");
  if (tokenizerConfig !== undefined && (typeof tokenizerConfig !== "object" || tokenizerConfig === null)) {
    throw new Error(`Cannot load tokenizer config from '${configPath}': the file is not a JSON object`);
  }
  const chatTemplateFile = await readText(templatePath, "chat template", false);
  const generationEos = await readGenerationEos(join(dir, "generation_config.json"));
  return createTokenizer(
    { tokenizerJson, tokenizerConfig, chatTemplateFile, origin: jsonPath, configOrigin: configPath },
    { ...options, stopTokenIds: [...options.stopTokenIds ?? [], ...generationEos] },
  );
}

/** The `eos_token_id`s of a `generation_config.json`; none when the file does not exist. */
async function readGenerationEos(path: string): Promise<number[]> {
  const text = await readText(path, "generation config", false);
  if (text === undefined) return [];
  const parsed = GenerationConfigSchema.safeParse(parseJsonFile(text, path, "generation config"));
  if (!parsed.success) throw new Error(`Cannot load generation config from '${path}': ${describeIssues(parsed.error)}`);
  const eos = parsed.data.eos_token_id;
  return eos == null ? [] : Array.isArray(eos) ? eos : [eos];
}

/** Turns token ids into text one id at a time, never splitting a UTF-8 character. */
export interface DecodeStream {
  /** Adds one id and returns the text it completes ("" while a multi-byte character is still partial). */
  push(id: number): string;
  /** Returns what is still held back (a partial character decodes as U+FFFD) and resets the stream. */
  flush(): string;
}

/** Creates an incremental decoder for streaming generation; `decode(all ids)` equals the concatenated chunks. */
export function createDecodeStream(
  tokenizer: Tokenizer,
  options: { skipSpecialTokens?: boolean } = {},
): DecodeStream {
  return tokenizer.isByteLevel ? byteLevelStream(tokenizer, options) : windowStream(tokenizer, options);
}

/** Byte-level BPE tokens map to bytes directly, so a streaming TextDecoder holds back partial characters. */
function byteLevelStream(tokenizer: Tokenizer, options: { skipSpecialTokens?: boolean }): DecodeStream {
  const unicodeToByte = unicodeToBytes();
  let decoder = new TextDecoder("utf-8", { ignoreBOM: true });
  return {
    push(id) {
      const token = tokenizer.idToToken(id);
      if (token === undefined) {
        throw new Error(`Cannot decode token id ${id}: it is outside the vocabulary (size ${tokenizer.vocabSize})`);
      }
      if (tokenizer.isAddedId(id)) {
        // The ByteLevel decoder emits added tokens verbatim, ending any pending byte sequence.
        const pending = decoder.decode();
        return options.skipSpecialTokens && tokenizer.isSpecialId(id) ? pending : pending + token;
      }
      const bytes = new Uint8Array(token.length);
      let n = 0;
      for (const ch of token) {
        const b = unicodeToByte.get(ch);
        if (b === undefined) {
          throw new Error(`Cannot decode token id ${id}: ${JSON.stringify(token)} is not a byte-level token`);
        }
        bytes[n++] = b;
      }
      return decoder.decode(bytes.subarray(0, n), { stream: true });
    },
    flush() {
      const rest = decoder.decode();
      decoder = new TextDecoder("utf-8", { ignoreBOM: true });
      return rest;
    },
  };
}

/**
 * Any other decoder: decode a short window of ids and emit what grew, keeping the last emitted ids as
 * context (decoders such as Metaspace treat the first token specially); the algorithm of the Rust
 * tokenizers' `DecodeStream`.
 */
function windowStream(tokenizer: Tokenizer, options: { skipSpecialTokens?: boolean }): DecodeStream {
  // A UTF-8 character spans at most 4 bytes, so more pending ids than this means invalid bytes, not a partial char.
  const MAX_PENDING = 8;
  let ids: number[] = [];
  let readIndex = 0;
  let prefix = "";
  const emit = (text: string): string => {
    const chunk = text.startsWith(prefix) ? text.slice(prefix.length) : text;
    ids = ids.slice(readIndex);
    readIndex = ids.length;
    prefix = tokenizer.decode(ids, options);
    return chunk;
  };
  return {
    push(id) {
      ids.push(id);
      const text = tokenizer.decode(ids, options);
      const complete = text.length > prefix.length && !text.endsWith("\uFFFD");
      return complete || ids.length - readIndex > MAX_PENDING ? emit(text) : "";
    },
    flush() {
      const text = tokenizer.decode(ids, options);
      const chunk = text.startsWith(prefix) ? text.slice(prefix.length) : "";
      ids = [];
      readIndex = 0;
      prefix = "";
      return chunk;
    },
  };
}

/** GPT-2's byte-to-printable-character table, inverted: the characters of byte-level BPE tokens. */
function unicodeToBytes(): Map<string, number> {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const map = new Map<string, number>();
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const cp = printable.includes(b) ? b : 256 + extra++;
    map.set(String.fromCodePoint(cp), b);
  }
  return map;
}

function resolveEosId(
  inner: HfTokenizer,
  config: TokenizerConfig,
  options: LoadTokenizerOptions,
  origin: string,
): number {
  if (options.eosTokenId !== undefined) {
    if (inner.id_to_token(options.eosTokenId) === undefined) {
      throw new Error(`Cannot use eosTokenId ${options.eosTokenId} with tokenizer '${origin}': no token has that id`);
    }
    return options.eosTokenId;
  }
  if (config.eos_token !== undefined) {
    const id = inner.token_to_id(config.eos_token);
    if (id === undefined) {
      throw new Error(
        `Cannot load tokenizer from '${origin}' as its eos_token ${
          JSON.stringify(config.eos_token)
        } is not in the vocabulary`,
      );
    }
    return id;
  }
  const fallback = inner.token_to_id("<|endoftext|>");
  if (fallback === undefined) {
    throw new Error(
      `Cannot load tokenizer from '${origin}' as it names no end-of-sequence token: ` +
        "tokenizer_config.json has no 'eos_token' and the vocabulary has no '<|endoftext|>' (pass eosTokenId)",
    );
  }
  return fallback;
}

function pickChatTemplate(value: TokenizerConfig["chat_template"], origin: string): string | undefined {
  if (value == null || typeof value === "string") return value ?? undefined;
  const found = value.find((t) => t.name === "default");
  if (found === undefined) {
    throw new Error(
      `Cannot load tokenizer from '${origin}' as its chat templates (${value.map((t) => t.name).join(", ")}) ` +
        "include none named 'default'",
    );
  }
  return found.template;
}

async function readText(path: string, what: string, required: true): Promise<string>;
async function readText(path: string, what: string, required: false): Promise<string | undefined>;
async function readText(path: string, what: string, required: boolean): Promise<string | undefined> {
  try {
    return await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound && !required) return undefined;
    const problem = err instanceof Deno.errors.NotFound ? "the file does not exist" : (err as Error).message;
    throw new Error(`Cannot load ${what} from '${path}': ${problem}`);
  }
}

function parseJsonFile(text: string, path: string, what: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`Cannot load ${what} from '${path}': the file is not valid JSON (${(err as Error).message})`);
  }
}

function describeIssues(error: z.ZodError): string {
  return error.issues
    .map((i) => `${i.path.length ? `'${i.path.join(".")}'` : "the file"}: ${i.message}`)
    .join("; ");
}
