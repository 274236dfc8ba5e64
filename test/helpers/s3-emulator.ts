/**
 * An in-process S3 emulator (s3rver 3.7.1) for tests: 127.0.0.1, a free port,
 * a fresh tmp directory (deleted on stop), silent.
 *
 * What s3rver does and doesn't do (read in node_modules/s3rver/lib, checked):
 * - Range on GetObject: honoured (206 + Content-Range, 416 InvalidRange past the end);
 * - If-Match on GetObject: IGNORED (a wrong ETag still gets 200 + the body);
 *   If-None-Match and If-Modified-Since are honoured (304);
 * - VersionId: ignored (no versioning; no x-amz-version-id is ever returned);
 * - additional checksums (x-amz-checksum-*): neither stored nor returned;
 * - credentials: only S3RVER / S3RVER; real bucket-name rules (3-63 chars).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { CreateBucketCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import S3rver from 's3rver';
import { createS3Client } from '../../host-agent/src/source/s3-client.js';

export const S3RVER_ACCESS_KEY = 'S3RVER';
export const S3RVER_SECRET_KEY = 'S3RVER';
export const S3RVER_REGION = 'us-east-1';

export interface S3Emulator {
  /** `http://127.0.0.1:<port>` */
  endpoint: string;
  port: number;
  /** Talks to the emulator directly (path style, S3RVER credentials, checksums WHEN_REQUIRED). */
  client: S3Client;
  createBucket(name: string): Promise<void>;
  putObject(
    bucket: string,
    key: string,
    body: Buffer | string | Readable,
    metadata?: Record<string, string>,
  ): Promise<{ eTag: string }>;
  server: S3rver;
  /** Root of the emulator's storage. */
  directory: string;
  /** A client for this emulator (or for another endpoint in front of it, e.g. a TCP cutter). */
  makeClient(opts?: { endpoint?: string; maxAttempts?: number }): S3Client;
  stop(): Promise<void>;
}

export async function startS3Emulator(): Promise<S3Emulator> {
  const directory = await mkdtemp(join(tmpdir(), 'thinrelay-s3rver-'));
  const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory });
  let port: number;
  try {
    ({ port } = await server.run());
  } catch (err) {
    await rm(directory, { recursive: true, force: true });
    throw err;
  }
  const endpoint = `http://127.0.0.1:${port}`;
  const clients: S3Client[] = [];
  const makeClient = (opts: { endpoint?: string; maxAttempts?: number } = {}): S3Client => {
    const c = createS3Client({
      endpoint: opts.endpoint ?? endpoint,
      forcePathStyle: true,
      region: S3RVER_REGION,
      credentials: { accessKeyId: S3RVER_ACCESS_KEY, secretAccessKey: S3RVER_SECRET_KEY },
      ...(opts.maxAttempts !== undefined ? { maxAttempts: opts.maxAttempts } : {}),
    });
    clients.push(c);
    return c;
  };
  const client = makeClient();

  let stopped = false;
  return {
    endpoint,
    port,
    client,
    server,
    directory,
    makeClient,
    async createBucket(name) {
      await client.send(new CreateBucketCommand({ Bucket: name }));
    },
    async putObject(bucket, key, body, metadata) {
      // The test helper may buffer: s3rver needs a Content-Length, and a
      // generic Readable has none.
      const bytes = typeof body === 'string' || Buffer.isBuffer(body) ? body : await collect(body);
      const out = await client.send(
        new PutObjectCommand({
          Bucket: bucket,
          Key: key,
          Body: bytes,
          ...(metadata ? { Metadata: metadata } : {}),
        }),
      );
      if (!out.ETag) throw new Error(`s3rver returned no ETag for ${bucket}/${key}`);
      return { eTag: out.ETag };
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      for (const c of clients) c.destroy();
      try {
        const closing = server.close();
        // Keep-alive sockets of clients we don't own would hold close() open.
        server.httpServer?.closeAllConnections();
        await closing;
      } finally {
        await rm(directory, { recursive: true, force: true });
      }
    },
  };
}

/**
 * The environment a child process needs to reach the emulator through the
 * SDK's own configuration (endpoint variable, static credentials, region).
 * Merge it over process.env when spawning. Instance metadata is disabled so
 * the SDK never probes IMDS on a developer machine.
 */
export function s3EnvFor(emulator: Pick<S3Emulator, 'endpoint'>): Record<string, string> {
  return {
    AWS_ENDPOINT_URL_S3: emulator.endpoint,
    AWS_ACCESS_KEY_ID: S3RVER_ACCESS_KEY,
    AWS_SECRET_ACCESS_KEY: S3RVER_SECRET_KEY,
    AWS_REGION: S3RVER_REGION,
    AWS_EC2_METADATA_DISABLED: 'true',
  };
}

async function collect(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of stream as AsyncIterable<Buffer | string>) {
    parts.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
  }
  return Buffer.concat(parts);
}
