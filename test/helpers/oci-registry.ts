/**
 * A small read-only OCI distribution registry on 127.0.0.1 serving OCI
 * layouts (every repository name sees all of them): GET/HEAD /v2/,
 * manifests by tag (index.json's org.opencontainers.image.ref.name) or by
 * digest with their media type and Docker-Content-Digest, blobs by digest.
 * It records each request, so a test can tell which layers were fetched.
 */
import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

export interface OciRegistry {
  /** `127.0.0.1:PORT`, the host part of an image reference. */
  host: string;
  /** Every request served, as `METHOD PATH`. */
  requests: string[];
  stop(): Promise<void>;
}

const digestPattern = /^sha256:[0-9a-f]{64}$/;
const route = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/;

interface IndexEntry {
  mediaType: string;
  digest: string;
  annotations?: Record<string, string>;
}

export async function startOciRegistry(layouts: readonly string[]): Promise<OciRegistry> {
  const requests: string[] = [];
  /** The blob's file in the first layout that has it ('' for none). */
  const blobPath = (digest: string): string =>
    layouts.map((l) => join(l, 'blobs/sha256', digest.slice(7))).find((p) => existsSync(p)) ?? '';

  const fail = (res: ServerResponse, status: number, code: string, message: string): void => {
    res.writeHead(status, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ errors: [{ code, message }] }));
  };

  const sendBlob = (
    req: IncomingMessage,
    res: ServerResponse,
    digest: string,
    contentType: string,
  ): void => {
    const path = blobPath(digest);
    const headers = {
      'Content-Type': contentType,
      'Content-Length': String(statSync(path).size),
      'Docker-Content-Digest': digest,
    };
    res.writeHead(200, headers);
    if (req.method === 'HEAD') res.end();
    else createReadStream(path).pipe(res);
  };

  const server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    requests.push(`${req.method} ${path}`);
    if (req.method !== 'GET' && req.method !== 'HEAD')
      return fail(res, 405, 'UNSUPPORTED', 'this registry is read-only');
    if (path === '/v2/' || path === '/v2') {
      res.writeHead(200, {
        'Content-Type': 'application/json',
        'Docker-Distribution-API-Version': 'registry/2.0',
      });
      return res.end(req.method === 'HEAD' ? undefined : '{}');
    }
    const m = route.exec(path);
    if (m === null) return fail(res, 404, 'NAME_UNKNOWN', `no route ${path}`);
    const [, , kind, reference] = m as unknown as [string, string, string, string];
    if (kind === 'blobs') {
      if (!digestPattern.test(reference) || blobPath(reference) === '')
        return fail(res, 404, 'BLOB_UNKNOWN', `blob ${reference} unknown`);
      return sendBlob(req, res, reference, 'application/octet-stream');
    }
    const manifests = layouts.flatMap(
      (l) =>
        (JSON.parse(readFileSync(join(l, 'index.json'), 'utf8')) as { manifests: IndexEntry[] })
          .manifests,
    );
    const entry = digestPattern.test(reference)
      ? manifests.find((d) => d.digest === reference)
      : manifests.find((d) => d.annotations?.['org.opencontainers.image.ref.name'] === reference);
    if (entry === undefined || blobPath(entry.digest) === '')
      return fail(res, 404, 'MANIFEST_UNKNOWN', `manifest ${reference} unknown`);
    sendBlob(req, res, entry.digest, entry.mediaType);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    host: `127.0.0.1:${port}`,
    requests,
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
