/**
 * The commit protocol between the store and a thin pool. Every create_thin,
 * create_snap and delete is part of one pool transaction:
 *
 *   1. take the pool (journal row owner; a dead holder is recovered first);
 *   2. record the change(s) (op, thin id, purpose, each) in the journal — the intent;
 *   3. send each to the pool;
 *   4. `set_transaction_id T T+1` — the commit marker, in the pool's own metadata;
 *   5. record T+1 and clear the change(s).
 *
 * Changes asked for while a transaction is in flight in this process join
 * the next one (group commit: one marker for all of them, so 100 concurrent
 * Prepares cost about 100 messages and a few markers, not 200 and 100
 * pool holds). After a crash the pool's transaction id tells which side of
 * step 4 the whole group was on: T+1 → committed; T → rolled back (every
 * created thin is deleted, every interrupted delete finished). The journal
 * row is also the cross-process lock: pool messages from concurrent
 * thinrelay processes never interleave.
 *
 * The pool's transaction id is read (`dmsetup status`) when the journal
 * moved without this process (another thinrelay process committed, or a
 * change was left open); otherwise `set_transaction_id T T+1` itself is the
 * check: the kernel refuses it unless the pool is at T.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { EnvironmentError, InternalError, errorMessage } from '../../errors.js';
import { dmGroupFailpointName, failpoint } from '../../failpoints.js';
import type { Logger } from '../../log.js';
import type { StateStore } from '../../store/index.js';
import { isOwnerAlive } from '../../store/owner.js';
import {
  openChanges,
  type OpenChange,
  type PoolJournalRow,
  type PoolOp,
} from '../../store/pool-journal.js';
import { Batcher } from './batcher.js';
import {
  dmErrno,
  dmInfo,
  dmPoolMessage,
  dmResume,
  dmStatus,
  dmSuspend,
  parseThinPoolStatus,
} from './device-mapper.js';
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
  /**
   * create_snap: the origin's dm device, suspended around the message when
   * it is active (the kernel's rule); a detached origin needs nothing.
   */
  originDevice?: string;
}

/** How long to wait for another process holding the pool (it holds it for milliseconds). */
const holdTimeoutMs = 120_000;

export class PoolTransactions {
  /** Changes asked for while a transaction is in flight join the next one. */
  private readonly groups = new Batcher<PoolChange, boolean>((changes) =>
    this.hold(() => this.commitGroup(changes)),
  );

  /**
   * The journal's transaction id this process last saw equal to the pool's
   * own (after its own commit or a status read): while the journal still
   * says so, no thinrelay process changed the pool since, and taking the
   * pool needs no `dmsetup status`.
   */
  private verifiedTid: number | undefined;

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
      const ours = this.journal().transaction_id;
      if (actions.length === 0 && ours === this.verifiedTid) return actions;
      const poolTid = await this.transactionId();
      if (poolTid !== ours) throw this.changedElsewhere(poolTid, ours);
      this.verifiedTid = ours;
      return actions;
    } catch (err) {
      this.verifiedTid = undefined;
      this.store.poolJournal.release(this.pool, this.owner);
      throw err;
    }
  }

  private changedElsewhere(poolTid: number, ours: number): EnvironmentError {
    return new EnvironmentError(
      'POOL_UNAVAILABLE',
      `thin pool ${this.pool} is at transaction ${poolTid}, thinrelay last committed ${ours}: it was changed by something else`,
      'the pool must be used by thinrelay alone; inspect it with thin_ls before going on',
    );
  }

  private journal(): PoolJournalRow {
    const row = this.store.poolJournal.get(this.pool);
    if (row === undefined) throw new InternalError(`pool ${this.pool} was never adopted`);
    return row;
  }

  /** Change(s) left open by a holder that died (or failed to commit): decide by the pool's id. */
  private async finishOpen(row: PoolJournalRow): Promise<PoolAction[]> {
    const open = openChanges(row);
    if (open.length === 0) return [];
    const t = row.transaction_id;
    const poolTid = await this.transactionId();
    const what = (c: OpenChange): string => `${c.op}${c.thinId === null ? '' : ` ${c.thinId}`}`;
    const all = open.map(what).join(', ');
    const action = (c: OpenChange, verb: string, reason: string): PoolAction => {
      const a = { object: `${this.pool} thin ${c.thinId ?? '-'}`, action: verb, reason };
      this.logger.warn('pool: finished an interrupted change', { ...a, purpose: c.purpose });
      return a;
    };
    const done = (actions: PoolAction[], tid: number): PoolAction[] => {
      this.store.poolJournal.close(this.pool, this.owner, tid);
      return actions;
    };
    if (open[0]!.op === 'metadata_snap') {
      await this.releaseMetadataSnap();
      return done(
        [action(open[0]!, 'released', 'metadata snapshot held by an interrupted listing')],
        t,
      );
    }
    if (poolTid === t + 1)
      return done(
        open.map((c) => action(c, 'committed', `${all} had reached the pool's commit marker`)),
        t + 1,
      );
    if (poolTid !== t)
      throw new EnvironmentError(
        'POOL_UNAVAILABLE',
        `thin pool ${this.pool} is at transaction ${poolTid}; an interrupted ${all} expected ${t} or ${t + 1}`,
        'the pool was changed by something else; inspect it with thin_ls',
      );
    // Not committed. Every created thin is rolled back; every interrupted delete is finished.
    const actions: PoolAction[] = [];
    let deletedAny = false;
    for (const c of open) {
      const deleted = await this.deleteIfPresent(c.thinId!);
      deletedAny ||= deleted;
      const verb = c.op === 'delete' ? 'finished' : 'rolled back';
      actions.push(
        action(
          c,
          verb,
          `${what(c)} was not committed (transaction ${t}); ` +
            (deleted ? 'thin device deleted' : 'no thin device left'),
        ),
      );
    }
    if (!deletedAny) return done(actions, t);
    await dmPoolMessage(this.pool, { op: 'set_transaction_id', from: t, to: t + 1 });
    return done(actions, t + 1);
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
   * One change as part of a pool transaction (see the top of this file):
   * it joins the transaction after the one in flight, if any. Not inside
   * `hold`. A delete of an id the pool does not hold changes nothing: false.
   */
  change(c: PoolChange): Promise<boolean> {
    return this.groups.submit(c);
  }

  /**
   * Send one message of a group (suspending an active origin around a
   * create_snap); `sent` is called once the pool has it, so a failure to
   * resume the origin afterwards still commits the change.
   */
  private async send(c: PoolChange, sent: (changed: boolean) => void): Promise<boolean> {
    if (c.op === 'delete') {
      const changed = await this.deleteIfPresent(c.thinId);
      sent(changed);
      return changed;
    }
    const origin = c.op === 'create_snap' ? c.originDevice : undefined;
    const active = origin !== undefined && (await dmInfo(origin)) !== null;
    if (active) await dmSuspend(origin);
    try {
      await dmPoolMessage(
        this.pool,
        c.op === 'create_thin'
          ? { op: 'create_thin', thinId: c.thinId }
          : { op: 'create_snap', thinId: c.thinId, originId: c.originId! },
      );
      sent(true);
    } finally {
      if (active) await dmResume(origin);
    }
    return true;
  }

  /**
   * A group of changes as one pool transaction; the pool is held. Every
   * member's intent is journaled before the first message; a member the
   * kernel refuses fails alone (the pool did not change for it); the rest
   * are committed under one marker.
   */
  private async commitGroup(changes: PoolChange[]): Promise<PromiseSettledResult<boolean>[]> {
    const t = this.journal().transaction_id;
    this.store.poolJournal.open(
      this.pool,
      this.owner,
      changes.map((c) => ({
        op: c.op,
        thinId: c.thinId,
        originId: c.originId ?? null,
        purpose: c.purpose,
      })),
    );
    const ops = [...new Set(changes.map((c) => c.op))];
    for (const op of ops) failpoint(`dm:${op}:intent`);
    const results: PromiseSettledResult<boolean>[] = [];
    let changed = false;
    for (const c of changes) {
      let reached = false;
      try {
        const value = await this.send(c, (v) => {
          reached = true;
          changed ||= v;
        });
        results.push({ status: 'fulfilled', value });
      } catch (err) {
        // Refused by the kernel (the pool did not change for this one), or sent
        // and then the origin failed to resume: committed with the rest, reported.
        results.push({ status: 'rejected', reason: err });
      }
      if (reached) failpoint(`dm:${c.op}:sent`);
    }
    if (changes.length > 1) failpoint(dmGroupFailpointName);
    if (!changed) {
      this.store.poolJournal.close(this.pool, this.owner, t);
      return results;
    }
    try {
      await dmPoolMessage(this.pool, { op: 'set_transaction_id', from: t, to: t + 1 });
    } catch (err) {
      // The change(s) stay open in the journal; the next holder decides by the pool's id.
      this.verifiedTid = undefined;
      const cause = await this.whyNotCommitted(t, err);
      return results.map((r) =>
        r.status === 'fulfilled' ? { status: 'rejected', reason: cause } : r,
      );
    }
    for (const op of ops) failpoint(`dm:${op}:committed`);
    this.store.poolJournal.close(this.pool, this.owner, t + 1);
    this.verifiedTid = t + 1;
    this.logger.debug('pool transaction committed', {
      pool: this.pool,
      transaction: t + 1,
      changes: changes.map(({ op, thinId, originId, purpose }) => ({
        op,
        thinId,
        originId,
        purpose,
      })),
    });
    return results;
  }

  /** A refused commit marker: the pool moved without us (a clear error), or the tool's own. */
  private async whyNotCommitted(t: number, err: unknown): Promise<unknown> {
    try {
      const poolTid = await this.transactionId();
      if (poolTid !== t && poolTid !== t + 1) return this.changedElsewhere(poolTid, t);
    } catch {
      // The status read failed too: the marker's own error says more.
    }
    return err;
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
