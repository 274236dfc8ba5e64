/**
 * Checks a cosign-format signature (DER ECDSA P-256 over SHA-256, or pure
 * Ed25519) against the policy's public keys with node:crypto. The message is
 * the signed payload's bytes, given whole or as a stream: ECDSA hashes the
 * stream as it passes; pure Ed25519 needs the whole message, so a stream is
 * held up to ED25519_MAX_MESSAGE_BYTES (sign larger objects with ECDSA, or by
 * manifest digest). Throws SIGNATURE_INVALID naming every key tried.
 */
import { createVerify, verify } from 'node:crypto';
import { ImageError } from '../errors.js';
import { verifyP256Digest } from './ecdsa-digest.js';
import type { TrustedKey } from './trusted-keys.js';

export const ED25519_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

export type SignedMessage = Buffer | AsyncIterable<Uint8Array>;

/** Returns the key that verifies `signature` over `message`. */
export async function verifyWithKeys(
  keys: readonly TrustedKey[],
  signature: Buffer,
  message: SignedMessage,
  what: string,
): Promise<TrustedKey> {
  const outcome = Buffer.isBuffer(message)
    ? keys.map((k) => ({ key: k, ok: verifyWhole(k, signature, message), why: '' }))
    : await verifyStream(keys, signature, message);
  const signer = outcome.find((o) => o.ok);
  if (signer !== undefined) return signer.key;
  throw invalidSignature(
    what,
    outcome.map((o) => `${o.key.fingerprint} (${o.key.algorithm}${o.why})`),
  );
}

function invalidSignature(what: string, tried: string[]): ImageError {
  return new ImageError(
    'SIGNATURE_INVALID',
    `the signature of ${what} does not verify with ${tried.length === 1 ? 'the trusted key' : 'any trusted key'}: ${tried.join(', ') || 'none'}`,
    'sign with a key in the group policy, over the payload docs/trust.md names for this format',
  );
}

/**
 * A whole-object signature checked from the object's recorded sha256: ECDSA
 * keys from the digest alone (no byte read again); pure Ed25519 signs the
 * message itself, so its keys need the bytes: `reopen` reads them again
 * (pinned to the same version; null when they cannot be read).
 */
export async function verifyObjectWithKeys(
  keys: readonly TrustedKey[],
  signature: Buffer,
  sha256Hex: string,
  what: string,
  reopen: (() => AsyncIterable<Uint8Array>) | null,
): Promise<TrustedKey> {
  const digest = Buffer.from(sha256Hex, 'hex');
  const ecdsa = keys.filter((k) => k.algorithm === 'ecdsa-p256');
  const signer = ecdsa.find((k) => verifyP256Digest(k.key, digest, signature));
  if (signer !== undefined) return signer;
  const ed25519 = keys.filter((k) => k.algorithm === 'ed25519');
  const tried = ecdsa.map((k) => `${k.fingerprint} (${k.algorithm})`);
  if (ed25519.length > 0 && reopen !== null) {
    try {
      return await verifyWithKeys(ed25519, signature, reopen(), what);
    } catch (err) {
      if (!(err instanceof ImageError) || err.code !== 'SIGNATURE_INVALID') throw err;
    }
  }
  tried.push(...ed25519.map((k) => `${k.fingerprint} (${k.algorithm})`));
  throw invalidSignature(what, tried);
}

function verifyWhole(k: TrustedKey, signature: Buffer, message: Buffer): boolean {
  try {
    return k.algorithm === 'ed25519'
      ? verify(null, message, k.key, signature)
      : verify('sha256', message, { key: k.key, dsaEncoding: 'der' }, signature);
  } catch {
    // A signature node cannot even parse (wrong length, bad DER) is simply not valid.
    return false;
  }
}

async function verifyStream(
  keys: readonly TrustedKey[],
  signature: Buffer,
  message: AsyncIterable<Uint8Array>,
): Promise<{ key: TrustedKey; ok: boolean; why: string }[]> {
  const ecdsa = keys
    .filter((k) => k.algorithm === 'ecdsa-p256')
    .map((k) => ({ k, v: createVerify('sha256') }));
  const wantsWhole = keys.some((k) => k.algorithm === 'ed25519');
  const held: Buffer[] = [];
  let total = 0;
  let overCap = false;
  for await (const chunk of message) {
    for (const e of ecdsa) e.v.update(chunk);
    total += chunk.byteLength;
    if (wantsWhole && !overCap) {
      if (total > ED25519_MAX_MESSAGE_BYTES) {
        overCap = true;
        held.length = 0;
      } else held.push(Buffer.from(chunk));
    }
  }
  const whole = wantsWhole && !overCap ? Buffer.concat(held, total) : null;
  return keys.map((key) => {
    if (key.algorithm === 'ecdsa-p256') {
      const e = ecdsa.find((x) => x.k === key);
      let ok: boolean;
      try {
        ok = e !== undefined && e.v.verify({ key: key.key, dsaEncoding: 'der' }, signature);
      } catch {
        // A signature node cannot even parse is simply not valid.
        ok = false;
      }
      return { key, ok, why: '' };
    }
    if (whole === null)
      return {
        key,
        ok: false,
        why: `; pure Ed25519 needs the whole message, ${total} bytes is over ${ED25519_MAX_MESSAGE_BYTES}`,
      };
    return { key, ok: verifyWhole(key, signature, whole), why: '' };
  });
}
