/**
 * `thinrelay snapshotter` as a child process and a gRPC client of its
 * socket (containerd.services.snapshots.v1, from the service's own message
 * definitions), for tests and benchmarks that talk to it as containerd does.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { fromJSON } from '@grpc/proto-loader';
import {
  loaderOptions,
  serviceName,
  snapshotsDescriptor,
} from '../../host-agent/src/snapshotter/wire-format.js';
import { cliPath } from './cli.js';
import { until } from './until.js';

export interface SnapshotsClient {
  call(method: string, req: object): Promise<Record<string, unknown>>;
  close(): void;
}

export interface MountJson {
  type: string;
  source: string;
  options: string[];
}

/**
 * A client of the snapshots service on `socket`. `namespace`: sent as
 * containerd's `containerd-namespace` header, for talking to containerd's own
 * snapshots service (its built-in snapshotters) rather than a proxy plugin.
 */
export function snapshotsClient(socket: string, namespace?: string): SnapshotsClient {
  const def = fromJSON(snapshotsDescriptor as Parameters<typeof fromJSON>[0], loaderOptions);
  const Ctor = grpc.makeGenericClientConstructor(
    def[serviceName] as grpc.ServiceDefinition,
    'Snapshots',
  );
  const client = new Ctor(`unix:${socket}`, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  if (namespace !== undefined) metadata.set('containerd-namespace', namespace);
  return {
    call: (method, req) =>
      new Promise((resolve, reject) => {
        (
          client as unknown as Record<
            string,
            (
              r: object,
              md: grpc.Metadata,
              cb: (e: grpc.ServiceError | null, v: Record<string, unknown>) => void,
            ) => void
          >
        )[method]!.call(client, req, metadata, (err, value) =>
          err === null ? resolve(value) : reject(err),
        );
      }),
    close: () => client.close(),
  };
}

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
