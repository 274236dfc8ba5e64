/**
 * Reads an image's manifest from an indexed archive: the OCI image layout
 * (oci-layout, index.json, blobs/sha256/…; Docker 25+ `docker save` writes
 * one too) or the legacy `docker save` layout (manifest.json, <id>/layer.tar,
 * often symlinks to blob members). The result names the config and the
 * layers in order, each as an archive member with the digests to verify.
 */
import { posix } from 'node:path';
import { ImageError } from '../errors.js';
import type { IndexedMember } from '../layer/tar-index.js';

export type ImageLayout = 'oci' | 'docker';

export interface BlobRef {
  member: IndexedMember;
  /** sha256 hex the member's bytes must have, when the layout says so. */
  sha256: string | undefined;
  /** Size the descriptor declares, when it does. */
  size: number | undefined;
  mediaType: string | undefined;
}

export interface ImagePlan {
  layout: ImageLayout;
  config: BlobRef;
  layers: BlobRef[];
  /** Which manifest was taken, for logs and `show`: "linux/amd64", a ref name or "manifest.json[0]". */
  chosen: string;
  /**
   * "sha256:<hex>" of the descriptor index.json names (the image manifest, or
   * the image index whose platform manifest was taken): what an OCI archive's
   * signature covers (trust/signed-payload.ts). Null for a legacy docker save.
   */
  manifestDigest: string | null;
}

const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';

function invalid(message: string): ImageError {
  return new ImageError('IMAGE_MANIFEST_INVALID', message);
}

/** "sha256:<64 hex>" → hex; anything else is refused (no other algorithm is trusted here). */
export function sha256Of(digest: unknown, what: string): string {
  if (typeof digest !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(digest))
    throw invalid(`${what}: digest ${JSON.stringify(digest)} is not sha256:<64 hex digits>`);
  return digest.slice(7);
}

/** Archive members by normalised name ("./a/b" and "a/b" are one). */
export class ArchiveMembers {
  private readonly byName = new Map<string, IndexedMember>();

  constructor(members: IndexedMember[]) {
    for (const m of members) this.byName.set(normalise(m.name), m);
  }

  has(name: string): boolean {
    return this.byName.has(normalise(name));
  }

  /** The regular file `name` names, following symlinks within the archive (skopeo links layer.tar to blobs). */
  file(name: string, what: string): IndexedMember {
    let current = normalise(name);
    for (let hops = 0; hops < 8; hops++) {
      const m = this.byName.get(current);
      if (m === undefined)
        throw new ImageError('IMAGE_BLOB_MISSING', `${what}: ${name} is not in the archive`);
      if (m.type === 'file') return m;
      if (m.type !== 'symlink' && m.type !== 'hardlink')
        throw invalid(`${what}: ${name} is a ${m.type}, not a file`);
      const target =
        m.type === 'hardlink' ? m.linkname : posix.join(posix.dirname(current), m.linkname);
      if (target.startsWith('/') || target.startsWith('..'))
        throw invalid(`${what}: ${name} links outside the archive`);
      current = normalise(target);
    }
    throw invalid(`${what}: ${name} is a chain of too many links`);
  }
}

function normalise(name: string): string {
  const n = posix.normalize(name.replace(/^\.\//, '')).replace(/\/$/, '');
  return n === '.' ? '' : n;
}

/** Image metadata (index, manifest, config) larger than this is refused. */
export const MAX_JSON_BYTES = 4 * 1024 * 1024;

/** Refuses a metadata member too large to read into memory (IMAGE_MANIFEST_INVALID). */
export function checkJsonMember(member: IndexedMember, what: string): void {
  if (member.size > MAX_JSON_BYTES)
    throw invalid(`${what} is ${member.size} bytes, too large for image metadata`);
}

/** A metadata member's bytes as JSON; IMAGE_MANIFEST_INVALID when they are not. */
export function parseJsonBytes(bytes: Buffer, what: string): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new ImageError('IMAGE_MANIFEST_INVALID', `${what} is not valid JSON`, undefined, {
      cause: err,
    });
  }
}

const LAYER_MEDIA_TYPES = new Set([
  undefined,
  'application/vnd.oci.image.layer.v1.tar',
  'application/vnd.oci.image.layer.v1.tar+gzip',
  'application/vnd.oci.image.layer.v1.tar+zstd',
  'application/vnd.docker.image.rootfs.diff.tar',
  'application/vnd.docker.image.rootfs.diff.tar.gzip',
  'application/vnd.docker.image.rootfs.diff.tar.zstd',
]);

/** A layer descriptor must name a tar layer media type (docker's legacy layout names none). */
export function checkLayerMediaType(blob: BlobRef, layer: number): void {
  if (!LAYER_MEDIA_TYPES.has(blob.mediaType))
    throw new ImageError(
      'LAYER_NOT_TAR',
      `layer ${layer} has media type ${blob.mediaType}, not a tar layer`,
    );
}

/**
 * Reads a JSON member. When `blob` is given (a manifest or nested index named
 * by a descriptor), its bytes must have the descriptor's size and digest
 * (verify.ts's checks) before they are parsed.
 */
export type JsonReader = (member: IndexedMember, what: string, blob?: BlobRef) => unknown;
export type AsyncJsonReader = (
  member: IndexedMember,
  what: string,
  blob?: BlobRef,
) => Promise<unknown>;

/** A JSON member the plan needs next: the walker is answered with its parsed value. */
interface JsonRead {
  member: IndexedMember;
  what: string;
  /** The descriptor that named it (index.json and manifest.json are named by none). */
  blob?: BlobRef;
}

/** Working out a plan: yields the JSON members it needs, returns the plan. */
type PlanSteps = Generator<JsonRead, ImagePlan, unknown>;

interface Descriptor {
  mediaType?: string;
  digest: string;
  size: number;
  platform?: { os?: string; architecture?: string; variant?: string };
  annotations?: Record<string, string>;
}

function descriptors(doc: unknown, key: string, what: string): Descriptor[] {
  const list = (doc as Record<string, unknown> | null)?.[key];
  if (!Array.isArray(list)) throw invalid(`${what} has no ${key} list`);
  return list.map((d: unknown, i) => {
    const o = d as Descriptor | null;
    if (o === null || typeof o !== 'object' || typeof o.size !== 'number')
      throw invalid(`${what}: ${key}[${i}] is not a descriptor`);
    sha256Of(o.digest, `${what} ${key}[${i}]`);
    return o;
  });
}

/** Go's GOARCH names, which image platforms use. */
export function hostArchitecture(): string {
  const arch = process.arch;
  return arch === 'x64' ? 'amd64' : arch === 'ia32' ? '386' : arch;
}

function blobOf(members: ArchiveMembers, d: Descriptor, what: string): BlobRef {
  const hex = sha256Of(d.digest, what);
  return {
    member: members.file(`blobs/sha256/${hex}`, what),
    sha256: hex,
    size: d.size,
    mediaType: d.mediaType,
  };
}

function* ociPlan(members: ArchiveMembers, arch: string): PlanSteps {
  let doc = yield { member: members.file('index.json', 'index.json'), what: 'index.json' };
  let where = 'index.json';
  let top: string | null = null;
  for (let depth = 0; depth < 4; depth++) {
    const list = descriptors(doc, 'manifests', where);
    if (list.length === 0) throw invalid(`${where} lists no manifests`);
    const forHost = list.filter(
      (d) => d.platform?.os === 'linux' && d.platform.architecture === arch,
    );
    const withPlatform = list.filter((d) => d.platform !== undefined);
    let chosen: Descriptor;
    let label: string;
    if (forHost.length > 0) {
      chosen = forHost[0]!;
      label = `linux/${arch}`;
    } else if (withPlatform.length === list.length && list.length > 0) {
      const offered = list.map((d) => `${d.platform?.os}/${d.platform?.architecture}`).join(', ');
      throw new ImageError(
        'IMAGE_PLATFORM_MISSING',
        `${where} offers ${offered}, not linux/${arch}`,
      );
    } else {
      chosen = list[0]!;
      label = chosen.annotations?.['org.opencontainers.image.ref.name'] ?? `${where} manifests[0]`;
    }
    top ??= chosen.digest;
    const blob = blobOf(members, chosen, where);
    const body = yield { member: blob.member, what: `manifest ${chosen.digest}`, blob };
    const mediaType = chosen.mediaType ?? (body as { mediaType?: string } | null)?.mediaType;
    if (mediaType === OCI_INDEX || mediaType === DOCKER_LIST) {
      doc = body;
      where = `index ${chosen.digest}`;
      continue;
    }
    const config = (body as { config?: Descriptor } | null)?.config;
    if (config === undefined) throw invalid(`manifest ${chosen.digest} has no config`);
    return {
      layout: 'oci',
      config: blobOf(members, config, `manifest ${chosen.digest} config`),
      layers: descriptors(body, 'layers', `manifest ${chosen.digest}`).map((d, i) =>
        blobOf(members, d, `manifest ${chosen.digest} layers[${i}]`),
      ),
      chosen: label,
      manifestDigest: top,
    };
  }
  throw invalid('index.json nests image indexes too deeply');
}

/** "<64 hex>.json" or "blobs/sha256/<64 hex>" names its own digest. */
function digestInName(name: string): string | undefined {
  const m = /(?:^|\/)([0-9a-f]{64})(?:\.json|\.tar)?$/.exec(normalise(name));
  return m?.[1];
}

function* dockerPlan(members: ArchiveMembers): PlanSteps {
  const doc = yield {
    member: members.file('manifest.json', 'manifest.json'),
    what: 'manifest.json',
  };
  if (!Array.isArray(doc) || doc.length === 0)
    throw invalid('manifest.json is not a list of images');
  if (doc.length > 1)
    throw invalid(`manifest.json holds ${doc.length} images; upload one image per object`);
  const entry = doc[0] as { Config?: unknown; Layers?: unknown; RepoTags?: unknown } | null;
  if (typeof entry?.Config !== 'string' || !Array.isArray(entry.Layers))
    throw invalid('manifest.json[0] has no Config or Layers');
  const configMember = members.file(entry.Config, 'manifest.json Config');
  const layers = entry.Layers.map((name: unknown, i) => {
    if (typeof name !== 'string') throw invalid(`manifest.json Layers[${i}] is not a name`);
    const member = members.file(name, `manifest.json Layers[${i}]`);
    // A blob member's own name is its digest; a legacy <id>/layer.tar is checked by its diff_id.
    return { member, sha256: digestInName(member.name), size: undefined, mediaType: undefined };
  });
  const tags = Array.isArray(entry.RepoTags)
    ? entry.RepoTags.filter((t) => typeof t === 'string')
    : [];
  return {
    layout: 'docker',
    config: {
      member: configMember,
      sha256: digestInName(entry.Config),
      size: undefined,
      mediaType: undefined,
    },
    layers,
    chosen: tags[0] ?? 'manifest.json[0]',
    manifestDigest: null,
  };
}

/**
 * An image with no layers has no root filesystem: nothing a VM can boot
 * (containerd would unpack it to an empty snapshot with nothing to run).
 * Refused as the image's fault, before any volume is made.
 */
function refuseNoLayers(plan: ImagePlan): ImagePlan {
  if (plan.layers.length === 0)
    throw new ImageError(
      'IMAGE_NO_LAYERS',
      `the image (${plan.chosen}) has no layers, so no root filesystem to boot`,
      'build the image with at least one layer (a FROM scratch image needs a COPY or ADD)',
    );
  return plan;
}

function* planSteps(members: ArchiveMembers): PlanSteps {
  if (members.has('index.json') && members.has('oci-layout'))
    return refuseNoLayers(yield* ociPlan(members, hostArchitecture()));
  if (members.has('manifest.json')) return refuseNoLayers(yield* dockerPlan(members));
  throw new ImageError(
    'IMAGE_FORMAT_UNKNOWN',
    'the archive looks like a container image (its first member is image metadata) but has neither index.json with oci-layout nor manifest.json',
  );
}

/**
 * The plan of the archive's image. OCI's index.json is preferred when both
 * are present (Docker 25+ writes both; they name the same blobs).
 */
export function readImagePlan(members: ArchiveMembers, read: JsonReader): ImagePlan {
  const steps = planSteps(members);
  for (let step = steps.next(); ;) {
    if (step.done === true) return step.value;
    step = steps.next(read(step.value.member, step.value.what, step.value.blob));
  }
}

/** readImagePlan with JSON members read asynchronously (by ranged GETs). */
export async function readImagePlanAsync(
  members: ArchiveMembers,
  read: AsyncJsonReader,
): Promise<ImagePlan> {
  const steps = planSteps(members);
  for (let step = steps.next(); ;) {
    if (step.done === true) return step.value;
    step = steps.next(await read(step.value.member, step.value.what, step.value.blob));
  }
}
