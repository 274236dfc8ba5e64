/**
 * Group commit: transactions requested in one turn of the event loop are
 * written in one IMMEDIATE transaction, so they share one commit and one
 * fsync of the WAL (synchronous=FULL stays: durability is not weakened).
 * A burst of concurrent Prepares otherwise pays one fsync per intent and per
 * outcome, one after another on the event loop. Each caller's promise
 * settles only after the shared commit returned: a caller that acts on its
 * record (the intent before its side effect) acts on a durable one.
 * Each request runs in its own savepoint: one that throws a typed error
 * (AlreadyExists, NotFound...) is rolled back alone and only its caller sees
 * the error; any other error (a database fault) fails the whole batch.
 */
import { isThinrelayError } from '../errors.js';

/** What the group needs of the store: its IMMEDIATE transaction and a savepoint inside it. */
export interface GroupCommitTarget {
  tx<T>(fn: () => T): T;
  savepoint<T>(fn: () => T): T;
}

interface Request {
  fn: () => unknown;
  resolve: (value: unknown) => void;
  reject: (err: unknown) => void;
}

type Outcome = { ok: true; value: unknown } | { ok: false; error: unknown };

export class GroupCommit {
  private pending: Request[] = [];
  private scheduled = false;
  /** Transactions and commits so far (how they grouped: for tests and the service's exit log). */
  readonly counts = { requests: 0, commits: 0 };

  constructor(private readonly target: GroupCommitTarget) {}

  /** Run `fn` in the next shared transaction; resolves with its result once that is committed. */
  run<T>(fn: () => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.pending.push({ fn, resolve: resolve as (v: unknown) => void, reject });
      this.counts.requests++;
      if (this.scheduled) return;
      this.scheduled = true;
      // After the poll phase: every call whose request arrived with this one (or while
      // the last commit held the event loop) has queued its transaction by then.
      setImmediate(() => this.flush());
    });
  }

  private flush(): void {
    const batch = this.pending;
    this.pending = [];
    this.scheduled = false;
    let outcomes: Outcome[] = [];
    try {
      this.target.tx(() => {
        // Reset: the store retries the whole transaction once after freeing its space reserve.
        outcomes = [];
        for (const r of batch) {
          try {
            outcomes.push({ ok: true, value: this.target.savepoint(r.fn) });
          } catch (error) {
            if (!isThinrelayError(error)) throw error;
            outcomes.push({ ok: false, error });
          }
        }
      });
      this.counts.commits++;
    } catch (err) {
      for (const r of batch) r.reject(err);
      return;
    }
    batch.forEach((r, i) => {
      const o = outcomes[i]!;
      if (o.ok) r.resolve(o.value);
      else r.reject(o.error);
    });
  }
}
