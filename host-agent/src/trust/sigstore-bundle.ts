/**
 * The first look at a `.sigstore.json` sidecar, before any Sigstore code
 * loads: JSON, a Sigstore bundle media type, a message signature (not a DSSE
 * attestation), and a message digest equal to the image's signed payload —
 * so "a bundle for another image" is named as such, not as a bad signature.
 * The full check (chain, evidence, signature, identity) is verify-bundle.ts.
 */
import { ImageError } from '../errors.js';
import type { Sidecar } from './sidecar.js';
import { describePayload, type SignedPayload } from './signed-payload.js';

export interface BundleSidecar {
  key: string;
  /** The parsed JSON, handed to @sigstore/bundle as is. */
  json: Record<string, unknown>;
  /** Which verification material it carries. */
  material: 'certificate' | 'publicKey';
}

const MEDIA_TYPE =
  /^application\/vnd\.dev\.sigstore\.bundle(\.v0\.[123]\+json|\+json;version=0\.[123])$/;

function malformed(key: string, why: string): ImageError {
  return new ImageError(
    'SIGNATURE_BUNDLE_MALFORMED',
    `signature bundle ${key}: ${why}`,
    'upload the file `cosign sign-blob --bundle <file>` wrote, unchanged',
  );
}

function object(v: unknown): Record<string, unknown> | null {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
    ? (v as Record<string, unknown>)
    : null;
}

export function parseBundleSidecar(sidecar: Sidecar, payload: SignedPayload): BundleSidecar {
  const key = sidecar.key;
  let parsed: unknown;
  try {
    parsed = JSON.parse(sidecar.bytes.toString('utf8'));
  } catch (err) {
    throw malformed(key, `not JSON (${(err as Error).message})`);
  }
  const json = object(parsed);
  if (json === null) throw malformed(key, 'not a JSON object');
  if (typeof json.mediaType !== 'string' || !MEDIA_TYPE.test(json.mediaType))
    throw malformed(key, `not a Sigstore bundle (mediaType ${JSON.stringify(json.mediaType)})`);
  if (json.dsseEnvelope !== undefined)
    throw malformed(
      key,
      'a DSSE attestation, not a signature of the image (sign with `cosign sign-blob --bundle`)',
    );
  const message = object(json.messageSignature);
  const digest = object(message?.messageDigest);
  if (message === null || digest === null || typeof message.signature !== 'string')
    throw malformed(key, 'no messageSignature with a messageDigest and a signature');
  if (digest.algorithm !== 'SHA2_256')
    throw malformed(
      key,
      `message digest algorithm ${JSON.stringify(digest.algorithm)}, expected SHA2_256`,
    );
  if (typeof digest.digest !== 'string') throw malformed(key, 'message digest is not base64');
  const hex = Buffer.from(digest.digest, 'base64').toString('hex');
  if (hex !== payload.sha256)
    throw new ImageError(
      'SIGNATURE_BUNDLE_DIGEST_MISMATCH',
      `signature bundle ${key} is for sha256:${hex || '(empty)'}, not this image's ${describePayload(payload)}` +
        (payload.kind === 'manifest-digest'
          ? ` (whose signed bytes have sha256:${payload.sha256})`
          : ''),
      payload.kind === 'manifest-digest'
        ? 'sign the manifest digest string: printf %s sha256:<manifest hex> > digest.txt; cosign sign-blob --bundle … digest.txt'
        : 'sign the object as uploaded: cosign sign-blob --bundle <key>.sigstore.json <file>',
    );
  const material = object(json.verificationMaterial);
  if (material === null) throw malformed(key, 'no verificationMaterial');
  const kind =
    material.certificate !== undefined || material.x509CertificateChain !== undefined
      ? 'certificate'
      : material.publicKey !== undefined
        ? 'publicKey'
        : null;
  if (kind === null) throw malformed(key, 'verificationMaterial has no certificate or public key');
  return { key, json, material: kind };
}
