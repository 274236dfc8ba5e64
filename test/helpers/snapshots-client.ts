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
  close(): void;
}

export interface WireMount {
  type: string;
  source: string;
  target: string;
  options: string[];
}

export function snapshotsClient(socket: string): SnapshotsClient {
  const def = fromJSON(snapshotsDescriptor as Parameters<typeof fromJSON>[0], loaderOptions);
  const Ctor = grpc.makeGenericClientConstructor(
    def[serviceName] as grpc.ServiceDefinition,
    'Snapshots',
  );
  const client = new Ctor(`unix:${socket}`, grpc.credentials.createInsecure());
  type Unary = (
    r: object,
    cb: (e: grpc.ServiceError | null, v: Record<string, unknown>) => void,
  ) => void;
  return {
    call: (method, req) =>
      new Promise((resolve, reject) => {
        (client as unknown as Record<string, Unary>)[method]!.call(client, req, (err, value) =>
          err === null ? resolve(value) : reject(err),
        );
      }),
    close: () => client.close(),
  };
}
