/**
 * The devmapper pool journal: per thin pool, the transaction id we last
 * committed, the change in flight and who holds the pool. See
 * storage/devmapper/pool-transactions.ts for the protocol. A change in
 * flight is one pool message or a group of them under one commit marker:
 * the columns hold the first, and a group's every member is kept in
 * open_purpose after `group:` as JSON (no schema change: a row with one
 * change reads exactly as before).
 */
import { InternalError } from '../errors.js';
import type { Db } from './db.js';
import { nowIso } from './db.js';

export type PoolOp = 'create_thin' | 'create_snap' | 'delete' | 'metadata_snap';

export interface PoolJournalRow {
  pool: string;
  transaction_id: number;
  owner: string | null;
  open_op: PoolOp | null;
  open_thin_id: number | null;
  open_origin_id: number | null;
  open_purpose: string | null;
  updated_at: string;
}

export interface OpenChange {
  op: PoolOp;
  thinId: number | null;
  originId: number | null;
  purpose: string;
}

/** Marks an open_purpose that lists a group's members. */
const groupMarker = 'group:';

function isPoolOp(x: unknown): x is PoolOp {
  return x === 'create_thin' || x === 'create_snap' || x === 'delete' || x === 'metadata_snap';
}

/** Every change the row has in flight (none, one, or a group's members in order). */
export function openChanges(row: PoolJournalRow): OpenChange[] {
  if (row.open_op === null) return [];
  const purpose = row.open_purpose ?? '';
  if (!purpose.startsWith(groupMarker))
    return [
      {
        op: row.open_op,
        thinId: row.open_thin_id,
        originId: row.open_origin_id,
        purpose,
      },
    ];
  let members: unknown;
  try {
    members = JSON.parse(purpose.slice(groupMarker.length));
  } catch {
    members = undefined;
  }
  const ok =
    Array.isArray(members) &&
    members.length > 0 &&
    members.every(
      (m: Partial<OpenChange> | null) =>
        m !== null &&
        typeof m === 'object' &&
        isPoolOp(m.op) &&
        (m.thinId === null || Number.isSafeInteger(m.thinId)) &&
        (m.originId === null || Number.isSafeInteger(m.originId)) &&
        typeof m.purpose === 'string',
    );
  if (!ok) throw new InternalError(`pool ${row.pool}: unreadable group in the journal: ${purpose}`);
  return members as OpenChange[];
}

export class PoolJournalRepo {
  constructor(private readonly db: Db) {}

  get(pool: string): PoolJournalRow | undefined {
    return this.db.prepare(`SELECT * FROM dm_pool_journal WHERE pool = ?`).get(pool) as
      PoolJournalRow | undefined;
  }

  /** First use of a pool: adopt its current transaction id. */
  adopt(pool: string, transactionId: number): void {
    this.db
      .prepare(
        `INSERT INTO dm_pool_journal (pool, transaction_id, updated_at) VALUES (?, ?, ?)
         ON CONFLICT (pool) DO NOTHING`,
      )
      .run(pool, transactionId, nowIso());
  }

  /** Undo an adoption that was refused. */
  forget(pool: string): void {
    this.db.prepare(`DELETE FROM dm_pool_journal WHERE pool = ? AND owner IS NULL`).run(pool);
  }

  /** Compare-and-swap of the holder; false if someone else holds it now. */
  claim(pool: string, fromOwner: string | null, toOwner: string): boolean {
    const { changes } = this.db
      .prepare(`UPDATE dm_pool_journal SET owner = ?, updated_at = ? WHERE pool = ? AND owner IS ?`)
      .run(toOwner, nowIso(), pool, fromOwner);
    return changes === 1;
  }

  /**
   * Record the change(s) about to be sent to the pool (the intent): one
   * change, or a group committed under one transaction id.
   */
  open(pool: string, owner: string, group: OpenChange | OpenChange[]): void {
    const members = Array.isArray(group) ? group : [group];
    if (members.length === 0) throw new InternalError(`pool ${pool}: an empty change`);
    const first = members[0]!;
    const purpose = members.length === 1 ? first.purpose : groupMarker + JSON.stringify(members);
    const change = { ...first, purpose };
    const { changes } = this.db
      .prepare(
        `UPDATE dm_pool_journal
            SET open_op = ?, open_thin_id = ?, open_origin_id = ?, open_purpose = ?, updated_at = ?
          WHERE pool = ? AND owner = ?`,
      )
      .run(change.op, change.thinId, change.originId, change.purpose, nowIso(), pool, owner);
    if (changes !== 1) throw new InternalError(`pool ${pool} is not held by ${owner}`);
  }

  /** The change is done (committed at `transactionId`) or undone: nothing open. */
  close(pool: string, owner: string, transactionId: number): void {
    const { changes } = this.db
      .prepare(
        `UPDATE dm_pool_journal
            SET transaction_id = ?, open_op = NULL, open_thin_id = NULL, open_origin_id = NULL,
                open_purpose = NULL, updated_at = ?
          WHERE pool = ? AND owner = ?`,
      )
      .run(transactionId, nowIso(), pool, owner);
    if (changes !== 1) throw new InternalError(`pool ${pool} is not held by ${owner}`);
  }

  release(pool: string, owner: string): void {
    this.db
      .prepare(
        `UPDATE dm_pool_journal SET owner = NULL, updated_at = ? WHERE pool = ? AND owner = ?`,
      )
      .run(nowIso(), pool, owner);
  }
}
