/**
 * Tells a flat rootfs tar from a container image archive by content: the
 * outer compression by magic bytes, then the first tar members' names. A
 * `docker save` or OCI archive starts with image metadata (blobs/, a
 * <64 hex> layer directory or blob, index.json, manifest.json, oci-layout,
 * repositories); no root filesystem does. Names are taken as `tar -C dir .`
 * writes them too: `./` is dropped and the archive's root directory entry
 * itself (`./`) says nothing either way, so the first member below it
 * decides. The bytes read to decide are replayed, so the caller sees the
 * source whole. (A flat tar whose tree turns out to be an image layout all
 * the same is refused after unpacking: see looksLikeImageLayout.)
 */
import fs from 'node:fs';
import { constants, gunzipSync } from 'node:zlib';
import { compressionOf, decompress, type ImageCompression } from '../layer/compression.js';
import { InternalError } from '../errors.js';

export type ArchiveKind = 'flat' | 'container';

export interface SniffedArchive {
  kind: ArchiveKind;
  compression: ImageCompression;
  /** The first few member names, as peeked. */
  names: string[];
  /** The source's bytes as they came (plain or gzip only: zstd and xz are read through tar()). */
  raw: AsyncIterable<Buffer>;
  /** The tar bytes (decompressed). */
  tar(): AsyncIterable<Buffer>;
}

const CONTAINER_MEMBER =
  /^(?:\.\/)?(?:blobs(?:\/.*)?|oci-layout|index\.json|manifest\.json|repositories|[0-9a-f]{64}(?:\.json|\.tar|\/.*)?)\/?$/;

/** Legacy `docker save` layer directories: any name, holding layer.tar, VERSION and json. */
const LEGACY_LAYER_MEMBER = /^(?:\.\/)?[^/]+\/(?:layer\.tar|VERSION|json)$/;

/** The archive's root directory itself: ".", "./", ".//" and the like. */
const ROOT_MEMBER = /^\.?\/*$|^(?:\.\/+)+\.?$/;

/** Looks at the first few members (those whose headers lie in the peeked bytes). */
export function isContainerArchive(names: string[]): boolean {
  const below = names.filter((n) => !ROOT_MEMBER.test(n));
  if (below.length === 0) return false;
  if (CONTAINER_MEMBER.test(below[0]!)) return true;
  return below.some((n) => LEGACY_LAYER_MEMBER.test(n));
}

const FIRST_MEMBERS = 4;

/** Names of the first few members whose headers are in `buf` (plain ustar headers only). */
function firstNames(buf: Buffer): string[] {
  const names: string[] = [];
  for (let pos = 0; pos + 512 <= buf.length && names.length < FIRST_MEMBERS;) {
    const block = buf.subarray(pos, pos + 512);
    const name = headerName(block);
    if (name === undefined) break;
    const size = parseInt(
      block.subarray(124, 136).toString('latin1').replace(/\0.*$/, '').trim() || '0',
      8,
    );
    if (!Number.isFinite(size)) break;
    if (block[156] !== 0x78 && block[156] !== 0x4c && block[156] !== 0x67) names.push(name);
    pos += 512 + Math.ceil(size / 512) * 512;
  }
  return names;
}

/** The name in a ustar header block, or undefined if the block is not one. */
function headerName(block: Buffer): string | undefined {
  if (block.length < 512) return undefined;
  const nul = block.indexOf(0);
  const name = block.subarray(0, nul < 0 || nul > 100 ? 100 : nul).toString('utf8');
  const ustar = block.subarray(257, 262).toString('latin1') === 'ustar';
  if (!ustar || name === '') return undefined;
  const prefixEnd = block.indexOf(0, 345);
  const prefix = block
    .subarray(345, prefixEnd < 0 || prefixEnd > 500 ? 500 : prefixEnd)
    .toString('utf8');
  return prefix === '' ? name : `${prefix}/${name}`;
}

/** Replays `head` then the rest of `it`. */
async function* replay(head: Buffer[], it: AsyncIterator<Uint8Array>): AsyncGenerator<Buffer> {
  let done = false;
  try {
    for (const b of head) yield b;
    for (;;) {
      const r = await it.next();
      if (r.done === true) {
        done = true;
        return;
      }
      yield Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength);
    }
  } finally {
    // Stopped early (a failed unpack): release the source, as the unpacker would have.
    if (!done) await it.return?.();
  }
}

/** Bytes looked at before deciding; the first members' headers lie well within. */
const PEEK_BYTES = 64 * 1024;
const GZIP_PEEK_BYTES = 16 * 1024;

export async function sniffArchive(source: AsyncIterable<Uint8Array>): Promise<SniffedArchive> {
  const it = source[Symbol.asyncIterator]();
  const head: Buffer[] = [];
  let size = 0;
  let ended = false;
  const more = async (): Promise<boolean> => {
    const r = await it.next();
    if (r.done === true) {
      ended = true;
      return false;
    }
    const b = Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength);
    head.push(b);
    size += b.length;
    return true;
  };
  while (size < PEEK_BYTES && (await more()));
  const compression = compressionOf(Buffer.concat(head).subarray(0, 8));
  let names: string[] = [];
  let rawUsed = false;
  const raw = (): AsyncIterable<Buffer> => {
    if (rawUsed) throw new InternalError('the archive source was read twice');
    rawUsed = true;
    return replay(head, ended ? emptyIterator() : it);
  };
  if (compression === 'none') {
    names = firstNames(Buffer.concat(head));
  } else if (compression === 'gzip') {
    for (;;) {
      let out: Buffer;
      try {
        // A bounded prefix: 16 KiB of gzip inflates to at most ~16 MiB, so a bomb cannot fill memory here.
        const prefix = Buffer.concat(head).subarray(0, GZIP_PEEK_BYTES);
        out = gunzipSync(prefix, { finishFlush: constants.Z_SYNC_FLUSH });
      } catch {
        break; // corrupt: the unpacker says so with its own message
      }
      if (out.length >= 512) {
        names = firstNames(out);
        break;
      }
      if (ended || size >= GZIP_PEEK_BYTES || !(await more())) break;
    }
  } else {
    // zstd, xz: decompress anyway (the flat unpacker knows neither), peek at the output.
    const plain = decompress(raw(), compression, 'the archive')[Symbol.asyncIterator]();
    const out: Buffer[] = [];
    let outSize = 0;
    while (outSize < PEEK_BYTES) {
      const r = await plain.next();
      if (r.done === true) break;
      out.push(r.value);
      outSize += r.value.length;
    }
    names = firstNames(Buffer.concat(out));
    const tar = replay(out, plain);
    return {
      kind: isContainerArchive(names) ? 'container' : 'flat',
      compression,
      names,
      get raw(): AsyncIterable<Buffer> {
        throw new InternalError('a zstd or xz archive is only read decompressed (tar())');
      },
      tar: () => tar,
    };
  }
  const kind = isContainerArchive(names) ? 'container' : 'flat';
  let rawStream: AsyncIterable<Buffer> | undefined;
  return {
    kind,
    compression,
    names,
    get raw() {
      rawStream ??= raw();
      return rawStream;
    },
    tar: () => decompress(raw(), compression, 'the archive'),
  };
}

function emptyIterator(): AsyncIterator<Uint8Array> {
  return { next: () => Promise.resolve({ done: true, value: undefined }) };
}

/** Top-level names of a `docker save` archive besides manifest.json: blobs and legacy layer ids. */
const DOCKER_TOP_MEMBER = /^(?:blobs|repositories|[0-9a-f]{64}(?:\.json|\.tar)?)$/;

/**
 * The tree a flat tar unpacked to (at `root`) is an image layout after all:
 * oci-layout and index.json beside blobs/, or manifest.json beside blobs or
 * layer ids. Its first members did not say so (a README tarred first, say),
 * but content decides: such an archive is refused, never kept as a rootfs.
 */
export function looksLikeImageLayout(root: string): boolean {
  const top = new Map<string, fs.Dirent>();
  for (const d of fs.readdirSync(root, { withFileTypes: true })) top.set(d.name, d);
  const file = (name: string): boolean => top.get(name)?.isFile() === true;
  if (file('oci-layout') && file('index.json') && top.get('blobs')?.isDirectory() === true)
    return true;
  return file('manifest.json') && [...top.keys()].some((n) => DOCKER_TOP_MEMBER.test(n));
}
