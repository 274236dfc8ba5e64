/**
 * A tiny TCP proxy on 127.0.0.1 for tests: forwards to a target and, for the
 * first `cutConnections` connections, cuts the connection once it has
 * forwarded `cutAfterBytes` response bytes (headers included). It records the
 * HTTP request heads it sees and counts open connections, so a test can check
 * that a resume sent a Range header and that nothing was left open.
 */
import { createServer, Socket, type Server } from 'node:net';

export interface CapturedRequest {
  /** 0-based index of the connection that carried it. */
  connection: number;
  method: string;
  path: string;
  /** Lower-cased header names. */
  headers: Record<string, string>;
}

export interface CutInfo {
  /** 0-based connection index. */
  connection: number;
  /** Response bytes forwarded to the client before the cut (headers included). */
  forwardedBytes: number;
  /** Response body bytes forwarded (after the first header block). */
  forwardedBodyBytes: number;
}

export interface TcpCutterOptions {
  targetPort: number;
  targetHost?: string;
  /** Cut after forwarding this many response bytes (headers included). */
  cutAfterBytes: number;
  /** Cut only the first K connections (Infinity: all of them). Default 1. */
  cutConnections?: number;
  /**
   * 'end' (default): send what was forwarded, then FIN, so the client reads
   * every forwarded byte and then sees a premature close. 'reset': RST, which
   * may also discard bytes still in the client's receive buffer.
   */
  mode?: 'end' | 'reset';
  /** Called when a connection is cut, before it is closed (may be async: the cut waits). */
  onCut?: (info: CutInfo) => void | Promise<void>;
}

export interface TcpCutter {
  port: number;
  /** `http://127.0.0.1:<port>` */
  endpoint: string;
  requests: CapturedRequest[];
  cuts: CutInfo[];
  /** Connections accepted so far. */
  readonly connections: number;
  /** Client connections currently open. */
  readonly active: number;
  /** Resolves once no client connection is open (or rejects after timeoutMs). */
  waitForIdle(timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

const HEAD_RE = /([A-Z]+) (\S+) HTTP\/1\.[01]\r\n((?:[^\r\n]+\r\n)*)\r\n/g;

export async function startTcpCutter(opts: TcpCutterOptions): Promise<TcpCutter> {
  const targetHost = opts.targetHost ?? '127.0.0.1';
  const cutConnections = opts.cutConnections ?? 1;
  const mode = opts.mode ?? 'end';
  const requests: CapturedRequest[] = [];
  const cuts: CutInfo[] = [];
  const clients = new Set<Socket>();
  const upstreams = new Set<Socket>();
  const idleWaiters = new Set<() => void>();
  let connections = 0;

  const server: Server = createServer((client) => {
    const index = connections++;
    clients.add(client);
    const upstream = new Socket();
    upstreams.add(upstream);
    let cut = false;
    let forwarded = 0;
    let headerEnd = -1; // where the first response header block ends, in response bytes
    let headScan = '';
    let requestText = '';
    let parsedUpTo = 0;

    client.on('error', () => undefined);
    upstream.on('error', () => client.destroy());
    client.on('end', () => upstream.end());
    client.on('close', () => {
      clients.delete(client);
      upstream.destroy();
      if (clients.size === 0) for (const wake of [...idleWaiters]) wake();
    });
    upstream.on('close', () => {
      upstreams.delete(upstream);
      if (!cut) client.end();
    });

    client.on('data', (data: Buffer) => {
      // Record request heads (only GET/HEAD go through the cutter in tests: no bodies).
      requestText += data.toString('latin1');
      HEAD_RE.lastIndex = parsedUpTo;
      for (let m = HEAD_RE.exec(requestText); m !== null; m = HEAD_RE.exec(requestText)) {
        const headers: Record<string, string> = {};
        for (const line of (m[3] ?? '').split('\r\n')) {
          const colon = line.indexOf(':');
          if (colon > 0) {
            headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
          }
        }
        requests.push({ connection: index, method: m[1] ?? '', path: m[2] ?? '', headers });
        parsedUpTo = HEAD_RE.lastIndex;
      }
      upstream.write(data);
    });

    upstream.on('data', (data: Buffer) => {
      if (cut) return;
      if (headerEnd < 0) {
        const scanned = forwarded - headScan.length; // response offset of headScan[0]
        headScan += data.toString('latin1');
        const at = headScan.indexOf('\r\n\r\n');
        if (at >= 0) headerEnd = scanned + at + 4;
        else headScan = headScan.slice(-3);
      }
      const limit = index < cutConnections ? opts.cutAfterBytes : Infinity;
      const part = forwarded + data.length <= limit ? data : data.subarray(0, limit - forwarded);
      forwarded += part.length;
      if (part.length > 0) client.write(part);
      if (forwarded < limit) return;

      cut = true;
      const info: CutInfo = {
        connection: index,
        forwardedBytes: forwarded,
        forwardedBodyBytes: headerEnd >= 0 ? Math.max(0, forwarded - headerEnd) : 0,
      };
      cuts.push(info);
      upstream.pause();
      void Promise.resolve()
        .then(() => opts.onCut?.(info))
        .catch(() => undefined)
        .finally(() => {
          upstream.destroy();
          if (mode === 'reset') client.resetAndDestroy();
          else client.end();
        });
    });

    upstream.connect(opts.targetPort, targetHost);
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no TCP address');
  const port = address.port;

  return {
    port,
    endpoint: `http://127.0.0.1:${port}`,
    requests,
    cuts,
    get connections() {
      return connections;
    },
    get active() {
      return clients.size;
    },
    waitForIdle(timeoutMs = 5000) {
      if (clients.size === 0) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const wake = (): void => {
          clearTimeout(timer);
          idleWaiters.delete(wake);
          resolve();
        };
        const timer = setTimeout(() => {
          idleWaiters.delete(wake);
          reject(
            new Error(`${clients.size} client connection(s) still open after ${timeoutMs} ms`),
          );
        }, timeoutMs);
        idleWaiters.add(wake);
      });
    },
    async close() {
      for (const s of [...clients, ...upstreams]) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
