/**
 * The image pipeline's steps, in order. Each step is idempotent: it first
 * looks at what the store says is already done for this job, then does only
 * the rest, so a retried step after a crash never redoes completed work.
 */
import type { JobStatus } from '../../store/states.js';
import type { JobContext, StepOutcome } from '../context.js';
import { activateStep } from './activate.js';
import { resolveStep } from './resolve.js';
import { sealStep } from './seal.js';
import { snapshotStep } from './snapshot.js';
import { unpackStep } from './unpack.js';

export interface Step {
  name: string;
  /** The job's status while this step runs. */
  jobStatus: JobStatus;
  run(ctx: JobContext): Promise<StepOutcome>;
}

export const imageSteps: readonly Step[] = [
  resolveStep,
  unpackStep,
  sealStep,
  snapshotStep,
  activateStep,
];
