/**
 * The image event: the one message the fan-out Lambda publishes to every host
 * queue and the host agent consumes. Both sides import this module, so the
 * wire format has exactly one definition.
 *
 * Validation is hand-written (no dependencies: the Lambda bundle and the host
 * agent both stay small) and strict: unknown fields and unknown schema
 * versions are rejected, so a producer ahead of its consumers fails loudly
 * instead of being half-understood. Adding a field means bumping schemaVersion.
 *
 * A signature sidecar's upload (`<image key>.sig` / `.sigstore.json`,
 * schema/sidecar-key.ts) travels as kind `sidecar.put`, `key` the sidecar's
 * own key: the same fields, so no new version; an agent that predates it
 * refuses the message as invalid (INVALID_MESSAGE) rather than taking the
 * sidecar for an image. Sidecar deletions are not sent (lambda/README.md).
 */
import { sidecarTarget } from './sidecar-key.js';

export const IMAGE_EVENT_SCHEMA_VERSION = 1;

export type ImageEventKind = 'image.put' | 'image.delete' | 'sidecar.put';

export interface ImageEvent {
  schemaVersion: 1;
  kind: ImageEventKind;
  bucket: string;
  /** The decoded object key (S3 notifications URL-encode it; this does not). */
  key: string;
  versionId: string | null;
  /** Without quotes, as S3 notifications give it; null for deletes. */
  eTag: string | null;
  size: number | null;
  /** S3's per-key ordering token (hex); compare with compareSequencers. */
  sequencer: string;
  /** ISO 8601, UTC. */
  eventTime: string;
}

/** A message that is not a valid image event; `field` names the culprit. */
export class ImageEventError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`invalid image event: ${message}`);
    this.name = 'ImageEventError';
  }
}

const FIELDS = [
  'schemaVersion',
  'kind',
  'bucket',
  'key',
  'versionId',
  'eTag',
  'size',
  'sequencer',
  'eventTime',
] as const;

const HEX = /^[0-9a-f]+$/i;
const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$/;

export function parseImageEvent(json: string): ImageEvent {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch (err) {
    throw new ImageEventError('(message)', `not JSON (${(err as Error).message})`);
  }
  return validateImageEvent(value);
}

/** Validates an already-parsed value; returns a fresh object with only known fields. */
export function validateImageEvent(value: unknown): ImageEvent {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new ImageEventError('(message)', 'expected a JSON object');
  }
  const o = value as Record<string, unknown>;
  // The version first: a future version may legitimately differ everywhere else.
  if (o.schemaVersion !== IMAGE_EVENT_SCHEMA_VERSION) {
    throw new ImageEventError(
      'schemaVersion',
      `unsupported schemaVersion ${JSON.stringify(o.schemaVersion)} (expected ${IMAGE_EVENT_SCHEMA_VERSION})`,
    );
  }
  for (const name of Object.keys(o)) {
    if (!(FIELDS as readonly string[]).includes(name)) {
      throw new ImageEventError(name, `unknown field "${name}"`);
    }
  }
  const kind = o.kind;
  if (kind !== 'image.put' && kind !== 'image.delete' && kind !== 'sidecar.put') {
    throw new ImageEventError(
      'kind',
      `kind must be "image.put", "image.delete" or "sidecar.put", got ${JSON.stringify(kind)}`,
    );
  }
  const bucket = nonEmptyString(o, 'bucket');
  const key = nonEmptyString(o, 'key');
  if (kind === 'sidecar.put' && sidecarTarget(key) === null) {
    throw new ImageEventError('key', 'a sidecar.put key must end with .sig or .sigstore.json');
  }
  const versionId = o.versionId === null ? null : nonEmptyString(o, 'versionId', ' or null');
  let eTag: string | null;
  if (kind === 'image.delete') {
    if (o.eTag !== null) throw new ImageEventError('eTag', 'eTag must be null for image.delete');
    eTag = null;
  } else {
    // The host agent pins downloads to this ETag: a put without one is useless.
    eTag = nonEmptyString(o, 'eTag', ` for ${kind}`);
  }
  const size = o.size;
  if (size !== null && !(typeof size === 'number' && Number.isSafeInteger(size) && size >= 0)) {
    throw new ImageEventError('size', `size must be a non-negative integer or null`);
  }
  const sequencer = nonEmptyString(o, 'sequencer');
  if (!HEX.test(sequencer)) throw new ImageEventError('sequencer', 'sequencer must be hexadecimal');
  const eventTime = nonEmptyString(o, 'eventTime');
  if (!ISO_UTC.test(eventTime) || Number.isNaN(Date.parse(eventTime))) {
    throw new ImageEventError('eventTime', `eventTime must be an ISO 8601 UTC timestamp`);
  }
  return { schemaVersion: 1, kind, bucket, key, versionId, eTag, size, sequencer, eventTime };
}

/** The image key an event is about: its own key, or for a sidecar the image it signs. */
export function imageKeyOf(event: Pick<ImageEvent, 'kind' | 'key'>): string {
  if (event.kind !== 'sidecar.put') return event.key;
  const target = sidecarTarget(event.key);
  if (target === null) throw new ImageEventError('key', `${event.key} is not a sidecar key`);
  return target.imageKey;
}

/** Validates, then serializes with a fixed field order. */
export function serializeImageEvent(event: ImageEvent): string {
  const e = validateImageEvent(event);
  const out: Record<string, unknown> = {};
  for (const name of FIELDS) out[name] = e[name];
  return JSON.stringify(out);
}

/**
 * S3's documented rule for ordering two events of the same key: right-pad the
 * shorter sequencer with zeros, then compare as strings. Hex is compared
 * case-insensitively. Returns <0, 0 or >0. Only meaningful for the same key.
 */
export function compareSequencers(a: string, b: string): number {
  for (const [name, s] of [
    ['a', a],
    ['b', b],
  ] as const) {
    if (!HEX.test(s))
      throw new ImageEventError('sequencer', `sequencer ${name} is not hexadecimal`);
  }
  const width = Math.max(a.length, b.length);
  const pa = a.toUpperCase().padEnd(width, '0');
  const pb = b.toUpperCase().padEnd(width, '0');
  return pa < pb ? -1 : pa > pb ? 1 : 0;
}

function nonEmptyString(o: Record<string, unknown>, field: string, extra = ''): string {
  const v = o[field];
  if (typeof v !== 'string' || v === '') {
    throw new ImageEventError(field, `${field} must be a non-empty string${extra}`);
  }
  return v;
}
