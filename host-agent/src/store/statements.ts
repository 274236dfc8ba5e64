/**
 * Compiled statements kept per connection and SQL text, for the hot queries
 * (a snapshot's or object's row by id or key): compiling one costs more than
 * running it, and a burst of Prepares runs each a dozen times. Only for
 * statements used as compiled (no pluck/raw/expand: those change the shared
 * statement's mode).
 */
import type Database from 'better-sqlite3';
import type { Db } from './db.js';

export function statementCache(db: Db): (sql: string) => Database.Statement {
  const cache = new Map<string, Database.Statement>();
  return (sql) => {
    let statement = cache.get(sql);
    if (statement === undefined) {
      statement = db.prepare(sql);
      cache.set(sql, statement);
    }
    return statement;
  };
}
