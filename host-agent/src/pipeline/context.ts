/** What a step gets to work with. Steps see the store and storage, never the CLI. */
import type { S3Client } from '@aws-sdk/client-s3';
import type { AgentConfig } from '../config.js';
import type { Logger } from '../log.js';
import type { ObjectRef } from '../source/object-ref.js';
import type { StateStore } from '../store/index.js';
import type { ImageRow } from '../store/images.js';
import type { JobRow } from '../store/jobs.js';
import type { ObjectManager } from '../storage/object-manager.js';
import type { ProgressSink } from './progress.js';
import type { PoolEvents } from '../pool/keeper.js';
import type { TrustRecord } from '../trust/trust-record.js';
import type { SidecarRead } from '../trust/gate.js';

export interface PipelineDeps {
  store: StateStore;
  objects: ObjectManager;
  config: AgentConfig;
  logger: Logger;
  /** This process, as recorded in owner columns. */
  owner: string;
  /** The S3 client, created (and the SDK loaded) on first use. */
  s3: () => Promise<S3Client>;
  progress: ProgressSink;
  signal: AbortSignal;
  keepOnFailure: boolean;
  /** Told of retirements, evictions and passes (the agent's metrics and fleet items). */
  poolEvents?: PoolEvents | undefined;
  /** Told of every signature check (the agent's metrics). */
  trustChecked?: ((record: TrustRecord) => void) | undefined;
}

export interface JobContext extends PipelineDeps {
  job: JobRow;
  image: ImageRow;
  /** The pinned object version this job processes. */
  ref: ObjectRef;
  /** The signature sidecar read before the job was claimed (so the gate does not GET it again). */
  sidecar?: SidecarRead | undefined;
}

export type StepOutcome = { status: 'complete' | 'skipped'; detail?: Record<string, unknown> };
