/**
 * Reads `thin_dump --skip-mappings` output (XML): the superblock's
 * transaction id and data block size, the id of every thin device the pool
 * metadata holds and how many data blocks each maps.
 */
import { EnvironmentError } from '../../errors.js';

export interface ThinDump {
  transactionId: number;
  thinIds: number[];
  /** Sectors per data block (the superblock's data_block_size). */
  blockSectors: number;
  /** Data blocks each thin id maps (shared blocks counted in each). */
  mappedBlocks: Map<number, number>;
}

export function parseThinDump(xml: string): ThinDump {
  const superblock = /<superblock\b[^>]*\btransaction="(\d+)"/.exec(xml);
  if (superblock === null)
    throw new EnvironmentError(
      'TOOL_OUTPUT',
      'thin_dump output has no superblock',
      'check thin-provisioning-tools (`thin_dump -V`) and the pool metadata (thin_check on a metadata snapshot)',
    );
  const thinIds: number[] = [];
  const mappedBlocks = new Map<number, number>();
  for (const m of xml.matchAll(/<device\b[^>]*>/g)) {
    const id = /\bdev_id="(\d+)"/.exec(m[0]);
    if (id === null) continue;
    thinIds.push(Number(id[1]));
    mappedBlocks.set(Number(id[1]), Number(/\bmapped_blocks="(\d+)"/.exec(m[0])?.[1] ?? 0));
  }
  const blockSize = /<superblock\b[^>]*\bdata_block_size="(\d+)"/.exec(xml);
  return {
    transactionId: Number(superblock[1]),
    thinIds: thinIds.sort((a, b) => a - b),
    blockSectors: Number(blockSize?.[1] ?? 0),
    mappedBlocks,
  };
}
