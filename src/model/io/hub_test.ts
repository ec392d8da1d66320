import assert from "node:assert/strict";
import { join } from "node:path";
import { parseModelSpec, resolveModel } from "./hub.ts";

/** One fake repository: revision → path → contents. */
type FakeRepo = { gated?: boolean; revisions: Record<string, Record<string, Uint8Array<ArrayBuffer>>> };

interface FakeHub {
  url: string;
  /** Requests seen, as "METHOD path [range]". */
  requests: string[];
  /** Authorization headers seen. */
  auth: (string | null)[];
  close(): Promise<void>;
}

const text = (s: string): Uint8Array<ArrayBuffer> => new TextEncoder().encode(s);
const json = (v: unknown) => text(JSON.stringify(v));

/**
 * Serves the Hub endpoint @huggingface/hub's downloadFile calls: GET /{owner}/{name}/resolve/{revision}/{path},
 * first with `Range: bytes=0-0` (size and ETag from the 206's Content-Range), then in full. Error answers
 * carry the Hub's `X-Error-Code` header, which the library reads to tell a missing file (null) from an error.
 */
function startFakeHub(repos: Record<string, FakeRepo>, opts: { truncate?: string } = {}): FakeHub {
  const requests: string[] = [];
  const auth: (string | null)[] = [];
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, (req) => {
    const url = new URL(req.url);
    const range = req.headers.get("Range");
    requests.push(`${req.method} ${url.pathname}${range ? ` [${range}]` : ""}`);
    auth.push(req.headers.get("Authorization"));
    const m = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    const error = (status: number, code: string, message: string) =>
      new Response(JSON.stringify({ error: message }), {
        status,
        headers: { "Content-Type": "application/json", "X-Error-Code": code },
      });
    if (!m) return error(404, "RepoNotFound", "Not found");
    const repo = repos[m[1]!];
    if (!repo) return error(401, "RepoNotFound", "Repository not found");
    if (repo.gated && req.headers.get("Authorization") !== "Bearer hf_good") {
      return error(401, "GatedRepo", `Access to model ${m[1]} is restricted. You must be authenticated.`);
    }
    const files = repo.revisions[decodeURIComponent(m[2]!)];
    if (!files) return error(404, "RevisionNotFound", "Invalid rev id: " + decodeURIComponent(m[2]!));
    const path = m[3]!;
    const body = files[path];
    if (!body) return error(404, "EntryNotFound", `${path} does not exist on "${m[2]}"`);
    const headers = { ETag: `"etag-${path}"`, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream" };
    const r = range && /^bytes=(\d+)-(\d+)$/.exec(range);
    if (r) {
      const start = Number(r[1]), end = Math.min(Number(r[2]), body.length - 1);
      return new Response(body.slice(start, end + 1), {
        status: 206,
        headers: { ...headers, "Content-Range": `bytes ${start}-${end}/${body.length}` },
      });
    }
    // Simulates a connection that ends early: fewer bytes than the file has.
    if (opts.truncate === path) return new Response(body.slice(0, body.length >> 1), { headers });
    return new Response(body, { headers });
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    requests,
    auth,
    close: () => server.shutdown(),
  };
}

const CONFIG = json({ model_type: "gpt2", vocab_size: 10 });
const TOKENIZER = json({ model: { type: "BPE", vocab: {}, merges: [] } });
const WEIGHTS = new Uint8Array(3000).map((_, i) => i % 251);

function singleFileRepo(): FakeRepo {
  return {
    revisions: {
      main: {
        "config.json": CONFIG,
        "tokenizer.json": TOKENIZER,
        "tokenizer_config.json": json({ eos_token: "<|endoftext|>" }),
        "model.safetensors": WEIGHTS,
      },
    },
  };
}

async function withCache(fn: (cacheDir: string) => Promise<void>): Promise<void> {
  const cacheDir = await Deno.makeTempDir({ prefix: "hub_test_" });
  try {
    await fn(cacheDir);
  } finally {
    await Deno.remove(cacheDir, { recursive: true });
  }
}

async function listDir(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

Deno.test("resolveModel downloads a single-file model once into the cache", async () => {
  const hub = startFakeHub({ "acme/tiny": singleFileRepo() });
  try {
    await withCache(async (cacheDir) => {
      const opts = { cacheDir, hubUrl: hub.url, accessToken: "" };
      const dir = await resolveModel("hf:acme/tiny", opts);
      assert.equal(dir, join(cacheDir, "acme--tiny", "main"));
      assert.deepEqual(await listDir(dir), [
        ".dpo-complete.json",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
      ]);
      assert.deepEqual(await Deno.readFile(join(dir, "model.safetensors")), WEIGHTS);
      assert.deepEqual(await Deno.readFile(join(dir, "config.json")), CONFIG);
      assert.ok(hub.auth.every((a) => a === null));

      const seen = hub.requests.length;
      assert.equal(await resolveModel("hf:acme/tiny@main", opts), dir);
      assert.equal(hub.requests.length, seen, "a complete cached model makes no request");
    });
  } finally {
    await hub.close();
  }
});

Deno.test("resolveModel fetches only what is missing from an incomplete cache", async () => {
  const hub = startFakeHub({ "acme/tiny": singleFileRepo() });
  try {
    await withCache(async (cacheDir) => {
      const opts = { cacheDir, hubUrl: hub.url, accessToken: "" };
      const dir = await resolveModel("hf:acme/tiny", opts);
      await Deno.remove(join(dir, "model.safetensors"));
      hub.requests.length = 0;
      await resolveModel("hf:acme/tiny", opts);
      const fetched = hub.requests.map((r) => r.split(" ")[1]!.split("/").pop());
      // The optional files the repo lacks are asked again; present files are not.
      assert.deepEqual(
        [...new Set(fetched)].sort(),
        [
          "adapter_config.json",
          "chat_template.jinja",
          "generation_config.json",
          "model.safetensors",
          "special_tokens_map.json",
        ],
      );
      assert.deepEqual(await Deno.readFile(join(dir, "model.safetensors")), WEIGHTS);
    });
  } finally {
    await hub.close();
  }
});

Deno.test("resolveModel downloads a PEFT adapter repository: its two files, nothing else", async () => {
  const adapterConfig = json({ peft_type: "LORA", r: 4, base_model_name_or_path: "acme/tiny" });
  const hub = startFakeHub({
    "acme/tiny-lora": {
      revisions: { main: { "adapter_config.json": adapterConfig, "adapter_model.safetensors": WEIGHTS } },
    },
    "acme/broken-lora": { revisions: { main: { "adapter_config.json": adapterConfig } } },
  });
  try {
    await withCache(async (cacheDir) => {
      const opts = { cacheDir, hubUrl: hub.url, accessToken: "" };
      const dir = await resolveModel("hf:acme/tiny-lora", opts);
      assert.deepEqual(await listDir(dir), [".dpo-complete.json", "adapter_config.json", "adapter_model.safetensors"]);
      assert.deepEqual(await Deno.readFile(join(dir, "adapter_model.safetensors")), WEIGHTS);
      await assert.rejects(
        resolveModel("hf:acme/broken-lora", opts),
        /has 'adapter_config\.json' but no 'adapter_model\.safetensors'/,
      );
    });
  } finally {
    await hub.close();
  }
});

Deno.test("resolveModel downloads a sharded model at a revision", async () => {
  const shard1 = new Uint8Array(100).fill(1);
  const shard2 = new Uint8Array(50).fill(2);
  const index = {
    metadata: { total_size: 150 },
    weight_map: {
      "h.0.w": "model-00001-of-00002.safetensors",
      "h.1.w": "model-00002-of-00002.safetensors",
      "h.1.b": "model-00002-of-00002.safetensors",
    },
  };
  const hub = startFakeHub({
    "acme/big": {
      revisions: {
        "refs/pr/1": {
          "config.json": CONFIG,
          "tokenizer.json": TOKENIZER,
          "generation_config.json": json({ eos_token_id: 0 }),
          "model.safetensors.index.json": json(index),
          "model-00001-of-00002.safetensors": shard1,
          "model-00002-of-00002.safetensors": shard2,
        },
      },
    },
  });
  try {
    await withCache(async (cacheDir) => {
      const opts = { cacheDir, hubUrl: hub.url, accessToken: "" };
      const dir = await resolveModel("hf:acme/big@refs/pr/1", opts);
      assert.equal(dir, join(cacheDir, "acme--big", "refs%2Fpr%2F1"));
      assert.deepEqual(await listDir(dir), [
        ".dpo-complete.json",
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
      ]);
      assert.deepEqual(await Deno.readFile(join(dir, "model-00002-of-00002.safetensors")), shard2);
      const shardGets = hub.requests.filter((r) => r.endsWith("/model-00002-of-00002.safetensors"));
      assert.equal(shardGets.length, 1, "a shard named twice is downloaded once");
      const seen = hub.requests.length;
      await resolveModel("hf:acme/big@refs/pr/1", opts);
      assert.equal(hub.requests.length, seen);
    });
  } finally {
    await hub.close();
  }
});

Deno.test("resolveModel explains 404, missing files, gated repos and tokens", async () => {
  const gated = { ...singleFileRepo(), gated: true };
  const noTokenizer = singleFileRepo();
  delete noTokenizer.revisions.main!["tokenizer.json"];
  const hub = startFakeHub({ "acme/tiny": singleFileRepo(), "acme/gated": gated, "acme/notok": noTokenizer });
  try {
    await withCache(async (cacheDir) => {
      const opts = { cacheDir, hubUrl: hub.url, accessToken: "" };
      await assert.rejects(
        resolveModel("hf:acme/tiny@nope", opts),
        (e: Error) => {
          assert.match(
            e.message,
            /^Cannot download model 'hf:acme\/tiny@nope': the repository 'acme\/tiny' or its revision 'nope' was not found on the Hub at http:\/\/127\.0\.0\.1:\d+ \(404: Invalid rev id: nope\)$/,
          );
          return true;
        },
      );
      await assert.rejects(
        resolveModel("hf:acme/missing", opts),
        /401 Unauthorized \(Repository not found\)\. The model may be gated or private \(or may not exist\): set HF_TOKEN/,
      );
      await assert.rejects(
        resolveModel("hf:acme/notok", opts),
        /^Error: Cannot download model 'hf:acme\/notok': the repository has no 'tokenizer.json' at revision 'main'$/,
      );
      await assert.rejects(resolveModel("hf:acme/gated", opts), /is restricted.*set HF_TOKEN/);
      await assert.rejects(
        resolveModel("hf:acme/gated", { ...opts, accessToken: "hf_bad" }),
        /HF_TOKEN was sent but not accepted/,
      );
      await assert.rejects(resolveModel("hf:acme/gated", { ...opts, accessToken: "abc" }), /must start with 'hf_'/);
      const dir = await resolveModel("hf:acme/gated", { ...opts, accessToken: "hf_good" });
      assert.deepEqual(await Deno.readFile(join(dir, "model.safetensors")), WEIGHTS);
      assert.equal(hub.auth.at(-1), "Bearer hf_good");
    });
  } finally {
    await hub.close();
  }
});

Deno.test("resolveModel leaves no partial file when a download ends early", async () => {
  const hub = startFakeHub({ "acme/tiny": singleFileRepo() }, { truncate: "model.safetensors" });
  try {
    await withCache(async (cacheDir) => {
      await assert.rejects(
        resolveModel("hf:acme/tiny", { cacheDir, hubUrl: hub.url, accessToken: "" }),
        /the download of 'model\.safetensors' stopped at 1500 of 3000 bytes/,
      );
      const names = await listDir(join(cacheDir, "acme--tiny", "main"));
      assert.deepEqual(names, ["config.json", "tokenizer.json", "tokenizer_config.json"]);
    });
  } finally {
    await hub.close();
  }
});

Deno.test("resolveModel reports an unreachable Hub", async () => {
  // A port that was just free and is now closed: connections are refused.
  const listener = Deno.listen({ port: 0, hostname: "127.0.0.1" });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  await withCache(async (cacheDir) => {
    await assert.rejects(
      resolveModel("hf:acme/tiny", { cacheDir, hubUrl: `http://127.0.0.1:${port}/`, accessToken: "" }),
      (e: Error) => {
        assert.match(
          e.message,
          new RegExp(
            `^Cannot download model 'hf:acme/tiny': the Hugging Face Hub at http://127\\.0\\.0\\.1:${port} is ` +
              `unreachable \\(.*[Cc]onnection refused.*\\)\\. Download it on a machine with network access and ` +
              "pass --model DIR\\.$",
          ),
        );
        return true;
      },
    );
  });
});

Deno.test("resolveModel reports a Hub that does not answer in time as unreachable", async () => {
  // Answers only once the test lets it, after the client has given up.
  let release = () => {};
  const gate = new Promise<void>((res) => (release = res));
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen: () => {} },
    () => gate.then(() => new Response(null, { status: 504 })),
  );
  try {
    await withCache(async (cacheDir) => {
      await assert.rejects(
        resolveModel("hf:acme/tiny", {
          cacheDir,
          hubUrl: `http://127.0.0.1:${server.addr.port}`,
          accessToken: "",
          timeoutMs: 100,
        }),
        /is unreachable \(no response within 0\.1 s\)/,
      );
    });
  } finally {
    release();
    await server.shutdown();
  }
});

Deno.test("model specs: hf: syntax is validated; local paths must be directories", async () => {
  assert.deepEqual(parseModelSpec("hf:openai-community/gpt2"), {
    kind: "hub",
    owner: "openai-community",
    name: "gpt2",
    revision: "main",
  });
  assert.deepEqual(parseModelSpec("hf:a/b.c@v1.0"), { kind: "hub", owner: "a", name: "b.c", revision: "v1.0" });
  for (const bad of ["hf:gpt2", "hf:a/b/c", "hf:a/b@", "hf:/b", "hf:a/../b", "hf:a/b@../x", "hf:a b/c"]) {
    assert.throws(() => parseModelSpec(bad), /must be written hf:OWNER\/NAME or hf:OWNER\/NAME@REVISION/, bad);
  }
  await withCache(async (dir) => {
    assert.equal(await resolveModel(dir), dir);
    await assert.rejects(resolveModel(join(dir, "nope")), /Cannot use model directory '.*nope': it does not exist$/);
    await Deno.writeTextFile(join(dir, "f"), "");
    await assert.rejects(resolveModel(join(dir, "f")), /it is a file, not a directory/);
  });
  await assert.rejects(resolveModel("no-such-owner/no-such-model"), /write hf:no-such-owner\/no-such-model\)/);
});
