/**
 * Digest checks: a blob's bytes (manifests and nested indexes included) must
 * hash to the digest that names it and have the declared size; a layer's uncompressed bytes must hash to its
 * config diff_id. Every mismatch fails the image with a reason code.
 */
import { createHash } from 'node:crypto';
import { ImageError } from '../errors.js';
import type { BlobRef } from './manifest.js';
import { readRange } from '../layer/tar-index.js';

const CHUNK = 1024 * 1024;

export function hashRange(fd: number, offset: number, length: number): string {
  const hash = createHash('sha256');
  for (let done = 0; done < length;) {
    const buf = readRange(fd, offset + done, Math.min(CHUNK, length - done));
    if (buf.length === 0) break;
    hash.update(buf);
    done += buf.length;
  }
  return hash.digest('hex');
}

export function verifyBlob(fd: number, blob: BlobRef, what: string): void {
  checkBlobSize(blob, what);
  if (blob.sha256 === undefined) return;
  checkBlobDigest(blob, hashRange(fd, blob.member.dataOffset, blob.member.size), what);
}

/** verifyBlob for a blob whose bytes are in memory (read by range from S3). */
export function verifyBlobBytes(bytes: Buffer, blob: BlobRef, what: string): void {
  checkBlobSize(blob, what);
  if (blob.sha256 === undefined) return;
  checkBlobDigest(blob, createHash('sha256').update(bytes).digest('hex'), what);
}

/** The descriptor's size against the archive member's (no bytes needed). */
export function checkBlobSize(blob: BlobRef, what: string): void {
  if (blob.size !== undefined && blob.size !== blob.member.size) {
    throw new ImageError(
      'BLOB_SIZE_MISMATCH',
      `${what}: the descriptor says ${blob.size} bytes, the archive member ${blob.member.name} has ${blob.member.size}`,
    );
  }
}

/** The blob's bytes hashed to `actual` (hex): it must be the digest that names it, if any. */
export function checkBlobDigest(blob: BlobRef, actual: string, what: string): void {
  if (blob.sha256 !== undefined && actual !== blob.sha256) {
    throw new ImageError(
      'BLOB_DIGEST_MISMATCH',
      `${what}: member ${blob.member.name} hashes to sha256:${actual}, not sha256:${blob.sha256}`,
    );
  }
}

/** A manifest naming one blob twice is a digest game, not an image. */
export function refuseRepeatedBlobs(layers: BlobRef[]): void {
  const seen = new Set<string>();
  for (const [i, layer] of layers.entries()) {
    const key = layer.sha256 ?? `${layer.member.dataOffset}`;
    if (seen.has(key))
      throw new ImageError(
        'IMAGE_BLOB_REPEATED',
        `layer ${i + 1} names a blob an earlier layer already named (${layer.member.name})`,
      );
    seen.add(key);
  }
}

export function verifyDiffId(actual: string, expected: string, layer: number): void {
  if (actual !== expected) {
    throw new ImageError(
      'LAYER_DIGEST_MISMATCH',
      `layer ${layer}: its uncompressed content hashes to sha256:${actual}, but the config's rootfs.diff_ids says sha256:${expected}`,
    );
  }
}
