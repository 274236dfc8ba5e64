/**
 * Archive builders for the unpacker's tests: tar-stream's pack for ordinary
 * archives, raw 512-byte blocks for what pack cannot (or will not) write —
 * bad checksums, lying size fields, truncation, NUL bytes and '..' in GNU
 * long names or PAX records, binary xattr values, device numbers.
 */
import { randomBytes } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { pack, type Header } from 'tar-stream';

export type PackEntry = Partial<Header> & Pick<Header, 'name'> & { content?: string | Buffer };

/** A complete archive (with end marker) written by tar-stream. */
export async function packTar(entries: readonly PackEntry[]): Promise<Buffer> {
  const p = pack();
  const chunks: Buffer[] = [];
  const collected = (async () => {
    for await (const chunk of p) chunks.push(chunk as Buffer);
  })();
  for (const { content, ...header } of entries) {
    await new Promise<void>((resolve, reject) => {
      const done = (err?: Error | null): void => (err ? reject(err) : resolve());
      if (content === undefined) p.entry(header, done);
      else p.entry(header, content, done);
    });
  }
  p.finalize();
  await collected;
  return Buffer.concat(chunks);
}

export interface RawHeaderFields {
  name: string | Buffer;
  /** Typeflag character: '0' file, '1' hard link, '2' symlink, '3'/'4' devices, '5' dir, 'x', 'L'... */
  type?: string;
  size?: number;
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  linkname?: string | Buffer;
  devmajor?: number;
  devminor?: number;
  /** POSIX ustar prefix field (joined to name with '/'). */
  prefix?: string;
  /** 'posix' (ustar\0 00, the default) or 'gnu' (ustar  \0). */
  format?: 'posix' | 'gnu';
}

function octal(value: number, width: number): string {
  return value.toString(8).padStart(width - 1, '0') + '\0';
}

function put(block: Buffer, offset: number, value: string | Buffer, max: number): void {
  const bytes = typeof value === 'string' ? Buffer.from(value) : value;
  if (bytes.length > max) throw new Error(`fixture field too long: ${bytes.length} > ${max}`);
  bytes.copy(block, offset);
}

/** Recomputes the checksum (unsigned sum with the field as spaces). */
export function sealHeader(block: Buffer): Buffer {
  block.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of block) sum += b;
  block.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
  return block;
}

/** One 512-byte header block with a valid checksum. */
export function rawHeader(f: RawHeaderFields): Buffer {
  const block = Buffer.alloc(512);
  put(block, 0, f.name, 100);
  put(block, 100, octal(f.mode ?? 0o644, 8), 8);
  put(block, 108, octal(f.uid ?? 0, 8), 8);
  put(block, 116, octal(f.gid ?? 0, 8), 8);
  put(block, 124, octal(f.size ?? 0, 12), 12);
  put(block, 136, octal(f.mtime ?? 1_600_000_000, 12), 12);
  block[156] = (f.type ?? '0').charCodeAt(0);
  if (f.linkname !== undefined) put(block, 157, f.linkname, 100);
  if (f.format === 'gnu') put(block, 257, 'ustar  \0', 8);
  else put(block, 257, 'ustar\u000000', 8);
  put(block, 329, octal(f.devmajor ?? 0, 8), 8);
  put(block, 337, octal(f.devminor ?? 0, 8), 8);
  if (f.prefix !== undefined) put(block, 345, f.prefix, 155);
  return sealHeader(block);
}

/** Data padded to a whole number of blocks. */
export function padded(data: Buffer): Buffer {
  const tail = data.length % 512;
  return tail === 0 ? data : Buffer.concat([data, Buffer.alloc(512 - tail)]);
}

/** A member: header plus padded data (size taken from the data unless given). */
export function rawMember(f: RawHeaderFields, data: string | Buffer = Buffer.alloc(0)): Buffer {
  const bytes = typeof data === 'string' ? Buffer.from(data) : data;
  return Buffer.concat([rawHeader({ size: bytes.length, ...f }), padded(bytes)]);
}

/** PAX record area: "<len> <key>=<value>\n" for each record, values raw. */
export function paxData(records: Record<string, string | Buffer>): Buffer {
  const parts: Buffer[] = [];
  for (const [key, value] of Object.entries(records)) {
    const body = Buffer.concat([Buffer.from(` ${key}=`), Buffer.from(value), Buffer.from('\n')]);
    let length = body.length + 1;
    while (String(length).length + body.length !== length)
      length = String(length).length + body.length;
    parts.push(Buffer.from(String(length)), body);
  }
  return Buffer.concat(parts);
}

/** A PAX extended header ('x', or 'g' for global) applying to the next member. */
export function paxHeader(records: Record<string, string | Buffer>, global = false): Buffer {
  const data = paxData(records);
  return rawMember(
    { name: global ? 'pax_global_header' : 'PaxHeader/x', type: global ? 'g' : 'x' },
    data,
  );
}

/** A GNU long name ('L') or long link target ('K') record, NUL-terminated like GNU tar's. */
export function gnuLongName(name: string | Buffer, kind: 'L' | 'K' = 'L'): Buffer {
  const data = Buffer.concat([Buffer.from(name), Buffer.of(0)]);
  return rawMember({ name: '././@LongLink', type: kind, format: 'gnu' }, data);
}

export const endOfArchive = (): Buffer => Buffer.alloc(1024);

/** A whole raw archive: the parts, then the end-of-archive marker. */
export function rawTar(...parts: Buffer[]): Buffer {
  return Buffer.concat([...parts, endOfArchive()]);
}

/** Flips a byte inside the header at `offset` without fixing the checksum. */
export function corruptChecksum(archive: Buffer, headerOffset: number): Buffer {
  const copy = Buffer.from(archive);
  copy[headerOffset + 1] = (copy[headerOffset + 1]! + 1) & 0xff;
  return copy;
}

export function gzip(data: Buffer): Buffer {
  return gzipSync(data);
}

/** The bytes as an async iterable of `size`-byte chunks (exercises split headers). */
export async function* chunked(data: Buffer, size = 7919): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < data.length; i += size) {
    await Promise.resolve();
    yield new Uint8Array(data.buffer, data.byteOffset + i, Math.min(size, data.length - i));
  }
}

/** A tiny rootfs whose /etc/hostname holds `marker` (content differs per call: random tool bytes). */
export const smallRootfsTar = (marker: string): Promise<Buffer> =>
  packTar([
    { name: 'etc/', type: 'directory' },
    { name: 'etc/hostname', content: `${marker}\n` },
    { name: 'bin/tool', content: randomBytes(4096), mode: 0o755 },
  ]);

/**
 * A `docker save` archive (Docker 25+ names: blobs/sha256/<hex>) of `layers`,
 * plain tars (gzip-compressed blobs with `gzipLayers`), with manifest.json last — as it must be spooled whole.
 * `before`: members written first (a bomb's padding, say).
 */
export async function dockerSaveArchive(
  layers: readonly Buffer[],
  before: readonly PackEntry[] = [],
  opts: { gzipLayers?: boolean } = {},
): Promise<Buffer> {
  const { createHash } = await import('node:crypto');
  const hex = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
  const config = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: {},
      rootfs: { type: 'layers', diff_ids: layers.map((l) => `sha256:${hex(l)}`) },
    }),
  );
  const stored = layers.map((l) => (opts.gzipLayers === true ? gzipSync(l) : l));
  const blobs = new Map<string, Buffer>([[hex(config), config]]);
  for (const l of stored) blobs.set(hex(l), l);
  return packTar([
    { name: 'blobs/', type: 'directory' },
    { name: 'blobs/sha256/', type: 'directory' },
    ...before,
    ...[...blobs].map(([h, content]) => ({ name: `blobs/sha256/${h}`, content })),
    {
      name: 'manifest.json',
      content: JSON.stringify([
        {
          Config: `blobs/sha256/${hex(config)}`,
          RepoTags: ['hostile:1'],
          Layers: stored.map((l) => `blobs/sha256/${hex(l)}`),
        },
      ]),
    },
  ]);
}
