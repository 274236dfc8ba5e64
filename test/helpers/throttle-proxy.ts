/**
 * A TCP proxy that forwards responses at a limited rate, so a download (and
 * the image it feeds) takes as long as a test needs — a slow network, for real.
 */
import { createServer, Socket } from 'node:net';
import type { AddressInfo } from 'node:net';

export interface ThrottleProxy {
  endpoint: string;
  /** Change the rate for bytes not yet forwarded. */
  setBytesPerSecond(rate: number): void;
  stop(): Promise<void>;
}

export async function startThrottleProxy(
  targetPort: number,
  bytesPerSecond: number,
): Promise<ThrottleProxy> {
  let rate = bytesPerSecond;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = new Socket();
    sockets.add(client).add(upstream);
    const forget = (): void => {
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('close', forget);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    upstream.connect(targetPort, '127.0.0.1', () => client.pipe(upstream));
    // Responses: 16 KiB slices, each followed by the pause the rate asks for.
    upstream.on('data', (chunk: Buffer) => {
      upstream.pause();
      void (async () => {
        for (let off = 0; off < chunk.length; off += 16384) {
          const slice = chunk.subarray(off, off + 16384);
          if (client.destroyed) return;
          client.write(slice);
          await new Promise((r) => setTimeout(r, (slice.length / rate) * 1000));
        }
        upstream.resume();
      })();
    });
    upstream.on('end', () => client.end());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    setBytesPerSecond: (r) => (rate = r),
    stop: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
