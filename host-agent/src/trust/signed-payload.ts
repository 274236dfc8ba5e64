/**
 * What a signature covers, per image format (docs/trust.md, "What is signed"):
 *   - a flat rootfs tar or an outer-compressed archive: the object's bytes as
 *     stored in S3 (so `cosign sign-blob image.tar.zst` signs exactly them);
 *     the object's sha256 names the payload;
 *   - an OCI archive (and Docker 25+ `docker save`, which writes OCI layout):
 *     the manifest digest index.json names (`.manifests[0].digest`: the image
 *     manifest, or the image index of a multi-platform archive, whose platform
 *     manifests it names by digest), cosign's subject for container images. The
 *     signed bytes are the ASCII digest string "sha256:<64 hex>" with no
 *     newline: `printf %s "$digest" > digest.txt; cosign sign-blob digest.txt`
 *     needs no registry. The manifest names the config and the layers by
 *     digest, so a host that fetches only new layers still verifies all.
 *   - a legacy `docker save` archive has no manifest blob (manifest.json is
 *     Docker's own index, not a digest-addressed manifest): its object's bytes
 *     are signed, as for a flat tar.
 */
import { createHash } from 'node:crypto';
import type { ImageFormat } from '../image/layer-source.js';

export type SignedPayload =
  /** The signature is over the object's bytes; `sha256` is theirs. */
  | { kind: 'object'; sha256: string }
  /** The signature is over `bytes` = ASCII "sha256:<hex>" of the manifest. */
  | { kind: 'manifest-digest'; manifestDigest: string; bytes: Buffer; sha256: string };

export interface ImageIdentity {
  format: ImageFormat;
  /** sha256 hex of the object's bytes as stored. */
  objectSha256: string;
  /** "sha256:<hex>" index.json's descriptor names (manifest or image index); null when the archive has none (legacy docker save). */
  manifestDigest: string | null;
}

const DIGEST = /^sha256:[0-9a-f]{64}$/;
const HEX = /^[0-9a-f]{64}$/;

export function signedPayloadOf(image: ImageIdentity): SignedPayload {
  if (!HEX.test(image.objectSha256))
    throw new TypeError(`object sha256 must be 64 lowercase hex, got "${image.objectSha256}"`);
  if (image.format === 'flat' || image.manifestDigest === null)
    return { kind: 'object', sha256: image.objectSha256 };
  return manifestDigestPayload(image.manifestDigest);
}

/** The payload for a manifest digest: exactly the bytes a user writes with `printf %s sha256:<hex>`. */
export function manifestDigestPayload(manifestDigest: string): SignedPayload {
  if (!DIGEST.test(manifestDigest))
    throw new TypeError(
      `manifest digest must be sha256:<64 lowercase hex>, got "${manifestDigest}"`,
    );
  const bytes = Buffer.from(manifestDigest, 'ascii');
  return {
    kind: 'manifest-digest',
    manifestDigest,
    bytes,
    sha256: createHash('sha256').update(bytes).digest('hex'),
  };
}

/** For records and messages: what was signed, as one string. */
export function describePayload(p: SignedPayload): string {
  return p.kind === 'object' ? `object sha256:${p.sha256}` : `manifest ${p.manifestDigest}`;
}
