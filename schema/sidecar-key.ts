/**
 * Signature sidecar keys: the objects next to an image that carry its
 * signature — `<key>.sig` (cosign's base64 signature) or
 * `<key>.sigstore.json` (a Sigstore bundle). Their names only; the fan-out
 * (routes a sidecar's event to its image's hosts), the catch-up sync (never
 * lists one as an image) and the host agent's trust code (reads them) all use
 * this one definition.
 */

export type SidecarKind = 'signature' | 'bundle';

export const SIDECAR_SUFFIX: Record<SidecarKind, string> = {
  signature: '.sig',
  bundle: '.sigstore.json',
};

/** The sidecar keys an image key may have, in the order they are looked for. */
export function sidecarKeysOf(imageKey: string): { kind: SidecarKind; key: string }[] {
  return [
    { kind: 'bundle', key: imageKey + SIDECAR_SUFFIX.bundle },
    { kind: 'signature', key: imageKey + SIDECAR_SUFFIX.signature },
  ];
}

/** The image a sidecar key belongs to, or null if the key is no sidecar. */
export function sidecarTarget(key: string): { kind: SidecarKind; imageKey: string } | null {
  for (const kind of ['bundle', 'signature'] as const) {
    const suffix = SIDECAR_SUFFIX[kind];
    if (key.endsWith(suffix) && key.length > suffix.length)
      return { kind, imageKey: key.slice(0, -suffix.length) };
  }
  return null;
}

/** Is this key a signature sidecar (never an image)? */
export function isSidecarKey(key: string): boolean {
  return sidecarTarget(key) !== null;
}
