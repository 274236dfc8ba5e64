/**
 * The few things Node cannot do itself (mknod, xattrs, nanosecond times) are
 * done by system tools, fed through stdin with argument arrays only — never a
 * shell — so no archive-controlled byte is ever parsed as a command.
 */
import { execa, execaSync, ExecaError, ExecaSyncError } from 'execa';
import { EnvironmentError, ImageError } from '../errors.js';

const MAX_STDERR = 500;

function toolFailure(err: unknown, file: string, purpose: string): Error {
  if ((err instanceof ExecaError || err instanceof ExecaSyncError) && err.code === 'ENOENT') {
    return new EnvironmentError('TOOL_MISSING', `${file} is not installed (needed to ${purpose})`);
  }
  const stderr =
    err instanceof ExecaError || err instanceof ExecaSyncError
      ? String(err.stderr ?? '').trim()
      : '';
  const detail = stderr.length > 0 ? stderr.slice(0, MAX_STDERR) : String(err);
  return new ImageError('STORAGE_FAILED', `could not ${purpose}: ${detail}`, undefined, {
    cause: err,
  });
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
    await execa(file, args, {
      input,
      stdout: 'ignore',
      env: { LC_ALL: 'C' },
      ...(signal === undefined ? {} : { cancelSignal: signal }),
    });
  } catch (err) {
    signal?.throwIfAborted();
    throw toolFailure(err, file, purpose);
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
    execaSync(file, args, { input, stdout: 'ignore', env: { LC_ALL: 'C' } });
  } catch (err) {
    throw toolFailure(err, file, purpose);
  }
}
