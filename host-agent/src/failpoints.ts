/**
 * Named fail points for crash tests: THINRELAY_CRASH_AT=<name> makes the
 * process SIGKILL itself when it reaches that point, exactly as a power cut
 * or kill -9 would, so recovery is tested at every boundary that matters.
 * Costs one string comparison when unset.
 */
const target = process.env.THINRELAY_CRASH_AT;

export function failpoint(name: string): void {
  if (target !== undefined && target === name) process.kill(process.pid, 'SIGKILL');
}

/**
 * A fail point inside a worker thread: ends that thread alone (as a crash of
 * the thread would: no message, a non-zero exit), the process lives on.
 */
export function threadFailpoint(name: string): void {
  if (target !== undefined && target === name) process.exit(70);
}

/** Every fail point the pipeline passes, in order (the crash test walks them all). */
export const failpointNames = [
  'step:resolve:start',
  'step:resolve:end',
  'step:unpack:start',
  'volume:intent',
  'volume:created',
  'volume:mounted',
  'unpack:midway',
  'volume:flushed',
  'step:unpack:end',
  'step:seal:start',
  'seal:detached',
  'step:seal:end',
  'step:snapshot:start',
  'snapshot:intent',
  'snapshot:copied',
  'step:snapshot:end',
  'step:activate:start',
  'activate:intent',
  'activate:attached',
  'step:activate:end',
] as const;

/**
 * The devmapper pool transaction's own points (pool-transactions.ts): after
 * the intent is journaled, after the message reached the pool, and after the
 * pool's commit marker moved. Walked by the in-VM crash test.
 */
export const dmFailpointNames = [
  'dm:create_thin:intent',
  'dm:create_thin:sent',
  'dm:create_thin:committed',
  'dm:create_snap:intent',
  'dm:create_snap:sent',
  'dm:create_snap:committed',
] as const;

/**
 * Reached after every message of a pool transaction that groups two or more
 * changes (concurrent callers), before its commit marker.
 */
export const dmGroupFailpointName = 'dm:group:sent';

/** Reached only when something is deleted (gc, remove, a failed job). */
export const dmDeleteFailpointNames = [
  'dm:delete:intent',
  'dm:delete:sent',
  'dm:delete:committed',
] as const;

/**
 * The snapshotter service's own points (snapshot-service.ts), beside the
 * storage and pool points its operations pass: a Prepare recorded ready
 * before its device is attached, a Commit's and a Remove's intent recorded.
 */
export const snapshotterFailpointNames = [
  'snapshotter:prepare:ready',
  'snapshotter:commit:intent',
  'snapshotter:remove:intent',
] as const;
