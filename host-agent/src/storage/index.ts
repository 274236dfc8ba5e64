/** Picks the storage backend named by configuration. */
import { UsageError } from '../errors.js';
import type { BackendName, StorageBackend } from './backend.js';
import { LoopBackend } from './loop/loop-backend.js';

export interface BackendConfig {
  backend: BackendName;
  stateDir: string;
  reserveBytes: number;
}

export function createBackend(config: BackendConfig): StorageBackend {
  switch (config.backend) {
    case 'loop':
      return new LoopBackend({ stateDir: config.stateDir, reserveBytes: config.reserveBytes });
    case 'devmapper':
      throw new UsageError(
        'CONFIG',
        'the devmapper backend is not available in this build',
        'use --backend loop',
      );
  }
}

export type { StorageBackend, BackendName } from './backend.js';
