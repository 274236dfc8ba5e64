/**
 * Reads `thin_dump --skip-mappings` output (XML): the superblock's
 * transaction id and the id of every thin device the pool metadata holds.
 */
import { EnvironmentError } from '../../errors.js';

export interface ThinDump {
  transactionId: number;
  thinIds: number[];
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
  for (const m of xml.matchAll(/<device\b[^>]*\bdev_id="(\d+)"/g)) thinIds.push(Number(m[1]));
  return { transactionId: Number(superblock[1]), thinIds: thinIds.sort((a, b) => a - b) };
}
