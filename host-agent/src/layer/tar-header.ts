/**
 * Decoding of one 512-byte tar header block (POSIX ustar, GNU and v7), done
 * here rather than with tar-stream because the unpacker needs what tar-stream
 * hides: raw name bytes (to refuse non-UTF-8 and NUL instead of mangling),
 * raw PAX values (xattr values are binary), global PAX headers, and the
 * end-of-archive marker.
 */
import { ImageError } from '../errors.js';

export const BLOCK_SIZE = 512;

export type MemberType =
  'file' | 'directory' | 'symlink' | 'hardlink' | 'char-device' | 'block-device' | 'fifo';

/** Header fields as stored; names stay bytes until the reader decodes them strictly. */
export interface RawHeader {
  typeflag: number;
  /** prefix + '/' + name for POSIX ustar headers, else the name field. */
  name: Buffer;
  linkname: Buffer;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  devmajor: number;
  devminor: number;
}

const SPACE = 0x20;
const SLASH = 0x2f;

export function isZeroBlock(block: Uint8Array): boolean {
  for (let i = 0; i < BLOCK_SIZE; i++) if (block[i] !== 0) return false;
  return true;
}

/**
 * The checksum treats its own 8 bytes as spaces. GNU tar accepts both the
 * unsigned sum (the standard) and the signed one (old Sun/GNU tars).
 */
export function checksumMatches(block: Buffer): boolean {
  const stored = parseOctal(block, 148, 8);
  if (stored === undefined) return false;
  let unsigned = byteSum(block);
  for (let i = 148; i < 156; i++) unsigned += SPACE - block[i]!;
  if (stored === unsigned) return true;
  let signed = unsigned;
  for (let i = 0; i < BLOCK_SIZE; i++)
    if (block[i]! >= 0x80 && (i < 148 || i >= 156)) signed -= 0x100;
  return stored === signed;
}

/**
 * The sum of a block's bytes. Every header goes through this, so when the
 * block is 4-byte aligned it adds two bytes per 16-bit lane of each word:
 * a quarter of the iterations (each lane stays below 2 * 255 * 128 < 65536).
 */
function byteSum(block: Buffer): number {
  let sum = 0;
  if (block.byteOffset % 4 === 0) {
    const words = new Uint32Array(block.buffer, block.byteOffset, BLOCK_SIZE / 4);
    for (let i = 0; i < words.length; i++) {
      const w = words[i]!;
      sum += (w & 0x00ff00ff) + ((w >>> 8) & 0x00ff00ff);
    }
    return (sum & 0xffff) + (sum >>> 16);
  }
  for (let i = 0; i < BLOCK_SIZE; i++) sum += block[i]!;
  return sum;
}

/** Octal with optional leading spaces and trailing spaces/NULs; undefined if malformed. */
function parseOctal(block: Uint8Array, offset: number, length: number): number | undefined {
  const end = offset + length;
  let i = offset;
  while (i < end && block[i] === SPACE) i++;
  let value = 0;
  for (; i < end; i++) {
    const c = block[i]!;
    if (c < 0x30 || c > 0x37) break;
    value = value * 8 + (c - 0x30);
  }
  for (; i < end; i++) if (block[i] !== SPACE && block[i] !== 0) return undefined;
  return value;
}

/** GNU base-256: top bit set, next bit is the sign, big-endian two's complement. */
function parseBase256(block: Uint8Array, offset: number, length: number): number | undefined {
  const first = block[offset]!;
  let value = (first & 0x40) !== 0 ? (first & 0x7f) - 0x80 : first & 0x7f;
  for (let i = offset + 1; i < offset + length; i++) {
    value = value * 256 + block[i]!;
    if (!Number.isSafeInteger(value)) return undefined;
  }
  return value;
}

function numberField(block: Uint8Array, offset: number, length: number, field: string): number {
  const value =
    (block[offset]! & 0x80) !== 0
      ? parseBase256(block, offset, length)
      : parseOctal(block, offset, length);
  if (value === undefined) {
    throw new ImageError('ARCHIVE_MALFORMED', `tar header has an invalid ${field} field`);
  }
  return value;
}

/**
 * A NUL-terminated field. Bytes after the terminator are refused: real tars
 * zero-fill, and a name that hides text after a NUL is hostile or corrupt.
 */
function stringField(block: Buffer, offset: number, length: number): Buffer | undefined {
  // Plain loops: Buffer#indexOf costs more than it saves on fields this small.
  const end = offset + length;
  let nul = offset;
  while (nul < end && block[nul] !== 0) nul++;
  for (let i = nul + 1; i < end; i++) if (block[i] !== 0) return undefined;
  return block.subarray(offset, nul);
}

function isPosixUstar(block: Uint8Array): boolean {
  // "ustar\0" then version "00"; GNU writes "ustar  \0" and uses the prefix area for other things.
  return (
    block[257] === 0x75 &&
    block[258] === 0x73 &&
    block[259] === 0x74 &&
    block[260] === 0x61 &&
    block[261] === 0x72 &&
    block[262] === 0
  );
}

/**
 * Decodes a block whose checksum has been verified. The name bytes are views
 * into the block: decode them before the next block is read.
 */
export function decodeHeader(block: Buffer): RawHeader | 'bad-name' {
  let name = stringField(block, 0, 100);
  const linkname = stringField(block, 157, 100);
  if (name === undefined || linkname === undefined) return 'bad-name';
  if (isPosixUstar(block)) {
    const prefix = stringField(block, 345, 155);
    if (prefix === undefined) return 'bad-name';
    if (prefix.length > 0) name = Buffer.concat([prefix, Buffer.of(SLASH), name]);
  }
  const typeflag = block[156]!;
  const isDevice = typeflag === 0x33 || typeflag === 0x34;
  return {
    typeflag,
    name,
    linkname,
    mode: numberField(block, 100, 8, 'mode') & 0o7777,
    uid: numberField(block, 108, 8, 'uid'),
    gid: numberField(block, 116, 8, 'gid'),
    size: numberField(block, 124, 12, 'size'),
    mtime: numberField(block, 136, 12, 'mtime'),
    // Only devices use them (GNU tar ignores them otherwise): skip the parse for the rest.
    devmajor: isDevice ? numberField(block, 329, 8, 'devmajor') : 0,
    devminor: isDevice ? numberField(block, 337, 8, 'devminor') : 0,
  };
}

/** Typeflags of the extended headers that modify the next member. */
export const EXT_PAX = 0x78; // 'x'
export const EXT_PAX_GLOBAL = 0x67; // 'g'
export const EXT_GNU_LONGNAME = 0x4c; // 'L'
export const EXT_GNU_LONGLINK = 0x4b; // 'K'

const unsupportedTypes: Record<string, string> = {
  S: 'a GNU sparse file',
  M: 'a GNU multi-volume continuation',
  V: 'a GNU volume label',
  D: 'a GNU incremental dump directory',
  N: 'an old GNU long-name record',
  X: 'a Solaris extended header',
  A: 'a Solaris access control list',
  E: 'a Solaris extended attribute',
  I: 'a Solaris inode metadata record',
};

/** The member type of a typeflag, or a phrase saying what unsupported thing it is. */
export function memberType(typeflag: number, name: string): MemberType | { unsupported: string } {
  switch (typeflag) {
    case 0:
    case 0x30: // '0'
    case 0x37: // '7' contiguous file: a regular file everywhere but on old Masscomp
      // BSD/v7 convention, followed by GNU tar: a "file" named with a trailing slash is a directory.
      return name.endsWith('/') ? 'directory' : 'file';
    case 0x31:
      return 'hardlink';
    case 0x32:
      return 'symlink';
    case 0x33:
      return 'char-device';
    case 0x34:
      return 'block-device';
    case 0x35:
      return 'directory';
    case 0x36:
      return 'fifo';
    default: {
      const flag = String.fromCharCode(typeflag);
      const what =
        unsupportedTypes[flag] ??
        `an unknown member type ${typeflag >= 0x21 && typeflag < 0x7f ? `'${flag}'` : `0x${typeflag.toString(16)}`}`;
      return { unsupported: what };
    }
  }
}
