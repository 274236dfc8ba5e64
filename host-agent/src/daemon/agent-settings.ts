/**
 * The settings `thinrelay agent` starts with, loaded one way for the agent
 * and for `doctor --agent`: a config error the agent would exit 2 on is the
 * same error doctor reports, so the unit's check cannot pass a config the
 * agent refuses.
 */
import { UsageError } from '../errors.js';
import { loadFleetSettings, type FleetSettings } from '../fleet/member/fleet-settings.js';
import {
  loadSnapshotterSettings,
  snapshotterSocketOf,
  type SnapshotterSettings,
} from '../snapshotter/settings.js';
import { loadDaemonConfig, type DaemonConfig } from './config.js';

export interface AgentFlags {
  queueUrl?: string;
  group?: string;
  hostId?: string;
  concurrency?: string;
  metricsAddr?: string;
  /** The snapshots API's socket, or "off". */
  snapshotterSocket?: string;
}

export interface AgentSettings {
  daemon: DaemonConfig;
  /** null: a fixed queue (--queue-url), no fleet membership. */
  fleet: FleetSettings | null;
  /**
   * containerd's snapshots API served by the agent itself; null (the default:
   * no socket named) serves none.
   */
  snapshotter: SnapshotterSettings | null;
}

/** Throws UsageError (exit 2, CONFIG/USAGE) on what the agent cannot start with. */
export function loadAgentSettings(
  flags: AgentFlags,
  env: NodeJS.ProcessEnv = process.env,
): AgentSettings {
  const daemon = loadDaemonConfig(
    {
      queueUrl: flags.queueUrl,
      group: flags.group,
      concurrency: flags.concurrency,
      metricsAddr: flags.metricsAddr,
    },
    env,
  );
  const fleet = loadFleetSettings({ group: flags.group, hostId: flags.hostId }, env);
  if (fleet === null && flags.hostId !== undefined)
    throw new UsageError('USAGE', '--host-id needs --group');
  const socket = snapshotterSocketOf(flags.snapshotterSocket, env);
  const snapshotter =
    socket === undefined || socket === 'off' ? null : loadSnapshotterSettings(socket, {}, env);
  return { daemon, fleet, snapshotter };
}
