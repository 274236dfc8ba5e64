/**
 * Signature sidecars: the objects next to an image that carry its signature —
 * `<key>.sig` (cosign's base64 signature) or `<key>.sigstore.json` (a Sigstore
 * bundle). Their names (schema/sidecar-key.ts, shared with the fan-out), the size cap, reading one without trusting its size,
 * and decoding a `.sig`. A sidecar is as untrusted as the image: a 10 MB one
 * is refused from its declared size, or after 64 KiB if the size lied.
 */
import type { SidecarKind } from '../../../schema/sidecar-key.js';
import { ImageError } from '../errors.js';

export {
  SIDECAR_SUFFIX,
  sidecarKeysOf,
  sidecarTarget,
  type SidecarKind,
} from '../../../schema/sidecar-key.js';

/** A cosign signature is ~100 bytes, a bundle a few KiB: 64 KiB is far above any real one. */
export const MAX_SIDECAR_BYTES = 64 * 1024;

export interface Sidecar {
  kind: SidecarKind;
  /** Its S3 key, named in errors. */
  key: string;
  bytes: Buffer;
}

/**
 * Reads a sidecar's bytes: refused before the first byte when its declared
 * size (S3's ContentLength) is over the cap, and the stream is abandoned as
 * soon as it passes the cap whatever was declared.
 */
export async function readSidecar(
  kind: SidecarKind,
  key: string,
  declaredBytes: number | null,
  body: AsyncIterable<Uint8Array>,
): Promise<Sidecar> {
  if (declaredBytes !== null && declaredBytes > MAX_SIDECAR_BYTES)
    throw tooLarge(key, declaredBytes);
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of body) {
    total += chunk.byteLength;
    if (total > MAX_SIDECAR_BYTES) throw tooLarge(key, declaredBytes ?? total);
    chunks.push(Buffer.from(chunk));
  }
  const bytes = Buffer.concat(chunks, total);
  if (bytes.toString('latin1').trim() === '')
    throw new ImageError(
      'SIGNATURE_SIDECAR_EMPTY',
      `signature sidecar ${key} is empty`,
      'upload the output of `cosign sign-blob` (or the bundle it wrote) again',
    );
  return { kind, key, bytes };
}

function tooLarge(key: string, bytes: number): ImageError {
  return new ImageError(
    'SIGNATURE_SIDECAR_TOO_LARGE',
    `signature sidecar ${key} has ${bytes} bytes, more than the ${MAX_SIDECAR_BYTES} a signature or bundle may have`,
    'a .sig holds one base64 signature and a .sigstore.json one bundle; check what was uploaded',
  );
}

/** Strict base64 (standard alphabet, padded), as cosign writes it; surrounding whitespace is allowed. */
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** The signature bytes of a `.sig` sidecar: base64 text, one line (a trailing newline is allowed). */
export function decodeSignature(sidecar: Sidecar): Buffer {
  const text = sidecar.bytes.toString('latin1').trim();
  if (!BASE64.test(text))
    throw new ImageError(
      'SIGNATURE_NOT_BASE64',
      `signature sidecar ${sidecar.key} is not base64 text`,
      'a .sig holds the base64 signature `cosign sign-blob` prints (or `openssl ... | base64 -w0`), not raw bytes',
    );
  return Buffer.from(text, 'base64');
}
