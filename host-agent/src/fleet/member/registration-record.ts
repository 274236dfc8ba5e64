/**
 * What this state dir's agent registered as (group, host id, queues):
 * written at registration, read by `agent deregister` to find the host.
 */
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

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

export function writeRecord(stateDir: string, record: RegistrationRecord): void {
  const path = join(stateDir, RECORD_FILE);
  writeFileSync(`${path}.tmp`, JSON.stringify(record, null, 2) + '\n', { mode: 0o600 });
  renameSync(`${path}.tmp`, path);
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
