/** Runs the built thinrelay CLI as a child process, as an operator would. */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** The shipped artifact: the bundled CLI that package.json's bin points at. */
export const cliPath = fileURLToPath(new URL('../../cli/thinrelay.mjs', import.meta.url));

/** Node options that make the CLI refuse to open the state database (no-store-preload.ts). */
export const storeGuardArgs = [
  '--import',
  fileURLToPath(new URL('./no-store-preload.js', import.meta.url)),
];

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** It outlived `timeoutMs` and was killed (SIGKILL): it would not exit by itself. */
  timedOut?: boolean;
}

export function runCli(
  args: readonly string[],
  env: NodeJS.ProcessEnv = {},
  opts: { cwd?: string; nodeArgs?: readonly string[]; timeoutMs?: number } = {},
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...(opts.nodeArgs ?? []), cliPath, ...args], {
      env: { ...process.env, THINRELAY_LOG_LEVEL: 'info', ...env },
      ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    let timedOut = false;
    const timer =
      opts.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            timedOut = true;
            child.kill('SIGKILL');
          }, opts.timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ...(timedOut ? { timedOut } : {}) });
    });
  });
}

/** The JSON a run printed on stdout, asserting it exited 0 (stderr in the message when not). */
export function okJson<T>(r: CliResult): T {
  assert.equal(r.code, 0, `exit ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}
