/**
 * Names of storage objects are derived from ids we allocate, never from S3
 * keys, so nothing an uploader controls reaches a file name or a device name.
 */
import { InternalError } from '../errors.js';
import type { ObjectKind } from '../store/objects.js';

const prefixes: Record<ObjectKind, string> = { volume: 'vol', snapshot: 'snap' };

export function objectName(kind: ObjectKind, id: number): string {
  if (!Number.isSafeInteger(id) || id <= 0) throw new InternalError(`invalid object id ${id}`);
  return `${prefixes[kind]}-${String(id).padStart(8, '0')}`;
}

const namePattern = /^(vol|snap)-(\d{8,})$/;

export function parseObjectName(name: string): { kind: ObjectKind; id: number } | null {
  const m = namePattern.exec(name);
  if (m === null) return null;
  return { kind: m[1] === 'vol' ? 'volume' : 'snapshot', id: Number(m[2]) };
}
