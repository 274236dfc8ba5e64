/**
 * Opens the SQLite state database (<state-dir>/images.db): WAL so readers
 * never block the writer, foreign keys on, a busy timeout so concurrent
 * thinrelay processes queue instead of failing, synchronous=FULL so a
 * committed intent survives power loss, and versioned migrations.
 */
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { EnvironmentError, errorMessage } from '../errors.js';
import { databaseError } from './db-errors.js';
import { migrations } from './migrations.js';
import { ensureReserve } from './space-reserve.js';

export type Db = Database.Database;

export const dbFileName = 'images.db';

export function databasePath(stateDir: string): string {
  return join(stateDir, dbFileName);
}

/** How long a writer waits for another process's write lock (THINRELAY_DB_BUSY_MS). */
function busyTimeoutMs(): number {
  const text = process.env.THINRELAY_DB_BUSY_MS;
  const v = text === undefined || text.trim() === '' ? NaN : Number(text);
  return Number.isInteger(v) && v >= 0 ? v : 10_000;
}

export function openDatabase(stateDir: string, opts: { readonly?: boolean } = {}): Db {
  let db: Db;
  try {
    if (!opts.readonly) mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    db = new Database(databasePath(stateDir), {
      readonly: opts.readonly ?? false,
      fileMustExist: opts.readonly ?? false,
    });
  } catch (err) {
    throw (
      databaseError(err, stateDir) ??
      new EnvironmentError(
        'STATE_DIR',
        `cannot open the state database in ${stateDir}: ${errorMessage(err)}`,
        'check --state-dir / THINRELAY_STATE_DIR and that you are root',
        { cause: err },
      )
    );
  }
  try {
    db.pragma(`busy_timeout = ${busyTimeoutMs()}`);
    if (!opts.readonly) {
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
    }
    db.pragma('foreign_keys = ON');
    // A corrupt file opens fine; the first read of the schema tells.
    schemaVersion(db);
    if (!opts.readonly) migrate(db);
  } catch (err) {
    db.close();
    throw databaseError(err, stateDir) ?? err;
  }
  if (!opts.readonly) ensureReserve(stateDir);
  return db;
}

export function schemaVersion(db: Db): number {
  return db.pragma('user_version', { simple: true }) as number;
}

function migrate(db: Db): void {
  if (schemaVersion(db) >= migrations.length) return;
  // Foreign keys off while the schema changes (SQLite's procedure for rebuilding a
  // table others reference; it cannot be switched inside the transaction), and
  // checked before the commit: a migration that breaks one rolls back.
  db.pragma('foreign_keys = OFF');
  try {
    // IMMEDIATE: two processes starting at once must not both migrate.
    db.transaction(() => {
      for (let v = schemaVersion(db); v < migrations.length; v++) {
        db.exec(migrations[v]!);
        db.pragma(`user_version = ${v + 1}`);
      }
      const broken = db.pragma('foreign_key_check') as unknown[];
      if (broken.length > 0)
        throw new Error(`migration left ${broken.length} broken foreign key(s)`);
    }).immediate();
  } finally {
    db.pragma('foreign_keys = ON');
  }
}

export function nowIso(): string {
  return new Date().toISOString();
}
