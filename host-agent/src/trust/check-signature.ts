/**
 * The one entry point the pipeline will call: given a host's policy, what an
 * image's signature must cover, its bytes and the sidecar found (or none),
 * decide. `require`: a TrustRecord when it verifies, else the ImageError
 * (SIGNATURE_*, a permanent failure). `warn`: always a TrustRecord, failed
 * ones carrying their code. `off`: null, nothing read. A host fault (the
 * trusted root unreadable) is thrown in every mode: it is not the image's.
 */
import { ImageError } from '../errors.js';
import type { TrustPolicy } from './policy.js';
import { decodeSignature, type Sidecar } from './sidecar.js';
import { parseBundleSidecar } from './sigstore-bundle.js';
import { describePayload, type SignedPayload } from './signed-payload.js';
import type { Signer, TrustRecord } from './trust-record.js';
import {
  ED25519_MAX_MESSAGE_BYTES,
  verifyObjectWithKeys,
  verifyWithKeys,
  type SignedMessage,
} from './verify-key.js';

export interface SignatureCheck {
  policy: TrustPolicy;
  payload: SignedPayload;
  /** The object's bytes (whole or streamed) for an `object` payload; unused for a manifest digest. */
  object?: SignedMessage;
  /**
   * Without `object`: reads the object's bytes again (pinned), for what cannot
   * be checked from its sha256 alone (pure Ed25519, bundles). ECDSA `.sig`s
   * over an object are checked from the payload's sha256.
   */
  reopen?: () => AsyncIterable<Uint8Array>;
  /** The sidecar found next to the image; null: none (yet). */
  sidecar: Sidecar | null;
  now?: () => Date;
}

/**
 * A daemon whose policy trusts keyless identities loads the verifier ahead of
 * its first image (~0.1 s of library load and root parsing, once). A failure
 * here only logs: the image's own check reports it properly.
 */
export async function prepareVerifier(
  policy: TrustPolicy,
  warn: (message: string, err: unknown) => void,
): Promise<void> {
  if (policy.mode === 'off' || policy.identities.length === 0) return;
  try {
    const { prepareKeyless } = await import('./verify-bundle.js');
    await prepareKeyless(policy);
  } catch (err) {
    warn('could not prepare the keyless signature verifier', err);
  }
}

export async function checkSignature(c: SignatureCheck): Promise<TrustRecord | null> {
  if (c.policy.mode === 'off') return null;
  const at = (c.now ?? (() => new Date()))().toISOString();
  const base = {
    mode: c.policy.mode,
    payload: describePayload(c.payload),
    sidecar: c.sidecar?.key ?? null,
    verifiedAt: at,
  };
  try {
    const signer = await signerOf(c);
    return { ...base, verdict: 'verified', signer, failure: null };
  } catch (err) {
    if (!(err instanceof ImageError) || c.policy.mode === 'require') throw err;
    return {
      ...base,
      verdict: 'failed',
      signer: null,
      failure: { code: err.code, message: err.message },
    };
  }
}

async function signerOf(c: SignatureCheck): Promise<Signer> {
  const what = describePayload(c.payload);
  if (c.sidecar === null)
    throw new ImageError(
      'SIGNATURE_MISSING',
      `no signature for ${what} (neither <key>.sig nor <key>.sigstore.json arrived)`,
      'upload the signature sidecar next to the image; docs/trust.md shows how to make it',
    );
  if (c.sidecar.kind === 'signature') {
    const signature = decodeSignature(c.sidecar);
    if (c.policy.keys.length === 0)
      throw new ImageError(
        'SIGNATURE_INVALID',
        `${c.sidecar.key} is a key signature, but the policy trusts no public key (only identities)`,
        'upload a Sigstore bundle (<key>.sigstore.json) or add the key to the group policy',
      );
    const key =
      c.payload.kind === 'object' && c.object === undefined
        ? await verifyObjectWithKeys(
            c.policy.keys,
            signature,
            c.payload.sha256,
            what,
            c.reopen ?? null,
          )
        : await verifyWithKeys(c.policy.keys, signature, messageOf(c), what);
    return { type: 'key', fingerprint: key.fingerprint, algorithm: key.algorithm };
  }
  const bundle = parseBundleSidecar(c.sidecar, c.payload);
  const message = messageOf(c);
  // Only now: the Sigstore libraries load on the first bundle.
  const { verifyBundle } = await import('./verify-bundle.js');
  const signer = await verifyBundle(c.policy, bundle, await wholeMessage(message, what));
  return signer.type === 'key'
    ? { type: 'key', fingerprint: signer.key.fingerprint, algorithm: signer.key.algorithm }
    : signer;
}

function messageOf(c: SignatureCheck): SignedMessage {
  if (c.payload.kind === 'manifest-digest') return c.payload.bytes;
  if (c.object !== undefined) return c.object;
  if (c.reopen === undefined) throw new TypeError('an object payload needs the object’s bytes');
  return c.reopen();
}

/** @sigstore/verify checks a message signature over the bytes in memory: a bounded copy. */
async function wholeMessage(message: SignedMessage, what: string): Promise<Buffer> {
  if (Buffer.isBuffer(message)) return message;
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of message) {
    total += chunk.byteLength;
    if (total > ED25519_MAX_MESSAGE_BYTES)
      throw new ImageError(
        'SIGNATURE_INVALID',
        `a Sigstore bundle over ${what} cannot be verified: the object is over ${ED25519_MAX_MESSAGE_BYTES} bytes`,
        'sign objects this large with a .sig (ECDSA key), or container images by manifest digest',
      );
    chunks.push(Buffer.from(chunk));
  }
  return Buffer.concat(chunks, total);
}
