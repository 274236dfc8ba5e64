/**
 * The signature policy one host applies: its group's (the deployment config)
 * merged with the host's own override (agent.env), which may only make it
 * stricter. Stricter means, and only means:
 *   - mode: raised along off → warn → require, never lowered;
 *   - keys: a subset of the group's keys (named by fingerprint), never one the
 *     group does not list;
 *   - identities: a subset of the group's identities (equal issuer and equal
 *     subject or subjectPattern), never a new one or a wider pattern;
 *   - the Sigstore evidence (trusted root, thresholds) and the wait for a
 *     sidecar are the group's: a host cannot change them.
 * An override that would loosen anything is a CONFIG error, never ignored.
 */
import { UsageError } from '../errors.js';
import {
  SIGNATURE_MODES,
  subjectRegExp,
  type KeylessIdentity,
  type SignatureMode,
  type SignaturePolicy,
  type SigstoreEvidence,
} from '../../../schema/signature-policy.js';
import { trustedKeyOf, type TrustedKey } from './trusted-keys.js';

export interface HostSignatureOverride {
  /** Raise the group's mode. */
  mode?: SignatureMode;
  /** Trust only these of the group's keys (fingerprints "sha256:<hex>"). */
  onlyKeys?: string[];
  /** Trust only these of the group's identities. */
  onlyIdentities?: KeylessIdentity[];
}

export interface TrustedIdentity {
  issuer: string;
  /** An exact subject, or an anchored pattern. */
  subject: string | RegExp;
  /** As the policy wrote it, for errors and records: "<issuer> <subject>" or "<issuer> ~<pattern>". */
  label: string;
}

export interface TrustPolicy {
  mode: SignatureMode;
  keys: TrustedKey[];
  identities: TrustedIdentity[];
  sigstore: SigstoreEvidence;
  awaitSeconds: number;
}

export const OVERRIDE_ENV = {
  mode: 'THINRELAY_SIGNATURE_MODE',
  keys: 'THINRELAY_SIGNATURE_KEYS',
  identities: 'THINRELAY_SIGNATURE_IDENTITIES',
} as const;

/** Reads a host's override from agent.env; unset variables leave the group's policy. */
export function parseHostOverride(env: NodeJS.ProcessEnv): HostSignatureOverride {
  const out: HostSignatureOverride = {};
  const mode = env[OVERRIDE_ENV.mode];
  if (mode !== undefined && mode !== '') {
    if (!(SIGNATURE_MODES as readonly string[]).includes(mode))
      throw new UsageError(
        'CONFIG',
        `${OVERRIDE_ENV.mode} must be one of ${SIGNATURE_MODES.join(', ')}, got "${mode}"`,
      );
    out.mode = mode as SignatureMode;
  }
  const keys = env[OVERRIDE_ENV.keys];
  if (keys !== undefined && keys !== '') {
    out.onlyKeys = keys.split(',').map((k) => k.trim());
    const bad = out.onlyKeys.find((k) => !/^sha256:[0-9a-f]{64}$/.test(k));
    if (bad !== undefined)
      throw new UsageError(
        'CONFIG',
        `${OVERRIDE_ENV.keys}: "${bad}" is not a key fingerprint (sha256:<64 hex>)`,
        'list fingerprints of keys in the group policy, comma-separated',
      );
  }
  const identities = env[OVERRIDE_ENV.identities];
  if (identities !== undefined && identities !== '') {
    let parsed: unknown;
    try {
      parsed = JSON.parse(identities);
    } catch (err) {
      throw new UsageError(
        'CONFIG',
        `${OVERRIDE_ENV.identities}: not JSON (${(err as Error).message})`,
      );
    }
    if (!Array.isArray(parsed))
      throw new UsageError(
        'CONFIG',
        `${OVERRIDE_ENV.identities}: must be a JSON list of identities`,
      );
    out.onlyIdentities = parsed as KeylessIdentity[];
  }
  return out;
}

/** The group's policy with the host's override applied; throws UsageError CONFIG on any loosening. */
export function effectivePolicy(
  group: SignaturePolicy,
  override: HostSignatureOverride = {},
): TrustPolicy {
  const mode = override.mode ?? group.mode;
  if (SIGNATURE_MODES.indexOf(mode) < SIGNATURE_MODES.indexOf(group.mode))
    throw new UsageError(
      'CONFIG',
      `host signature mode '${mode}' is weaker than its group's '${group.mode}'`,
      'a host may only raise the mode (off → warn → require)',
    );
  const groupKeys = group.publicKeys.map((pem, i) => trustedKeyOf(pem, `publicKeys[${i}]`));
  let keys = groupKeys;
  if (override.onlyKeys !== undefined) {
    const known = new Set(groupKeys.map((k) => k.fingerprint));
    const foreign = override.onlyKeys.filter((f) => !known.has(f));
    if (foreign.length > 0)
      throw new UsageError(
        'CONFIG',
        `host trusts key(s) its group does not: ${foreign.join(', ')}`,
        'a host may only narrow the group’s keys; add a key to the group policy instead',
      );
    keys = groupKeys.filter((k) => override.onlyKeys?.includes(k.fingerprint));
  }
  let identities = group.identities;
  if (override.onlyIdentities !== undefined) {
    const foreign = override.onlyIdentities.filter(
      (o) => !group.identities.some((g) => sameIdentity(g, o)),
    );
    if (foreign.length > 0)
      throw new UsageError(
        'CONFIG',
        `host trusts identit(ies) its group does not: ${foreign.map((i) => identityLabel(i)).join('; ')}`,
        'a host may only narrow the group’s identities to ones listed there, exactly',
      );
    identities = group.identities.filter((g) =>
      override.onlyIdentities?.some((o) => sameIdentity(g, o)),
    );
  }
  // The group's policy was usable; narrowing may have left nothing to trust.
  if (mode !== 'off' && keys.length === 0 && identities.length === 0)
    throw new UsageError(
      'CONFIG',
      `host signature mode '${mode}' leaves no key or identity to trust`,
      'narrow to at least one of the group’s keys or identities, or give the group some',
    );
  return {
    mode,
    keys,
    identities: identities.map(trustedIdentityOf),
    sigstore: group.sigstore,
    awaitSeconds: group.awaitSeconds,
  };
}

export function identityLabel(i: KeylessIdentity): string {
  return 'subject' in i ? `${i.issuer} ${i.subject}` : `${i.issuer} ~${i.subjectPattern}`;
}

function sameIdentity(a: KeylessIdentity, b: KeylessIdentity): boolean {
  if (typeof b !== 'object' || b === null || a.issuer !== b.issuer) return false;
  if ('subject' in a) return 'subject' in b && a.subject === b.subject;
  return 'subjectPattern' in b && a.subjectPattern === b.subjectPattern;
}

function trustedIdentityOf(i: KeylessIdentity): TrustedIdentity {
  return {
    issuer: i.issuer,
    subject: 'subject' in i ? i.subject : subjectRegExp(i.subjectPattern),
    label: identityLabel(i),
  };
}
