/** The tasks by name. A new one is a module exporting a `Task` (see arithmetic.ts) and its line here. */
import { arithmeticTask } from "./arithmetic.ts";
import type { Task } from "./task.ts";

const TASKS: readonly Task[] = [arithmeticTask];

/** The task `start` runs when none is named. */
export const DEFAULT_TASK = arithmeticTask.name;

/** The names of the registered tasks. */
export const TASK_NAMES: readonly string[] = TASKS.map((t) => t.name);

/** The registered task of that name, or undefined (for `start --task`, a name or a prompt file). */
export function findTask(name: string): Task | undefined {
  return TASKS.find((t) => t.name === name);
}
