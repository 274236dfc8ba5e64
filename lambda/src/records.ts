/**
 * S3 notification records → image events. Pure: no I/O besides the log.
 *
 * A record we cannot or should not publish is skipped — with a warning and a
 * reason code the handler counts as a metric — rather than thrown: throwing
 * would make Lambda retry the whole invocation, which can never turn a bad
 * record into a good one.
 *
 * A signature sidecar (`<image key>.sig` / `.sigstore.json`) is never an
 * image: its upload becomes a `sidecar.put` event when the key it signs
 * would be published as an image (same prefix and suffix rules), so it goes
 * to exactly the hosts of that image. Its deletion is skipped
 * (SIDECAR_DELETED): a verified image stays verified until the policy
 * changes (`thinrelay verify --all`), and a waiting one keeps waiting.
 */
import type { S3Event, S3EventRecord } from 'aws-lambda';
import {
  validateImageEvent,
  type ImageEvent,
  type ImageEventKind,
} from '../../schema/image-event.js';
import { sidecarTarget } from '../../schema/sidecar-key.js';
import type { LambdaConfig } from './config.js';

/** The subset of a structured logger we use (Powertools' Logger fits). */
export interface Log {
  info(message: string, ...extra: Record<string, unknown>[]): void;
  warn(message: string, ...extra: Record<string, unknown>[]): void;
}

export type FilterRules = Pick<LambdaConfig, 'buckets' | 'imagePrefix' | 'imageSuffixes'>;

/** S3 URL-encodes keys in notifications, form-style: `+` is a space, `%2B` a plus. */
export function decodeS3Key(raw: string): string {
  return decodeURIComponent(raw.replace(/\+/g, ' '));
}

/** Lambda receives "ObjectCreated:Put"; via SNS/SQS the name may carry "s3:". */
export function kindOf(eventName: string): Exclude<ImageEventKind, 'sidecar.put'> | null {
  const name = eventName.startsWith('s3:') ? eventName.slice(3) : eventName;
  if (name.startsWith('ObjectCreated:')) return 'image.put';
  if (name.startsWith('ObjectRemoved:')) return 'image.delete';
  return null;
}

/** Why a record was not published: the `reason` dimension of the RecordsSkipped metric. */
export type SkipReason =
  | 'NOT_PUT_OR_DELETE'
  | 'BUCKET_NOT_CONFIGURED'
  | 'KEY_BAD_ENCODING'
  | 'FOLDER_PLACEHOLDER'
  | 'OUTSIDE_PREFIX'
  | 'SUFFIX_NOT_CONFIGURED'
  | 'SIDECAR_DELETED'
  | 'SIDECAR_OF_SIDECAR'
  | 'INVALID_EVENT';

export type RecordResult = { event: ImageEvent } | { skipped: string; reason: SkipReason };

const skip = (reason: SkipReason, skipped: string): RecordResult => ({ skipped, reason });

export function recordToEvent(record: S3EventRecord, rules: FilterRules): RecordResult {
  const kind = kindOf(record.eventName);
  if (kind === null)
    return skip('NOT_PUT_OR_DELETE', `event ${record.eventName} is not a put or delete`);
  const bucket = record.s3.bucket.name;
  if (rules.buckets.length > 0 && !rules.buckets.includes(bucket)) {
    return skip('BUCKET_NOT_CONFIGURED', `bucket ${bucket} is not configured`);
  }
  const obj = record.s3.object;
  let key: string;
  try {
    key = decodeS3Key(obj.key);
  } catch {
    return skip('KEY_BAD_ENCODING', `key ${JSON.stringify(obj.key)} is not valid URL encoding`);
  }
  // Console "folders" are zero-byte keys ending in "/": never an image.
  if (key.endsWith('/')) return skip('FOLDER_PLACEHOLDER', 'key is a folder placeholder');
  if (!key.startsWith(rules.imagePrefix))
    return skip('OUTSIDE_PREFIX', 'key is outside IMAGE_PREFIX');
  const sidecar = sidecarTarget(key);
  // The suffix rule is the image's: a sidecar is published if its image would be.
  const imageKey = sidecar === null ? key : sidecar.imageKey;
  if (sidecar !== null) {
    if (kind === 'image.delete')
      return skip('SIDECAR_DELETED', 'a signature sidecar was deleted: nothing for hosts to do');
    if (sidecarTarget(imageKey) !== null)
      return skip('SIDECAR_OF_SIDECAR', `key is a sidecar of ${imageKey}, itself a sidecar`);
  }
  if (rules.imageSuffixes.length > 0 && !rules.imageSuffixes.some((s) => imageKey.endsWith(s))) {
    return skip(
      'SUFFIX_NOT_CONFIGURED',
      sidecar === null
        ? 'key does not end with an IMAGE_SUFFIXES entry'
        : `sidecar of ${imageKey}, which does not end with an IMAGE_SUFFIXES entry`,
    );
  }
  const eventTime = new Date(record.eventTime);
  try {
    const event = validateImageEvent({
      schemaVersion: 1,
      kind: sidecar === null ? kind : 'sidecar.put',
      bucket,
      key,
      versionId: obj.versionId ?? null,
      eTag: kind === 'image.put' ? (obj.eTag ?? null) : null,
      size: kind === 'image.put' ? (obj.size ?? null) : null,
      sequencer: obj.sequencer,
      eventTime: Number.isNaN(eventTime.getTime()) ? record.eventTime : eventTime.toISOString(),
    });
    return { event };
  } catch (err) {
    return skip('INVALID_EVENT', (err as Error).message);
  }
}

/** Every publishable event of a notification, in record order. */
export function eventsFromNotification(
  notification: S3Event,
  rules: FilterRules,
  log: Log,
  onSkipped: (reason: SkipReason) => void = () => undefined,
): ImageEvent[] {
  // S3 sends s3:TestEvent when a notification configuration is saved; it has
  // no Records. Recognise it explicitly so it is not mistaken for a bad payload.
  const maybeTest = notification as unknown as { Event?: unknown };
  if (maybeTest.Event === 's3:TestEvent') {
    log.info('ignoring s3:TestEvent');
    return [];
  }
  if (!Array.isArray(notification.Records)) {
    log.warn('notification has no Records array; ignored');
    return [];
  }
  const events: ImageEvent[] = [];
  for (const record of notification.Records) {
    const result = recordToEvent(record, rules);
    if ('event' in result) {
      events.push(result.event);
    } else {
      onSkipped(result.reason);
      log.warn('record skipped', {
        reason: result.reason,
        detail: result.skipped,
        eventName: record.eventName,
        bucket: record.s3?.bucket?.name,
        rawKey: record.s3?.object?.key,
      });
    }
  }
  return events;
}
