/**
 * Pool use as the watermarks read it: used bytes against the capacity the
 * images may take. devmapper: the thin pool's data and metadata devices.
 * loop: the state filesystem less THINRELAY_RESERVE_BYTES (what the pool may
 * take), with whatever else lives there counted as used — as kubelet counts
 * a node's image filesystem.
 */
import type { AgentConfig } from '../config.js';
import type { PoolStatus } from '../storage/backend.js';

export interface PoolUsage {
  capacityBytes: number;
  usedBytes: number;
  /** Space a new volume can still take (after the reserve or the pool's free-space floor). */
  freeBytes: number;
  dataPercent: number;
  /** devmapper only. */
  metadataPercent: number | null;
}

export function usageOf(status: PoolStatus, config: Pick<AgentConfig, 'reserveBytes'>): PoolUsage {
  let capacity: number;
  let used: number;
  if (status.backend === 'loop') {
    capacity = Math.max(0, status.dataTotalBytes - config.reserveBytes);
    used = Math.max(0, capacity - status.freeBytes);
  } else {
    capacity = status.dataTotalBytes;
    used = status.dataUsedBytes;
  }
  const meta =
    status.metadataTotalBytes !== null &&
    status.metadataUsedBytes !== null &&
    status.metadataTotalBytes > 0
      ? (100 * status.metadataUsedBytes) / status.metadataTotalBytes
      : null;
  return {
    capacityBytes: capacity,
    usedBytes: used,
    freeBytes: status.freeBytes,
    dataPercent: capacity > 0 ? (100 * used) / capacity : 100,
    metadataPercent: meta,
  };
}

/** "87.1% of 1.2 GiB" style text for logs and errors. */
export function describeUsage(u: PoolUsage): string {
  const meta = u.metadataPercent === null ? '' : `, metadata ${u.metadataPercent.toFixed(1)}%`;
  return `data ${u.dataPercent.toFixed(1)}% (${u.usedBytes} of ${u.capacityBytes} bytes)${meta}`;
}
