/** File helpers shared by the checkpoint writer and the model downloader. */

/**
 * Writes a file under a temporary name, flushes it to disk and renames it into place, so that a
 * crash never leaves a half-written file under its final name.
 */
export async function writeAtomic(path: string, bytes: Uint8Array): Promise<void> {
  const tmp = `${path}.tmp-${crypto.randomUUID()}`;
  try {
    await Deno.writeFile(tmp, bytes, { createNew: true });
    using file = await Deno.open(tmp, { read: true });
    await file.sync(); // the bytes are on disk before the name points at them
    await Deno.rename(tmp, path);
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`Cannot write '${path}': ${(err as Error).message}`);
  }
}

/** Whether `path` is an existing regular file (other errors than "not found" propagate). */
export async function fileExists(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}
