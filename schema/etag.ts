/**
 * How ETags compare, for everyone who compares them: the agent's downloads
 * (pinned to the ETag HeadObject saw), the fleet table's items and rollouts,
 * `fleet status`, the sweep and the CLI's JSON. S3's API quotes ETags, its
 * event notifications do not, and HTTP allows a weak-validator prefix: all
 * three spellings name one version. No imports, so the CLI's first chunk can
 * load it without the AWS SDK.
 */

/** The ETag without quotes or a weak-validator prefix. */
export function normalizeETag(eTag: string): string {
  return eTag
    .trim()
    .replace(/^W\//, '')
    .replace(/^"(.*)"$/, '$1');
}

/** An ETag a fleet item or rollout may leave out: null for none (or an empty one). */
export function optionalETag(eTag: string | null | undefined): string | null {
  if (eTag === null || eTag === undefined) return null;
  const bare = normalizeETag(eTag);
  return bare === '' ? null : bare;
}

export function sameETag(a: string, b: string): boolean {
  return normalizeETag(a) === normalizeETag(b);
}
