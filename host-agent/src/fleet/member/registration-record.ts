/**
 * What this state dir's agent registered as (group, host id, queues):
 * written at registration, read by `agent deregister` to find the host.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileDurably } from '../../sys/durable-write.js';

export const RECORD_FILE = 'fleet-host.json';

export interface RegistrationRecord {
  group: string;
  hostId: string;
  namePrefix: string;
  table: string;
  queueUrl: string;
  dlqUrl: string;
  registeredAt: number;
}

/** Durable before the agent goes on as that host: `agent deregister` finds it by this record. */
export async function writeRecord(stateDir: string, record: RegistrationRecord): Promise<void> {
  await writeFileDurably(join(stateDir, RECORD_FILE), JSON.stringify(record, null, 2) + '\n', {
    mode: 0o600,
  });
}

export function readRecord(stateDir: string): RegistrationRecord | null {
  let text: string;
  try {
    text = readFileSync(join(stateDir, RECORD_FILE), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  return JSON.parse(text) as RegistrationRecord;
}
