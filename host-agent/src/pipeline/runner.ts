/**
 * Runs a job's steps in order with a checkpoint around each: the step is
 * marked running (and the job's status moved) in one transaction before it
 * starts, and complete in one transaction after. A step found running when
 * a job is taken over was interrupted; reconcile has already rolled back its
 * storage intents, and the step is retried. Completed steps never run again.
 */
import { failpoint } from '../failpoints.js';
import type { JobContext } from './context.js';
import { EnvironmentError, errorMessage } from '../errors.js';
import { asHostFault, describeFailure, releaseFailedJob, spendSpaceBudget } from './failure.js';
import { imageSteps } from './steps/index.js';

export const imageStepNames: readonly string[] = imageSteps.map((s) => s.name);

export async function runJob(ctx: JobContext): Promise<void> {
  const { store, job, image } = ctx;
  const rows = store.jobs.steps(job.id);
  for (const [position, step] of imageSteps.entries()) {
    const row = rows[position];
    if (row === undefined || row.name !== step.name) {
      // A job recorded by a thinrelay with other steps: the state, not the image, is at fault.
      throw new EnvironmentError(
        'STATE_DIR',
        `job ${job.id} step ${position} is ${row?.name}, expected ${step.name}`,
      );
    }
    if (row.status === 'complete' || row.status === 'skipped') continue;
    if (row.status === 'running')
      ctx.logger.warn('retrying interrupted step', { job: job.id, step: step.name });

    store.tx(() => {
      if (store.jobs.get(job.id)!.status !== step.jobStatus)
        store.jobs.setStatus(job.id, step.jobStatus);
      store.jobs.setStep(job.id, position, 'running');
    });
    ctx.logger.debug('step started', { job: job.id, step: step.name });
    try {
      ctx.signal.throwIfAborted();
      failpoint(`step:${step.name}:start`);
      const outcome = await step.run(ctx);
      failpoint(`step:${step.name}:end`);
      store.tx(() =>
        store.jobs.setStep(job.id, position, outcome.status, { detail: outcome.detail }),
      );
      ctx.logger.info('step done', {
        job: job.id,
        step: step.name,
        status: outcome.status,
        ...outcome.detail,
      });
    } catch (thrown) {
      const err = spendSpaceBudget(ctx, await asHostFault(ctx, thrown));
      const failure = describeFailure(err, ctx.signal);
      await releaseFailedJob(ctx, err);
      try {
        store.tx(() => {
          store.jobs.setStep(job.id, position, 'failed', { error: failure });
          store.jobs.setStatus(job.id, 'failed', failure);
          store.images.fail(image.id, failure.code, failure.message);
        });
      } catch (recordErr) {
        // The job stays open under this owner, which is gone once this call
        // returns (a CLI process exits, a daemon worker is released): the next
        // attempt takes the job over and reconcile releases what is left.
        ctx.logger.error('could not record the failure; the next attempt recovers this job', {
          job: job.id,
          code: failure.code,
          error: errorMessage(recordErr),
        });
      }
      ctx.logger.error('image failed', {
        job: job.id,
        step: step.name,
        code: failure.code,
        error: failure.message,
      });
      throw err;
    }
  }
  store.tx(() => {
    store.jobs.setStatus(job.id, 'complete');
    store.images.markReady(image.id);
  });
}
