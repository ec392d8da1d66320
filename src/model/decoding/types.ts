/** What generation takes and gives: its options, the tokenizer operations it needs, and its results. */
import type { SamplingParams } from "./sampling.ts";

/** One streamed token. */
export interface TokenEvent {
  /** Which prompt of the batch. */
  index: number;
  tokenId: number;
  /** Text that became final with this token (may be empty while a character or stop string is incomplete). */
  text: string;
}

/** Options for `generate`; sampling names follow Hugging Face's GenerationConfig. */
export interface GenerateOptions extends SamplingParams {
  /** Most tokens to generate per prompt. Default 64; the model's context may cut it shorter. */
  maxNewTokens?: number;
  /** Generation stops before the first occurrence of any of these strings. */
  stop?: string[];
  /** Stop when the model emits an end token: the codec's `eosTokenId` or one of its `stopTokenIds`. Default true. */
  stopAtEos?: boolean;
  /** Seed for sampling; the same seed, prompts and model give the same tokens. Default random. */
  seed?: number;
  /** Reuse keys and values of earlier tokens. Default true; false recomputes the whole prefix each step. */
  useCache?: boolean;
  /** Called for every generated token, in order. */
  onToken?: (event: TokenEvent) => void;
  /** Called with each step's next-token logits [B, V] (for tests and analysis). */
  onLogits?: (logits: Float32Array, step: number) => void;
  /** Stops generation early; what was generated so far is returned. */
  signal?: AbortSignal;
}

/** The tokenizer operations generation needs. */
export interface TextCodec {
  decode(ids: number[], options?: { skipSpecialTokens?: boolean }): string;
  eosTokenId: number;
  bosTokenId?: number;
  /** More ids that end generation, such as a chat template's end-of-turn (`<|im_end|>`); never part of the text. */
  stopTokenIds?: ReadonlySet<number>;
}

/** One finished sequence. */
export interface Generation {
  tokenIds: number[];
  /** Decoded text, cut before a stop string, without special tokens. */
  text: string;
  /** `stop`: an end token (eos, end-of-turn) or a stop string; `length`: the token budget or the context ran out. */
  finishReason: "stop" | "length";
}
