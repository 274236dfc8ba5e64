/**
 * Where a host's signature policy comes from: its group's `signatures` (the
 * CONFIG/DEPLOYMENT item a group agent reads, kept in the state dir for the
 * CLI, as the pool settings are), or, on a host in no group, the policy file
 * THINRELAY_SIGNATURE_POLICY names; either narrowed by the host's override
 * (policy.ts: only stricter). No file, no group: `off`, today's behaviour.
 */
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileDurably } from '../sys/durable-write.js';
import { UsageError } from '../errors.js';
import {
  parseSignaturePolicy,
  SIGNATURES_OFF,
  SignaturePolicyError,
  type SignaturePolicy,
} from '../../../schema/signature-policy.js';
import { effectivePolicy, parseHostOverride, type TrustPolicy } from './policy.js';

export const POLICY_FILE_ENV = 'THINRELAY_SIGNATURE_POLICY';

/** Where a group agent keeps its group's signature policy for the CLI. */
export function groupSignaturesPath(stateDir: string): string {
  return join(stateDir, 'group-signatures.json');
}

/** Written by the group agent each time it reads the deployment item (atomic rename). */
export async function writeGroupSignatures(
  stateDir: string,
  policy: SignaturePolicy,
): Promise<void> {
  mkdirSync(stateDir, { recursive: true });
  await writeFileDurably(groupSignaturesPath(stateDir), JSON.stringify(policy) + '\n', {
    mode: 0o644,
  });
}

function readJson(path: string, what: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new UsageError('CONFIG', `cannot read ${what} ${path}: ${(err as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new UsageError('CONFIG', `${what} ${path} is not JSON: ${(err as Error).message}`);
  }
}

function parsed(value: unknown, path: string): SignaturePolicy {
  try {
    return parseSignaturePolicy(value, path);
  } catch (err) {
    if (err instanceof SignaturePolicyError) throw new UsageError('CONFIG', err.message);
    throw err;
  }
}

/** The group's policy as last kept here, the standalone file's, or off. */
export function hostGroupPolicy(stateDir: string, env: NodeJS.ProcessEnv): SignaturePolicy {
  const groupFile = groupSignaturesPath(stateDir);
  const group = readJson(groupFile, 'the group signature policy');
  if (group !== undefined) return parsed(group, groupFile);
  const file = env[POLICY_FILE_ENV];
  if (file === undefined || file === '') return SIGNATURES_OFF;
  const doc = readJson(file, POLICY_FILE_ENV);
  if (doc === undefined)
    throw new UsageError('CONFIG', `${POLICY_FILE_ENV}: ${file} does not exist`);
  const section: unknown =
    typeof doc === 'object' && doc !== null && 'signatures' in doc ? doc.signatures : undefined;
  return parsed(section ?? doc, `${file}: $.signatures`);
}

/** The policy this host applies, with its override from the environment (stricter only). */
export function hostTrustPolicy(
  group: SignaturePolicy,
  env: NodeJS.ProcessEnv = process.env,
): TrustPolicy {
  return effectivePolicy(group, parseHostOverride(env));
}
