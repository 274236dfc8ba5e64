/**
 * `thinrelay snapshotter` as a child process, with a client of its socket
 * (snapshots-client.ts), for tests and benchmarks that talk to it as
 * containerd does.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import type * as grpc from '@grpc/grpc-js';
import { cliPath } from './cli.js';
import { snapshotsClient, type SnapshotsClient } from './snapshots-client.js';
import { until } from './until.js';

/** The gRPC code a call failed with; throws if it succeeded. */
export async function codeOf(p: Promise<unknown>): Promise<grpc.status> {
  try {
    await p;
  } catch (err) {
    return (err as grpc.ServiceError).code;
  }
  assert.fail('the call succeeded');
}

export interface RunningSnapshotter {
  child: ChildProcess;
  client: SnapshotsClient;
  /** Everything it wrote to stderr so far (its log). */
  log(): string;
  /** Resolves with how it ended. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM, then SIGKILL after `ms`; the client is closed. */
  stop(ms?: number): Promise<void>;
}

/** Start `thinrelay snapshotter` on `socket` and wait until it serves. */
export async function startSnapshotter(
  socket: string,
  env: NodeJS.ProcessEnv,
  args: string[] = [],
): Promise<RunningSnapshotter> {
  const child = spawn(process.execPath, [cliPath, 'snapshotter', '--socket', socket, ...args], {
    env: { ...process.env, THINRELAY_CONFIG_FILE: 'none', THINRELAY_LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  child.stderr.on('data', (d: Buffer) => (log += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  let ended = false;
  void exited.then(() => (ended = true));
  await until(
    'the snapshotter socket',
    () => {
      if (ended) throw new Error(`the snapshotter exited before serving: ${log}`);
      return Promise.resolve(existsSync(socket) && log.includes('serving on'));
    },
    60_000,
    50,
  );
  const client = snapshotsClient(socket);
  return {
    child,
    client,
    log: () => log,
    exited,
    async stop(ms = 10_000) {
      client.close();
      if (ended) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), ms);
      await exited;
      clearTimeout(timer);
    },
  };
}
