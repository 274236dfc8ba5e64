/**
 * Compression of archives and layers, told apart by magic bytes (never by
 * name), in one place:
 * - compressionOf and decompress (for sniffing, spooling and layer blobs):
 *   gzip with Node's zlib, zstd and xz with the system `zstd` and `xz`
 *   tools (Node 20's zlib has no zstd; the tools stream on their own thread
 *   and measured faster than a JavaScript decoder would be);
 * - openArchive (for the unpacker's tar stream, plain or gzip): pulled from
 *   the source one chunk at a time so backpressure reaches the download,
 *   source bytes counted for progress. After the tar's end marker the rest
 *   of the source is drained unparsed, as GNU tar drains its input, so the
 *   downloader sees the whole object and can verify its checksum.
 */
import { spawn } from 'node:child_process';
import type { Gunzip } from 'node:zlib';
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
 * ARCHIVE_MALFORMED naming `what`. Failed or stopped early, it returns the
 * source before it settles: a download behind it stops, not left waiting.
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
  // zlib is loaded only when needed: a cold process starts faster on a plain tar.
  const gunzip = proc === undefined ? (await import('node:zlib')).createGunzip() : undefined;
  const input = proc?.stdin ?? gunzip!;
  const output = proc?.stdout ?? gunzip!;
  input.on('error', () => undefined); // EPIPE when the tool stops early: its exit status says why
  let feedError: Error | undefined;
  const feeding = (async () => {
    try {
      for await (const chunk of source) {
        // A destroyed input (a failed or abandoned read) never drains: its close wakes us too.
        if (!input.write(chunk)) await drainedOrClosed(input);
        if (input.destroyed) break; // the loop's break returns the source
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
    if (!readAll) {
      // Stopped early or failed: the tool must not outlive us (after a full read it exits by
      // itself), and the feeder stops reading and returns the source before we settle.
      if (proc !== undefined && proc.exitCode === null) proc.kill('SIGKILL');
      input.destroy();
      await feeding;
    }
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

/** Resolves once `stream` can take more, or is closed (destroyed: it never drains then). */
function drainedOrClosed(stream: NodeJS.WritableStream & { destroyed: boolean }): Promise<void> {
  return new Promise((resolve) => {
    if (stream.destroyed) return resolve();
    const done = (): void => {
      stream.off('drain', done);
      stream.off('close', done);
      resolve();
    };
    stream.on('drain', done);
    stream.on('close', done);
  });
}

/** What the unpacker's own stream reads (zstd and xz are decompressed before it). */
export type Compression = Extract<ImageCompression, 'none' | 'gzip'>;

export interface ArchiveStream {
  readonly compression: Compression;
  /** The next chunk of tar bytes, or null at the end of the stream. */
  next(): Promise<Buffer | null>;
  /** After the end-of-archive marker: read the rest of the source without parsing it. */
  drain(): Promise<void>;
  /** On failure: stop reading and release the source (its iterator's return()). */
  close(): Promise<void>;
  /** What the first bytes look like, for a "not a tar" message. */
  readonly formatHint: string | undefined;
  /** Reports the final source byte count to onProgress. */
  reportProgress(): void;
}

export interface SourceOptions {
  onProgress?: ((sourceBytes: number) => void) | undefined;
  signal?: AbortSignal | undefined;
}

export type ArchiveSource = AsyncIterable<Uint8Array> | NodeJS.ReadableStream;

/** Progress is reported every this many source bytes, not per chunk. */
const PROGRESS_STEP = 4 * 1024 * 1024;
const GUNZIP_CHUNK = 64 * 1024;
/** Source bytes handed on at once (see SourceReader.next). */
const BATCH_BYTES = 1024 * 1024;

function asBuffer(value: unknown): Buffer {
  if (Buffer.isBuffer(value)) return value;
  if (value instanceof Uint8Array)
    return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  throw new TypeError(
    `unpackArchive: the source must yield Uint8Array chunks, got ${typeof value}`,
  );
}

type Pulled = { value: IteratorResult<unknown> } | { error: unknown };

/**
 * Pulls chunks from the caller's source, counting them, one chunk ahead: the
 * next read (a threadpool or network wait) overlaps with the synchronous
 * writing of the current chunk instead of following it.
 */
export class SourceReader {
  private readonly iterator: AsyncIterator<unknown>;
  private ahead: Promise<Pulled> | undefined;
  private done = false;
  private bytes = 0;
  private reported = 0;
  private released = false;

  constructor(
    private readonly source: ArchiveSource,
    private readonly opts: SourceOptions,
  ) {
    this.iterator = (source as AsyncIterable<unknown>)[Symbol.asyncIterator]();
  }

  /** Settles, never rejects: an error is kept and thrown when that chunk is asked for. */
  private pull(): Promise<Pulled> {
    return this.iterator.next().then(
      (value) => ({ value }),
      (error: unknown) => ({ error }),
    );
  }

  /**
   * The next batch of source bytes. Small chunks (an HTTP body arrives in
   * 16-64 KiB pieces) are gathered into batches of about BATCH_BYTES: the
   * writer then makes one write() per file extent instead of one per piece,
   * which costs one copy and saves most of the syscalls. A chunk of half a
   * batch or more goes on as it is: the download hands over slices of about
   * a batch, and gathering one a little short (each part's tail) with the
   * next would copy 2 MiB for nothing (measured: ~0.25 s of the main thread
   * for the 201 MiB bench image).
   */
  async next(): Promise<Buffer | null> {
    const parts: Buffer[] = [];
    let size = 0;
    while (size < BATCH_BYTES) {
      const chunk = await (parts.length === 0 ? this.nextChunk() : this.nextChunkOrHold());
      if (chunk === null) break;
      parts.push(chunk);
      size += chunk.length;
      if (parts.length === 1 && size >= BATCH_BYTES / 2) break; // big enough alone: no copy
    }
    if (parts.length === 0) return null;
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts, size);
  }

  /** Like nextChunk, but an error is held back for the next call so gathered bytes come first. */
  private async nextChunkOrHold(): Promise<Buffer | null> {
    const pulled = await (this.ahead ?? this.pull());
    if ('error' in pulled) {
      this.ahead = Promise.resolve(pulled);
      return null;
    }
    this.ahead = Promise.resolve(pulled);
    return this.nextChunk();
  }

  private async nextChunk(): Promise<Buffer | null> {
    for (;;) {
      this.opts.signal?.throwIfAborted();
      if (this.done) return null;
      const pulled = await (this.ahead ?? this.pull());
      this.ahead = undefined;
      if ('error' in pulled) {
        this.done = true;
        throw pulled.error;
      }
      if (pulled.value.done === true) {
        this.done = true;
        return null;
      }
      const chunk = asBuffer(pulled.value.value);
      this.ahead = this.pull();
      if (chunk.length === 0) continue;
      this.bytes += chunk.length;
      if (this.bytes - this.reported >= PROGRESS_STEP) this.reportProgress();
      return chunk;
    }
  }

  reportProgress(): void {
    if (this.opts.onProgress === undefined || this.reported === this.bytes) return;
    this.reported = this.bytes;
    this.opts.onProgress(this.bytes);
  }

  /**
   * Lets the source stop (a Node stream is destroyed, a generator runs its
   * finally) once the read in flight, if any, has settled.
   */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    // A Node stream settles the read in flight at once when destroyed; a generator finishes it first.
    const { destroy } = this.source as { destroy?: unknown };
    if (!this.done && typeof destroy === 'function') (destroy as () => void).call(this.source);
    const ahead = this.ahead;
    this.ahead = undefined;
    if (ahead !== undefined) await ahead;
    if (!this.done) await this.iterator.return?.();
  }
}

const magics: Array<[bytes: number[], name: string]> = [
  [[0x28, 0xb5, 0x2f, 0xfd], 'zstd'],
  [[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], 'xz'],
  [[0x42, 0x5a, 0x68], 'bzip2'],
  [[0x04, 0x22, 0x4d, 0x18], 'lz4'],
  [[0x50, 0x4b, 0x03, 0x04], 'zip'],
];

function formatHint(head: Buffer): string | undefined {
  for (const [bytes, name] of magics) {
    if (bytes.every((b, i) => head[i] === b))
      return `it looks like ${name} data, which is not supported`;
  }
  return undefined;
}

class PlainArchive implements ArchiveStream {
  readonly compression = 'none';
  readonly formatHint: string | undefined;
  private head: Buffer | null;

  constructor(
    private readonly input: SourceReader,
    head: Buffer,
  ) {
    this.head = head;
    this.formatHint = formatHint(head);
  }

  next(): Promise<Buffer | null> {
    const head = this.head;
    if (head === null) return this.input.next();
    this.head = null;
    return Promise.resolve(head);
  }

  async drain(): Promise<void> {
    while ((await this.input.next()) !== null);
  }

  close(): Promise<void> {
    return this.input.release();
  }

  reportProgress(): void {
    this.input.reportProgress();
  }
}

function gzipFailure(err: unknown): unknown {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  if (code === 'Z_BUF_ERROR') {
    return new ImageError('ARCHIVE_TRUNCATED', 'the gzip stream is truncated', undefined, {
      cause: err,
    });
  }
  if (typeof code === 'string' && code.startsWith('Z_')) {
    const detail = (err as Error).message;
    return new ImageError('ARCHIVE_MALFORMED', `the gzip data is corrupt (${detail})`, undefined, {
      cause: err,
    });
  }
  return err;
}

/**
 * Source chunks are written into zlib by a feeder task while the tar reader
 * pulls inflated chunks; the two meet through the Gunzip stream's buffers,
 * which bounds memory. The feeder keeps reading the source after inflating
 * stops (drain) and releases it when the unpack fails (close).
 */
class GzipArchive implements ArchiveStream {
  readonly compression = 'gzip';
  readonly formatHint = undefined;
  private readonly gunzip: Gunzip;
  private readonly output: AsyncIterator<Buffer>;
  private readonly feeding: Promise<void>;
  private inflating = true;
  private stopped = false;

  constructor(
    private readonly input: SourceReader,
    head: Buffer,
    zlib: typeof import('node:zlib'),
  ) {
    this.gunzip = zlib.createGunzip({ chunkSize: GUNZIP_CHUNK });
    this.output = this.gunzip[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
    this.feeding = this.feed(head);
    // A source error while inflating reaches the reader through the output, in order.
    this.feeding.catch((err: unknown) => this.gunzip.destroy(err as Error));
  }

  private async feed(first: Buffer): Promise<void> {
    let chunk: Buffer | null = first;
    while (chunk !== null && !this.stopped) {
      if (this.inflating) await this.write(chunk);
      chunk = this.stopped ? null : await this.input.next();
    }
    if (this.stopped) return this.input.release();
    if (this.inflating) this.gunzip.end();
  }

  /** Resolves when zlib wants more, or once it is gone (an inflate error is reported through output). */
  private write(chunk: Buffer): Promise<void> {
    if (this.gunzip.destroyed || this.gunzip.write(chunk)) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        this.gunzip.off('drain', done);
        this.gunzip.off('close', done);
        resolve();
      };
      this.gunzip.on('drain', done);
      this.gunzip.on('close', done);
    });
  }

  async next(): Promise<Buffer | null> {
    try {
      const result = await this.output.next();
      return result.done === true ? null : result.value;
    } catch (err) {
      throw gzipFailure(err);
    }
  }

  async drain(): Promise<void> {
    this.inflating = false;
    this.gunzip.destroy();
    await this.feeding;
  }

  /**
   * The feeder may be waiting on the source; it releases the source once that
   * read returns. Its later errors have no one left to tell: the unpack
   * already failed with the first one.
   */
  close(): Promise<void> {
    this.stopped = true;
    this.inflating = false;
    this.gunzip.destroy();
    return Promise.resolve();
  }

  reportProgress(): void {
    this.input.reportProgress();
  }
}

/** Reads the first bytes to pick the decoder. Rejects with ARCHIVE_EMPTY for a 0-byte object. */
export async function openArchive(
  source: ArchiveSource,
  opts: SourceOptions,
): Promise<ArchiveStream> {
  const input = new SourceReader(source, opts);
  try {
    let head = await input.next();
    if (head === null) throw new ImageError('ARCHIVE_EMPTY', 'the object is empty (0 bytes)');
    // Magic numbers need a few bytes; a source may hand them over one at a time.
    while (head.length < 6) {
      const more = await input.next();
      if (more === null) break;
      head = Buffer.concat([head, more]);
    }
    if (compressionOf(head) !== 'gzip') return new PlainArchive(input, head);
    // Loaded only when needed: a cold process starts faster on a plain tar.
    return new GzipArchive(input, head, await import('node:zlib'));
  } catch (err) {
    await input.release();
    throw err;
  }
}
