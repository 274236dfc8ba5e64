/**
 * An index of a tar held in a local file: every member's name, type, link
 * target and where its header run (extended headers included) and data lie,
 * found by reading headers and skipping data by offset. Used for the spooled
 * outer archive and for each layer, and (walkTar) for an archive read by
 * ranged GETs. Headers are decoded as the streaming reader decodes them
 * (tar-header.ts, and tar-extended.ts for PAX and GNU long names), so the
 * index names the members the reader will meet.
 */
import fs from 'node:fs';
import { ImageError, type ImageFailureCode } from '../errors.js';
import { ExtendedHeaders, isExtendedHeader } from './tar-extended.js';
import {
  BLOCK_SIZE,
  checksumMatches,
  decodeHeader,
  isZeroBlock,
  type MemberType,
} from './tar-header.js';

export interface IndexedMember {
  name: string;
  linkname: string;
  type: MemberType;
  /** File offset of the first header of this member (its extended headers come first). */
  start: number;
  /** File offset of the member's data. */
  dataOffset: number;
  size: number;
  /** File offset just past the data's padding: [start, end) is the whole member. */
  end: number;
}

/** A byte range of a local file. */
export interface FileRange {
  fd: number;
  offset: number;
  length: number;
}

function padded(size: number): number {
  return Math.ceil(size / BLOCK_SIZE) * BLOCK_SIZE;
}

export function readRange(fd: number, offset: number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const n = fs.readSync(fd, buf, done, length - done, offset + done);
    if (n === 0) break;
    done += n;
  }
  return done === length ? buf : buf.subarray(0, done);
}

/** The shared decoding's errors name no archive: say which one, keeping the reason code. */
function within<T>(what: string, decode: () => T): T {
  try {
    return decode();
  } catch (err) {
    if (!(err instanceof ImageError)) throw err;
    throw new ImageError(err.code as ImageFailureCode, `${what}: ${err.message}`, err.hint, {
      cause: err,
    });
  }
}

/** What the walker asks its driver for: `length` bytes of the tar at `offset`. */
export interface TarRead {
  offset: number;
  length: number;
}

/** One step of walking a tar: bytes to read (answered with them), or a member found. */
export type TarStep = { read: TarRead } | { member: IndexedMember };

/**
 * Walks the tar in [offset, offset + length) header by header, asking its
 * driver for bytes (`yield { read }` is answered with those bytes, fewer
 * only at the end of the source) and yielding each member as it is found;
 * data is skipped by offset. The one tar header parser of the image code,
 * driven by a local file (indexTar) or by ranged GETs (remote-archive.ts).
 * `notTar` is the reason code when the first block is not a tar header at
 * all (LAYER_NOT_TAR for a layer); later damage is ARCHIVE_MALFORMED or
 * ARCHIVE_TRUNCATED, as for a flat tar.
 */
export function* walkTar(
  range: { offset: number; length: number },
  what: string,
  maxEntries: number,
  notTar: ImageFailureCode = 'ARCHIVE_NOT_TAR',
): Generator<TarStep, void, Buffer> {
  let count = 0;
  const limit = range.offset + range.length;
  let pos = range.offset;
  let runStart = -1;
  const records = new ExtendedHeaders();
  for (;;) {
    if (pos + BLOCK_SIZE > limit) {
      if (count === 0 && pos === range.offset)
        throw new ImageError(notTar, `${what} is empty, not a tar`);
      throw new ImageError('ARCHIVE_TRUNCATED', `${what} ends before its end-of-archive marker`);
    }
    const block = yield { read: { offset: pos, length: BLOCK_SIZE } };
    if (block.length < BLOCK_SIZE)
      throw new ImageError('ARCHIVE_TRUNCATED', `${what} ends before its end-of-archive marker`);
    // An empty tar (just the end marker) is a valid, empty layer.
    if (isZeroBlock(block)) return;
    if (!checksumMatches(block)) {
      throw new ImageError(
        count === 0 && runStart < 0 ? notTar : 'ARCHIVE_MALFORMED',
        `${what}: bad tar header checksum at byte ${pos - range.offset}`,
      );
    }
    const header = decodeHeader(block);
    if (header === 'bad-name')
      throw new ImageError('ARCHIVE_BAD_NAME', `${what}: a member name is malformed`);
    if (runStart < 0) runStart = pos;
    const dataOffset = pos + BLOCK_SIZE;
    if (isExtendedHeader(header.typeflag)) {
      within(what, () => records.begin(header.size, pos - range.offset));
      const data =
        header.size === 0
          ? Buffer.alloc(0)
          : yield {
              read: { offset: dataOffset, length: Math.min(header.size, limit - dataOffset) },
            };
      if (data.length < header.size)
        throw new ImageError('ARCHIVE_TRUNCATED', `${what}: an extended header is cut short`);
      within(what, () => records.add(header.typeflag, data));
      pos = dataOffset + padded(header.size);
      continue;
    }
    const { name, linkname, type, size } = within(what, () => records.member(header));
    // Data follows the header whatever the type (the unpacker skips it for links and directories).
    const end = dataOffset + padded(size);
    if (end > limit)
      throw new ImageError('ARCHIVE_TRUNCATED', `${what}: member ${name} is cut short`);
    if (++count > maxEntries)
      throw new ImageError('LIMIT_ENTRY_COUNT', `${what} has more than ${maxEntries} members`);
    yield { member: { name, linkname, type, start: runStart, dataOffset, size, end } };
    runStart = -1;
    pos = end;
  }
}

/** Indexes the tar in `range` of a local file (see walkTar for the reason codes). */
export function indexTar(
  range: FileRange,
  what: string,
  maxEntries: number,
  notTar: ImageFailureCode = 'ARCHIVE_NOT_TAR',
): IndexedMember[] {
  const members: IndexedMember[] = [];
  const walk = walkTar(range, what, maxEntries, notTar);
  for (let step = walk.next(); step.done !== true;) {
    if ('member' in step.value) {
      members.push(step.value.member);
      step = walk.next();
    } else {
      const { offset, length } = step.value.read;
      step = walk.next(readRange(range.fd, offset, length));
    }
  }
  return members;
}
