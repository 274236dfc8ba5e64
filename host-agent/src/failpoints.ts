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
