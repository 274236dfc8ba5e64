/**
 * This host's per-image fleet items: what the state database says about a
 * key, turned into a HostImageItem and handed to the writer. Called when work
 * on a key starts, when it must wait for a retry, and after every outcome.
 * With a signature policy the item also says who signed the version and when
 * it was verified, or that it awaits its signature or is no longer trusted.
 */
import type { HostImageItem, HostImageState } from '../../../../schema/fleet.js';
import { hostImageItem } from '../../../../schema/fleet-table.js';
import type { StateStore } from '../../store/index.js';
import type { ImageRow } from '../../store/images.js';
import type { FleetWriter } from './fleet-writer.js';

export interface ReporterHost {
  hostId: string;
  group: string;
  /** The deployment's bucket: items are per key, keys of other buckets are not reported. */
  bucket: string;
}

const MESSAGE_LIMIT = 1000;

type IndexedOrOwn = 'pk' | 'sk' | 'gpk' | 'gsk' | 'hostId' | 'group' | 'key' | 'updatedAt';
const NO_REASON = { reasonCode: null, message: null } as const;
const UNSIGNED = { signer: null, verifiedAt: null } as const;

export class ImageReporter {
  constructor(
    private readonly writer: FleetWriter,
    private readonly store: StateStore,
    private readonly host: ReporterHost,
  ) {}

  /**
   * Work on this version starts. Nothing is written when the version is
   * already settled here (ready, or failed for good): a redelivered message for
   * it is answered without work, so `processing` would never be corrected.
   */
  working(bucket: string, key: string, eTag: string | null, versionId: string | null): void {
    if (bucket !== this.host.bucket) return;
    const status = eTag === null ? undefined : this.store.images.find(bucket, key, eTag)?.status;
    if (status === 'ready' || status === 'failed') return;
    this.write(key, { state: 'processing', eTag, versionId, ...NO_REASON, ...UNSIGNED });
  }

  /** A transient failure or an interruption: it will be tried again. */
  waiting(bucket: string, key: string, eTag: string | null, code: string, message: string): void {
    if (bucket !== this.host.bucket) return;
    this.write(key, {
      state: 'pending',
      eTag,
      versionId: null,
      reasonCode: code,
      message,
      ...UNSIGNED,
    });
  }

  /** After an outcome: the key's newest live image, or retired when none is live. */
  settled(bucket: string, key: string): void {
    if (bucket !== this.host.bucket) return;
    const live = this.store.images.liveByKey(bucket, key);
    const newest: ImageRow | undefined = live[live.length - 1];
    if (newest === undefined) {
      const last = this.store.images.latestByKey(key, bucket);
      if (last === undefined) return;
      const evicted = last.removed_reason === 'evicted';
      this.write(key, {
        state: evicted ? 'evicted' : 'retired',
        eTag: last.etag,
        versionId: last.version_id,
        reasonCode: evicted ? 'EVICTED' : null,
        message: evicted ? evictedMessage(last) : null,
        ...UNSIGNED,
      });
      return;
    }
    this.write(key, {
      state: stateOf(newest),
      eTag: newest.etag,
      versionId: newest.version_id,
      reasonCode: explained(newest) ? newest.error_code : null,
      message: explained(newest) ? newest.error_message : null,
      ...signatureOf(newest),
    });
  }

  private write(key: string, s: Omit<HostImageItem, IndexedOrOwn>): void {
    const { hostId, group } = this.host;
    this.writer.image(
      hostImageItem({
        hostId,
        group,
        key,
        ...s,
        message: s.message === null ? null : s.message.slice(0, MESSAGE_LIMIT),
        updatedAt: Date.now(),
      }),
    );
  }
}

/** Statuses whose row says why (error_code, error_message). */
function explained(row: ImageRow): boolean {
  return (
    row.status === 'failed' || row.status === 'awaiting-signature' || row.status === 'untrusted'
  );
}

function stateOf(row: ImageRow): HostImageState {
  switch (row.status) {
    case 'pending':
      return 'pending';
    case 'processing':
      return 'processing';
    // Waiting for its signature sidecar: the reason says until when.
    case 'awaiting-signature':
      return 'awaiting-signature';
    // Held, but no longer passes the signature policy: no new snapshots.
    case 'untrusted':
      return 'untrusted';
    case 'ready':
      return 'ready';
    case 'failed':
      return 'failed';
    case 'removed':
      return 'retired';
  }
}

/** What an operator reads in `fleet status` for an evicted version. */
function evictedMessage(row: ImageRow): string {
  let trigger = '';
  try {
    const d = JSON.parse(row.removed_detail ?? '{}') as { usage?: string };
    if (d.usage !== undefined) trigger = ` at ${d.usage}`;
  } catch {
    // An unreadable detail still says what happened.
  }
  return `evicted for pool space${trigger}; it comes back when there is room (catch-up sync) or with thinrelay process-image`;
}

/**
 * Who signed the row's version and when it was verified, from its last
 * signature check (the `trust` column, a TrustRecord: trust/trust-record.ts);
 * nothing unless that check verified. The signer as one line: a key's
 * fingerprint and algorithm, or a keyless identity's issuer and subject.
 */
export function signatureOf(
  row: Pick<ImageRow, 'trust'>,
): Pick<HostImageItem, 'signer' | 'verifiedAt'> {
  type Checked = { verdict?: unknown; signer?: unknown; verifiedAt?: unknown };
  let record: Checked | null;
  try {
    record = row.trust === null ? null : (JSON.parse(row.trust) as Checked | null);
  } catch {
    record = null; // an unreadable record reads as not verified
  }
  if (record === null || record.verdict !== 'verified') return { ...UNSIGNED };
  const signer = signerLine(record.signer);
  const at = typeof record.verifiedAt === 'string' ? Date.parse(record.verifiedAt) : NaN;
  return { signer, verifiedAt: signer !== null && Number.isFinite(at) ? at : null };
}

function signerLine(v: unknown): string | null {
  if (typeof v !== 'object' || v === null) return null;
  const s = v as Record<string, unknown>;
  if (s.type === 'key' && typeof s.fingerprint === 'string')
    return typeof s.algorithm === 'string' ? `${s.fingerprint} (${s.algorithm})` : s.fingerprint;
  if (s.type === 'identity' && typeof s.issuer === 'string' && typeof s.subject === 'string')
    return `${s.issuer} ${s.subject}`;
  return null;
}
