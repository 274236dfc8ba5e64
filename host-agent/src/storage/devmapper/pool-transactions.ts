/**
 * The commit protocol between the store and a thin pool. Every create_thin,
 * create_snap and delete is one pool transaction:
 *
 *   1. take the pool (journal row owner; a dead holder is recovered first);
 *   2. record the change (op, thin id, purpose) in the journal — the intent;
 *   3. send it to the pool;
 *   4. `set_transaction_id T T+1` — the commit marker, in the pool's own metadata;
 *   5. record T+1 and clear the change.
 *
 * After a crash the pool's transaction id tells which side of step 4 the
 * change was on: T+1 → it is committed; T → it is rolled back (a created
 * thin is deleted, an interrupted delete is finished). The journal row is
 * also the cross-process lock: pool messages from concurrent thinrelay
 * processes never interleave.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { EnvironmentError, InternalError, errorMessage } from '../../errors.js';
import { failpoint } from '../../failpoints.js';
import type { Logger } from '../../log.js';
import type { StateStore } from '../../store/index.js';
import { isOwnerAlive } from '../../store/owner.js';
import type { PoolJournalRow, PoolOp } from '../../store/pool-journal.js';
import { dmErrno, dmPoolMessage, dmStatus, parseThinPoolStatus } from './dmsetup.js';
import { jittered } from '../../retry.js';

export interface PoolAction {
  object: string;
  action: string;
  reason: string;
}

export interface PoolChange {
  op: Exclude<PoolOp, 'metadata_snap'>;
  thinId: number;
  originId?: number;
  /** What the change is for (object name and why), for the journal and the log. */
  purpose: string;
}

/** How long to wait for another process holding the pool (it holds it for milliseconds). */
const holdTimeoutMs = 120_000;

export class PoolTransactions {
  constructor(
    private readonly store: StateStore,
    readonly pool: string,
    private readonly owner: string,
    private readonly logger: Logger,
  ) {}

  async transactionId(): Promise<number> {
    const status = parseThinPoolStatus(await dmStatus(this.pool));
    if (status.failed)
      throw new EnvironmentError(
        'POOL_UNAVAILABLE',
        `thin pool ${this.pool} has failed`,
        'see dmesg; repair with thin_check/thin_repair',
      );
    return status.transactionId;
  }

  /**
   * First use of a pool records its transaction id. Refuses a pool that
   * already holds thin devices: thinrelay deletes every thin device it has no
   * record of, so it must own the whole pool.
   */
  async adopt(listThinIds: () => Promise<number[]>): Promise<PoolAction[]> {
    if (this.store.poolJournal.get(this.pool) !== undefined) return [];
    const tid = await this.transactionId();
    this.store.poolJournal.adopt(this.pool, tid);
    if (this.store.objects.maxThinId() === 0) {
      const ids = await listThinIds();
      if (ids.length > 0) {
        this.store.poolJournal.forget(this.pool);
        throw new EnvironmentError(
          'POOL_UNAVAILABLE',
          `thin pool ${this.pool} already holds ${ids.length} thin device(s) thinrelay did not create`,
          'give thinrelay a pool of its own (it deletes thin devices it has no record of)',
        );
      }
    }
    return [{ object: this.pool, action: 'adopted', reason: `pool transaction id ${tid}` }];
  }

  /** Hold the pool for `fn`; recovers a change left open by a dead holder first. */
  async hold<T>(fn: (actions: PoolAction[]) => Promise<T>): Promise<T> {
    // Callers in this process queue here (the journal row knows processes, not
    // calls): the snapshotter serves many Prepares at once. Not reentrant.
    const before = this.inProcess;
    let done!: () => void;
    this.inProcess = new Promise((resolve) => (done = resolve));
    await before;
    try {
      const actions = await this.acquire();
      try {
        return await fn(actions);
      } finally {
        this.store.poolJournal.release(this.pool, this.owner);
      }
    } finally {
      done();
    }
  }

  /** Settles when the call holding the pool in this process lets go. */
  private inProcess: Promise<void> = Promise.resolve();

  /** Take the pool and finish anything a dead holder left open; the actions taken. */
  async recover(): Promise<PoolAction[]> {
    return this.hold((actions) => Promise.resolve(actions));
  }

  private async acquire(): Promise<PoolAction[]> {
    const deadline = Date.now() + holdTimeoutMs;
    for (;;) {
      const row = this.journal();
      if (row.owner === this.owner)
        throw new InternalError(`pool ${this.pool} is already held by us`);
      if (row.owner === null || !isOwnerAlive(row.owner)) {
        if (this.store.poolJournal.claim(this.pool, row.owner, this.owner)) break;
        continue;
      }
      if (Date.now() > deadline)
        throw new EnvironmentError(
          'POOL_UNAVAILABLE',
          `thin pool ${this.pool} has been held by ${row.owner} for over ${holdTimeoutMs / 1000} s`,
          'is that process hung? stop it; the next start recovers its change',
        );
      await sleep(jittered(20, 0.5));
    }
    try {
      const actions = await this.finishOpen(this.journal());
      const poolTid = await this.transactionId();
      const ours = this.journal().transaction_id;
      if (poolTid !== ours)
        throw new EnvironmentError(
          'POOL_UNAVAILABLE',
          `thin pool ${this.pool} is at transaction ${poolTid}, thinrelay last committed ${ours}: it was changed by something else`,
          'the pool must be used by thinrelay alone; inspect it with thin_ls before going on',
        );
      return actions;
    } catch (err) {
      this.store.poolJournal.release(this.pool, this.owner);
      throw err;
    }
  }

  private journal(): PoolJournalRow {
    const row = this.store.poolJournal.get(this.pool);
    if (row === undefined) throw new InternalError(`pool ${this.pool} was never adopted`);
    return row;
  }

  /** A change left open by a holder that died (or failed to commit): decide by the pool's id. */
  private async finishOpen(row: PoolJournalRow): Promise<PoolAction[]> {
    if (row.open_op === null) return [];
    const t = row.transaction_id;
    const poolTid = await this.transactionId();
    const what = `${row.open_op}${row.open_thin_id === null ? '' : ` ${row.open_thin_id}`}`;
    const done = (action: string, reason: string, tid: number): PoolAction[] => {
      this.store.poolJournal.close(this.pool, this.owner, tid);
      const a = { object: `${this.pool} thin ${row.open_thin_id ?? '-'}`, action, reason };
      this.logger.warn('pool: finished an interrupted change', { ...a, purpose: row.open_purpose });
      return [a];
    };
    if (row.open_op === 'metadata_snap') {
      await this.releaseMetadataSnap();
      return done('released', 'metadata snapshot held by an interrupted listing', t);
    }
    if (poolTid === t + 1)
      return done('committed', `${what} had reached the pool's commit marker`, t + 1);
    if (poolTid !== t)
      throw new EnvironmentError(
        'POOL_UNAVAILABLE',
        `thin pool ${this.pool} is at transaction ${poolTid}; an interrupted ${what} expected ${t} or ${t + 1}`,
        'the pool was changed by something else; inspect it with thin_ls',
      );
    // Not committed. A created thin is rolled back; an interrupted delete is finished.
    const deleted = await this.deleteIfPresent(row.open_thin_id!);
    const verb = row.open_op === 'delete' ? 'finished' : 'rolled back';
    if (!deleted)
      return done(verb, `${what} was not committed (transaction ${t}); no thin device left`, t);
    await dmPoolMessage(this.pool, { op: 'set_transaction_id', from: t, to: t + 1 });
    return done(verb, `${what} was not committed (transaction ${t}); thin device deleted`, t + 1);
  }

  /** Delete a thin id; false when the pool does not hold it. Retries while busy. */
  private async deleteIfPresent(thinId: number): Promise<boolean> {
    for (let i = 1; ; i++) {
      try {
        await dmPoolMessage(this.pool, { op: 'delete', thinId });
        return true;
      } catch (err) {
        const errno = dmErrno(err);
        if (errno === 'ENODATA') return false;
        if (errno !== 'EBUSY' || i >= deleteAttempts) throw err;
        await sleep(jittered(50 * 2 ** Math.min(i, 5)));
      }
    }
  }

  /**
   * One change as a pool transaction (see the top of this file). The pool
   * must be held (inside `hold`). A delete of an id the pool does not hold
   * changes nothing and commits nothing: false.
   */
  async change(c: PoolChange): Promise<boolean> {
    const t = this.journal().transaction_id;
    this.store.poolJournal.open(this.pool, this.owner, {
      op: c.op,
      thinId: c.thinId,
      originId: c.originId ?? null,
      purpose: c.purpose,
    });
    failpoint(`dm:${c.op}:intent`);
    let changed: boolean;
    try {
      if (c.op === 'delete') changed = await this.deleteIfPresent(c.thinId);
      else {
        await dmPoolMessage(
          this.pool,
          c.op === 'create_thin'
            ? { op: 'create_thin', thinId: c.thinId }
            : { op: 'create_snap', thinId: c.thinId, originId: c.originId! },
        );
        changed = true;
      }
    } catch (err) {
      // The kernel refused the message: the pool (and its transaction id) did not change.
      this.store.poolJournal.close(this.pool, this.owner, t);
      throw err;
    }
    failpoint(`dm:${c.op}:sent`);
    if (!changed) {
      this.store.poolJournal.close(this.pool, this.owner, t);
      return false;
    }
    // If this fails the change stays open in the journal; the next holder recovers it.
    await dmPoolMessage(this.pool, { op: 'set_transaction_id', from: t, to: t + 1 });
    failpoint(`dm:${c.op}:committed`);
    this.store.poolJournal.close(this.pool, this.owner, t + 1);
    this.logger.debug('pool transaction committed', { pool: this.pool, transaction: t + 1, ...c });
    return true;
  }

  /** Run `read` against a metadata snapshot of the live pool (held, journaled, always released). */
  async withMetadataSnap<T>(read: () => Promise<T>): Promise<T> {
    const t = this.journal().transaction_id;
    this.store.poolJournal.open(this.pool, this.owner, {
      op: 'metadata_snap',
      thinId: null,
      originId: null,
      purpose: 'list thin devices',
    });
    try {
      await dmPoolMessage(this.pool, { op: 'reserve_metadata_snap' });
    } catch (err) {
      this.store.poolJournal.close(this.pool, this.owner, t);
      throw err;
    }
    failpoint('dm:metadata_snap:reserved');
    try {
      return await read();
    } finally {
      await this.releaseMetadataSnap();
      this.store.poolJournal.close(this.pool, this.owner, t);
    }
  }

  private async releaseMetadataSnap(): Promise<void> {
    try {
      await dmPoolMessage(this.pool, { op: 'release_metadata_snap' });
    } catch (err) {
      // EINVAL: no snapshot is held (the crash came before reserve succeeded).
      if (/Invalid argument/i.test(errorMessage(err))) return;
      throw err;
    }
  }
}

const deleteAttempts = 8;
