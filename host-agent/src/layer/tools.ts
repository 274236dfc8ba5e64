/**
 * The few things Node cannot do itself (mknod, xattrs, nanosecond times) are
 * done by system tools, fed through stdin with argument arrays only — never a
 * shell — so no archive-controlled byte is ever parsed as a command. A tool
 * that fails makes the image fail with STORAGE_FAILED and the tool's words.
 */
import { ImageError } from '../errors.js';
import { CommandError, run, runSync } from '../sys/exec.js';

function asImageError(err: unknown, purpose: string): unknown {
  if (!(err instanceof CommandError)) return err;
  return new ImageError(
    'STORAGE_FAILED',
    `could not ${purpose}: ${err.stderr.trim() || err.message}`,
    undefined,
    {
      cause: err,
    },
  );
}

/** Runs `file args` with `input` on stdin; rejects with TOOL_MISSING, the abort reason, or STORAGE_FAILED. */
export async function runTool(
  file: string,
  args: readonly string[],
  input: Buffer,
  purpose: string,
  signal?: AbortSignal,
): Promise<void> {
  try {
    await run(file, args, { input, signal, timeoutMs: 600_000 });
  } catch (err) {
    throw asImageError(err, purpose);
  }
}

/** The same, blocking: for the rare flush that must happen inside the synchronous entry handler. */
export function runToolSync(
  file: string,
  args: readonly string[],
  input: Buffer,
  purpose: string,
): void {
  try {
    runSync(file, args, { input });
  } catch (err) {
    throw asImageError(err, purpose);
  }
}
