/**
 * ECDSA P-256 verification from a SHA-256 digest already computed. A flat
 * image's signature covers its bytes; their sha256 is computed while the
 * object streams into the unpacker, and node:crypto can only verify ECDSA by
 * hashing the message itself — which would mean reading the object a second
 * time, and after a restart or a late sidecar, downloading it again. The
 * curve arithmetic is @noble/curves' (audited, no dependencies beyond
 * @noble/hashes), not ours: `prehash: false` takes the digest as given,
 * `lowS: false` accepts the high-S signatures openssl and cosign produce.
 */
import type { KeyObject } from 'node:crypto';
import { p256 } from '@noble/curves/nist.js';

/** The key's uncompressed SEC1 point (0x04 ‖ x ‖ y), from its JWK coordinates. */
function sec1Of(key: KeyObject): Uint8Array {
  const jwk = key.export({ format: 'jwk' });
  const coordinate = (b64: string | undefined): Buffer => {
    const bytes = Buffer.from(b64 ?? '', 'base64url');
    return Buffer.concat([Buffer.alloc(Math.max(0, 32 - bytes.length)), bytes]);
  };
  return Buffer.concat([Buffer.from([4]), coordinate(jwk.x), coordinate(jwk.y)]);
}

/** True when `der` is a valid DER ECDSA P-256 signature by `key` of the message whose SHA-256 is `sha256`. */
export function verifyP256Digest(key: KeyObject, sha256: Buffer, der: Buffer): boolean {
  if (sha256.length !== 32) return false;
  try {
    return p256.verify(der, sha256, sec1Of(key), { prehash: false, lowS: false, format: 'der' });
  } catch {
    // A signature or key the library cannot even parse is simply not valid.
    return false;
  }
}
