/**
 * One daemon per state dir: `thinrelay agent` (or the standalone `thinrelay
 * snapshotter`) holds an exclusive lock on <state-dir>/agent.lock for its
 * whole life (a FileLock, which the kernel releases when the process dies
 * however it dies); CLI commands (which use images.db) never touch it.
 * agent.pid names the holder and what it is, for the refusal message.
 */
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { EnvironmentError } from '../errors.js';
import { FileLock } from '../store/file-lock.js';
import { ownerPid } from '../store/owner.js';

export const agentLockFileName = 'agent.lock';
const pidFileName = 'agent.pid';

/** The daemons that hold the lock: one of them per state dir. */
export type DaemonRole = 'agent' | 'snapshotter';

export interface AgentLock {
  release(): void;
}

const refusalHint: Record<DaemonRole, Record<DaemonRole, string>> = {
  agent: {
    agent:
      'run one agent per state dir: stop the other (systemctl stop thinrelay-agent), or give this one its own --state-dir; CLI commands work beside a running agent',
    snapshotter:
      'the agent serves the snapshots API itself: set THINRELAY_SNAPSHOTTER_SOCKET (or --snapshotter-socket) in its settings instead of running `thinrelay snapshotter`, or give the snapshotter its own --state-dir',
  },
  snapshotter: {
    agent:
      'stop the standalone snapshotter and let the agent serve the snapshots API (THINRELAY_SNAPSHOTTER_SOCKET), or give the agent its own --state-dir',
    snapshotter:
      'run one snapshotter per state dir: stop the other, or give this one its own --state-dir',
  },
};

/** Reads agent.pid: "OWNER\nROLE" (a file without the role line was written by an agent). */
function holderOf(stateDir: string): { pid: number | null; role: DaemonRole } | null {
  let text: string;
  try {
    text = readFileSync(join(stateDir, pidFileName), 'utf8');
  } catch {
    // Not written yet: the holder stays unknown.
    return null;
  }
  const [owner = '', role = 'agent'] = text.split('\n').map((l) => l.trim());
  return { pid: ownerPid(owner), role: role === 'snapshotter' ? 'snapshotter' : 'agent' };
}

/** Throws AGENT_RUNNING (naming the holder: an agent or a snapshotter) if another daemon has the state dir. */
export function acquireAgentLock(
  stateDir: string,
  owner: string,
  role: DaemonRole = 'agent',
): AgentLock {
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
    const holder = holderOf(stateDir);
    const holderRole = holder?.role ?? 'agent';
    const pid = holder?.pid == null ? '' : ` (pid ${holder.pid})`;
    throw new EnvironmentError(
      'AGENT_RUNNING',
      holderRole === 'agent'
        ? `another thinrelay agent${pid} is running on the state dir ${stateDir}`
        : `a standalone thinrelay snapshotter${pid} is running on the state dir ${stateDir}`,
      refusalHint[holderRole][role],
      { cause },
    );
  }
  writeFileSync(join(stateDir, pidFileName), `${owner}\n${role}\n`, { mode: 0o600 });
  return {
    release: () => {
      rmSync(join(stateDir, pidFileName), { force: true });
      lock.close();
    },
  };
}
