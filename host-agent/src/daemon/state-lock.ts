/**
 * One daemon per state dir: `thinrelay agent` holds an exclusive lock on
 * <state-dir>/agent.lock for its whole life. The lock is SQLite's own
 * (fcntl) lock on a tiny database of its own, held by an open EXCLUSIVE
 * transaction, so the kernel releases it when the process dies however it
 * dies, and CLI commands (which use images.db) never touch it. agent.pid
 * names the holder, for the refusal message.
 */
import Database from 'better-sqlite3';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { EnvironmentError } from '../errors.js';
import { ownerPid } from '../store/owner.js';

export const agentLockFileName = 'agent.lock';
const pidFileName = 'agent.pid';

export interface AgentLock {
  release(): void;
}

export function acquireAgentLock(stateDir: string, owner: string): AgentLock {
  const path = join(stateDir, agentLockFileName);
  const db = new Database(path);
  try {
    db.pragma('busy_timeout = 0');
    db.pragma('locking_mode = EXCLUSIVE');
    db.exec('BEGIN EXCLUSIVE');
  } catch (err) {
    let holder: string | null = null;
    try {
      holder = readFileSync(join(stateDir, pidFileName), 'utf8').trim();
    } catch {
      // Not written yet: the pid stays unknown.
    }
    db.close();
    throw new EnvironmentError(
      'AGENT_RUNNING',
      `another thinrelay agent${holder === null ? '' : ` (pid ${ownerPid(holder)})`} is running on the state dir ${stateDir}`,
      'run one agent per state dir: stop the other (systemctl stop thinrelay-agent), or give this one its own --state-dir; CLI commands work beside a running agent',
      { cause: err },
    );
  }
  writeFileSync(join(stateDir, pidFileName), owner + '\n', { mode: 0o600 });
  return {
    release: () => {
      rmSync(join(stateDir, pidFileName), { force: true });
      db.close();
    },
  };
}
