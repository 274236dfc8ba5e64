/**
 * Who is doing a piece of work: "pid:starttime:bootid". A row in an
 * intermediate state names its owner; if that exact process is gone (killed,
 * or the host rebooted) the work was interrupted and recovery may take over.
 * The start time guards against pid reuse, the boot id against reboots.
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

export function isOwnerAlive(owner: string | null): boolean {
  if (owner === null) return false;
  const [pid, start, boot] = owner.split(':');
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
