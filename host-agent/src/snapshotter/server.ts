/**
 * The gRPC server: containerd's snapshots service on a unix socket, each
 * call handed to SnapshotService and its typed errors turned into gRPC codes
 * (grpc-status.ts). The socket is made with a 0177 umask (never readable by
 * others for an instant) and then given its configured mode and group.
 * Beside it, on the same socket, thinrelay's own Activation service
 * (activation-service.ts: `thinrelay activate` through the daemon).
 * Loaded only by the services (`thinrelay snapshotter`, `thinrelay agent`
 * with a snapshotter socket): the rest of the CLI never pays for gRPC.
 */
import * as grpc from '@grpc/grpc-js';
import { fromJSON } from '@grpc/proto-loader';
import { chmodSync, chownSync, lstatSync, mkdirSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { UsageError } from '../errors.js';
import type { Logger } from '../log.js';
import type { PipelineDeps } from '../pipeline/context.js';
import { activationHandlers } from './activation-service.js';
import { activationDescriptor, activationServiceName } from './activation-wire.js';
import { grpcFailureOf } from './grpc-status.js';
import type { SnapshotInfo, SnapshotService } from './snapshot-service.js';
import type { SocketSettings } from './settings.js';
import { loaderOptions, serviceName, snapshotsDescriptor } from './wire-format.js';

/** How long a graceful close waits for calls in flight before it cuts the connections. */
const closeGraceMs = 10_000;

interface Timestamp {
  seconds: number;
  nanos: number;
}

function timestamp(d: Date): Timestamp {
  const ms = d.getTime();
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1_000_000 };
}

function wireInfo(i: SnapshotInfo): Record<string, unknown> {
  return {
    name: i.name,
    parent: i.parent,
    kind: i.kind,
    created_at: timestamp(i.createdAt),
    updated_at: timestamp(i.updatedAt),
    labels: i.labels,
  };
}

type Request = Record<string, unknown>;
const text = (r: Request, f: string): string => (typeof r[f] === 'string' ? r[f] : '');
const labelsOf = (v: unknown): Record<string, string> =>
  v !== null && typeof v === 'object' ? (v as Record<string, string>) : {};

/** One unary call: the service's result, or its error as a gRPC status. */
function unary(
  logger: Logger,
  method: string,
  fn: (req: Request) => unknown,
): grpc.handleUnaryCall<Request, unknown> {
  return (call, callback) => {
    Promise.resolve()
      .then(() => fn(call.request))
      .then(
        (result) => callback(null, result),
        (err: unknown) => {
          const { code, details } = grpcFailureOf(err);
          logger.debug('snapshotter call failed', { method, code, details });
          callback({ code, details, name: 'SnapshotterError', message: details });
        },
      );
  };
}

function handlers(service: SnapshotService, logger: Logger): grpc.UntypedServiceImplementation {
  const empty = {};
  return {
    Prepare: unary(logger, 'Prepare', async (r) => ({
      mounts: await service.create('active', text(r, 'key'), text(r, 'parent'), labelsOf(r.labels)),
    })),
    View: unary(logger, 'View', async (r) => ({
      mounts: await service.create('view', text(r, 'key'), text(r, 'parent'), labelsOf(r.labels)),
    })),
    Mounts: unary(logger, 'Mounts', async (r) => ({
      mounts: await service.mounts(text(r, 'key')),
    })),
    Commit: unary(logger, 'Commit', async (r) => {
      await service.commit(text(r, 'name'), text(r, 'key'), labelsOf(r.labels));
      return empty;
    }),
    Remove: unary(logger, 'Remove', async (r) => {
      await service.remove(text(r, 'key'));
      return empty;
    }),
    Stat: unary(logger, 'Stat', (r) => ({ info: wireInfo(service.stat(text(r, 'key'))) })),
    Update: unary(logger, 'Update', (r) => {
      const info = (r.info ?? {}) as Request;
      const mask = (r.update_mask ?? {}) as { paths?: string[] };
      return {
        info: wireInfo(service.update(text(info, 'name'), labelsOf(info.labels), mask.paths ?? [])),
      };
    }),
    List: (call: grpc.ServerWritableStream<Request, unknown>) => {
      try {
        const infos = service.list().map(wireInfo);
        // Batches keep each message small however many snapshots there are.
        for (let i = 0; i < infos.length; i += 100) call.write({ info: infos.slice(i, i + 100) });
        call.end();
      } catch (err) {
        const { code, details } = grpcFailureOf(err);
        call.destroy(Object.assign(new Error(details), { code, details }));
      }
    },
    Usage: unary(logger, 'Usage', (r) => service.usage(text(r, 'key'))),
    // Orphans and interrupted changes are reconcile's and recovery's work, done at start.
    Cleanup: unary(logger, 'Cleanup', () => empty),
  };
}

/** A stale socket from an earlier run is replaced; anything else at the path is refused. */
function clearSocketPath(path: string): void {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket())
    throw new UsageError('CONFIG', `${path} exists and is not a socket`, 'choose another --socket');
  rmSync(path);
}

export async function serveSnapshots(o: {
  socket: SocketSettings;
  service: SnapshotService;
  logger: Logger;
  /** The daemon's own store and backend, for `thinrelay activate` (thinrelay.v1.Activation). */
  activation: PipelineDeps;
}): Promise<{ close(): Promise<void> }> {
  // The descriptor is plain data; protobufjs checks its shape when it loads it.
  const definition = fromJSON(snapshotsDescriptor as Parameters<typeof fromJSON>[0], loaderOptions);
  const server = new grpc.Server();
  server.addService(
    definition[serviceName] as grpc.ServiceDefinition<grpc.UntypedServiceImplementation>,
    handlers(o.service, o.logger),
  );
  const activation = fromJSON(
    activationDescriptor as Parameters<typeof fromJSON>[0],
    loaderOptions,
  );
  server.addService(
    activation[activationServiceName] as grpc.ServiceDefinition<grpc.UntypedServiceImplementation>,
    activationHandlers(o.activation, o.logger),
  );
  mkdirSync(dirname(o.socket.path), { recursive: true, mode: 0o755 });
  clearSocketPath(o.socket.path);
  const umask = process.umask(0o177);
  try {
    await new Promise<number>((resolve, reject) =>
      server.bindAsync(
        `unix:${o.socket.path}`,
        grpc.ServerCredentials.createInsecure(),
        (err, port) => (err === null ? resolve(port) : reject(err)),
      ),
    );
  } finally {
    process.umask(umask);
  }
  // A process that leaves without close() (a second signal's exit) still takes its socket along.
  const removeSocket = (): void => rmSync(o.socket.path, { force: true });
  process.once('exit', removeSocket);
  chownSync(o.socket.path, 0, o.socket.gid);
  chmodSync(o.socket.path, o.socket.mode);
  o.logger.info('snapshotter serving', { socket: o.socket.path, service: serviceName });
  return {
    close: () =>
      new Promise<void>((resolve) => {
        // Calls in flight finish (each is a recorded step); a client that keeps its
        // connection open past the grace is cut off.
        const force = setTimeout(() => server.forceShutdown(), closeGraceMs);
        server.tryShutdown(() => {
          clearTimeout(force);
          process.off('exit', removeSocket);
          removeSocket();
          resolve();
        });
      }),
  };
}
