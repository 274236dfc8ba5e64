/**
 * containerd's snapshots as the snapshotter service records them: the one
 * writer of the containerd_snapshots table. Every state change goes through
 * `transition`, which refuses what states.ts does not list.
 */
import type { Db } from './db.js';
import { nowIso } from './db.js';
import { statementCache } from './statements.js';
import {
  assertTransition,
  containerdSnapshotTransitions,
  type ContainerdSnapshotState,
} from './states.js';
import { InternalError } from '../errors.js';

export type ContainerdSnapshotKind = 'active' | 'view' | 'committed';

export interface ContainerdSnapshotRow {
  id: number;
  key: string;
  kind: ContainerdSnapshotKind;
  /** The committed snapshot's name this one is based on; null for none. */
  parent: string | null;
  /** Its own volume (active; a view without a parent); null for a view of a parent, a committed one. */
  object_id: number | null;
  /** A committed snapshot's layer. */
  blob_id: number | null;
  state: ContainerdSnapshotState;
  commit_name: string | null;
  /** JSON object of containerd's labels. */
  labels: string;
  owner: string | null;
  created_at: string;
  updated_at: string;
}

export interface NewContainerdSnapshot {
  key: string;
  kind: ContainerdSnapshotKind;
  parent: string | null;
  objectId: number | null;
  blobId: number | null;
  labels: Record<string, string>;
  state: 'preparing' | 'ready';
}

export class ContainerdSnapshotRepo {
  /** This table's statements, compiled once (statements.ts). */
  private readonly sql: ReturnType<typeof statementCache>;

  constructor(db: Db) {
    this.sql = statementCache(db);
  }

  /** A new snapshot; the unique index makes a second live one of a key fail (SQLITE_CONSTRAINT). */
  create(s: NewContainerdSnapshot, owner: string | null): ContainerdSnapshotRow {
    const now = nowIso();
    const { lastInsertRowid } = this.sql(
      `INSERT INTO containerd_snapshots
           (key, kind, parent, object_id, blob_id, state, labels, owner, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ).run(
      s.key,
      s.kind,
      s.parent,
      s.objectId,
      s.blobId,
      s.state,
      JSON.stringify(s.labels),
      s.state === 'ready' ? null : owner,
      now,
      now,
    );
    return this.get(Number(lastInsertRowid))!;
  }

  get(id: number): ContainerdSnapshotRow | undefined {
    return this.sql(`SELECT * FROM containerd_snapshots WHERE id = ?`).get(id) as
      ContainerdSnapshotRow | undefined;
  }

  /** The live snapshot of this key (any state but removed). */
  byKey(key: string): ContainerdSnapshotRow | undefined {
    return this.sql(`SELECT * FROM containerd_snapshots WHERE key = ? AND state != 'removed'`).get(
      key,
    ) as ContainerdSnapshotRow | undefined;
  }

  listLive(): ContainerdSnapshotRow[] {
    return this.sql(
      `SELECT * FROM containerd_snapshots WHERE state != 'removed' ORDER BY id`,
    ).all() as ContainerdSnapshotRow[];
  }

  /** Intents a dead owner may have left (recovery's work list). */
  listIntents(): ContainerdSnapshotRow[] {
    return this.sql(
      `SELECT * FROM containerd_snapshots WHERE state IN ('preparing', 'committing', 'removing') ORDER BY id`,
    ).all() as ContainerdSnapshotRow[];
  }

  /** Live snapshots based on the committed snapshot `name`. */
  childCount(name: string): number {
    return (
      this.sql(
        `SELECT count(*) AS n FROM containerd_snapshots WHERE parent = ? AND state != 'removed'`,
      ).get(name) as { n: number }
    ).n;
  }

  /** Live containerd snapshots that hold this layer (gc and eviction leave it alone). */
  holdersOfBlob(blobId: number): number {
    return (
      this.sql(
        `SELECT count(*) AS n FROM containerd_snapshots WHERE blob_id = ? AND state != 'removed'`,
      ).get(blobId) as { n: number }
    ).n;
  }

  transition(
    id: number,
    to: ContainerdSnapshotState,
    opts: { owner?: string | null; commitName?: string | null } = {},
  ): ContainerdSnapshotRow {
    const row = this.get(id);
    if (row === undefined) throw new InternalError(`containerd snapshot ${id} does not exist`);
    assertTransition(containerdSnapshotTransitions, 'containerd snapshot', row.state, to);
    this.sql(
      `UPDATE containerd_snapshots SET state = ?, owner = ?, commit_name = ?, updated_at = ? WHERE id = ?`,
    ).run(
      to,
      opts.owner ?? null,
      opts.commitName === undefined ? row.commit_name : opts.commitName,
      nowIso(),
      id,
    );
    return this.get(id)!;
  }

  /** Compare-and-swap of the owner: recovery takes over an intent whose owner died. */
  claim(id: number, fromOwner: string | null, toOwner: string): boolean {
    const { changes } = this.sql(
      `UPDATE containerd_snapshots SET owner = ?, updated_at = ? WHERE id = ? AND owner IS ?`,
    ).run(toOwner, nowIso(), id, fromOwner);
    return changes === 1;
  }

  setLabels(id: number, labels: Record<string, string>): ContainerdSnapshotRow {
    this.sql(`UPDATE containerd_snapshots SET labels = ?, updated_at = ? WHERE id = ?`).run(
      JSON.stringify(labels),
      nowIso(),
      id,
    );
    return this.get(id)!;
  }
}
