/**
 * Runs system tools (losetup, mount, mkfs, dmsetup...) with argument arrays
 * only — never a shell — and turns failures into errors that carry the
 * command and its stderr, so a 3 a.m. operator sees what the tool said.
 */

// Loaded on first use: listings and the already-done path never spawn anything.
let execaModule: Promise<typeof import('execa')> | undefined;
const loadExeca = (): Promise<typeof import('execa')> => (execaModule ??= import('execa'));

export class CommandError extends Error {
  constructor(
    readonly command: string,
    readonly exitCode: number | undefined,
    readonly stderr: string,
    options?: { cause?: unknown },
  ) {
    super(
      `${command} failed${exitCode === undefined ? '' : ` (exit ${exitCode})`}: ${stderr.trim() || 'no output'}`,
      options,
    );
    this.name = 'CommandError';
  }
}

export interface RunOptions {
  /** Bytes to feed on stdin. */
  input?: string | Buffer;
  timeoutMs?: number;
}

export async function run(
  file: string,
  args: readonly string[],
  opts: RunOptions = {},
): Promise<string> {
  const { execa, ExecaError } = await loadExeca();
  try {
    const result = await execa(file, args, {
      input: opts.input,
      timeout: opts.timeoutMs ?? 120_000,
      stripFinalNewline: true,
      env: { LC_ALL: 'C' },
    });
    return result.stdout;
  } catch (err) {
    if (err instanceof ExecaError) {
      const stderr = typeof err.stderr === 'string' ? err.stderr : '';
      const what = [file, ...args].join(' ');
      throw new CommandError(what, err.exitCode, stderr || err.shortMessage, { cause: err });
    }
    throw err;
  }
}

/** Whether an executable is on PATH (for doctor and readiness checks). */
export async function hasCommand(file: string): Promise<boolean> {
  const { execa, ExecaError } = await loadExeca();
  try {
    await execa('sh', ['-c', 'command -v "$1"', 'sh', file]);
    return true;
  } catch (err) {
    if (err instanceof ExecaError) return false;
    throw err;
  }
}
