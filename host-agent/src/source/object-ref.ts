/**
 * A pinned S3 object: what HeadObject saw, and what every later GET must
 * still match (ETag always, VersionId when the bucket has versions).
 */
export interface ObjectRef {
  bucket: string;
  key: string;
  /** The version HeadObject returned (versioned buckets), else null. */
  versionId: string | null;
  /** As S3 returns it, quotes included. */
  eTag: string;
  /** Bytes. */
  size: number;
  /**
   * Base64 full-object SHA-256 from S3 additional checksums when S3 has one
   * (HeadObject with ChecksumMode ENABLED, only when ChecksumType is
   * FULL_OBJECT or absent-but-not-composite); else null.
   */
  checksumSha256: string | null;
  /** ISO 8601. */
  lastModified: string | null;
}

/** `s3://bucket/key` (plus `?versionId=` when pinned), for messages and logs. */
export function objectUrl(ref: { bucket: string; key: string; versionId?: string | null }): string {
  const base = `s3://${ref.bucket}/${ref.key}`;
  return ref.versionId ? `${base}?versionId=${ref.versionId}` : base;
}

/**
 * The full-object SHA-256 (base64) from HeadObject's additional-checksum
 * fields, or null when there is none or it is a composite (checksum of part
 * checksums, `...=-N`), which can't be compared with a hash of the bytes.
 */
export function fullObjectSha256(
  checksumSha256: string | undefined,
  checksumType: string | undefined,
): string | null {
  if (!checksumSha256) return null;
  if (checksumType !== undefined && checksumType !== 'FULL_OBJECT') return null;
  const value = checksumSha256.trim();
  if (/-\d+$/.test(value)) return null; // composite multipart checksum
  if (!/^[A-Za-z0-9+/]{43}=$/.test(value)) return null; // not 32 bytes of base64
  return value;
}
