/**
 * A host group's signature policy as the deployment config states it (and the
 * CONFIG/DEPLOYMENT item will carry it): the mode, the public keys and keyless
 * identities trusted, and the Sigstore trusted root hosts verify bundles with.
 * The stack (infra/lib/config.ts) and the agents (host-agent/src/trust/) parse
 * it with this one function, so a policy the stack accepts is one every agent
 * accepts. Errors name the offending path.
 */
import { createPublicKey, type KeyObject } from 'node:crypto';

/** off: nothing is verified (the default); warn: verify, record, activate anyway; require: only signed images activate. */
export const SIGNATURE_MODES = ['off', 'warn', 'require'] as const;
export type SignatureMode = (typeof SIGNATURE_MODES)[number];

/** A keyless (Fulcio certificate) signer: the OIDC issuer and the certificate's subject (SAN). */
export type KeylessIdentity =
  | { issuer: string; subject: string }
  /** A JavaScript regular expression that must match the whole subject. */
  | { issuer: string; subjectPattern: string };

/** How much Sigstore evidence a bundle must carry besides its certificate chain (all checked offline). */
export type SigstoreEvidence = {
  /** The operator's trusted_root.json (Sigstore's format), read on each host; null: bundles cannot be verified. */
  trustedRoot: string | null;
  /** Transparency-log entries whose inclusion proofs check against the root's logs. */
  tlogEntries: number;
  /** Signed certificate timestamps in the leaf certificate from the root's CT logs. */
  ctlogSCTs: number;
  /** Timestamps (log integration times or RFC 3161 tokens) the certificate must be valid at. */
  timestamps: number;
};

export type SignaturePolicy = {
  mode: SignatureMode;
  /** PEM SubjectPublicKeyInfo, ECDSA P-256 or Ed25519 (cosign.pub, `aws kms get-public-key` as PEM). */
  publicKeys: string[];
  identities: KeylessIdentity[];
  sigstore: SigstoreEvidence;
  /** How long an image may wait for its signature sidecar before it fails SIGNATURE_MISSING. */
  awaitSeconds: number;
};

export class SignaturePolicyError extends Error {
  constructor(
    readonly path: string,
    message: string,
  ) {
    super(`${path}: ${message}`);
    this.name = 'SignaturePolicyError';
  }
}

export const MAX_TRUSTED_KEYS = 32;
export const MAX_IDENTITIES = 32;
const MAX_PEM_CHARS = 8192;
const MAX_AWAIT_SECONDS = 7 * 86_400;

/** Sigstore's public-good defaults: one log entry, one SCT, one timestamp. */
export const DEFAULT_SIGSTORE_EVIDENCE: SigstoreEvidence = {
  trustedRoot: null,
  tlogEntries: 1,
  ctlogSCTs: 1,
  timestamps: 1,
};

/** What a group without a `signatures` section gets: today's behaviour. */
export const SIGNATURES_OFF: SignaturePolicy = {
  mode: 'off',
  publicKeys: [],
  identities: [],
  sigstore: DEFAULT_SIGSTORE_EVIDENCE,
  awaitSeconds: 3600,
};

/** The key a PEM names, or why it cannot be trusted (not a public key, another algorithm or curve). */
export function trustedPublicKey(pem: string, path: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPublicKey({ key: pem, format: 'pem' });
  } catch (err) {
    throw new SignaturePolicyError(path, `not a PEM public key (${(err as Error).message})`);
  }
  const type = key.asymmetricKeyType;
  if (type === 'ed25519') return key;
  if (type === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1') return key;
  const what =
    type === 'ec' ? `an EC key on ${key.asymmetricKeyDetails?.namedCurve ?? '?'}` : `a ${type} key`;
  throw new SignaturePolicyError(path, `${what}: only ECDSA P-256 and Ed25519 keys are accepted`);
}

/** The pattern as it is matched: anchored, so 'repo@refs/heads/.*' cannot match a prefix of another subject. */
export function subjectRegExp(pattern: string): RegExp {
  return new RegExp(`^(?:${pattern})$`, 'u');
}

/** Parses a `signatures` section; undefined gives SIGNATURES_OFF. */
export function parseSignaturePolicy(value: unknown, path: string): SignaturePolicy {
  if (value === undefined) return SIGNATURES_OFF;
  const o = object(value, path);
  known(o, path, ['mode', 'publicKeys', 'identities', 'sigstore', 'awaitSeconds']);
  const mode = o.mode ?? 'off';
  if (typeof mode !== 'string' || !(SIGNATURE_MODES as readonly string[]).includes(mode)) {
    throw new SignaturePolicyError(
      `${path}.mode`,
      `must be one of ${SIGNATURE_MODES.map((m) => `'${m}'`).join(', ')}, got ${JSON.stringify(mode)}`,
    );
  }
  const publicKeys = list(o.publicKeys, `${path}.publicKeys`, MAX_TRUSTED_KEYS).map((pem, i) => {
    const at = `${path}.publicKeys[${i}]`;
    if (typeof pem !== 'string' || pem.length > MAX_PEM_CHARS)
      throw new SignaturePolicyError(
        at,
        `must be a PEM string of at most ${MAX_PEM_CHARS} characters`,
      );
    trustedPublicKey(pem, at);
    return pem;
  });
  const identities = list(o.identities, `${path}.identities`, MAX_IDENTITIES).map((raw, i) =>
    parseIdentity(raw, `${path}.identities[${i}]`),
  );
  const sigstore = parseSigstore(o.sigstore, `${path}.sigstore`);
  const awaitSeconds = o.awaitSeconds ?? SIGNATURES_OFF.awaitSeconds;
  if (
    typeof awaitSeconds !== 'number' ||
    !Number.isInteger(awaitSeconds) ||
    awaitSeconds < 0 ||
    awaitSeconds > MAX_AWAIT_SECONDS
  ) {
    throw new SignaturePolicyError(
      `${path}.awaitSeconds`,
      `must be a whole number from 0 to ${MAX_AWAIT_SECONDS}, got ${JSON.stringify(awaitSeconds)}`,
    );
  }
  const policy: SignaturePolicy = {
    mode: mode as SignatureMode,
    publicKeys,
    identities,
    sigstore,
    awaitSeconds,
  };
  checkUsable(policy, path);
  return policy;
}

/** A policy that verifies must have something to trust, and identities need a root to chain to. */
export function checkUsable(policy: SignaturePolicy, path: string): void {
  if (policy.identities.length > 0 && policy.sigstore.trustedRoot === null) {
    throw new SignaturePolicyError(
      `${path}.sigstore.trustedRoot`,
      'required with identities: the trusted_root.json file hosts verify keyless certificates against',
    );
  }
  if (policy.mode !== 'off' && policy.publicKeys.length === 0 && policy.identities.length === 0) {
    throw new SignaturePolicyError(
      path,
      `mode '${policy.mode}' needs at least one of publicKeys or identities (nothing would verify)`,
    );
  }
}

function parseIdentity(raw: unknown, path: string): KeylessIdentity {
  const o = object(raw, path);
  known(o, path, ['issuer', 'subject', 'subjectPattern']);
  if (typeof o.issuer !== 'string' || !/^https?:\/\/\S+$/.test(o.issuer))
    throw new SignaturePolicyError(
      `${path}.issuer`,
      `must be the OIDC issuer URL (e.g. "https://token.actions.githubusercontent.com"), got ${JSON.stringify(o.issuer)}`,
    );
  const hasSubject = o.subject !== undefined;
  const hasPattern = o.subjectPattern !== undefined;
  if (hasSubject === hasPattern)
    throw new SignaturePolicyError(path, 'give exactly one of subject or subjectPattern');
  if (hasSubject) {
    if (typeof o.subject !== 'string' || o.subject === '')
      throw new SignaturePolicyError(`${path}.subject`, 'must be a non-empty string');
    return { issuer: o.issuer, subject: o.subject };
  }
  if (typeof o.subjectPattern !== 'string' || o.subjectPattern === '')
    throw new SignaturePolicyError(`${path}.subjectPattern`, 'must be a non-empty string');
  try {
    subjectRegExp(o.subjectPattern);
  } catch (err) {
    throw new SignaturePolicyError(
      `${path}.subjectPattern`,
      `not a regular expression (${(err as Error).message})`,
    );
  }
  return { issuer: o.issuer, subjectPattern: o.subjectPattern };
}

function parseSigstore(raw: unknown, path: string): SigstoreEvidence {
  if (raw === undefined) return DEFAULT_SIGSTORE_EVIDENCE;
  const o = object(raw, path);
  known(o, path, ['trustedRoot', 'tlogEntries', 'ctlogSCTs', 'timestamps']);
  const trustedRoot = o.trustedRoot ?? null;
  if (trustedRoot !== null && (typeof trustedRoot !== 'string' || !trustedRoot.startsWith('/')))
    throw new SignaturePolicyError(
      `${path}.trustedRoot`,
      `must be an absolute path on the hosts, got ${JSON.stringify(trustedRoot)}`,
    );
  const count = (key: 'tlogEntries' | 'ctlogSCTs' | 'timestamps'): number => {
    const v = o[key] ?? DEFAULT_SIGSTORE_EVIDENCE[key];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 8)
      throw new SignaturePolicyError(
        `${path}.${key}`,
        `must be a whole number from 0 to 8, got ${JSON.stringify(v)}`,
      );
    return v;
  };
  const evidence: SigstoreEvidence = {
    trustedRoot,
    tlogEntries: count('tlogEntries'),
    ctlogSCTs: count('ctlogSCTs'),
    timestamps: count('timestamps'),
  };
  // @sigstore/verify checks a certificate's validity only at a verified timestamp: without one, no chain is checked.
  if (evidence.timestamps < 1)
    throw new SignaturePolicyError(
      `${path}.timestamps`,
      'must be at least 1: a keyless certificate is only checked at a verified time',
    );
  return evidence;
}

function object(value: unknown, path: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw new SignaturePolicyError(path, 'must be an object');
  return value as Record<string, unknown>;
}

function known(o: Record<string, unknown>, path: string, keys: string[]): void {
  const unknown = Object.keys(o).filter((k) => !keys.includes(k) && !k.startsWith('$'));
  if (unknown.length > 0)
    throw new SignaturePolicyError(
      path,
      `unknown key(s) ${unknown.map((k) => JSON.stringify(k)).join(', ')}`,
    );
}

function list(value: unknown, path: string, max: number): unknown[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw new SignaturePolicyError(path, 'must be a list');
  if (value.length > max) throw new SignaturePolicyError(path, `at most ${max} entries`);
  return value;
}
