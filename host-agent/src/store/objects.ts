/** Storage objects (volumes and snapshots) as recorded intents and outcomes. */
import { InternalError } from '../errors.js';
import type { Db } from './db.js';
import { nowIso } from './db.js';
import { statementCache } from './statements.js';
import { assertTransition, objectTransitions, type ObjectState } from './states.js';

export type ObjectKind = 'volume' | 'snapshot';

export interface StorageObjectRow {
  id: number;
  kind: ObjectKind;
  backend: string;
  parent_id: number | null;
  image_id: number | null;
  thin_id: number | null;
  size_bytes: number;
  state: ObjectState;
  device_path: string | null;
  owner: string | null;
  job_id: number | null;
  /** The last failed operation's error, kept until the next state change. */
  last_error: string | null;
  created_at: string;
  updated_at: string;
}

export interface NewObject {
  kind: ObjectKind;
  backend: string;
  sizeBytes: number;
  parentId?: number | null;
  imageId?: number | null;
  jobId?: number | null;
  thinId?: number | null;
}

export class ObjectRepo {
  /** The hot statements (by id, the intent, a transition), compiled once (statements.ts). */
  private readonly hot: ReturnType<typeof statementCache>;

  constructor(private readonly db: Db) {
    this.hot = statementCache(db);
  }

  /** Record the intent to create an object; the id (and so its name) is never reused. */
  createIntent(o: NewObject, owner: string): StorageObjectRow {
    const now = nowIso();
    const { lastInsertRowid } = this.hot(
      `INSERT INTO storage_objects
           (kind, backend, parent_id, image_id, job_id, thin_id, size_bytes, state, owner, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, 'creating', ?, ?, ?)`,
    ).run(
      o.kind,
      o.backend,
      o.parentId ?? null,
      o.imageId ?? null,
      o.jobId ?? null,
      o.thinId ?? null,
      o.sizeBytes,
      owner,
      now,
      now,
    );
    return this.get(Number(lastInsertRowid))!;
  }

  get(id: number): StorageObjectRow | undefined {
    return this.hot(`SELECT * FROM storage_objects WHERE id = ?`).get(id) as
      StorageObjectRow | undefined;
  }

  /**
   * Move an object to a new state. `owner` is who now holds it (null once it
   * rests in a stable state); `devicePath` is set for active snapshots. A
   * state change clears the last error.
   */
  transition(
    id: number,
    to: ObjectState,
    opts: { owner?: string | null; devicePath?: string | null } = {},
  ): StorageObjectRow {
    const row = this.get(id);
    if (row === undefined) throw new InternalError(`storage object ${id} does not exist`);
    assertTransition(objectTransitions, 'storage object', row.state, to);
    this.hot(
      `UPDATE storage_objects SET state = ?, owner = ?, device_path = ?, last_error = NULL, updated_at = ?
          WHERE id = ?`,
    ).run(
      to,
      opts.owner ?? null,
      opts.devicePath === undefined ? row.device_path : opts.devicePath,
      nowIso(),
      id,
    );
    return this.get(id)!;
  }

  /**
   * Compare-and-swap of the owner: take over an object whose owner died.
   * Returns false if someone else got there first.
   */
  claim(id: number, fromOwner: string | null, toOwner: string): boolean {
    const { changes } = this.db
      .prepare(`UPDATE storage_objects SET owner = ?, updated_at = ? WHERE id = ? AND owner IS ?`)
      .run(toOwner, nowIso(), id, fromOwner);
    return changes === 1;
  }

  /** An operation on the object failed: the row keeps its intent state and says why. */
  recordError(id: number, message: string): void {
    this.db
      .prepare(`UPDATE storage_objects SET last_error = ?, updated_at = ? WHERE id = ?`)
      .run(message, nowIso(), id);
  }

  /** The backends that live objects belong to (a state dir serves one backend). */
  backendsInUse(): string[] {
    return this.db
      .prepare(`SELECT DISTINCT backend FROM storage_objects WHERE state != 'removed' ORDER BY 1`)
      .pluck()
      .all() as string[];
  }

  /** Every object that is not removed: what the backend should really hold. */
  listLive(): StorageObjectRow[] {
    return this.db
      .prepare(`SELECT * FROM storage_objects WHERE state != 'removed' ORDER BY id`)
      .all() as StorageObjectRow[];
  }

  listByState(states: readonly ObjectState[]): StorageObjectRow[] {
    const marks = states.map(() => '?').join(', ');
    return this.db
      .prepare(`SELECT * FROM storage_objects WHERE state IN (${marks}) ORDER BY id`)
      .all(...states) as StorageObjectRow[];
  }

  forJob(jobId: number): StorageObjectRow[] {
    return this.db
      .prepare(`SELECT * FROM storage_objects WHERE job_id = ? ORDER BY id`)
      .all(jobId) as StorageObjectRow[];
  }

  snapshotsOfImage(imageId: number): StorageObjectRow[] {
    return this.db
      .prepare(
        `SELECT * FROM storage_objects WHERE kind = 'snapshot' AND image_id = ? AND state != 'removed' ORDER BY id`,
      )
      .all(imageId) as StorageObjectRow[];
  }

  /** Snapshots (inactive or active) whose image was removed: what a release may have left. */
  snapshotsOfRemovedImages(): StorageObjectRow[] {
    return this.db
      .prepare(
        `SELECT s.* FROM storage_objects s JOIN images i ON i.id = s.image_id
          WHERE s.kind = 'snapshot' AND s.state IN ('inactive', 'active') AND i.status = 'removed'
          ORDER BY s.id`,
      )
      .all() as StorageObjectRow[];
  }

  /**
   * Sealed volumes that look unused: no ready layer on them, or one no live
   * image links, and no snapshot taken of them, and no containerd snapshot
   * holding their layer. Candidates only: the caller
   * decides again in a transaction.
   */
  unusedSealedVolumes(): StorageObjectRow[] {
    return this.db
      .prepare(
        `SELECT v.* FROM storage_objects v LEFT JOIN blobs b ON b.volume_id = v.id
          WHERE v.state = 'sealed'
            AND (b.id IS NULL OR b.status != 'ready' OR NOT EXISTS (
                  SELECT 1 FROM image_blobs ib JOIN images i ON i.id = ib.image_id
                   WHERE ib.blob_id = b.id AND i.status != 'removed'))
            AND NOT EXISTS (
                  SELECT 1 FROM storage_objects c
                   WHERE c.parent_id = v.id AND c.kind = 'snapshot' AND c.state != 'removed')
            AND NOT EXISTS (
                  SELECT 1 FROM containerd_snapshots cs
                   WHERE cs.blob_id = b.id AND cs.state != 'removed')
          ORDER BY v.id`,
      )
      .all() as StorageObjectRow[];
  }

  /**
   * Flat tars' volumes held for a new signature (trust/): unpacked and
   * flushed, never sealed, their content's sha256 recorded, linked by an
   * image whose signature check failed (or that waits for a signature), and
   * no open job working on them. A re-sign's job adopts one (adoptHeld); gc,
   * an eviction pass and `remove` release it. Optionally one volume's or one
   * image's.
   */
  heldForSignature(opts: { volumeId?: number; imageId?: number } = {}): StorageObjectRow[] {
    return this.db
      .prepare(
        `SELECT v.* FROM storage_objects v
           JOIN blobs b ON b.volume_id = v.id
           LEFT JOIN jobs j ON j.id = v.job_id
          WHERE v.kind = 'volume' AND v.state = 'unpacked'
            AND (j.id IS NULL OR j.status IN ('complete', 'failed'))
            AND b.status = 'unpacking' AND b.sha256 IS NOT NULL
            AND (? IS NULL OR v.id = ?)
            AND EXISTS (
                  SELECT 1 FROM image_blobs ib JOIN images i ON i.id = ib.image_id
                   WHERE ib.blob_id = b.id AND (? IS NULL OR i.id = ?)
                     AND i.status IN ('failed', 'awaiting-signature')
                     AND substr(i.error_code, 1, 10) = 'SIGNATURE_')
          ORDER BY v.id`,
      )
      .all(
        opts.volumeId ?? null,
        opts.volumeId ?? null,
        opts.imageId ?? null,
        opts.imageId ?? null,
      ) as StorageObjectRow[];
  }

  /**
   * A new job of the image takes over the volumes it holds for its
   * signature (in the transaction that creates the job: nothing may release
   * them between). Returns how many.
   */
  adoptHeld(imageId: number, jobId: number): number {
    const held = this.heldForSignature({ imageId });
    const update = this.db.prepare(
      `UPDATE storage_objects SET job_id = ?, updated_at = ? WHERE id = ?`,
    );
    for (const v of held) update.run(jobId, nowIso(), v.id);
    return held.length;
  }

  /**
   * Unpacked volumes whose job ended (or that have none) and that no image
   * holds for its signature: leftovers of a job that ended without sealing
   * or releasing them (a hold given up), for reconcile to release.
   */
  unpackedLeftovers(): StorageObjectRow[] {
    const held = new Set(this.heldForSignature().map((v) => v.id));
    return (
      this.db
        .prepare(
          `SELECT v.* FROM storage_objects v LEFT JOIN jobs j ON j.id = v.job_id
            WHERE v.kind = 'volume' AND v.state = 'unpacked'
              AND (j.id IS NULL OR j.status IN ('complete', 'failed'))
            ORDER BY v.id`,
        )
        .all() as StorageObjectRow[]
    ).filter((v) => !held.has(v.id));
  }

  childrenOf(volumeId: number): StorageObjectRow[] {
    return this.db
      .prepare(
        `SELECT * FROM storage_objects WHERE parent_id = ? AND state != 'removed' ORDER BY id`,
      )
      .all(volumeId) as StorageObjectRow[];
  }

  /** The object recorded with this thin id (removed ones too: ids are never reused). */
  byThinId(thinId: number): StorageObjectRow | undefined {
    return this.db.prepare(`SELECT * FROM storage_objects WHERE thin_id = ?`).get(thinId) as
      StorageObjectRow | undefined;
  }

  /**
   * Never hand out an id at or below `maxId` (a name found in the pool that
   * the store does not know, e.g. after a backup was restored): AUTOINCREMENT
   * allocates above the sequence, so raise it. True if it was raised.
   */
  reserveIdsThrough(maxId: number): boolean {
    const seq = this.db
      .prepare(`SELECT seq FROM sqlite_sequence WHERE name = 'storage_objects'`)
      .get() as { seq: number } | undefined;
    const highest = Math.max(
      seq?.seq ?? 0,
      (
        this.db.prepare(`SELECT COALESCE(MAX(id), 0) AS m FROM storage_objects`).get() as {
          m: number;
        }
      ).m,
    );
    if (maxId <= highest) return false;
    if (seq === undefined)
      this.db
        .prepare(`INSERT INTO sqlite_sequence (name, seq) VALUES ('storage_objects', ?)`)
        .run(maxId);
    else
      this.db
        .prepare(`UPDATE sqlite_sequence SET seq = ? WHERE name = 'storage_objects'`)
        .run(maxId);
    return true;
  }

  /** Highest thin id ever recorded (devmapper allocates above it). */
  maxThinId(): number {
    return (
      this.db.prepare(`SELECT COALESCE(MAX(thin_id), 0) AS m FROM storage_objects`).get() as {
        m: number;
      }
    ).m;
  }
}
