/**
 * Wires one process's dependencies: store, backend, object manager, logger.
 * The S3 client is created on first use (loading the SDK costs ~100 ms that
 * listings should not pay).
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { existsSync } from 'node:fs';
import type { AgentConfig } from './config.js';
import { NotFoundError, UsageError } from './errors.js';
import type { Logger } from './log.js';
import type { PipelineDeps } from './pipeline/context.js';
import { noProgress, type ProgressSink } from './pipeline/progress.js';
import { databasePath } from './store/db.js';
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
  /** Read-only commands: never create the state dir or database; open it read-only. */
  readonly?: boolean;
}

/** A state dir's objects belong to the backend that made them: another one cannot manage them. */
function checkBackend(store: StateStore, config: AgentConfig): void {
  const others = store.objects.backendsInUse().filter((b) => b !== config.backend);
  if (others.length === 0) return;
  store.close();
  throw new UsageError(
    'CONFIG',
    `the state in ${config.stateDir} holds ${others.join(' and ')} storage objects, but the configured backend is ${config.backend}`,
    `use --backend ${others[0]} (or THINRELAY_BACKEND in /etc/thinrelay/agent.env), or another --state-dir`,
  );
}

export function openRuntime(opts: RuntimeOptions): Runtime {
  if (opts.readonly === true && !existsSync(databasePath(opts.config.stateDir))) {
    throw new NotFoundError(
      'NO_STATE',
      `no thinrelay state at ${opts.config.stateDir} (no ${databasePath(opts.config.stateDir)})`,
      'check --state-dir / THINRELAY_STATE_DIR; process-image or the agent creates it',
    );
  }
  const store = StateStore.open(opts.config.stateDir, { readonly: opts.readonly ?? false });
  checkBackend(store, opts.config);
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
