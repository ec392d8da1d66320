/** Entry point: parses the command line and runs one command. Wiring only. */
import { ConfigError, UsageError } from "./src/cli/common.ts";
import { GENERATE_USAGE, runGenerate } from "./src/cli/generate.ts";
import { LOGPROBS_USAGE, runLogprobs } from "./src/cli/logprobs.ts";
import { runStart, START_USAGE } from "./src/cli/start.ts";
import { runTrain, TRAIN_USAGE } from "./src/cli/train.ts";
import { runServe, SERVE_USAGE } from "./src/cli/serve.ts";
import { JUDGE_COMMAND_USAGE, runJudgeCommand } from "./src/cli/judge.ts";
import { runWorker, WORKER_USAGE } from "./src/cli/worker.ts";
import { runVersions, VERSIONS_USAGE } from "./src/cli/versions.ts";
import { MERGE_USAGE, runMerge } from "./src/cli/merge.ts";

const COMMANDS: Record<string, { run: (args: string[]) => Promise<void>; usage: string; summary: string }> = {
  start: {
    run: runStart,
    usage: START_USAGE,
    summary: "the whole online loop in one process, on the shipped tiny model",
  },
  logprobs: { run: runLogprobs, usage: LOGPROBS_USAGE, summary: "score completions: one JSON line per input" },
  generate: { run: runGenerate, usage: GENERATE_USAGE, summary: "sample continuations of prompts" },
  train: { run: runTrain, usage: TRAIN_USAGE, summary: "offline DPO on a preference dataset" },
  serve: { run: runServe, usage: SERVE_USAGE, summary: "the API server on the shared KV (role serve)" },
  judge: { run: runJudgeCommand, usage: JUDGE_COMMAND_USAGE, summary: "judge pairs awaiting judgment (role judge)" },
  worker: { run: runWorker, usage: WORKER_USAGE, summary: "train online and publish policy versions (role train)" },
  versions: { run: runVersions, usage: VERSIONS_USAGE, summary: "list published policy versions, or roll back" },
  merge: { run: runMerge, usage: MERGE_USAGE, summary: "fold a LoRA adapter into its base model" },
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
  const command = COMMANDS[name];
  if (!command) {
    console.error(`error: unknown command '${name}'\n\n${USAGE}`);
    return 2;
  }
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
