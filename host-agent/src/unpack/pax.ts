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

export function parsePaxRecords(data: Buffer): PaxRecords {
  const records: PaxRecords = new Map();
  let pos = 0;
  // Some writers NUL-pad the record area; nothing else may follow the last record.
  while (pos < data.length && !isAllZero(data, pos)) {
    const space = data.indexOf(SPACE, pos);
    const lengthText = space === -1 ? '' : data.toString('latin1', pos, space);
    if (!/^[1-9][0-9]{0,8}$/.test(lengthText)) throw malformed('bad record length');
    const end = pos + Number(lengthText);
    if (end > data.length || data[end - 1] !== NEWLINE)
      throw malformed('record overruns its header');
    const equals = data.indexOf(EQUALS, space + 1);
    if (equals === -1 || equals >= end || equals === space + 1)
      throw malformed('record without keyword');
    records.set(data.toString('latin1', space + 1, equals), data.subarray(equals + 1, end - 1));
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
  const merged = new Map(base);
  for (const [key, value] of update) {
    if (value.length === 0 && !key.startsWith(XATTR_PREFIX)) merged.delete(key);
    else merged.set(key, value);
  }
  return merged;
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

export function paxTime(records: PaxRecords, key: string): Timestamp | undefined {
  const value = records.get(key);
  if (value === undefined) return undefined;
  const time = parsePaxTime(value.toString('latin1'));
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
  const xattrs = new Map<string, Buffer>();
  for (const [key, value] of records) {
    if (!key.startsWith(XATTR_PREFIX)) continue;
    const name = key
      .slice(XATTR_PREFIX.length)
      .replace(/%3D|%25/g, (m) => (m === '%3D' ? '=' : '%'));
    xattrs.set(name, value);
  }
  return xattrs;
}

/** GNU sparse files in PAX form (formats 0.x and 1.0) announce themselves with these keywords. */
export function hasSparseRecords(records: PaxRecords): boolean {
  for (const key of records.keys()) if (key.startsWith('GNU.sparse.')) return true;
  return false;
}
