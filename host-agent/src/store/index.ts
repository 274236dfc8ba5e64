/**
 * The state store: one SQLite database and a repository per table group.
 * `tx` runs a function in one IMMEDIATE transaction, which is how every
 * multi-row transition stays atomic across concurrent thinrelay processes;
 * `txShared` the same, its commit shared with the other transactions
 * requested in that turn of the event loop (group-commit.ts).
 */
import type { Db } from './db.js';
import { openDatabase } from './db.js';
import { sqliteCode } from './db-errors.js';
import { releaseReserve } from './space-reserve.js';
import { BlobRepo } from './blobs.js';
import { ContainerdSnapshotRepo } from './containerd-snapshots.js';
import { EventRepo } from './events.js';
import { GroupCommit } from './group-commit.js';
import { ImageRepo } from './images.js';
import { JobRepo } from './jobs.js';
import { ObjectRepo } from './objects.js';
import { PoolJournalRepo } from './pool-journal.js';
import { SnapshotRepo } from './snapshots.js';

export class StateStore {
  readonly images: ImageRepo;
  readonly blobs: BlobRepo;
  readonly jobs: JobRepo;
  readonly objects: ObjectRepo;
  readonly snapshots: SnapshotRepo;
  readonly events: EventRepo;
  readonly poolJournal: PoolJournalRepo;
  readonly containerdSnapshots: ContainerdSnapshotRepo;
  /** The shared commits of `txShared` (its counts tell how they grouped). */
  readonly groupCommit = new GroupCommit(this);

  constructor(
    readonly db: Db,
    /** Where the database lives (its space reserve too); null for a bare handle. */
    readonly stateDir: string | null = null,
  ) {
    this.images = new ImageRepo(db);
    this.blobs = new BlobRepo(db);
    this.jobs = new JobRepo(db);
    this.objects = new ObjectRepo(db);
    this.snapshots = new SnapshotRepo(db);
    this.events = new EventRepo(db);
    this.poolJournal = new PoolJournalRepo(db);
    this.containerdSnapshots = new ContainerdSnapshotRepo(db);
  }

  static open(stateDir: string, opts: { readonly?: boolean } = {}): StateStore {
    return new StateStore(openDatabase(stateDir, opts), stateDir);
  }

  /**
   * One IMMEDIATE transaction. On a full filesystem (SQLITE_FULL) the space
   * reserve is given back and the transaction retried once: the write that
   * records a failure or an intent to free space must not fail for want of it.
   */
  tx<T>(fn: () => T): T {
    try {
      return this.db.transaction(fn).immediate();
    } catch (err) {
      if (!this.releaseReserveOn(err)) throw err;
      return this.db.transaction(fn).immediate();
    }
  }

  /**
   * Like `tx`, but committed together with the other `txShared` calls made
   * in this turn of the event loop (one fsync for all): resolves once the
   * shared commit is durable. `fn` runs in its own savepoint: a typed error
   * it throws rolls back its own writes and reaches its caller alone.
   */
  txShared<T>(fn: () => T): Promise<T> {
    return this.groupCommit.run(fn);
  }

  /** A savepoint inside the open transaction: `fn`'s writes roll back alone if it throws. */
  savepoint<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }

  /** On SQLITE_FULL, delete the space reserve; true if that freed something. */
  releaseReserveOn(err: unknown): boolean {
    if (this.stateDir === null || !sqliteCode(err)?.startsWith('SQLITE_FULL')) return false;
    return releaseReserve(this.stateDir);
  }

  integrityCheck(): string[] {
    const rows = this.db.pragma('integrity_check') as { integrity_check: string }[];
    return rows.map((r) => r.integrity_check).filter((r) => r !== 'ok');
  }

  /** Online backup (consistent while other processes write). */
  async backup(file: string): Promise<void> {
    await this.db.backup(file);
  }

  close(): void {
    this.db.close();
  }
}

export type { Db };
export * from './states.js';
export type { ImageRow } from './images.js';
export type { BlobRow } from './blobs.js';
export type { JobRow, StepRow } from './jobs.js';
export type { StorageObjectRow, ObjectKind } from './objects.js';
export type { SnapshotRow, SnapshotListing } from './snapshots.js';
export type { KeyEventRow, QueueMessageRow, MessageOutcome } from './events.js';
export type { PoolJournalRow, PoolOp } from './pool-journal.js';
export type { ContainerdSnapshotRow, ContainerdSnapshotKind } from './containerd-snapshots.js';
