/**
 * Runs system tools (losetup, mount, mkfs, mknod, setfattr...) with argument
 * arrays only — never a shell — and turns failures into errors that carry the
 * command and its stderr, so a 3 a.m. operator sees what the tool said.
 * Plain node:child_process: a process-wrapper library would cost a cold
 * thinrelay process more start-up time than all of these tools' runs.
 */
import { spawn, spawnSync } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { EnvironmentError } from '../errors.js';

const maxStderr = 2000;

export class CommandError extends Error {
  constructor(
    readonly command: string,
    readonly exitCode: number | null,
    readonly stderr: string,
    options?: { cause?: unknown },
  ) {
    const how = exitCode === null ? '' : ` (exit ${exitCode})`;
    super(`${command} failed${how}: ${stderr.trim() || 'no output'}`, options);
    this.name = 'CommandError';
  }
}

/**
 * A failed tool as the CLI reports it (cli/output.ts failureOf): the host's
 * fault (exit 3, TOOL_FAILED), never "the image failed". The failure
 * classifier already retries it as the host's.
 */
export function toolFailure(err: unknown): EnvironmentError | undefined {
  if (!(err instanceof CommandError)) return undefined;
  return new EnvironmentError(
    'TOOL_FAILED',
    err.message,
    "a system tool failed on this host, not because of the image: fix what it says (a too small THINRELAY_VOLUME_SIZE, the disk, the kernel's devices), then run it again",
    { cause: err },
  );
}

export interface RunOptions {
  /** Bytes to feed on stdin. */
  input?: string | Buffer;
  timeoutMs?: number;
  signal?: AbortSignal;
}

const toolEnv = (): NodeJS.ProcessEnv => ({ ...process.env, LC_ALL: 'C' });

function describe(file: string, args: readonly string[]): string {
  return [file, ...args].join(' ');
}

export function spawnFailure(err: unknown, file: string, args: readonly string[]): Error {
  if ((err as NodeJS.ErrnoException | null)?.code === 'ENOENT') {
    return new EnvironmentError(
      'TOOL_MISSING',
      `${file} is not installed`,
      `install the package that provides ${file}`,
    );
  }
  return new CommandError(describe(file, args), null, String(err), { cause: err });
}

/** Runs a tool to completion; resolves with its stdout (final newline stripped). */
export async function run(
  file: string,
  args: readonly string[],
  opts: RunOptions = {},
): Promise<string> {
  opts.signal?.throwIfAborted();
  const child = spawn(file, args, {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: toolEnv(),
    timeout: opts.timeoutMs ?? 120_000,
    signal: opts.signal,
  });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout.on('data', (c: Buffer) => out.push(c));
  child.stderr.on('data', (c: Buffer) => err.push(c));
  // EPIPE when the tool exits without reading all its input: its exit status says why.
  child.stdin.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EPIPE') child.kill();
  });
  child.stdin.end(opts.input);
  const { code, signal } = await new Promise<{
    code: number | null;
    signal: NodeJS.Signals | null;
  }>((resolve, reject) => {
    child.once('error', (e) => {
      // Aborted: the signal's reason is thrown just below.
      if (opts.signal?.aborted) resolve({ code: null, signal: 'SIGTERM' });
      else reject(spawnFailure(e, file, args));
    });
    child.once('close', (c, s) => resolve({ code: c, signal: s }));
  });
  opts.signal?.throwIfAborted();
  if (code !== 0) {
    const stderr = Buffer.concat(err).toString().slice(0, maxStderr);
    throw new CommandError(
      describe(file, args),
      code,
      stderr || `killed by ${signal ?? 'a signal'}`,
    );
  }
  return Buffer.concat(out).toString().replace(/\n$/, '');
}

/** The same, blocking: for the rare call that must happen inside synchronous code. */
export function runSync(
  file: string,
  args: readonly string[],
  opts: Pick<RunOptions, 'input'> = {},
): string {
  const result = spawnSync(file, args, {
    input: opts.input,
    stdio: ['pipe', 'pipe', 'pipe'],
    env: toolEnv(),
    maxBuffer: 64 * 1024 * 1024,
  });
  const error: NodeJS.ErrnoException | undefined = result.error;
  if (error !== undefined && error.code !== 'EPIPE') throw spawnFailure(error, file, args);
  if (result.status !== 0) {
    const stderr = String(result.stderr ?? '').slice(0, maxStderr);
    throw new CommandError(
      describe(file, args),
      result.status,
      stderr || `killed by ${result.signal ?? 'a signal'}`,
    );
  }
  return String(result.stdout ?? '').replace(/\n$/, '');
}

/** Whether an executable is on PATH (for doctor and readiness checks). */
export function hasCommand(file: string): Promise<boolean> {
  const dirs = (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':');
  return Promise.resolve(dirs.some((d) => d !== '' && isExecutable(`${d}/${file}`)));
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'EACCES' || code === 'ENOTDIR') return false;
    throw err;
  }
}
