import assert from "node:assert/strict";
import { join } from "node:path";
import { loadOrCreateKeys } from "./_keys.ts";
import { runServe } from "./serve.ts";

const GOOD = "a-key-of-16-char";

Deno.test("start: a key shorter than 16 characters is refused, naming where it came from", async () => {
  const dataDir = await Deno.makeTempDir();
  try {
    const options = { envName: "DPO_API_KEYS", dataDir, file: "api-key", prefix: "dpo-" };
    await assert.rejects(
      loadOrCreateKeys({ ...options, env: `${GOOD},fifteen-chars-k` }),
      /Cannot use DPO_API_KEYS as every key must have at least 16 characters: one has 15/,
    );
    assert.deepEqual((await loadOrCreateKeys({ ...options, env: ` ${GOOD} ` })).keys, [GOOD]);
    await Deno.writeTextFile(join(dataDir, "api-key"), "short-key\n");
    await assert.rejects(
      loadOrCreateKeys({ ...options, env: undefined }),
      /Cannot use the key in '.*api-key' as every key must have at least 16 characters: one has 9/,
    );
    // A key made here is long enough.
    const made = await loadOrCreateKeys({ ...options, env: undefined, file: "new-key" });
    assert.ok(made.created && made.keys[0]!.length >= 16);
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("serve: --api-key, DPO_API_KEYS and DPO_LABEL_KEYS refuse keys shorter than 16 characters", async () => {
  const saved = ["DPO_API_KEYS", "DPO_LABEL_KEYS"].map((name) => [name, Deno.env.get(name)] as const);
  const restore = () => {
    for (const [name, value] of saved) value === undefined ? Deno.env.delete(name) : Deno.env.set(name, value);
  };
  try {
    Deno.env.delete("DPO_API_KEYS");
    Deno.env.delete("DPO_LABEL_KEYS");
    await assert.rejects(runServe(["--api-key", "short"]), /--api-key\.0: every key must have at least 16 characters/);
    Deno.env.set("DPO_API_KEYS", "short");
    await assert.rejects(runServe([]), /Cannot use DPO_API_KEYS as every key must have at least 16 characters/);
    Deno.env.set("DPO_API_KEYS", GOOD);
    Deno.env.set("DPO_LABEL_KEYS", `${GOOD},label`);
    await assert.rejects(runServe([]), /Cannot use DPO_LABEL_KEYS as every key must have at least 16 characters/);
  } finally {
    restore();
  }
});
