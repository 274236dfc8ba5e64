/**
 * PAX extended header records ("<len> <keyword>=<value>\n"), kept as raw
 * bytes: SCHILY.xattr values are binary and must not go through a text
 * decoder, and names are decoded strictly by the reader.
 */
import { ImageError } from '../errors.js';
import type { Timestamp } from './times.js';

/** Keyword (latin1, so any byte survives) → raw value. */
export type PaxRecords = Map<string, Buffer>;

const SPACE = 0x20;
const EQUALS = 0x3d;
const NEWLINE = 0x0a;

function malformed(detail: string): ImageError {
  return new ImageError('ARCHIVE_MALFORMED', `malformed PAX extended header: ${detail}`);
}

function isAllZero(data: Uint8Array, from: number): boolean {
  for (let i = from; i < data.length; i++) if (data[i] !== 0) return false;
  return true;
}

const DIGIT_0 = 0x30;
const DIGIT_9 = 0x39;
/** A record length has at most this many digits (as the old /^[1-9][0-9]{0,8}$/ allowed). */
const MAX_LENGTH_DIGITS = 9;

/** The decimal length before the space at `pos`: no leading zero, at most 9 digits; -1 if malformed. */
function recordLength(data: Buffer, pos: number): { length: number; space: number } | undefined {
  let length = 0;
  let i = pos;
  const limit = Math.min(data.length, pos + MAX_LENGTH_DIGITS + 1);
  for (; i < limit; i++) {
    const c = data[i]!;
    if (c === SPACE) break;
    if (c < DIGIT_0 || c > DIGIT_9 || (i === pos && c === DIGIT_0)) return undefined;
    length = length * 10 + (c - DIGIT_0);
  }
  if (i === pos || i >= limit || data[i] !== SPACE) return undefined;
  return { length, space: i };
}

const LOWER_A = 0x61;
const LOWER_C = 0x63;

/**
 * "atime" or "ctime": GNU tar writes both for every member and restores
 * neither (it leaves the atime alone and cannot set a ctime).
 */
function isUnusedTime(data: Buffer, key: number, equals: number): boolean {
  return (
    equals - key === 5 &&
    (data[key] === LOWER_A || data[key] === LOWER_C) &&
    data[key + 1] === 0x74 && // t
    data[key + 2] === 0x69 && // i
    data[key + 3] === 0x6d && // m
    data[key + 4] === 0x65 // e
  );
}

/**
 * `skipUnusedTimes` leaves out atime and ctime records (still checked for
 * form): the reader has no use for them, and they are two of the three
 * records most members carry.
 */
export function parsePaxRecords(data: Buffer, skipUnusedTimes = false): PaxRecords {
  const records: PaxRecords = new Map();
  let pos = 0;
  // Some writers NUL-pad the record area; nothing else may follow the last record.
  while (pos < data.length && (data[pos] !== 0 || !isAllZero(data, pos))) {
    const parsed = recordLength(data, pos);
    if (parsed === undefined) throw malformed('bad record length');
    const { length, space } = parsed;
    const end = pos + length;
    if (end > data.length || data[end - 1] !== NEWLINE)
      throw malformed('record overruns its header');
    const equals = data.indexOf(EQUALS, space + 1);
    if (equals === -1 || equals >= end || equals === space + 1)
      throw malformed('record without keyword');
    if (!skipUnusedTimes || !isUnusedTime(data, space + 1, equals)) {
      records.set(data.toString('latin1', space + 1, equals), data.subarray(equals + 1, end - 1));
    }
    pos = end;
  }
  return records;
}

const XATTR_PREFIX = 'SCHILY.xattr.';

/**
 * Layers local records over global ones. An empty value deletes the keyword,
 * as POSIX says, so a local "path=" falls back to the header's own name —
 * except for xattrs, where GNU tar writes and restores empty values as such.
 */
export function mergePaxRecords(base: PaxRecords, update: PaxRecords): PaxRecords {
  // Nearly every member has a local header and there is rarely a global one: no copy then.
  if (base.size === 0 && !hasDeletions(update)) return update;
  const merged = new Map(base);
  for (const [key, value] of update) {
    if (value.length === 0 && !key.startsWith(XATTR_PREFIX)) merged.delete(key);
    else merged.set(key, value);
  }
  return merged;
}

function hasDeletions(records: PaxRecords): boolean {
  for (const [key, value] of records) {
    if (value.length === 0 && !key.startsWith(XATTR_PREFIX)) return true;
  }
  return false;
}

export function paxInteger(records: PaxRecords, key: string): number | undefined {
  const value = records.get(key);
  if (value === undefined) return undefined;
  const text = value.toString('latin1');
  const n = Number(text);
  if (!/^[0-9]+$/.test(text) || !Number.isSafeInteger(n)) {
    throw malformed(`${key} is not a non-negative integer`);
  }
  return n;
}

/** "1700000000", "1700000000.123456789" or "-1.5" → seconds and nanoseconds (0 ≤ ns < 1e9). */
export function parsePaxTime(text: string): Timestamp | undefined {
  const m = /^(-?)([0-9]{1,15})(?:\.([0-9]*))?$/.exec(text);
  if (m === null) return undefined;
  const whole = Number(m[2]);
  const nsec = Number(((m[3] ?? '') + '000000000').slice(0, 9));
  if (m[1] !== '-') return { sec: whole, nsec };
  return nsec === 0 ? { sec: -whole, nsec: 0 } : { sec: -whole - 1, nsec: 1e9 - nsec };
}

const DOT = 0x2e;

/**
 * parsePaxTime's common case read straight from the bytes: a non-negative
 * time of at most 15 integer digits. undefined for anything else, which
 * parsePaxTime then decides.
 */
function parsePlainTime(v: Buffer): Timestamp | undefined {
  const n = v.length;
  let i = 0;
  let sec = 0;
  for (; i < n; i++) {
    const c = v[i]!;
    if (c < DIGIT_0 || c > DIGIT_9) break;
    sec = sec * 10 + (c - DIGIT_0);
  }
  if (i === 0 || i > 15) return undefined;
  if (i === n) return { sec, nsec: 0 };
  if (v[i] !== DOT) return undefined;
  let nsec = 0;
  let digits = 0;
  for (i++; i < n; i++) {
    const c = v[i]!;
    if (c < DIGIT_0 || c > DIGIT_9) return undefined;
    if (digits < 9) {
      nsec = nsec * 10 + (c - DIGIT_0);
      digits++;
    }
  }
  for (; digits < 9; digits++) nsec *= 10;
  return { sec, nsec };
}

export function paxTime(records: PaxRecords, key: string): Timestamp | undefined {
  const value = records.get(key);
  if (value === undefined) return undefined;
  const time = parsePlainTime(value) ?? parsePaxTime(value.toString('latin1'));
  if (time === undefined) throw malformed(`${key} is not a time`);
  return time;
}

const NO_XATTRS: ReadonlyMap<string, Buffer> = new Map();

/**
 * Extended attributes as GNU tar stores them: the name after SCHILY.xattr.
 * with '=' and '%' percent-encoded (only those two, exactly as GNU tar's
 * xattr_decode_keyword undoes them), the value raw.
 */
export function paxXattrs(records: PaxRecords): ReadonlyMap<string, Buffer> {
  if (records.size === 0) return NO_XATTRS;
  // Most members have none: no Map for them.
  let xattrs: Map<string, Buffer> | undefined;
  for (const [key, value] of records) {
    if (!key.startsWith(XATTR_PREFIX)) continue;
    const name = key
      .slice(XATTR_PREFIX.length)
      .replace(/%3D|%25/g, (m) => (m === '%3D' ? '=' : '%'));
    xattrs ??= new Map<string, Buffer>();
    xattrs.set(name, value);
  }
  return xattrs ?? NO_XATTRS;
}

/** GNU sparse files in PAX form (formats 0.x and 1.0) announce themselves with these keywords. */
export function hasSparseRecords(records: PaxRecords): boolean {
  for (const key of records.keys()) if (key.startsWith('GNU.sparse.')) return true;
  return false;
}
