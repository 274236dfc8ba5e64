/**
 * activate: attach the job's snapshot and record its device path. A ready
 * image whose snapshot is not attached is attached here too
 * (process-image.ts, ensureActive).
 */
import type { StorageObjectRow } from '../../store/objects.js';
import type { JobContext, PipelineDeps, StepOutcome } from '../context.js';
import type { Step } from './index.js';
import { InternalError } from '../../errors.js';

/** Attach a snapshot (the object manager records its device path): where it is. */
export async function attachSnapshot(
  ctx: Pick<PipelineDeps, 'objects'>,
  snap: StorageObjectRow,
): Promise<{ devicePath: string; snapshotObjectId: number }> {
  return { devicePath: await ctx.objects.activate(snap), snapshotObjectId: snap.id };
}

async function run(ctx: JobContext): Promise<StepOutcome> {
  const snap = ctx.store.objects
    .forJob(ctx.job.id)
    .find((o) => o.kind === 'snapshot' && o.state !== 'removed');
  if (snap === undefined) throw new InternalError(`job ${ctx.job.id} has no snapshot to activate`);
  const { devicePath } = await attachSnapshot(ctx, snap);
  return { status: 'complete', detail: { snapshot: snap.id, devicePath } };
}

export const activateStep: Step = { name: 'activate', jobStatus: 'snapshotting', run };
