/**
 * The daemon's local HTTP endpoint: GET /healthz (200 healthy, 503 not or
 * degraded, JSON detail) and GET /metrics (Prometheus text). Bound to loopback by default:
 * it has no authentication and shows queue URLs.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface EndpointSources {
  /** status: 'ok', or why not ('degraded': running but unable to take images; 'unhealthy'). */
  health(): { healthy: boolean; status?: string; detail: Record<string, unknown> };
  metrics(): string | Promise<string>;
}

export async function startHttpEndpoint(
  address: { host: string; port: number },
  sources: EndpointSources,
): Promise<{ server: Server; url: string; close(): Promise<void> }> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path === '/healthz' || path === '/health') {
      const h = sources.health();
      res
        .writeHead(h.healthy ? 200 : 503, { 'content-type': 'application/json' })
        .end(
          JSON.stringify({ status: h.status ?? (h.healthy ? 'ok' : 'unhealthy'), ...h.detail }) +
            '\n',
        );
      return;
    }
    if (path === '/metrics') {
      Promise.resolve()
        .then(() => sources.metrics())
        .then(
          (text) =>
            res
              .writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' })
              .end(text),
          (err: unknown) =>
            res.writeHead(500, { 'content-type': 'text/plain' }).end(`${String(err)}\n`),
        );
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('try /healthz or /metrics\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(address.port, address.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = server.address() as AddressInfo;
  const host = bound.family === 'IPv6' ? `[${bound.address}]` : bound.address;
  return {
    server,
    url: `http://${host}:${bound.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
