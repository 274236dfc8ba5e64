/**
 * A group agent's own settings (flags win over THINRELAY_* variables, which
 * win over defaults). What the group's queues look like and which keys it
 * holds come from the deployment item in the fleet table, not from here.
 */
import { GROUP_NAME } from '../../../../schema/fleet.js';
import { integer } from '../../daemon/config.js';
import { UsageError } from '../../errors.js';

export interface FleetSettings {
  group: string;
  /** --host-id; undefined = THINRELAY_HOST_ID, EC2 instance id or hostname (host-id.ts). */
  hostIdFlag: string | undefined;
  tableName: string;
  /** Catch-up sync period. */
  syncSeconds: number;
  /** Images a sync round runs at once (besides the queue's). */
  syncConcurrency: number;
  /** HostItem heartbeat period. */
  heartbeatSeconds: number;
  /** Longest pause between retries of a failed fleet-table write. */
  writeRetryMaxMs: number;
  /** THINRELAY_BUCKET, if set: must be the deployment's bucket. */
  bucket: string | null;
}

export interface FleetFlags {
  group?: string | undefined;
  hostId?: string | undefined;
}

export function checkGroupName(group: string, from: string): string {
  if (!GROUP_NAME.test(group)) {
    throw new UsageError(
      'CONFIG',
      `group ${JSON.stringify(group)} (${from}) is not valid: 1-32 letters, digits and '_'`,
      'use a group name from the deployment config',
    );
  }
  return group;
}

/** Null when no group is given: the agent runs on a fixed queue (--queue-url). */
export function loadFleetSettings(
  flags: FleetFlags,
  env: NodeJS.ProcessEnv = process.env,
): FleetSettings | null {
  const group = flags.group ?? env.THINRELAY_GROUP;
  if (group === undefined || group === '') return null;
  return {
    group: checkGroupName(group, flags.group !== undefined ? '--group' : 'THINRELAY_GROUP'),
    hostIdFlag: flags.hostId,
    tableName: requireTable(env),
    syncSeconds: integer(env.THINRELAY_SYNC_SECONDS, 'THINRELAY_SYNC_SECONDS', 600, 1, 86_400),
    syncConcurrency: integer(
      env.THINRELAY_SYNC_CONCURRENCY,
      'THINRELAY_SYNC_CONCURRENCY',
      2,
      1,
      64,
    ),
    heartbeatSeconds: integer(
      env.THINRELAY_HEARTBEAT_SECONDS,
      'THINRELAY_HEARTBEAT_SECONDS',
      60,
      1,
      3600,
    ),
    writeRetryMaxMs: integer(
      env.THINRELAY_FLEET_RETRY_MAX_MS,
      'THINRELAY_FLEET_RETRY_MAX_MS',
      60_000,
      10,
      3_600_000,
    ),
    bucket:
      env.THINRELAY_BUCKET === undefined || env.THINRELAY_BUCKET === ''
        ? null
        : env.THINRELAY_BUCKET,
  };
}

export function requireTable(env: NodeJS.ProcessEnv): string {
  const table = env.THINRELAY_FLEET_TABLE;
  if (table === undefined || table === '') {
    throw new UsageError(
      'CONFIG',
      'no fleet table given',
      'set THINRELAY_FLEET_TABLE to the fleet table of the stack (its output FleetTableName)',
    );
  }
  return table;
}
