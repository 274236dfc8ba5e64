/** Picks the storage backend named by configuration. */
import type { AgentConfig } from '../config.js';
import type { Logger } from '../log.js';
import type { StateStore } from '../store/index.js';
import type { StorageBackend } from './backend.js';
import { DevmapperBackend } from './devmapper/devmapper-backend.js';
import { LoopBackend } from './loop/loop-backend.js';

export interface BackendContext {
  /** Null for read-only uses (doctor); the devmapper backend needs it to change the pool. */
  store: StateStore | null;
  owner: string;
  logger: Logger;
}

export function createBackend(
  config: Pick<AgentConfig, 'backend' | 'stateDir' | 'reserveBytes' | 'dm'>,
  ctx: BackendContext,
): StorageBackend {
  switch (config.backend) {
    case 'loop':
      return new LoopBackend({ stateDir: config.stateDir, reserveBytes: config.reserveBytes });
    case 'devmapper':
      return new DevmapperBackend({
        stateDir: config.stateDir,
        poolName: config.dm.pool,
        blockSectors: config.dm.blockSectors,
        lowWaterSectors: config.dm.lowWaterSectors,
        skipBlockZeroing: config.dm.skipBlockZeroing,
        minFreeData: config.dm.minFreeData,
        minFreeMetadata: config.dm.minFreeMetadata,
        store: ctx.store,
        owner: ctx.owner,
        logger: ctx.logger,
      });
  }
}

export type { StorageBackend, BackendName } from './backend.js';
