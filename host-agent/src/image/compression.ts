/**
 * Whole-archive and layer compression, told apart by magic bytes: gzip with
 * Node's zlib, zstd and xz with the system `zstd` and `xz` tools (Node 20's
 * zlib has no zstd; the tools stream on their own thread and measured faster
 * than a JavaScript decoder would be). Decompression is always streamed.
 */
import { spawn } from 'node:child_process';
import { createGunzip } from 'node:zlib';
import { EnvironmentError, ImageError } from '../errors.js';

export type ImageCompression = 'none' | 'gzip' | 'zstd' | 'xz';

export function compressionOf(head: Uint8Array): ImageCompression {
  if (head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd) return 'zstd';
  if (
    head[0] === 0xfd &&
    head[1] === 0x37 &&
    head[2] === 0x7a &&
    head[3] === 0x58 &&
    head[4] === 0x5a &&
    head[5] === 0x00
  )
    return 'xz';
  return 'none';
}

const TOOLS: Record<'zstd' | 'xz', string[]> = {
  zstd: ['zstd', '-d', '-c', '-q'],
  xz: ['xz', '-d', '-c', '-q', '-T1'],
};

/**
 * The decompressed bytes of `source`. The source is consumed completely (so
 * a downloader behind it sees every byte); a corrupt stream rejects with
 * ARCHIVE_MALFORMED naming `what`.
 */
export async function* decompress(
  source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  compression: ImageCompression,
  what: string,
): AsyncGenerator<Buffer> {
  if (compression === 'none') {
    for await (const chunk of source)
      yield Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    return;
  }
  let stderr = '';
  const proc =
    compression === 'gzip'
      ? undefined
      : spawn(TOOLS[compression][0]!, TOOLS[compression].slice(1), {
          stdio: ['pipe', 'pipe', 'pipe'],
        });
  const spawnError = proc
    ? new Promise<never>((_, reject) =>
        proc.once('error', (err: NodeJS.ErrnoException) =>
          reject(
            err.code === 'ENOENT'
              ? new EnvironmentError(
                  'TOOL_MISSING',
                  `${compression} is needed to decompress ${what}`,
                  `install the Debian package ${compression === 'xz' ? 'xz-utils' : 'zstd'}`,
                )
              : err,
          ),
        ),
      )
    : undefined;
  spawnError?.catch(() => undefined);
  proc?.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const gunzip = proc === undefined ? createGunzip() : undefined;
  const input = proc?.stdin ?? gunzip!;
  const output = proc?.stdout ?? gunzip!;
  input.on('error', () => undefined); // EPIPE when the tool stops early: its exit status says why
  let feedError: Error | undefined;
  const feeding = (async () => {
    try {
      for await (const chunk of source) {
        if (!input.write(chunk)) await new Promise((r) => input.once('drain', r));
        if (input.destroyed) break;
      }
    } catch (err) {
      feedError = err instanceof Error ? err : new Error(String(err));
    } finally {
      input.end();
    }
  })();
  const exited = proc
    ? new Promise<number | null>((r) => proc.once('close', (code) => r(code)))
    : undefined;
  let readAll = false;
  try {
    for await (const chunk of output as AsyncIterable<Buffer>) yield chunk;
    readAll = true;
  } catch (err) {
    if (feedError !== undefined) throw feedError;
    throw new ImageError(
      'ARCHIVE_MALFORMED',
      `${what}: corrupt ${compression} data (${(err as Error).message})`,
      undefined,
      { cause: err },
    );
  } finally {
    // Stopped early or failed: the tool must not outlive us. After a full read it exits by itself.
    if (!readAll && proc !== undefined && proc.exitCode === null) proc.kill('SIGKILL');
    gunzip?.destroy();
  }
  await feeding;
  if (feedError !== undefined) throw feedError;
  if (proc !== undefined) {
    const code = await Promise.race([exited!, spawnError!]);
    if (code !== 0)
      throw new ImageError(
        'ARCHIVE_MALFORMED',
        `${what}: corrupt ${compression} data (${stderr.trim() || `exit ${code}`})`,
      );
  }
}
