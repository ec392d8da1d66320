/** The load of a chaos run: clients posting pairs to sample and labeled preferences through the server. */
import { sleep } from "./_chaos_util.ts";

interface LoadOptions {
  rand: () => number;
  /** One per client. */
  apiKeys: string[];
  /** Makes the idempotency keys of this run unique. */
  runId: string;
  loadEnd: number;
  /** Pairs offered per second, all clients together. */
  rate: number;
  /** The server's URL, undefined while it is down. */
  url: () => string | undefined;
}

/** Clients posting pairs to sample and labeled preferences, each request with an idempotency key. */
export class Load {
  readonly accepted = new Map<string, { source: "sampled" | "imported"; keys: Set<string> }>();
  readonly requests = { sent: 0, retries: 0, dropped: 0, refused: 0 };
  readonly refusals: string[] = [];
  readonly #o: LoadOptions;

  constructor(o: LoadOptions) {
    this.#o = o;
  }

  async run(signal?: AbortSignal): Promise<void> {
    // One sampling client and three importing ones, each with its own key (the rate limit is per key).
    const rates = [0.25, 0.25, 0.25, 0.25].map((f) => f * this.#o.rate);
    await Promise.all(rates.map((rate, i) => this.#client(i, i === 0 ? "sampled" : "imported", rate, signal)));
  }

  async #client(index: number, kind: "sampled" | "imported", rate: number, signal?: AbortSignal): Promise<void> {
    const { rand, loadEnd } = this.#o;
    let due = Date.now();
    for (let seq = 0; Date.now() < loadEnd && !signal?.aborted; seq++) {
      const n = kind === "sampled" || rand() < 0.4 ? 1 : 2 + Math.floor(rand() * 5);
      const key = `chaos-${this.#o.runId}-${index}-${seq}`;
      const giveUpAt = Math.min(Date.now() + 30_000, loadEnd + 15_000);
      if (kind === "sampled") {
        const body = { prompt: this.#problem().prompt, max_new_tokens: 4 };
        await this.#post(index, kind, "/v1/pairs", body, key, giveUpAt, signal);
      } else {
        const items = this.#preferences(n);
        const body = n === 1 && rand() < 0.5 ? items[0] : items;
        await this.#post(index, kind, "/v1/preferences", body, key, giveUpAt, signal);
      }
      due = Math.max(due + (n / rate) * 1000, Date.now() - 1000); // no burst to catch up after an outage
      await sleep(Math.min(due, loadEnd) - Date.now(), signal);
    }
  }

  /** Offers `n` more labeled pairs in one request after the load (to complete the trainer's last batch). */
  async topUp(n: number, seq: number, signal?: AbortSignal): Promise<void> {
    const key = `chaos-${this.#o.runId}-topup-${seq}`;
    await this.#post(1, "imported", "/v1/preferences", this.#preferences(n), key, Date.now() + 30_000, signal);
  }

  #problem() {
    const x = Math.floor(this.#o.rand() * 100), y = Math.floor(this.#o.rand() * 100);
    return { prompt: `What is ${x}+${y}? Answer:`, answer: x + y };
  }

  #preferences(n: number) {
    return Array.from({ length: n }, () => {
      const p = this.#problem();
      return {
        prompt: p.prompt,
        chosen: ` ${p.answer}`,
        rejected: ` ${p.answer + 1 + Math.floor(this.#o.rand() * 9)}`,
      };
    });
  }

  async #post(
    index: number,
    kind: "sampled" | "imported",
    path: string,
    body: unknown,
    key: string,
    giveUpAt: number,
    signal?: AbortSignal,
  ): Promise<void> {
    const ids = await this.#send(path, body, key, this.#o.apiKeys[index]!, giveUpAt, signal);
    for (const id of ids ?? []) {
      const seen = this.accepted.get(id) ?? { source: kind, keys: new Set<string>() };
      seen.keys.add(key);
      this.accepted.set(id, seen);
    }
  }

  /** The ids a 2xx answer names; null when the request was dropped or refused. */
  async #send(path: string, body: unknown, key: string, apiKey: string, giveUpAt: number, signal?: AbortSignal) {
    this.requests.sent++;
    for (let attempt = 0;; attempt++) {
      const url = this.#o.url();
      if (url !== undefined) {
        try {
          const res = await fetch(url + path, {
            method: "POST",
            headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json", "idempotency-key": key },
            body: JSON.stringify(body),
            signal: AbortSignal.timeout(20_000),
          });
          const text = await res.text();
          if (res.ok) {
            const json = JSON.parse(text);
            return path === "/v1/pairs" ? [json.id as string] : (json.pairs as { id: string }[]).map((p) => p.id);
          }
          // 429 and 5xx are retried with the same key; any other answer is a refusal, reported.
          if (res.status !== 429 && res.status < 500) {
            this.requests.refused++;
            this.refusals.push(`${path} ${res.status} ${text.slice(0, 160)}`);
            return null;
          }
        } catch {
          // The server is down or was killed mid-request: retry with the same key.
        }
      }
      if (Date.now() > giveUpAt || signal?.aborted) {
        this.requests.dropped++;
        return null;
      }
      this.requests.retries++;
      await sleep(Math.min(2000, 100 * 2 ** attempt), signal);
    }
  }
}
