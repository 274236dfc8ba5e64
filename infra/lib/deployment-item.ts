/**
 * The fleet table's CONFIG/DEPLOYMENT item for a config: routes and per-group
 * queue and pool settings, so agents learn them from the deployment instead of a
 * second hand-kept list. The stack writes it (lib/fleet-table.ts); a local
 * stack can write the same item from the same config. No CDK imports.
 */
import { fleetKeys, type DeploymentConfigItem } from '../../schema/fleet.js';
import type { ThinrelayConfig } from './config.js';

export function deploymentConfigItem(
  config: ThinrelayConfig,
  bucket: string,
): DeploymentConfigItem {
  return {
    pk: fleetKeys.config.pk,
    sk: fleetKeys.config.sk,
    namePrefix: config.namePrefix,
    bucket,
    imagesPrefix: config.imagesPrefix,
    imageSuffixes: [...config.imageSuffixes],
    routes: Object.fromEntries(Object.entries(config.routes).map(([k, v]) => [k, [...v]])),
    groups: Object.fromEntries(config.groups.map((g) => [g.name, { ...g.queues }])),
    pools: Object.fromEntries(
      config.groups.map((g) => [g.name, { ...g.pool, pins: [...g.pool.pins] }]),
    ),
    signatures: Object.fromEntries(config.groups.map((g) => [g.name, g.signatures])),
    staleAfterSeconds: config.fleet.staleAfterSeconds,
    sweepAfterSeconds: config.fleet.sweepAfterSeconds,
  };
}
