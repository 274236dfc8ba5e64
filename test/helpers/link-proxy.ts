/**
 * A realistic link for tests and benchmarks: a TCP proxy on 127.0.0.1 that
 * caps the response bandwidth of each connection (as S3 caps each one) and
 * delays every byte by a one-way latency in both directions, so a request
 * costs a round trip. It records the HTTP request heads it sees and can cut
 * the response to chosen requests part-way (a range that breaks mid-way).
 *
 * Pacing is by schedule, not by timer per slice: each connection keeps the
 * time its link is next free, so the average rate is exact even though
 * timers fire on whole milliseconds.
 */
import { createServer, Socket, type Server } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

export interface LinkRequest {
  /** 0-based index of the connection that carried it. */
  connection: number;
  method: string;
  path: string;
  /** Lower-cased header names. */
  headers: Record<string, string>;
}

export interface LinkProxyOptions {
  targetPort: number;
  targetHost?: string;
  /** Response bytes per second per connection; Infinity (default): unthrottled. */
  bytesPerSecond?: number;
  /** One-way delay in ms added to every byte in both directions (default 0). */
  latencyMs?: number;
  /**
   * Decide per request: return N to cut the connection once N bytes of its
   * response (headers included) were forwarded; undefined: leave it alone.
   */
  cutResponse?: (req: LinkRequest) => number | undefined;
  /** Called when a response is cut, before the connection closes (the cut waits for it). */
  onCut?: (req: LinkRequest) => void | Promise<void>;
}

export interface LinkProxy {
  port: number;
  /** `http://127.0.0.1:<port>` */
  endpoint: string;
  requests: LinkRequest[];
  /** Requests whose response was cut. */
  cuts: LinkRequest[];
  /** Connections accepted so far. */
  readonly connections: number;
  /** Most connections open at the same time. */
  readonly peakConnections: number;
  /** Response bytes forwarded to clients so far, HTTP heads included. */
  readonly responseBytes: number;
  setBytesPerSecond(rate: number): void;
  close(): Promise<void>;
}

const HEAD_RE = /([A-Z]+) (\S+) HTTP\/1\.[01]\r\n((?:[^\r\n]+\r\n)*)\r\n/g;
/** Bytes queued towards the client before the upstream is paused. */
const HIGH_WATER = 1024 * 1024;
const SLICE = 16 * 1024;

export async function startLinkProxy(opts: LinkProxyOptions): Promise<LinkProxy> {
  const targetHost = opts.targetHost ?? '127.0.0.1';
  const latencyMs = opts.latencyMs ?? 0;
  let rate = opts.bytesPerSecond ?? Infinity;
  const requests: LinkRequest[] = [];
  const cuts: LinkRequest[] = [];
  const sockets = new Set<Socket>();
  let connections = 0;
  let open = 0;
  let peak = 0;
  let forwarded = 0;

  const server: Server = createServer((client) => {
    const index = connections++;
    open += 1;
    peak = Math.max(peak, open);
    const upstream = new Socket();
    // No Nagle: with it, each response's last small segment waited for the
    // peer's delayed ACK, adding ~40 ms to every request (no real link does).
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    sockets.add(client).add(upstream);
    let closed = false;
    const close = (): void => {
      if (closed) return;
      closed = true;
      open -= 1;
      upstream.destroy();
      client.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', close);
    upstream.on('error', close);
    client.on('close', close);

    // Client → upstream: request heads recorded on arrival, bytes delayed.
    let requestText = '';
    let current: LinkRequest | undefined;
    let cutAt: number | undefined;
    let responseBytes = 0;
    client.on('data', (data: Buffer) => {
      requestText += data.toString('latin1');
      HEAD_RE.lastIndex = 0;
      let consumed = 0;
      for (let m = HEAD_RE.exec(requestText); m !== null; m = HEAD_RE.exec(requestText)) {
        const headers: Record<string, string> = {};
        for (const line of (m[3] ?? '').split('\r\n')) {
          const colon = line.indexOf(':');
          if (colon > 0) {
            headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
          }
        }
        const req = { connection: index, method: m[1] ?? '', path: m[2] ?? '', headers };
        requests.push(req);
        // No pipelining: the previous response was delivered before this request was sent.
        current = req;
        cutAt = opts.cutResponse?.(req);
        responseBytes = 0;
        consumed = HEAD_RE.lastIndex;
      }
      // Only GET/HEAD pass through in tests and benchmarks: no request bodies to keep.
      requestText = requestText.slice(consumed).slice(-64 * 1024);
      if (latencyMs > 0) setTimeout(() => upstream.write(data), latencyMs);
      else upstream.write(data);
    });
    client.on('end', () => setTimeout(() => upstream.end(), latencyMs));

    // Upstream → client: delayed by the latency, paced at the rate.
    const queue: { data: Buffer; at: number }[] = [];
    let queued = 0;
    let pumping = false;
    let upstreamEnded = false;
    let nextFree = 0;
    const pump = async (): Promise<void> => {
      if (pumping) return;
      pumping = true;
      try {
        while (queue.length > 0 && !closed) {
          const item = queue[0]!;
          const slice = item.data.subarray(0, rate === Infinity ? item.data.length : SLICE);
          const now = performance.now();
          const at = Math.max(now, item.at, rate === Infinity ? 0 : nextFree);
          if (at - now >= 1) await sleep(at - now);
          if (closed) return;
          let part = slice;
          let cutNow = false;
          if (cutAt !== undefined && responseBytes + slice.length >= cutAt) {
            part = slice.subarray(0, Math.max(0, cutAt - responseBytes));
            cutNow = true;
          }
          responseBytes += part.length;
          forwarded += part.length;
          const flushed = part.length === 0 || client.write(part);
          nextFree = Math.max(nextFree, at) + (part.length / rate) * 1000;
          if (cutNow) {
            const req = current!;
            cuts.push(req);
            upstream.pause();
            await Promise.resolve(opts.onCut?.(req)).catch(() => undefined);
            // FIN after what was forwarded: the client reads every byte, then a premature close.
            client.end();
            upstream.destroy();
            return;
          }
          item.data = item.data.subarray(slice.length);
          queued -= slice.length;
          if (item.data.length === 0) queue.shift();
          if (queued < HIGH_WATER && upstream.isPaused()) upstream.resume();
          if (!flushed) await new Promise((resolve) => client.once('drain', resolve));
        }
        if (upstreamEnded && !closed) client.end();
      } finally {
        pumping = false;
      }
    };
    upstream.on('data', (data: Buffer) => {
      queue.push({ data, at: performance.now() + latencyMs });
      queued += data.length;
      if (queued >= HIGH_WATER) upstream.pause();
      void pump();
    });
    upstream.on('end', () => {
      upstreamEnded = true;
      if (queue.length === 0) setTimeout(() => !closed && client.end(), latencyMs);
      else void pump();
    });
    upstream.on('close', () => {
      if (queue.length === 0 && !pumping) close();
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
    get peakConnections() {
      return peak;
    },
    get responseBytes() {
      return forwarded;
    },
    setBytesPerSecond(r: number) {
      rate = r;
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
