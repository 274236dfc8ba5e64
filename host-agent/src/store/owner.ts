/**
 * Who is doing a piece of work: "pid:starttime:bootid", and for the daemon's
 * workers "pid:starttime:bootid:N". A row in an intermediate state names its
 * owner; if that exact process is gone (killed, or the host rebooted) the
 * work was interrupted and recovery may take over. The start time guards
 * against pid reuse, the boot id against reboots. Within this process, a
 * worker owner is alive only while registered: a worker that ended without
 * recording its outcome (a failed database write) left work to recover, and
 * this process must never wait on it as if it were someone else's.
 */
import { readFileSync } from 'node:fs';

let self: string | undefined;
let bootId: string | undefined;

function readBootId(): string {
  bootId ??= readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  return bootId;
}

interface ProcStat {
  state: string;
  /** Field 22: start time in clock ticks since boot. */
  startTicks: string;
}

function readProcStat(pid: number): ProcStat | null {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  // comm (field 2) may contain spaces and ')': split after the last ')'.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Fields 3.. are rest[0..]: field 3 is the state, field 22 the start time.
  return { state: rest[0] ?? '', startTicks: rest[19] ?? '' };
}

export function currentOwner(): string {
  self ??= `${process.pid}:${readProcStat(process.pid)?.startTicks}:${readBootId()}`;
  return self;
}

/** Worker owners of this process whose work is running now. */
const liveWorkers = new Set<string>();

/** A worker of this process (e.g. one queue message) starts: its owner is alive until released. */
export function registerWorker(owner: string): void {
  liveWorkers.add(owner);
}

export function releaseWorker(owner: string): void {
  liveWorkers.delete(owner);
}

export function isOwnerAlive(owner: string | null): boolean {
  if (owner === null) return false;
  if (owner === currentOwner()) return true;
  const [pid, start, boot] = owner.split(':');
  // One of our own workers: alive only while its work runs.
  if (`${pid}:${start}:${boot}` === currentOwner()) return liveWorkers.has(owner);
  if (boot !== readBootId()) return false;
  const stat = readProcStat(Number(pid));
  // A zombie has exited: its work is not going to finish.
  return stat !== null && stat.startTicks === start && stat.state !== 'Z';
}

export function ownerPid(owner: string | null): number | null {
  if (owner === null) return null;
  const pid = Number(owner.split(':')[0]);
  return Number.isInteger(pid) ? pid : null;
}
