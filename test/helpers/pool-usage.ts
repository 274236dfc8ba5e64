/**
 * A pool's use as `thinrelay pool status --json` computes it (the backend's
 * pool status through usageOf, under the same configuration), read in the
 * test's own process. For tests that measure the pool between the runs they
 * test: a CLI run costs ~0.4 s on the host and seconds under User-Mode Linux.
 * A test that reads it this way should still check the CLI's figure somewhere.
 */
import { loadConfig } from '../../host-agent/src/config.js';
import { silentLogger } from '../../host-agent/src/log.js';
import { usageOf, type PoolUsage } from '../../host-agent/src/pool/usage.js';
import { createBackend } from '../../host-agent/src/storage/index.js';
import { currentOwner } from '../../host-agent/src/store/owner.js';

/** `env` is what the CLI would be given on top of this process's environment. */
export async function poolUsage(env: NodeJS.ProcessEnv): Promise<PoolUsage> {
  const config = loadConfig({}, { ...process.env, ...env });
  const backend = createBackend(config, {
    store: null,
    owner: currentOwner(),
    logger: silentLogger,
  });
  return usageOf(await backend.poolStatus(), config);
}
