/**
 * Extended headers (PAX 'x' and 'g', GNU 'L' and 'K') and what they make of
 * the member header that follows: its name, link target, type and size.
 * One reading for the streaming reader (tar-reader.ts) and the index of a
 * tar on disk or read by range (tar-index.ts), so both see the same members:
 * names decoded strictly (a NUL byte or invalid UTF-8 is refused, never
 * mangled), global PAX records applied, sparse and unknown types refused.
 */
import { ImageError } from '../errors.js';
import {
  hasSparseRecords,
  mergePaxRecords,
  paxInteger,
  parsePaxRecords,
  type PaxRecords,
} from './pax.js';
import { printable, printableBytes } from './printable.js';
import {
  EXT_GNU_LONGLINK,
  EXT_GNU_LONGNAME,
  EXT_PAX,
  EXT_PAX_GLOBAL,
  memberType,
  type MemberType,
  type RawHeader,
} from './tar-header.js';

/** PAX headers hold paths and xattrs; anything near this is an attack, not an image. */
export const MAX_EXTENDED_HEADER_BYTES = 8 * 1024 * 1024;
/** x, g, L, K: more than a handful in a row before one member is not a real archive. */
const MAX_EXTENDED_HEADERS_IN_A_ROW = 8;

/** Whether a header's typeflag makes it an extended header rather than a member. */
export function isExtendedHeader(typeflag: number): boolean {
  return (
    typeflag === EXT_PAX ||
    typeflag === EXT_PAX_GLOBAL ||
    typeflag === EXT_GNU_LONGNAME ||
    typeflag === EXT_GNU_LONGLINK
  );
}

/** A member header with the extended headers before it applied. */
export interface ResolvedHeader {
  /** As the archive gives it (PAX path / GNU long name applied), not yet normalised. */
  name: string;
  linkname: string;
  type: MemberType;
  /** Bytes of data that follow the header (PAX size applied). */
  size: number;
  /** Global and local PAX records in force for this member. */
  pax: PaxRecords;
}

export class ExtendedHeaders {
  private longName: Buffer | undefined;
  private longLink: Buffer | undefined;
  private localPax: PaxRecords | undefined;
  private globalPax: PaxRecords = new Map();
  private inARow = 0;

  /** Whether extended headers were read that no member has followed yet. */
  get pending(): boolean {
    return this.inARow > 0;
  }

  /** An extended header of `size` data bytes starts at offset `at`: checked before its data is read. */
  begin(size: number, at: number): void {
    if (++this.inARow > MAX_EXTENDED_HEADERS_IN_A_ROW) {
      throw new ImageError(
        'ARCHIVE_MALFORMED',
        `too many extended headers in a row at offset ${at}`,
      );
    }
    if (size > MAX_EXTENDED_HEADER_BYTES) {
      throw new ImageError(
        'ARCHIVE_MALFORMED',
        `the extended header at offset ${at} is ${size} bytes, more than ${MAX_EXTENDED_HEADER_BYTES}`,
      );
    }
  }

  /** The whole data of the extended header begun last. */
  add(typeflag: number, data: Buffer): void {
    switch (typeflag) {
      case EXT_GNU_LONGNAME:
        this.longName = longNameBytes(data);
        break;
      case EXT_GNU_LONGLINK:
        this.longLink = longNameBytes(data);
        break;
      case EXT_PAX:
        this.localPax = mergePaxRecords(
          this.localPax ?? new Map<string, Buffer>(),
          parsePaxRecords(data, true),
        );
        break;
      default:
        this.globalPax = mergePaxRecords(this.globalPax, parsePaxRecords(data, true));
    }
  }

  /** The member `header` describes; the records that applied to it alone are used up. */
  member(header: RawHeader): ResolvedHeader {
    const pax =
      this.localPax === undefined ? this.globalPax : mergePaxRecords(this.globalPax, this.localPax);
    const nameBytes = pax.get('path') ?? this.longName ?? header.name;
    const linkBytes = pax.get('linkpath') ?? this.longLink ?? header.linkname;
    this.longName = undefined;
    this.longLink = undefined;
    this.localPax = undefined;
    this.inARow = 0;
    const name = decodeName(nameBytes, () => 'member name');
    const what = (): string => `member ${printable(name)}`;
    const linkname = decodeName(linkBytes, () => `${what()}: link target`);
    const type = memberType(header.typeflag, name);
    if (typeof type !== 'string') {
      throw new ImageError(
        'ARCHIVE_UNSUPPORTED_ENTRY',
        `${what()} is ${type.unsupported}, which is not supported`,
      );
    }
    if (pax.size > 0 && hasSparseRecords(pax)) {
      throw new ImageError(
        'ARCHIVE_UNSUPPORTED_ENTRY',
        `${what()} is a GNU sparse file, which is not supported`,
      );
    }
    const size = pax.size > 0 ? (paxInteger(pax, 'size') ?? header.size) : header.size;
    return { name, linkname, type, size, pax };
  }
}

/** GNU long names carry a terminating NUL (sometimes several); any other NUL is hidden text. */
function longNameBytes(buf: Buffer): Buffer {
  let end = buf.length;
  while (end > 0 && buf[end - 1] === 0) end--;
  const bytes = buf.subarray(0, end);
  if (hasNul(bytes)) {
    throw new ImageError(
      'ARCHIVE_BAD_NAME',
      `GNU long name ${printableBytes(bytes)} contains a NUL byte`,
    );
  }
  return bytes;
}

function hasNul(bytes: Uint8Array): boolean {
  for (let i = 0; i < bytes.length; i++) if (bytes[i] === 0) return true;
  return false;
}

/**
 * Names must be valid UTF-8: a replacement character after decoding means
 * they were not (or carry U+FFFD, which no real path needs), and writing the
 * mangled name would not be what the archive says.
 */
function decodeName(bytes: Buffer, what: () => string): string {
  if (bytes.length === 0) return '';
  if (hasNul(bytes)) {
    throw new ImageError(
      'ARCHIVE_BAD_NAME',
      `${what()} ${printableBytes(bytes)} contains a NUL byte`,
    );
  }
  const text = bytes.toString('utf8');
  if (text.includes('\ufffd')) {
    throw new ImageError(
      'ARCHIVE_BAD_NAME',
      `${what()} ${printableBytes(bytes)} is not valid UTF-8`,
    );
  }
  return text;
}
