/**
 * This host's id in the fleet: --host-id / THINRELAY_HOST_ID, else the EC2
 * instance id (IMDSv2, a short timeout: off EC2 it answers nothing), else the
 * hostname's first label. Validated for SQS queue names (schema HOST_ID).
 * IMDS also gives the instance's region, for when AWS_REGION is not set.
 */
import { hostname } from 'node:os';
import { HOST_ID } from '../../../../schema/fleet.js';
import { UsageError } from '../../errors.js';

export const IMDS_TIMEOUT_MS = 1_000;

export interface HostIdentity {
  hostId: string;
  source: 'flag' | 'environment' | 'ec2' | 'hostname';
  /** The instance's region from IMDS, when it answered. */
  region: string | null;
}

export function checkHostId(id: string, from: string): string {
  if (!HOST_ID.test(id)) {
    throw new UsageError(
      'CONFIG',
      `host id ${JSON.stringify(id)} (${from}) is not valid: 1-40 letters, digits and '-'`,
      'pass --host-id ID or set THINRELAY_HOST_ID',
    );
  }
  return id;
}

export async function resolveHostIdentity(
  flag: string | undefined,
  env: NodeJS.ProcessEnv = process.env,
  timeoutMs = IMDS_TIMEOUT_MS,
): Promise<HostIdentity> {
  if (flag !== undefined && flag !== '')
    return { hostId: checkHostId(flag, '--host-id'), source: 'flag', region: null };
  const fromEnv = env.THINRELAY_HOST_ID;
  if (fromEnv !== undefined && fromEnv !== '')
    return {
      hostId: checkHostId(fromEnv, 'THINRELAY_HOST_ID'),
      source: 'environment',
      region: null,
    };
  const ec2 = await instanceIdentity(env, timeoutMs);
  if (ec2 !== null)
    return {
      hostId: checkHostId(ec2.instanceId, 'EC2 instance id'),
      source: 'ec2',
      region: ec2.region,
    };
  const name = hostname().split('.')[0] ?? '';
  return { hostId: checkHostId(name, `hostname ${hostname()}`), source: 'hostname', region: null };
}

/**
 * IMDSv2: a session token (PUT), then instance id and region. Null when
 * metadata is disabled (AWS_EC2_METADATA_DISABLED, the SDK's switch) or does
 * not answer in time.
 */
export async function instanceIdentity(
  env: NodeJS.ProcessEnv,
  timeoutMs: number,
): Promise<{ instanceId: string; region: string | null } | null> {
  if (env.AWS_EC2_METADATA_DISABLED?.trim().toLowerCase() === 'true') return null;
  const base = (env.AWS_EC2_METADATA_SERVICE_ENDPOINT ?? 'http://169.254.169.254').replace(
    /\/+$/,
    '',
  );
  const signal = AbortSignal.timeout(timeoutMs);
  try {
    const tokenRes = await fetch(`${base}/latest/api/token`, {
      method: 'PUT',
      headers: { 'x-aws-ec2-metadata-token-ttl-seconds': '60' },
      signal,
    });
    if (!tokenRes.ok) return null;
    const token = await tokenRes.text();
    const get = async (path: string): Promise<string | null> => {
      const res = await fetch(`${base}${path}`, {
        headers: { 'x-aws-ec2-metadata-token': token },
        signal,
      });
      return res.ok ? (await res.text()).trim() : null;
    };
    const instanceId = await get('/latest/meta-data/instance-id');
    if (instanceId === null || instanceId === '') return null;
    const region = await get('/latest/meta-data/placement/region').catch(() => null);
    return { instanceId, region: region === '' ? null : region };
  } catch {
    // No metadata service here (not EC2, or a hop limit): the hostname decides.
    return null;
  }
}

/** AWS_REGION (or AWS_DEFAULT_REGION), else the instance's region (IMDS), else us-east-1. */
export async function resolveRegion(
  known: string | null,
  env: NodeJS.ProcessEnv = process.env,
  timeoutMs = IMDS_TIMEOUT_MS,
): Promise<string> {
  const configured = env.AWS_REGION ?? env.AWS_DEFAULT_REGION;
  if (configured !== undefined && configured !== '') return configured;
  return known ?? (await instanceIdentity(env, timeoutMs))?.region ?? 'us-east-1';
}
