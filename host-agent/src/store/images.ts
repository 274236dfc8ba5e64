/** Images: a (bucket, key, ETag) the host was asked to hold, and its outcome. */
import { InternalError } from '../errors.js';
import type { Db } from './db.js';
import { nowIso } from './db.js';
import {
  assertTransition,
  imageTransitions,
  type ImageStatus,
  type RemovedReason,
} from './states.js';

export interface ImageRow {
  id: number;
  bucket: string;
  key: string;
  version_id: string | null;
  etag: string;
  size: number;
  sha256: string | null;
  status: ImageStatus;
  error_code: string | null;
  error_message: string | null;
  /** Why a removed image was removed (null while it is not). */
  removed_reason: RemovedReason | null;
  /** JSON: what triggered a removal by policy (usage, thresholds, the newer versions). */
  removed_detail: string | null;
  /** 1: pinned by an operator (`thinrelay pin IMAGE`): never retired or evicted by policy. */
  pinned: number;
  last_activated_at: string | null;
  /** Last time an eviction pass saw one of its snapshots in use (mounted, opened, held). */
  last_used_at: string | null;
  /** JSON: the last signature check (trust/trust-record.ts TrustRecord); null while none was made. */
  trust: string | null;
  /** While awaiting-signature: when it fails SIGNATURE_MISSING (ISO 8601). */
  signature_deadline: string | null;
  created_at: string;
  updated_at: string;
}

/** One layer of an image, as `show --json` prints it. */
export interface ImageLayerRow {
  position: number;
  blob_id: number;
  chain_id: string | null;
  diff_id: string | null;
  status: string;
  volume_id: number | null;
  /** The virtual size of the layer's volume (a clone may be larger than the layer below). */
  volume_size_bytes: number | null;
  /** Live images linking this layer (this one included). */
  shared_by: number;
}

const imageColumns = [
  'id',
  'bucket',
  'key',
  'version_id',
  'etag',
  'size',
  'sha256',
  'status',
  'error_code',
  'error_message',
  'removed_reason',
  'removed_detail',
  'pinned',
  'last_activated_at',
  'last_used_at',
  'trust',
  'signature_deadline',
  'created_at',
  'updated_at',
] as const satisfies readonly (keyof ImageRow)[];

/** Rows carry these columns; the run config is read on its own (configJson). */
const rowColumns = imageColumns.join(', ');

export interface ImageIdentity {
  bucket: string;
  key: string;
  versionId: string | null;
  eTag: string;
  size: number;
}

export class ImageRepo {
  constructor(private readonly db: Db) {}

  /** The row for this exact object version, created as pending if new. */
  upsert(ref: ImageIdentity): ImageRow {
    const now = nowIso();
    this.db
      .prepare(
        `INSERT INTO images (bucket, key, version_id, etag, size, status, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)
         ON CONFLICT (bucket, key, etag) DO NOTHING`,
      )
      .run(ref.bucket, ref.key, ref.versionId, ref.eTag, ref.size, now, now);
    return this.db
      .prepare(`SELECT ${rowColumns} FROM images WHERE bucket = ? AND key = ? AND etag = ?`)
      .get(ref.bucket, ref.key, ref.eTag) as ImageRow;
  }

  /** The row for this exact identity, if any (quotes around the ETag optional). */
  find(bucket: string, key: string, eTag: string): ImageRow | undefined {
    const quoted = eTag.startsWith('"') ? eTag : `"${eTag}"`;
    return this.db
      .prepare(`SELECT ${rowColumns} FROM images WHERE bucket = ? AND key = ? AND etag IN (?, ?)`)
      .get(bucket, key, quoted, quoted.slice(1, -1)) as ImageRow | undefined;
  }

  get(id: number): ImageRow | undefined {
    return this.db.prepare(`SELECT ${rowColumns} FROM images WHERE id = ?`).get(id) as
      ImageRow | undefined;
  }

  /** Newest row for a key (any bucket unless given). */
  latestByKey(key: string, bucket?: string): ImageRow | undefined {
    return this.db
      .prepare(
        `SELECT ${rowColumns} FROM images WHERE key = ? AND (? IS NULL OR bucket = ?)
         ORDER BY id DESC LIMIT 1`,
      )
      .get(key, bucket ?? null, bucket ?? null) as ImageRow | undefined;
  }

  /** Every live (not removed) row of one key, all ETags. */
  liveByKey(bucket: string, key: string): ImageRow[] {
    return this.db
      .prepare(
        `SELECT ${rowColumns} FROM images WHERE bucket = ? AND key = ? AND status != 'removed' ORDER BY id`,
      )
      .all(bucket, key) as ImageRow[];
  }

  list(opts: { includeRemoved?: boolean } = {}): ImageRow[] {
    return this.db
      .prepare(`SELECT ${rowColumns} FROM images WHERE ? OR status != 'removed' ORDER BY id`)
      .all(opts.includeRemoved ? 1 : 0) as ImageRow[];
  }

  /**
   * The same rows as list(), as one JSON array built by SQLite: turning 10,000
   * rows into JS objects and back costs ~100 ms that `images --json` must not
   * pay. Ids in `interrupted` read as status "interrupted". Field names are
   * camelCase and the ETag is bare, as every --json prints them.
   */
  listJson(
    opts: {
      includeRemoved?: boolean;
      interrupted?: readonly number[];
      /** Key patterns pinned by configuration (not stored). */
      configPins?: readonly string[];
    } = {},
  ): string {
    const fields = imageColumns
      .map((c) =>
        c === 'status'
          ? `'status', CASE WHEN id IN (SELECT value FROM json_each(?)) THEN 'interrupted' ELSE status END`
          : c === 'trust'
            ? `'trust', json(trust)`
            : c === 'pinned'
              ? `'pinned', json(CASE WHEN ${effectivePinSql('images', '?')} THEN 'true' ELSE 'false' END)`
              : // JSON for scripts gives an ETag without S3's quotes (cli/output.ts forScripts).
                c === 'etag'
                ? `'etag', trim(etag, '"')`
                : `'${c.replace(/_([a-z])/g, (_, l: string) => l.toUpperCase())}', ${c}`,
      )
      .join(', ');
    return this.db
      .prepare(
        `SELECT json_group_array(json_object(${fields})) FROM
           (SELECT ${rowColumns} FROM images WHERE ? OR status != 'removed' ORDER BY id) AS images`,
      )
      .pluck()
      .get(
        JSON.stringify(opts.interrupted ?? []),
        JSON.stringify(opts.configPins ?? []),
        opts.includeRemoved ? 1 : 0,
      ) as string;
  }

  /** How many images have each status. */
  countByStatus(): Record<string, number> {
    const rows = this.db
      .prepare(`SELECT status, COUNT(*) AS n FROM images GROUP BY status`)
      .all() as { status: string; n: number }[];
    return Object.fromEntries(rows.map((r) => [r.status, r.n]));
  }

  /** Images whose status says a job is running. */
  listProcessing(): ImageRow[] {
    return this.db
      .prepare(`SELECT ${rowColumns} FROM images WHERE status = 'processing' ORDER BY id`)
      .all() as ImageRow[];
  }

  listFailed(): ImageRow[] {
    return this.db
      .prepare(`SELECT ${rowColumns} FROM images WHERE status = 'failed' ORDER BY updated_at DESC`)
      .all() as ImageRow[];
  }

  /**
   * The one writer of an image's status: checked against imageTransitions.
   * The error columns always say why the image is in this status (cleared
   * otherwise); the removal columns likewise.
   */
  setStatus(
    id: number,
    status: ImageStatus,
    extra: {
      errorCode?: string | null;
      errorMessage?: string | null;
      removedReason?: RemovedReason;
      removedDetail?: string | null;
      /** awaiting-signature only: when the wait ends. */
      signatureDeadline?: string;
    } = {},
  ): void {
    const row = this.get(id);
    if (row === undefined) throw new InternalError(`image ${id} does not exist`);
    assertTransition(imageTransitions, 'image', row.status, status);
    const removed = status === 'removed';
    this.db
      .prepare(
        `UPDATE images SET status = ?, updated_at = ?, error_code = ?, error_message = ?,
           removed_reason = ?, removed_detail = ?, signature_deadline = ?
         WHERE id = ?`,
      )
      .run(
        status,
        nowIso(),
        extra.errorCode ?? null,
        extra.errorMessage ?? null,
        removed ? (extra.removedReason ?? row.removed_reason ?? 'removed') : null,
        removed ? (extra.removedDetail ?? row.removed_detail ?? null) : null,
        status === 'awaiting-signature' ? (extra.signatureDeadline ?? null) : null,
        id,
      );
  }

  /** No signature yet: the image waits (no job, no storage) until `deadline`. */
  awaitSignature(id: number, deadline: string, reason: string): void {
    this.setStatus(id, 'awaiting-signature', {
      signatureDeadline: deadline,
      errorCode: 'SIGNATURE_MISSING',
      errorMessage: reason,
    });
  }

  /** Images waiting for their signature, soonest deadline first. */
  listAwaiting(): ImageRow[] {
    return this.db
      .prepare(
        `SELECT ${rowColumns} FROM images WHERE status = 'awaiting-signature'
         ORDER BY signature_deadline, id`,
      )
      .all() as ImageRow[];
  }

  /** The last signature check (a TrustRecord), kept whatever the status. */
  recordTrust(id: number, record: unknown): void {
    this.db
      .prepare(`UPDATE images SET trust = ?, updated_at = ? WHERE id = ?`)
      .run(JSON.stringify(record), nowIso(), id);
  }

  /** A job starts (or restarts) on the image. */
  markProcessing(id: number): void {
    this.setStatus(id, 'processing');
  }

  /** The object's bytes are known: their sha256 (status unchanged). */
  recordDigest(id: number, sha256: string | null): void {
    if (sha256 === null) return;
    this.db
      .prepare(`UPDATE images SET sha256 = ?, updated_at = ? WHERE id = ?`)
      .run(sha256, nowIso(), id);
  }

  markReady(id: number): void {
    this.setStatus(id, 'ready');
  }

  fail(id: number, code: string, message: string): void {
    this.setStatus(id, 'failed', { errorCode: code, errorMessage: message });
  }

  /** No new snapshots; its storage is released by the caller (ops/release-image.ts). */
  retire(id: number, reason: RemovedReason, detail: Record<string, unknown> | null = null): void {
    this.setStatus(id, 'removed', {
      removedReason: reason,
      removedDetail: detail === null ? null : JSON.stringify(detail),
    });
  }

  /** Pin or unpin one image (operator). */
  setPinned(id: number, pinned: boolean): void {
    this.db
      .prepare(`UPDATE images SET pinned = ?, updated_at = ? WHERE id = ?`)
      .run(pinned ? 1 : 0, nowIso(), id);
  }

  /** A snapshot of the image was activated now. */
  touchActivated(id: number): void {
    this.db.prepare(`UPDATE images SET last_activated_at = ? WHERE id = ?`).run(nowIso(), id);
  }

  /** These images' snapshots were seen in use now. */
  touchUsed(ids: readonly number[]): void {
    const now = nowIso();
    const update = this.db.prepare(`UPDATE images SET last_used_at = ? WHERE id = ?`);
    for (const id of ids) update.run(now, id);
  }

  /** Key patterns (globs; a plain key matches itself) an operator pinned. */
  keyPins(): string[] {
    return this.db
      .prepare(`SELECT pattern FROM key_pins ORDER BY pattern`)
      .pluck()
      .all() as string[];
  }

  /** True if the pattern was new. */
  addKeyPin(pattern: string): boolean {
    return (
      this.db
        .prepare(`INSERT INTO key_pins (pattern, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING`)
        .run(pattern, nowIso()).changes > 0
    );
  }

  /** True if the pattern was pinned. */
  removeKeyPin(pattern: string): boolean {
    return this.db.prepare(`DELETE FROM key_pins WHERE pattern = ?`).run(pattern).changes > 0;
  }

  /**
   * Is the image pinned, by itself or, as its key's current (newest ready)
   * version, by a key pattern (stored, or `configPins`)?
   */
  isPinned(id: number, configPins: readonly string[] = []): boolean {
    return (
      this.db
        .prepare(`SELECT ${effectivePinSql('images', '?')} FROM images WHERE id = ?`)
        .pluck()
        .get(JSON.stringify(configPins), id) === 1
    );
  }

  /** The newest ready version of each key: what a host serves now. */
  isCurrent(row: ImageRow): boolean {
    const newest = this.db
      .prepare(`SELECT max(id) FROM images WHERE bucket = ? AND key = ? AND status = 'ready'`)
      .pluck()
      .get(row.bucket, row.key) as number | null;
    return newest === row.id;
  }

  /** Keep a container image's format, layers and run config with the image. */
  setConfig(id: number, json: string | null): void {
    this.db
      .prepare(`UPDATE images SET image_config = ?, updated_at = ? WHERE id = ?`)
      .run(json, nowIso(), id);
  }

  /** A container image's format, layers and run config as JSON; null for a flat tar. */
  configJson(id: number): string | null {
    return (
      (this.db.prepare(`SELECT image_config FROM images WHERE id = ?`).pluck().get(id) as
        string | null | undefined) ?? null
    );
  }

  /** The image's top layer: what its snapshots are taken of. */
  topBlobId(imageId: number): number | undefined {
    return this.db
      .prepare(`SELECT blob_id FROM image_blobs WHERE image_id = ? ORDER BY position DESC LIMIT 1`)
      .pluck()
      .get(imageId) as number | undefined;
  }

  /** Link one layer at its position (0 = base), replacing whatever was there. */
  linkBlob(imageId: number, position: number, blobId: number): void {
    this.db
      .prepare(
        `INSERT INTO image_blobs (image_id, position, blob_id) VALUES (?, ?, ?)
         ON CONFLICT (image_id, position) DO UPDATE SET blob_id = excluded.blob_id`,
      )
      .run(imageId, position, blobId);
  }

  /** The image's layers, base first, with how many live images share each. */
  layers(imageId: number): ImageLayerRow[] {
    return this.db
      .prepare(
        `SELECT ib.position, b.id AS blob_id, b.chain_id, b.diff_id, b.status, b.volume_id,
                (SELECT size_bytes FROM storage_objects s WHERE s.id = b.volume_id)
                  AS volume_size_bytes,
                (SELECT count(*) FROM image_blobs o JOIN images i ON i.id = o.image_id
                  WHERE o.blob_id = b.id AND i.status != 'removed') AS shared_by
           FROM image_blobs ib JOIN blobs b ON b.id = ib.blob_id
          WHERE ib.image_id = ? ORDER BY ib.position`,
      )
      .all(imageId) as ImageLayerRow[];
  }

  /** The image's blobs in layer order. */
  blobIds(imageId: number): number[] {
    return (
      this.db
        .prepare(`SELECT blob_id FROM image_blobs WHERE image_id = ? ORDER BY position`)
        .all(imageId) as { blob_id: number }[]
    ).map((r) => r.blob_id);
  }

  setBlobs(imageId: number, blobIds: readonly number[]): void {
    this.db.prepare(`DELETE FROM image_blobs WHERE image_id = ?`).run(imageId);
    const insert = this.db.prepare(
      `INSERT INTO image_blobs (image_id, position, blob_id) VALUES (?, ?, ?)`,
    );
    blobIds.forEach((blobId, position) => insert.run(imageId, position, blobId));
  }
}

/**
 * SQL: is the row `t` pinned — itself, or as its key's current (newest
 * ready) version by a stored key pattern or one in the JSON array bound at
 * `configPins`. Patterns are globs (`*`, `?`, `[…]`); a plain key matches itself.
 */
function effectivePinSql(t: string, configPins: string): string {
  return `(${t}.pinned = 1 OR (${t}.status = 'ready'
    AND ${t}.id = (SELECT max(c.id) FROM images c
                    WHERE c.bucket = ${t}.bucket AND c.key = ${t}.key AND c.status = 'ready')
    AND (EXISTS (SELECT 1 FROM key_pins p WHERE ${t}.key GLOB p.pattern)
         OR EXISTS (SELECT 1 FROM json_each(${configPins}) WHERE ${t}.key GLOB value))))`;
}
