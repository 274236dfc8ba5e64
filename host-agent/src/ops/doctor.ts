/**
 * doctor: is this host ready? Each check passes or fails with a fix hint.
 * Read-only: a fresh host with no state dir yet passes.
 */
import { statfsSync, existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { AgentConfig } from '../config.js';
import { errorMessage, isThinrelayError } from '../errors.js';
import type { ReadinessCheck } from '../storage/backend.js';
import { silentLogger } from '../log.js';
import { DevmapperBackend } from '../storage/devmapper/devmapper-backend.js';
import { createBackend } from '../storage/index.js';
import { currentOwner } from '../store/owner.js';
import { StateStore } from '../store/index.js';
import { databasePath } from '../store/db.js';
import { restoreHint } from '../store/db-errors.js';
import { toolChecks } from '../storage/readiness.js';
import { ObjectManager } from '../storage/object-manager.js';
import { assessPool } from '../pool/keeper.js';
import { describeUsage } from '../pool/usage.js';
import { loadAgentSettings } from '../daemon/agent-settings.js';

/**
 * The tools the unpack runs (layer/: special-files, metadata, times,
 * end-script) with the Debian package of each. A test checks this list
 * against the tools the unpack code really calls.
 */
export const unpackTools: readonly (readonly [tool: string, pkg: string])[] = [
  ['perl', 'perl-base'],
  ['setfattr', 'attr'],
  ['xargs', 'findutils'],
  ['mknod', 'coreutils'],
  ['mkfifo', 'coreutils'],
  ['touch', 'coreutils'],
];

export interface DoctorOptions {
  /**
   * Check the agent's own settings as a required check (`doctor --agent`, the
   * unit's start check): fails exactly when `thinrelay agent` would exit 2.
   * Without it the line is advisory (a host may run the CLI without an agent).
   */
  agent?: boolean;
  env?: NodeJS.ProcessEnv;
}

/** The name of the agent-settings check (doctor --agent exits 2 when it fails). */
export const agentSettingsCheckName = 'agent settings';

export async function runDoctor(
  config: AgentConfig,
  options: DoctorOptions = {},
): Promise<ReadinessCheck[]> {
  const checks: ReadinessCheck[] = [];
  let backendChecks: ReadinessCheck[] = [];
  try {
    const backend = createBackend(config, {
      store: null,
      owner: currentOwner(),
      logger: silentLogger,
    });
    backendChecks = await backend.checkReadiness();
    if (backend instanceof DevmapperBackend) {
      // Only with device-mapper present: otherwise the checks above already say why.
      if (backendChecks.every((c) => c.ok || c.name === 'root'))
        backendChecks.push(...(await backend.poolChecks()));
    } else {
      const pool = await backend.poolStatus();
      backendChecks.push({
        name: 'pool',
        // A fresh host has no pool yet (created on first use): that passes.
        ok: pool.healthy === true || !pool.exists,
        detail: `${pool.location}: ${pool.detail}; ${(pool.freeBytes / 1024 ** 3).toFixed(1)} GiB free`,
        hint: 'thinrelay pool create',
      });
    }
  } catch (err) {
    backendChecks.push({
      name: `${config.backend} backend`,
      ok: false,
      detail: errorMessage(err),
      hint: 'check --backend / THINRELAY_BACKEND',
    });
  }
  checks.push(...backendChecks);
  const have = new Set(checks.map((c) => c.name));
  checks.push(...(await toolChecks(unpackTools.filter(([tool]) => !have.has(tool)))));
  checks.push(freeSpaceCheck(config));
  const database = databaseCheck(config);
  checks.push(database);
  if (database.ok && existsSync(databasePath(config.stateDir)))
    checks.push(await poolPolicyCheck(config));
  checks.push(agentSettingsCheck(options));
  return checks;
}

/**
 * The pool against its watermarks: degraded when pins and devices in use
 * alone keep it above the high watermark (nothing is evicted then). Advisory:
 * the agent still starts, and says so on /healthz and in its log.
 */
async function poolPolicyCheck(config: AgentConfig): Promise<ReadinessCheck> {
  try {
    const store = StateStore.open(config.stateDir, { readonly: true });
    try {
      const owner = currentOwner();
      const backend = createBackend(config, { store, owner, logger: silentLogger });
      const objects = new ObjectManager(store, backend, owner, silentLogger);
      const status = await backend.poolStatus();
      if (!status.exists)
        return { name: 'pool policy', ok: true, detail: 'no pool yet', advisory: true };
      const a = await assessPool({ store, objects, config });
      const p = config.pool;
      return {
        name: 'pool policy',
        ok: a.degraded === null,
        detail:
          a.degraded ??
          (p.enabled
            ? `${describeUsage(a.usage)}; evicts above ${p.dataHighPercent}% down to ${p.dataLowPercent}%, keeps ${p.retainVersions} version(s) per key`
            : 'off (THINRELAY_POOL_POLICY=off): no retention, no eviction'),
        hint: 'unpin images (thinrelay pin --list, thinrelay unpin), release devices in use, or grow the pool',
        advisory: true,
      };
    } finally {
      store.close();
    }
  } catch (err) {
    return {
      name: 'pool policy',
      ok: false,
      detail: `could not assess the pool: ${errorMessage(err)}`,
      advisory: true,
    };
  }
}

function agentSettingsCheck(options: DoctorOptions): ReadinessCheck {
  const advisory = options.agent !== true;
  try {
    const { daemon, fleet } = loadAgentSettings({}, options.env ?? process.env);
    return {
      name: agentSettingsCheckName,
      ok: true,
      detail:
        fleet !== null
          ? `group ${fleet.group}, fleet table ${fleet.tableName}`
          : `queue ${daemon.queueUrl ?? ''}`,
      ...(advisory ? { advisory } : {}),
    };
  } catch (err) {
    return {
      name: agentSettingsCheckName,
      ok: false,
      detail: `${isThinrelayError(err) ? `[${err.code}] ` : ''}${errorMessage(err)}${advisory ? ' (needed only to run the agent)' : ''}`,
      hint:
        isThinrelayError(err) && err.hint !== undefined ? err.hint : 'see docs/configuration.md',
      ...(advisory ? { advisory } : {}),
    };
  }
}

function freeSpaceCheck(config: AgentConfig): ReadinessCheck {
  // A fresh host: the filesystem the state dir will be made on.
  let dir = resolve(config.stateDir);
  while (!existsSync(dir) && dirname(dir) !== dir) dir = dirname(dir);
  const fs = statfsSync(dir);
  const free = fs.bavail * fs.bsize;
  return {
    name: 'free space',
    ok: free > config.reserveBytes,
    detail: `${(free / 1024 ** 3).toFixed(1)} GiB free on the filesystem of ${dir} (reserve ${(config.reserveBytes / 1024 ** 3).toFixed(1)} GiB)`,
    hint: 'free space there (`thinrelay gc` releases failed leftovers), or move --state-dir',
    // The agent must still start: its reconcile is what frees leftovers, and
    // it refuses images (LOW_SPACE, retried) and reports degraded meanwhile.
    advisory: true,
  };
}

function databaseCheck(config: AgentConfig): ReadinessCheck {
  const path = databasePath(config.stateDir);
  if (!existsSync(path)) {
    return {
      name: 'state database',
      ok: true,
      detail: `${path} does not exist yet (created on first use)`,
    };
  }
  try {
    const store = StateStore.open(config.stateDir, { readonly: true });
    try {
      const problems = store.integrityCheck();
      return {
        name: 'state database',
        ok: problems.length === 0,
        detail:
          problems.length === 0
            ? `${path}: integrity_check ok`
            : `${path}: ${problems.slice(0, 3).join('; ')}`,
        hint: restoreHint,
      };
    } finally {
      store.close();
    }
  } catch (err) {
    return {
      name: 'state database',
      ok: false,
      detail: errorMessage(err),
      // DB_CORRUPT: restore a backup; DB_READONLY: the mount; DB_BUSY: the lock holder.
      hint:
        isThinrelayError(err) && err.hint !== undefined
          ? err.hint
          : 'check permissions on the state dir',
    };
  }
}
