/**
 * Start containerd's snapshots service on a runtime that holds the state
 * dir's daemon lock (`thinrelay snapshotter`, or `thinrelay agent` with a
 * snapshotter socket): refuse a backend it cannot serve, reconcile, finish
 * what a dead run left, then listen on the socket (with `thinrelay activate`'s
 * Activation service beside the snapshots API).
 */
import type { Logger } from '../log.js';
import type { PipelineDeps } from '../pipeline/context.js';
import { reconcile } from '../pipeline/reconcile.js';
import { checkServable } from './mounts.js';
import { serveSnapshots } from './server.js';
import type { SnapshotterSettings } from './settings.js';
import { SnapshotService } from './snapshot-service.js';

export interface SnapshotsServiceHandle {
  close(): Promise<void>;
}

export async function startSnapshotsService(
  rt: PipelineDeps,
  settings: SnapshotterSettings,
  logger: Logger,
): Promise<SnapshotsServiceHandle> {
  checkServable(rt.objects.backend);
  await reconcile(rt);
  const service = new SnapshotService({
    store: rt.store,
    objects: rt.objects,
    owner: rt.owner,
    logger,
    freshVolumeBytes: settings.freshVolumeBytes,
  });
  await service.recover();
  const server = await serveSnapshots({ socket: settings.socket, service, logger, activation: rt });
  return {
    async close() {
      await server.close();
      // How the store's shared commits grouped (a burst of Prepares: far fewer commits than transactions).
      const { requests, commits } = rt.store.groupCommit.counts;
      logger.info('snapshotter closed', { sharedTransactions: requests, sharedCommits: commits });
    },
  };
}
