/**
 * One daemon per state dir: `thinrelay agent` holds an exclusive lock on
 * <state-dir>/agent.lock for its whole life (a FileLock, which the kernel
 * releases when the process dies however it dies); CLI commands (which use
 * images.db) never touch it. agent.pid
 * names the holder, for the refusal message.
 */
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { EnvironmentError } from '../errors.js';
import { FileLock } from '../store/file-lock.js';
import { ownerPid } from '../store/owner.js';

export const agentLockFileName = 'agent.lock';
const pidFileName = 'agent.pid';

export interface AgentLock {
  release(): void;
}

export function acquireAgentLock(stateDir: string, owner: string): AgentLock {
  const path = join(stateDir, agentLockFileName);
  const lock = new FileLock(path);
  let held = false;
  let cause: unknown;
  try {
    held = lock.tryAcquire();
  } catch (err) {
    cause = err;
  }
  if (!held) {
    lock.close();
    let holder: string | null = null;
    try {
      holder = readFileSync(join(stateDir, pidFileName), 'utf8').trim();
    } catch {
      // Not written yet: the pid stays unknown.
    }
    throw new EnvironmentError(
      'AGENT_RUNNING',
      `another thinrelay agent${holder === null ? '' : ` (pid ${ownerPid(holder)})`} is running on the state dir ${stateDir}`,
      'run one agent per state dir: stop the other (systemctl stop thinrelay-agent), or give this one its own --state-dir; CLI commands work beside a running agent',
      { cause },
    );
  }
  writeFileSync(join(stateDir, pidFileName), owner + '\n', { mode: 0o600 });
  return {
    release: () => {
      rmSync(join(stateDir, pidFileName), { force: true });
      lock.close();
    },
  };
}
