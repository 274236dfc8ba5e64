/**
 * The HostItem: written at registration and then every heartbeat period,
 * with the time, the storage pool's usage (the backend's own poolStatus) and
 * the DLQ's depth. Written whole each time, so a host the sweep removed while
 * it was unreachable reappears as soon as it is back.
 */
import type { SQSClient } from '@aws-sdk/client-sqs';
import type { PoolUsage } from '../../../../schema/fleet.js';
import { hostItem } from '../../../../schema/fleet-table.js';
import { errorMessage } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { StorageBackend } from '../../storage/backend.js';
import type { FleetMetrics } from './fleet-metrics.js';
import type { FleetWriter } from './fleet-writer.js';
import { queueDepth } from './host-queues.js';

export interface HostFacts {
  hostId: string;
  group: string;
  queueUrl: () => string;
  dlqUrl: string;
  agentVersion: string;
  backend: StorageBackend;
  registeredAt: number;
}

/**
 * The pool's usage, or null while there is no pool yet (a fresh host's first
 * beat, made at registration): `fleet hosts` then shows `-` (not reported)
 * rather than a measured-looking `0 B 0%` that images built before the next
 * beat would contradict.
 */
export async function poolUsage(backend: StorageBackend): Promise<PoolUsage | null> {
  const s = await backend.poolStatus();
  if (!s.exists) return null;
  return {
    dataUsedBytes: s.dataUsedBytes,
    dataTotalBytes: s.dataTotalBytes,
    metadataUsedBytes: s.metadataUsedBytes ?? 0,
    metadataTotalBytes: s.metadataTotalBytes ?? 0,
  };
}

export class HostHeartbeat {
  constructor(
    private readonly facts: HostFacts,
    private readonly sqs: SQSClient,
    private readonly writer: FleetWriter,
    private readonly metrics: FleetMetrics,
    private readonly logger: Logger,
  ) {}

  /** Gather the host's figures and hand the item to the writer; never throws. */
  async beat(): Promise<void> {
    const f = this.facts;
    const [pool, dlqDepth] = await Promise.all([
      poolUsage(f.backend).catch((err: unknown) => {
        this.logger.warn('heartbeat: pool status failed', { error: errorMessage(err) });
        return null;
      }),
      queueDepth(this.sqs, f.dlqUrl).catch((err: unknown) => {
        this.logger.warn('heartbeat: DLQ depth unavailable', { error: errorMessage(err) });
        return null;
      }),
    ]);
    const item = hostItem({
      hostId: f.hostId,
      group: f.group,
      state: 'live',
      queueUrl: f.queueUrl(),
      dlqUrl: f.dlqUrl,
      agentVersion: f.agentVersion,
      backend: f.backend.name,
      registeredAt: f.registeredAt,
      lastSeenAt: Date.now(),
      pool,
      dlqDepth,
    });
    this.writer.host(item);
    this.metrics.heartbeats.inc();
  }
}
