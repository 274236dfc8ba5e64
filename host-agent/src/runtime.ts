/**
 * Wires one process's dependencies: store, backend, object manager, logger.
 * The S3 client is created on first use (loading the SDK costs ~100 ms that
 * listings should not pay).
 */
import type { S3Client } from '@aws-sdk/client-s3';
import type { AgentConfig } from './config.js';
import type { Logger } from './log.js';
import type { PipelineDeps } from './pipeline/context.js';
import { noProgress, type ProgressSink } from './pipeline/progress.js';
import { StateStore } from './store/index.js';
import { currentOwner } from './store/owner.js';
import { createBackend } from './storage/index.js';
import { ObjectManager } from './storage/object-manager.js';

export interface Runtime extends PipelineDeps {
  close(): void;
}

export interface RuntimeOptions {
  config: AgentConfig;
  logger: Logger;
  s3?: () => Promise<S3Client>;
  progress?: ProgressSink;
  signal?: AbortSignal;
  keepOnFailure?: boolean;
}

export function openRuntime(opts: RuntimeOptions): Runtime {
  const store = StateStore.open(opts.config.stateDir);
  const owner = currentOwner();
  const backend = createBackend(opts.config, { store, owner, logger: opts.logger });
  const noS3 = (): Promise<S3Client> => Promise.reject(new Error('this command has no S3 client'));
  return {
    store,
    objects: new ObjectManager(store, backend, owner, opts.logger),
    config: opts.config,
    logger: opts.logger,
    owner,
    s3: opts.s3 ?? noS3,
    progress: opts.progress ?? noProgress,
    signal: opts.signal ?? new AbortController().signal,
    keepOnFailure: opts.keepOnFailure ?? false,
    close: () => store.close(),
  };
}
