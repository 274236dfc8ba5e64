/**
 * Trusted public keys as the verifier holds them: the KeyObject, its algorithm
 * and its fingerprint — sha256 of the DER SubjectPublicKeyInfo, the name by
 * which errors, `show --json` and host overrides refer to a key (the same value
 * `openssl pkey -pubin -outform DER | sha256sum` prints).
 */
import { createHash, type KeyObject } from 'node:crypto';
import { trustedPublicKey } from '../../../schema/signature-policy.js';

export type KeyAlgorithm = 'ecdsa-p256' | 'ed25519';

export interface TrustedKey {
  /** "sha256:<64 hex>" of the DER SubjectPublicKeyInfo. */
  fingerprint: string;
  algorithm: KeyAlgorithm;
  key: KeyObject;
}

export function keyFingerprint(key: KeyObject): string {
  const der = key.export({ type: 'spki', format: 'der' });
  return `sha256:${createHash('sha256').update(der).digest('hex')}`;
}

/** A PEM from a validated policy as a TrustedKey (throws SignaturePolicyError naming `path` otherwise). */
export function trustedKeyOf(pem: string, path: string): TrustedKey {
  const key = trustedPublicKey(pem, path);
  return {
    fingerprint: keyFingerprint(key),
    algorithm: key.asymmetricKeyType === 'ed25519' ? 'ed25519' : 'ecdsa-p256',
    key,
  };
}
