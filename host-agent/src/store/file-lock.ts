/**
 * A process lock on a file of its own: SQLite's (fcntl) lock on a tiny
 * database, held by an open EXCLUSIVE transaction, so the kernel releases
 * it when the holder dies, however it dies. The agent lock and the
 * reconcile lock are both this.
 *
 * The connection stays in SQLite's normal locking mode: a BEGIN EXCLUSIVE
 * that fails there gives back the SHARED/RESERVED locks it took on the way.
 * In `locking_mode = EXCLUSIVE` it keeps them, so two processes polling at
 * once could each hold what the other waits for, forever.
 */
import Database from 'better-sqlite3';
import { sqliteCode } from './db-errors.js';

export class FileLock {
  private readonly db: Database.Database;

  constructor(path: string) {
    this.db = new Database(path);
    try {
      this.db.pragma('busy_timeout = 0');
    } catch (err) {
      this.db.close();
      throw err;
    }
  }

  /** True once this process holds the lock; false while another one does. */
  tryAcquire(): boolean {
    try {
      this.db.exec('BEGIN EXCLUSIVE');
      return true;
    } catch (err) {
      if (sqliteCode(err)?.startsWith('SQLITE_BUSY') === true) return false;
      throw err;
    }
  }

  /** Releases the lock (if held) and the file. */
  close(): void {
    this.db.close();
  }
}
