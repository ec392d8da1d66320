/** The decoding scheduler gives every request what `generate` gives it alone, in fewer forward calls. */
import assert from "node:assert/strict";
import { type LoadedModel, loadModel } from "../io/checkpoint.ts";
import type { CausalLM } from "../arch/causal_lm.ts";
import { assertNoLeak, fixturePath, useBackend } from "../_test_utils.ts";
import { generate, type GenerateOptions, type Generation, type TextCodec } from "./generate.ts";
import { DecodeScheduler } from "./scheduler.ts";

const TEXTS = ["Hi", "The cat sat on the", "Question: what is two plus", "Once upon a time there was a"];

async function withModel(fn: (m: LoadedModel, prompts: number[][]) => Promise<void>): Promise<void> {
  await useBackend("wasm");
  const loaded = await loadModel(fixturePath("gpt2_tiny"), { trainable: false });
  try {
    // Warm-up outside the leak checks: the backend keeps a few tensors of its own after its first use.
    await generate(loaded.model, loaded.tokenizer, [[1, 2]], { maxNewTokens: 2, seed: 0 });
    await fn(loaded, TEXTS.map((t) => loaded.tokenizer.encode(t)));
  } finally {
    loaded.model.dispose();
  }
}

/** What `generate` gives each request alone. */
function alone(m: LoadedModel, codec: TextCodec, requests: { prompts: number[][]; options: GenerateOptions }[]) {
  return Promise.all(requests.map((r) => generate(m.model, codec, r.prompts, r.options)));
}

const ids = (gs: Generation[]) => gs.map((g) => g.tokenIds);

Deno.test("scheduler: greedy requests arriving at different times equal generate alone, in fewer forward calls", async () => {
  await withModel(async (m, prompts) => {
    await assertNoLeak(async () => {
      const scheduler = new DecodeScheduler(m.model, m.tokenizer);
      const greedy = { temperature: 0, stopAtEos: false };
      const requests = [
        { prompts: [prompts[0]!], options: { ...greedy, maxNewTokens: 12 } },
        { prompts: [prompts[1]!, prompts[3]!], options: { ...greedy, maxNewTokens: 5 } },
        { prompts: [prompts[2]!], options: { ...greedy, maxNewTokens: 9 } },
        { prompts: [prompts[3]!, []], options: { ...greedy, maxNewTokens: 15 } },
      ];
      // The last two arrive while the first two are decoding: one after 3 steps, one after 4.
      const late: Promise<Generation[]>[] = [];
      const arrive = (at: number, r: typeof requests[number]) => (e: { index: number }) => {
        if (e.index === 0 && ++seen[at]! === at) late.push(scheduler.submit(r.prompts, r.options));
      };
      const seen: Record<number, number> = { 3: 0, 4: 0 };
      const early = [
        scheduler.submit(requests[0]!.prompts, { ...requests[0]!.options, onToken: arrive(3, requests[2]!) }),
        scheduler.submit(requests[1]!.prompts, { ...requests[1]!.options, onToken: arrive(4, requests[3]!) }),
      ];
      const got = await Promise.all(early);
      got.push(...await Promise.all(late));
      const want = await alone(m, m.tokenizer, requests);
      assert.deepEqual(got.map(ids), want.map(ids));
      assert.deepEqual(got.map((g) => g.map((x) => x.text)), want.map((g) => g.map((x) => x.text)));
      const stats = scheduler.stats;
      const rows = requests.reduce((a, r) => a + r.prompts.length * r.options.maxNewTokens, 0);
      assert.equal(stats.tokens, rows);
      // generate alone takes one forward call per new token.
      const separate = requests.reduce((a, r) => a + r.options.maxNewTokens, 0);
      assert.ok(stats.prefills + stats.steps < separate, `${stats.prefills} + ${stats.steps} calls vs ${separate}`);
      assert.ok(stats.rowSteps / stats.steps > 2, `mean rows per step ${stats.rowSteps / stats.steps}`);
      assert.equal(stats.prefills, 3, "the two first requests are prefilled together");
      assert.deepEqual([stats.running, stats.waiting, stats.finished], [0, 0, 4]);
      await scheduler.close();
    }, "scheduler");
  });
});

Deno.test("scheduler: seeded sampling beside greedy rows equals generate alone", async () => {
  await withModel(async (m, prompts) => {
    await assertNoLeak(async () => {
      const scheduler = new DecodeScheduler(m.model, m.tokenizer);
      const sampling = { temperature: 1.2, topK: 50, topP: 0.95, maxNewTokens: 10, stopAtEos: false };
      const requests = [
        { prompts: [prompts[1]!, prompts[1]!, prompts[1]!], options: { ...sampling, seed: 7 } },
        { prompts: [prompts[0]!], options: { temperature: 0, maxNewTokens: 8 } },
        { prompts: [prompts[2]!], options: { ...sampling, temperature: 0.7, seed: 8, maxNewTokens: 6 } },
      ];
      const got = await Promise.all(requests.map((r) => scheduler.submit(r.prompts, r.options)));
      assert.deepEqual(got.map(ids), (await alone(m, m.tokenizer, requests)).map(ids));
      assert.notDeepEqual(got[0]![0]!.tokenIds, got[0]![1]!.tokenIds, "rows of one request draw differently");
      await scheduler.close();
    }, "scheduler");
  });
});

Deno.test("n samples of one prompt prefill it once, in generate and in the scheduler, each row drawn as alone", async () => {
  await withModel(async (m, prompts) => {
    const [p, q] = [prompts[3]!, prompts[1]!];
    const options = { temperature: 1.2, maxNewTokens: 8, stopAtEos: false, seed: 11 };
    const batch = [p, q, p, p];
    // Row b draws from seed + b * 0x9e3779b1 (planDecode): a one-row request with that seed is row b alone.
    const want = await Promise.all(
      batch.map((prompt, b) =>
        generate(m.model, m.tokenizer, [prompt], { ...options, seed: options.seed + b * 0x9e3779b1 })
      ),
    );
    const rows: number[] = [];
    const forward = m.model.forward;
    m.model.forward = (input, withCache) => {
      rows.push(input.ids.shape[0]);
      return forward.call(m.model, input, withCache);
    };
    try {
      await assertNoLeak(async () => {
        const got = await generate(m.model, m.tokenizer, batch, options);
        assert.deepEqual(ids(got), want.map((g) => g[0]!.tokenIds));
        assert.deepEqual(rows.splice(0), [2, ...Array(options.maxNewTokens - 1).fill(4)], "the prefill runs 2 rows");
        const uncached = await generate(m.model, m.tokenizer, batch, { ...options, useCache: false });
        assert.deepEqual(ids(uncached), ids(got));
        assert.equal(rows.splice(0)[0], 2);
        const scheduler = new DecodeScheduler(m.model, m.tokenizer);
        assert.deepEqual(ids(await scheduler.submit(batch, options)), ids(got));
        await scheduler.close();
        assert.equal(rows[0], 2);
      }, "shared prefill");
    } finally {
      m.model.forward = forward;
    }
  });
});

Deno.test("scheduler: eos, a stop string and an abort end one request each without disturbing the others", async () => {
  await withModel(async (m, prompts) => {
    const greedy = { temperature: 0, maxNewTokens: 12 };
    const [free] = await generate(m.model, m.tokenizer, [prompts[3]!], { ...greedy, stopAtEos: false });
    // A codec whose eos is a token the last request emits (not first) after a few steps.
    const k = free!.tokenIds.findIndex((t, i) => i >= 2 && !free!.tokenIds.slice(0, i).includes(t));
    assert.ok(k >= 2, `an eos candidate in ${free!.tokenIds}`);
    const codec = { decode: m.tokenizer.decode.bind(m.tokenizer), eosTokenId: free!.tokenIds[k]! };
    const [sampled] = await generate(m.model, codec, [prompts[1]!], { maxNewTokens: 12, seed: 3, stopAtEos: false });
    const stop = sampled!.text.slice(3, 5);
    const abortAfter = (n: number) => {
      const controller = new AbortController();
      let count = 0;
      return { signal: controller.signal, onToken: () => ++count === n && controller.abort() };
    };
    await assertNoLeak(async () => {
      const scheduler = new DecodeScheduler(m.model, codec);
      let streamed = "";
      const requests = () => [
        { prompts: [prompts[0]!], options: { ...greedy } },
        { prompts: [prompts[1]!], options: { maxNewTokens: 12, seed: 3, stopAtEos: false, stop: [stop] } },
        { prompts: [prompts[2]!], options: { ...greedy, ...abortAfter(3) } },
        { prompts: [prompts[3]!], options: { ...greedy, onToken: (e: { text: string }) => streamed += e.text } },
      ];
      const got = await Promise.all(requests().map((r) => scheduler.submit(r.prompts, r.options)));
      const streamedText = streamed;
      const want = await alone(m, codec, requests());
      assert.deepEqual(got, want);
      assert.deepEqual(got[1]![0], {
        tokenIds: got[1]![0]!.tokenIds,
        text: sampled!.text.slice(0, sampled!.text.indexOf(stop)),
        finishReason: "stop",
      });
      assert.equal(got[2]![0]!.tokenIds.length, 3, "aborted after 3 tokens");
      assert.deepEqual(got[3]![0], { tokenIds: free!.tokenIds.slice(0, k), text: streamedText, finishReason: "stop" });
      await scheduler.close();
    }, "scheduler");
  });
});

Deno.test("scheduler: a bad request or a throwing callback fails alone; a closed scheduler refuses work", async () => {
  await withModel(async (m, prompts) => {
    await assertNoLeak(async () => {
      const scheduler = new DecodeScheduler(m.model, m.tokenizer, { maxBatchRows: 2 });
      const options = { temperature: 0, maxNewTokens: 6, stopAtEos: false };
      const tooLong = Array.from({ length: m.model.contextLength }, () => 5);
      const results = await Promise.allSettled([
        scheduler.submit([prompts[0]!], options),
        scheduler.submit([tooLong], options),
        scheduler.submit([prompts[1]!], { ...options, onToken: (e) => assert.ok(e.tokenId < 0, "thrown by onToken") }),
        // Three rows exceed maxBatchRows: the request still runs, alone.
        scheduler.submit([prompts[2]!, prompts[3]!, prompts[0]!], options),
        scheduler.submit([prompts[3]!], options),
      ]);
      assert.deepEqual(results.map((r) => r.status), ["fulfilled", "rejected", "rejected", "fulfilled", "fulfilled"]);
      assert.match(String((results[1] as PromiseRejectedResult).reason), /a prompt has 64 tokens.*64-token context/);
      const want = await alone(m, m.tokenizer, [
        { prompts: [prompts[0]!], options },
        { prompts: [prompts[2]!, prompts[3]!, prompts[0]!], options },
        { prompts: [prompts[3]!], options },
      ]);
      const fulfilled = results.flatMap((r) => r.status === "fulfilled" ? [r.value] : []);
      assert.deepEqual(fulfilled.map(ids), want.map(ids));
      assert.equal(scheduler.stats.finished, 4, "the too long prompt never entered");
      const running = scheduler.submit([prompts[1]!], options);
      const closed = scheduler.close();
      await assert.rejects(scheduler.submit([prompts[0]!], options), /scheduler is closed/);
      assert.deepEqual(ids(await running), ids(await generate(m.model, m.tokenizer, [prompts[1]!], options)));
      await closed;
    }, "scheduler");
  });
});

Deno.test("scheduler: a failing forward step fails the requests in it; later requests are served", async () => {
  await withModel(async (m, prompts) => {
    await assertNoLeak(async () => {
      let calls = 0;
      const flaky: CausalLM = Object.create(m.model);
      flaky.forward = (input, withCache) => {
        if (++calls === 3) throw new Error("device lost");
        return m.model.forward(input, withCache);
      };
      const scheduler = new DecodeScheduler(flaky, m.tokenizer);
      const options = { temperature: 0, maxNewTokens: 5, stopAtEos: false };
      const first = await Promise.allSettled([0, 1].map((i) => scheduler.submit([prompts[i]!], options)));
      assert.deepEqual(first.map((r) => r.status), ["rejected", "rejected"]);
      assert.match(String((first[0] as PromiseRejectedResult).reason), /device lost/);
      const [later] = await scheduler.submit([prompts[2]!], options);
      const [want] = await generate(m.model, m.tokenizer, [prompts[2]!], options);
      assert.deepEqual(later!.tokenIds, want!.tokenIds);
      await scheduler.close();
    }, "scheduler");
  });
});
