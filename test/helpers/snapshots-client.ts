/**
 * A gRPC client of containerd's snapshots API on a unix socket (the wire
 * format thinrelay serves), for tests and benchmarks that talk to the
 * service as containerd would.
 */
import * as grpc from '@grpc/grpc-js';
import { fromJSON } from '@grpc/proto-loader';
import {
  loaderOptions,
  serviceName,
  snapshotsDescriptor,
} from '../../host-agent/src/snapshotter/wire-format.js';

export interface SnapshotsClient {
  call(method: string, req: object): Promise<Record<string, unknown>>;
  /** Starts a call and cancels it after `ms`: the code it ended with (OK if it finished first). */
  abandon(method: string, req: object, ms: number): Promise<grpc.status>;
  close(): void;
}

export interface WireMount {
  type: string;
  source: string;
  target: string;
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
  type Unary = (
    r: object,
    md: grpc.Metadata,
    cb: (e: grpc.ServiceError | null, v: Record<string, unknown>) => void,
  ) => grpc.ClientUnaryCall;
  const method = (name: string): Unary =>
    (client as unknown as Record<string, Unary>)[name]!.bind(client);
  return {
    call: (name, req) =>
      new Promise((resolve, reject) => {
        method(name)(req, metadata, (err, value) => (err === null ? resolve(value) : reject(err)));
      }),
    abandon: (name, req, ms) =>
      new Promise((resolve) => {
        const call = method(name)(req, metadata, (err) =>
          resolve(err === null ? grpc.status.OK : err.code),
        );
        setTimeout(() => call.cancel(), ms);
      }),
    close: () => client.close(),
  };
}
