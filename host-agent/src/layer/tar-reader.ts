/**
 * A push parser for the tar stream. It is fed decompressed chunks and calls
 * the sink synchronously: member() for each member (extended headers and
 * GNU long names already applied), data() with views into the chunk (no
 * copies), memberEnd(). It stops at the end-of-archive marker (two zero
 * blocks) and finish() says what is wrong when the stream ended before it.
 */
import { ImageError } from '../errors.js';
import { paxInteger, paxTime, paxXattrs, type PaxRecords } from './pax.js';
import { printable, printableBytes } from './printable.js';
import { ExtendedHeaders, isExtendedHeader } from './tar-extended.js';
import {
  BLOCK_SIZE,
  checksumMatches,
  decodeHeader,
  isZeroBlock,
  type MemberType,
  type RawHeader,
} from './tar-header.js';
import type { Timestamp } from './times.js';

export interface TarMember {
  /** 1-based position among the archive's members (extended headers not counted). */
  index: number;
  /** The name as the archive gives it (PAX path / GNU long name applied), not yet normalised. */
  name: string;
  linkname: string;
  type: MemberType;
  /** Bytes of data that follow the header. */
  size: number;
  /** Permission bits including setuid, setgid and sticky. */
  mode: number;
  uid: number;
  gid: number;
  mtime: Timestamp;
  devmajor: number;
  devminor: number;
  /** Every SCHILY.xattr record (name → raw value); which ones to restore is the caller's choice. */
  xattrs: ReadonlyMap<string, Buffer>;
}

export interface TarSink {
  member(member: TarMember): void;
  data(chunk: Buffer): void;
  memberEnd(): void;
}

export interface TarReaderLimits {
  /** Total member data (and extended header data) allowed: LIMIT_UNPACKED_BYTES. */
  maxContentBytes: number;
  maxEntries: number;
}

type State = 'header' | 'data' | 'extended' | 'padding' | 'end';

interface Extended {
  typeflag: number;
  buf: Buffer;
  filled: number;
}

function paddingFor(size: number): number {
  const tail = size % BLOCK_SIZE;
  return tail === 0 ? 0 : BLOCK_SIZE - tail;
}

export class TarReader {
  private state: State = 'header';
  /** Carries a header block split across chunks. */
  private readonly carry = Buffer.alloc(BLOCK_SIZE);
  private carried = 0;
  private remaining = 0;
  private padding = 0;
  private extended: Extended | undefined;
  /** The extended headers read since the last member (and the global ones). */
  private readonly headerRecords = new ExtendedHeaders();
  private zeroBlocks = 0;
  private headers = 0;
  private members = 0;
  private contentBytes = 0;
  private current: TarMember | undefined;
  /** Bytes of the tar stream consumed so far. */
  private offset = 0;

  constructor(
    private readonly sink: TarSink,
    private readonly limits: TarReaderLimits,
  ) {}

  /** True once the end-of-archive marker has been read: the rest of the stream is ignored. */
  get ended(): boolean {
    return this.state === 'end';
  }

  push(chunk: Buffer): void {
    let pos = 0;
    while (pos < chunk.length && this.state !== 'end') {
      switch (this.state) {
        case 'header':
          pos = this.consumeHeader(chunk, pos);
          break;
        case 'data':
          pos = this.consumeData(chunk, pos);
          break;
        case 'extended':
          pos = this.consumeExtended(chunk, pos);
          break;
        case 'padding': {
          const n = Math.min(this.padding, chunk.length - pos);
          this.padding -= n;
          this.offset += n;
          pos += n;
          if (this.padding === 0) this.state = 'header';
          break;
        }
      }
    }
  }

  /** The stream has ended: throws unless the end-of-archive marker was seen. */
  finish(): void {
    if (this.state === 'end') return;
    throw this.truncation();
  }

  private truncation(): ImageError {
    const truncated = (detail: string): ImageError =>
      new ImageError(
        'ARCHIVE_TRUNCATED',
        `archive is truncated: ${detail}`,
        'the object was probably cut short on upload; upload it again',
      );
    if (this.headers === 0 && this.zeroBlocks === 0) {
      if (this.carried === 0)
        return new ImageError(
          'ARCHIVE_EMPTY',
          'the archive is empty (no data after decompression)',
        );
      const looksLikeTar =
        this.carried >= 262 && this.carry.toString('latin1', 257, 262) === 'ustar';
      return looksLikeTar
        ? truncated(`it ends inside the first header (${this.carried} bytes)`)
        : new ImageError(
            'ARCHIVE_NOT_TAR',
            `not a tar archive (only ${this.carried} bytes of data)`,
          );
    }
    const after = this.current === undefined ? '' : ` (member ${printable(this.current.name)})`;
    switch (this.state) {
      case 'data':
        return truncated(
          `member ${printable(this.current!.name)} is missing ${this.remaining} of its ${this.current!.size} bytes`,
        );
      case 'extended':
        return truncated(`it ends inside an extended header at offset ${this.offset}`);
      case 'padding':
        return truncated(`it ends inside the padding after a member${after}`);
      default:
        if (this.carried > 0) return truncated(`it ends inside a header at offset ${this.offset}`);
        if (this.zeroBlocks === 1)
          return truncated('only one of the two end-of-archive blocks is present');
        return truncated(
          `it ends without the end-of-archive marker, after ${this.members} members${after}`,
        );
    }
  }

  private consumeHeader(chunk: Buffer, pos: number): number {
    if (this.carried === 0 && chunk.length - pos >= BLOCK_SIZE) {
      this.headerBlock(chunk.subarray(pos, pos + BLOCK_SIZE));
      return pos + BLOCK_SIZE;
    }
    const n = Math.min(BLOCK_SIZE - this.carried, chunk.length - pos);
    chunk.copy(this.carry, this.carried, pos, pos + n);
    this.carried += n;
    if (this.carried === BLOCK_SIZE) {
      this.carried = 0;
      this.headerBlock(this.carry);
    }
    return pos + n;
  }

  private consumeData(chunk: Buffer, pos: number): number {
    const n = Math.min(this.remaining, chunk.length - pos);
    this.sink.data(chunk.subarray(pos, pos + n));
    this.remaining -= n;
    this.offset += n;
    if (this.remaining === 0) this.endMember();
    return pos + n;
  }

  private consumeExtended(chunk: Buffer, pos: number): number {
    const ext = this.extended!;
    const n = Math.min(ext.buf.length - ext.filled, chunk.length - pos);
    chunk.copy(ext.buf, ext.filled, pos, pos + n);
    ext.filled += n;
    this.offset += n;
    if (ext.filled === ext.buf.length) this.endExtended(ext);
    return pos + n;
  }

  private headerBlock(block: Buffer): void {
    const at = this.offset;
    this.offset += BLOCK_SIZE;
    if (isZeroBlock(block)) return this.zeroBlock(at);
    if (this.zeroBlocks > 0) {
      throw new ImageError(
        'ARCHIVE_MALFORMED',
        `a lone zero block at offset ${at - BLOCK_SIZE} is followed by more headers`,
      );
    }
    if (!checksumMatches(block)) {
      if (this.headers === 0) {
        throw new ImageError(
          'ARCHIVE_NOT_TAR',
          'not a tar archive (the first header has a bad checksum)',
        );
      }
      throw new ImageError(
        'ARCHIVE_MALFORMED',
        `the tar header at offset ${at} has a bad checksum`,
      );
    }
    this.headers++;
    const header = decodeHeader(block);
    if (header === 'bad-name') {
      let end = 100;
      while (end > 0 && block[end - 1] === 0) end--;
      throw new ImageError(
        'ARCHIVE_BAD_NAME',
        `member ${printableBytes(block.subarray(0, end))}: a name field has a NUL byte inside it (header at offset ${at})`,
      );
    }
    if (isExtendedHeader(header.typeflag)) return this.beginExtended(header, at);
    return this.beginMember(header);
  }

  private zeroBlock(at: number): void {
    if (this.headerRecords.pending) {
      throw new ImageError(
        'ARCHIVE_MALFORMED',
        `an extended header is not followed by a member (offset ${at})`,
      );
    }
    this.zeroBlocks++;
    if (this.zeroBlocks < 2) return;
    this.state = 'end';
    if (this.members === 0)
      throw new ImageError('ARCHIVE_EMPTY', 'the archive contains no members');
  }

  private countContent(size: number, what: () => string): void {
    this.contentBytes += size;
    if (this.contentBytes > this.limits.maxContentBytes) {
      throw new ImageError(
        'LIMIT_UNPACKED_BYTES',
        `${what()}: the archive content exceeds the limit of ${this.limits.maxContentBytes} bytes`,
      );
    }
  }

  private beginExtended(header: RawHeader, at: number): void {
    this.headerRecords.begin(header.size, at);
    this.countContent(header.size, () => `extended header at offset ${at}`);
    const ext: Extended = {
      typeflag: header.typeflag,
      buf: Buffer.allocUnsafe(header.size),
      filled: 0,
    };
    this.padding = paddingFor(header.size);
    this.extended = ext;
    this.state = 'extended';
    if (header.size === 0) this.endExtended(ext);
  }

  private endExtended(ext: Extended): void {
    this.extended = undefined;
    this.state = this.padding > 0 ? 'padding' : 'header';
    this.headerRecords.add(ext.typeflag, ext.buf);
  }

  private beginMember(header: RawHeader): void {
    const member = this.describeMember(header);
    if (member.index > this.limits.maxEntries) {
      throw new ImageError(
        'LIMIT_ENTRY_COUNT',
        `member ${printable(member.name)}: the archive has more than the limit of ${this.limits.maxEntries} members`,
      );
    }
    this.countContent(member.size, () => `member ${printable(member.name)}`);
    this.current = member;
    this.sink.member(member);
    this.remaining = member.size;
    this.padding = paddingFor(member.size);
    if (member.size === 0) this.endMember();
    else this.state = 'data';
  }

  private endMember(): void {
    this.sink.memberEnd();
    this.state = this.padding > 0 ? 'padding' : 'header';
  }

  private describeMember(header: RawHeader): TarMember {
    const { name, linkname, type, size, pax } = this.headerRecords.member(header);
    const member: TarMember = {
      index: ++this.members,
      name,
      linkname,
      type,
      size,
      mode: header.mode,
      uid: header.uid,
      gid: header.gid,
      mtime: { sec: header.mtime, nsec: 0 },
      devmajor: header.devmajor,
      devminor: header.devminor,
      xattrs: NO_XATTRS,
    };
    if (pax.size > 0) applyPax(member, pax);
    checkOwner(member);
    return member;
  }
}

const NO_XATTRS: ReadonlyMap<string, Buffer> = new Map();

/** PAX records override the header's fields (path, linkpath and size are applied already). */
function applyPax(member: TarMember, pax: PaxRecords): void {
  member.uid = paxInteger(pax, 'uid') ?? member.uid;
  member.gid = paxInteger(pax, 'gid') ?? member.gid;
  member.mtime = paxTime(pax, 'mtime') ?? member.mtime;
  member.devmajor = paxInteger(pax, 'SCHILY.devmajor') ?? member.devmajor;
  member.devminor = paxInteger(pax, 'SCHILY.devminor') ?? member.devminor;
  member.xattrs = paxXattrs(pax);
}

/** Linux ids are 32-bit and 2^32-1 means "no change": anything above cannot be recorded. */
const MAX_ID = 0xfffffffe;

function checkOwner(member: TarMember): void {
  for (const [what, id] of [
    ['uid', member.uid],
    ['gid', member.gid],
  ] as const) {
    if (id > MAX_ID)
      throw new ImageError(
        'ARCHIVE_BAD_OWNER',
        `member ${printable(member.name)}: ${what} ${id} is beyond Linux's 32-bit ids (at most ${MAX_ID})`,
      );
  }
}
