/** Minimal types for s3rver 3.7.1 (ships none): only what the tests use. */
declare module 's3rver' {
  import type { EventEmitter } from 'node:events';
  import type { AddressInfo } from 'node:net';
  import type { Server } from 'node:http';

  interface S3rverOptions {
    address?: string;
    port?: number;
    silent?: boolean;
    directory?: string;
    resetOnClose?: boolean;
    allowMismatchedSignatures?: boolean;
    vhostBuckets?: boolean;
    serviceEndpoint?: string;
    configureBuckets?: { name: string; configs?: (string | Buffer)[] }[];
  }

  class S3rver extends EventEmitter {
    constructor(options?: S3rverOptions);
    /** Starts listening; resolves with the bound address (port 0 → the real port). */
    run(): Promise<AddressInfo>;
    close(): Promise<void>;
    reset(): void;
    /** Set once run() has resolved. */
    httpServer?: Server;
  }

  export = S3rver;
}
