/** activate: attach the job's snapshot and record its device path. */
import type { JobContext, StepOutcome } from '../context.js';
import type { Step } from './index.js';

async function run(ctx: JobContext): Promise<StepOutcome> {
  const snap = ctx.store.objects
    .forJob(ctx.job.id)
    .find((o) => o.kind === 'snapshot' && o.state !== 'removed');
  if (snap === undefined) throw new Error(`job ${ctx.job.id} has no snapshot to activate`);
  const devicePath = await ctx.objects.activate(snap);
  return { status: 'complete', detail: { snapshot: snap.id, devicePath } };
}

export const activateStep: Step = { name: 'activate', jobStatus: 'snapshotting', run };
