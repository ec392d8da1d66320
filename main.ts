/** Entry point: parses the command line and runs one command. Wiring only. */
import { ConfigError, UsageError } from "./src/cli/common.ts";
import type { Options } from "./src/cli/_options.ts";
// Each command's module is imported only when it runs: a command that loads no model (a feedback-only
// server, versions) never loads TF.js.
// `options`: the command's flags, for the generated configuration reference (`start` has its settings table).
type Command = { run: (args: string[]) => Promise<void>; usage: string; options?: Options };
export const COMMANDS: Record<string, { load: () => Promise<Command>; summary: string }> = {
  start: {
    load: async () => {
      const m = await import("./src/cli/start.ts");
      return { run: m.runStart, usage: m.START_USAGE };
    },
    summary: "the whole online loop in one process, on the shipped tiny model",
  },
  logprobs: {
    load: async () => {
      const m = await import("./src/cli/logprobs.ts");
      return { run: m.runLogprobs, usage: m.LOGPROBS_USAGE, options: m.OPTIONS };
    },
    summary: "score completions: one JSON line per input",
  },
  generate: {
    load: async () => {
      const m = await import("./src/cli/generate.ts");
      return { run: m.runGenerate, usage: m.GENERATE_USAGE, options: m.OPTIONS };
    },
    summary: "sample continuations of prompts",
  },
  train: {
    load: async () => {
      const m = await import("./src/cli/train.ts");
      return { run: m.runTrain, usage: m.TRAIN_USAGE, options: m.OPTIONS };
    },
    summary: "offline DPO on a preference dataset",
  },
  serve: {
    load: async () => {
      const m = await import("./src/cli/serve.ts");
      return { run: m.runServe, usage: m.SERVE_USAGE, options: m.OPTIONS };
    },
    summary: "the API server on the shared KV (role serve)",
  },
  judge: {
    load: async () => {
      const m = await import("./src/cli/judge.ts");
      return { run: m.runJudgeCommand, usage: m.JUDGE_COMMAND_USAGE, options: m.OPTIONS };
    },
    summary: "judge pairs awaiting judgment (role judge)",
  },
  worker: {
    load: async () => {
      const m = await import("./src/cli/worker.ts");
      return { run: m.runWorker, usage: m.WORKER_USAGE, options: m.OPTIONS };
    },
    summary: "train online and publish policy versions (role train)",
  },
  versions: {
    load: async () => {
      const m = await import("./src/cli/versions.ts");
      return { run: m.runVersions, usage: m.VERSIONS_USAGE, options: m.OPTIONS };
    },
    summary: "list, publish or roll back policy versions",
  },
  merge: {
    load: async () => {
      const m = await import("./src/cli/merge.ts");
      return { run: m.runMerge, usage: m.MERGE_USAGE, options: m.OPTIONS };
    },
    summary: "fold a LoRA adapter into its base model",
  },
};

const USAGE = `Usage: deno task cli <command> [options]   (deno task start runs 'start')

Commands:
${Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`).join("\n")}

Run 'deno task cli <command> --help' for a command's options.`;

async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "help" || name === "--help" || name === "-h") {
    console.log(USAGE);
    return name === undefined ? 2 : 0;
  }
  const entry = COMMANDS[name];
  if (!entry) {
    console.error(`error: unknown command '${name}'\n\n${USAGE}`);
    return 2;
  }
  const command = await entry.load();
  try {
    await command.run(rest);
    return 0;
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(`error: ${err.message}\n\nRun 'deno task cli ${name} --help' for the settings.`);
      return 2;
    }
    if (err instanceof UsageError) {
      console.error(`error: ${err.message}\n\n${command.usage}`);
      return 2;
    }
    console.error(`error: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
