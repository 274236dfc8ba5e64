/**
 * containerd's snapshot operations on thinrelay's storage, transport-free
 * (server.ts puts gRPC in front). A committed snapshot is a sealed layer
 * volume whose blob carries the chain ID in its name; Prepare is a writable
 * clone of the parent's volume (a fresh ext4 without a parent); a View of a
 * committed parent reads the parent's volume read-only (devmapper: its own
 * thin snapshot of it, mounted read-only); Commit seals an
 * active snapshot's volume into a layer. Each change writes its intent row
 * before the storage changes (ObjectManager) and its outcome after; recover()
 * finishes what a dead process left.
 */
import { errorMessage, InternalError, NotFoundError, UsageError } from '../errors.js';
import type { Logger } from '../log.js';
import { releaseBlobIfUnused } from '../pool/release.js';
import type { ContainerdSnapshotRow } from '../store/containerd-snapshots.js';
import type { StateStore } from '../store/index.js';
import type { StorageObjectRow } from '../store/objects.js';
import { isOwnerAlive } from '../store/owner.js';
import type { ObjectManager } from '../storage/object-manager.js';
import { chainIdOfName, checkKey, checkLabels, isChainId } from './keys.js';
import { failpoint } from '../failpoints.js';
import {
  attachForMounts,
  bytesUsed,
  mountsOf,
  viewNeedsOwnVolume,
  type SnapshotMount,
} from './mounts.js';

export type SnapshotKindName = 'ACTIVE' | 'VIEW' | 'COMMITTED';

export interface SnapshotInfo {
  name: string;
  parent: string;
  kind: SnapshotKindName;
  createdAt: Date;
  updatedAt: Date;
  labels: Record<string, string>;
}

export interface SnapshotServiceDeps {
  store: StateStore;
  objects: ObjectManager;
  owner: string;
  logger: Logger;
  /** Size of the fresh volume a Prepare without a parent makes (sparse). */
  freshVolumeBytes: number;
}

const kindNames: Record<ContainerdSnapshotRow['kind'], SnapshotKindName> = {
  active: 'ACTIVE',
  view: 'VIEW',
  committed: 'COMMITTED',
};

/** The label containerd's pull unpacker puts on each layer's Prepare: the layer's chain ID. */
export const snapshotRefLabel = 'containerd.io/snapshot.ref';

function notFound(key: string): NotFoundError {
  return new NotFoundError('NOT_FOUND', `snapshot ${key} does not exist`);
}

function alreadyExists(key: string): UsageError {
  return new UsageError('ALREADY_EXISTS', `snapshot ${key} already exists`);
}

export class SnapshotService {
  constructor(private readonly deps: SnapshotServiceDeps) {}

  private get store(): StateStore {
    return this.deps.store;
  }

  /** The live, settled snapshot of `key`; NotFound otherwise (an intent in flight is not there yet). */
  private settled(key: string): ContainerdSnapshotRow {
    checkKey('key', key);
    const row = this.store.containerdSnapshots.byKey(key);
    if (row === undefined || row.state === 'preparing' || row.state === 'removing')
      throw notFound(key);
    return row;
  }

  info(row: ContainerdSnapshotRow): SnapshotInfo {
    return {
      name: row.key,
      parent: row.parent ?? '',
      kind: kindNames[row.kind],
      createdAt: new Date(row.created_at),
      updatedAt: new Date(row.updated_at),
      labels: JSON.parse(row.labels) as Record<string, string>,
    };
  }

  /** The committed snapshot `parent` and its layer's sealed volume. */
  private committedParent(parent: string): {
    row: ContainerdSnapshotRow;
    volume: StorageObjectRow;
  } {
    checkKey('parent', parent);
    // A bare chain ID names a layer thinrelay holds (an orchestrator's Prepare on an image's top layer).
    const row = this.store.containerdSnapshots.byKey(parent) ?? this.layerSnapshot(parent);
    if (row === undefined || row.state === 'preparing' || row.state === 'removing')
      throw new NotFoundError('NOT_FOUND', `parent snapshot ${parent} does not exist`);
    if (row.kind !== 'committed')
      throw new UsageError('USAGE', `parent ${parent} is not a committed snapshot`);
    const blob = row.blob_id === null ? undefined : this.store.blobs.get(row.blob_id);
    const volume =
      blob?.volume_id === null || blob === undefined
        ? undefined
        : this.store.objects.get(blob.volume_id);
    if (volume?.state !== 'sealed')
      throw new UsageError('NOT_READY', `parent ${parent} has no sealed volume`);
    return { row, volume };
  }

  /** The volume an active or view snapshot's mounts are of. */
  private volumeOf(row: ContainerdSnapshotRow): StorageObjectRow {
    if (row.object_id !== null) return this.store.objects.get(row.object_id)!;
    if (row.parent === null)
      throw new InternalError(`view ${row.key} has neither a volume nor a parent`);
    return this.committedParent(row.parent).volume;
  }

  /** Its mounts; a volume of its own is attached first where the backend needs that. */
  private async mountsFor(row: ContainerdSnapshotRow): Promise<SnapshotMount[]> {
    const volume = this.volumeOf(row);
    if (row.object_id !== null) await attachForMounts(this.deps.objects, volume);
    return mountsOf(this.deps.objects, volume, row.kind === 'view');
  }

  /** Prepare (active) or View: a new snapshot of `parent` ('' for none), returning its mounts. */
  async create(
    kind: 'active' | 'view',
    key: string,
    parent: string,
    labels: Record<string, string>,
  ): Promise<SnapshotMount[]> {
    checkKey('key', key);
    checkLabels(labels);
    const base = parent === '' ? null : this.committedParent(parent);
    this.refuseHeldLayer(labels[snapshotRefLabel], parent);
    if (this.store.containerdSnapshots.byKey(key) !== undefined) throw alreadyExists(key);
    const fields = { key, kind, parent: base === null ? null : parent, blobId: null, labels };
    if (kind === 'view' && base !== null && !viewNeedsOwnVolume(this.deps.objects.backend)) {
      // Nothing to make: the view reads its parent's sealed volume.
      const row = this.store.tx(() => {
        if (this.store.containerdSnapshots.byKey(key) !== undefined) throw alreadyExists(key);
        return this.store.containerdSnapshots.create(
          { ...fields, objectId: null, state: 'ready' },
          null,
        );
      });
      return this.mountsFor(row);
    }
    let row: ContainerdSnapshotRow | undefined;
    try {
      await this.deps.objects.createWritable(
        { parent: base?.volume ?? null, sizeBytes: this.deps.freshVolumeBytes },
        (volume) => {
          // A shared commit: calls of the same turn ran first (one may have removed the parent).
          if (base !== null) this.committedParent(parent);
          if (this.store.containerdSnapshots.byKey(key) !== undefined) throw alreadyExists(key);
          row = this.store.containerdSnapshots.create(
            { ...fields, objectId: volume.id, state: 'preparing' },
            this.deps.owner,
          );
        },
        () => {
          this.store.containerdSnapshots.transition(row!.id, 'ready');
        },
      );
      failpoint('snapshotter:prepare:ready');
      const mounts = await this.mountsFor(this.store.containerdSnapshots.get(row!.id)!);
      this.deps.logger.info('snapshot prepared', { key, kind, parent, object: row!.object_id });
      return mounts;
    } catch (err) {
      if (row !== undefined) await this.undoPrepare(row, err);
      throw err;
    }
  }

  /**
   * containerd's remote-snapshotter protocol: a Prepare labelled with the
   * chain ID it will commit to gets AlreadyExists when that layer is held
   * already on the same parent; containerd then finds it by that label in
   * List and records it instead of fetching and applying the layer.
   */
  private refuseHeldLayer(chainId: string | undefined, parent: string): void {
    if (chainId === undefined || !isChainId(chainId)) return;
    const want = parent === '' ? null : parent;
    if (this.store.containerdSnapshots.byKey(chainId) === undefined) {
      // Record nothing for a layer held on another parent (containerd then unpacks it as usual).
      const blob = this.store.blobs.readyByChain(chainId);
      if (blob === undefined) return;
      const parentBlob =
        blob.parent_blob_id === null ? null : this.store.blobs.get(blob.parent_blob_id);
      const parentChain = parentBlob === null ? null : (parentBlob?.chain_id ?? undefined);
      if (parentChain !== want) return;
    }
    const held = this.layerSnapshot(chainId);
    if (held !== undefined && held.parent === want)
      throw new UsageError('ALREADY_EXISTS', `layer ${chainId} is held already (${held.key})`);
  }

  /**
   * The committed snapshot named by the bare chain ID of a ready layer
   * (whether containerd or an S3 upload put it there), recorded on first use
   * with its parents so that it holds the layer like any committed snapshot.
   */
  private layerSnapshot(chainId: string): ContainerdSnapshotRow | undefined {
    if (!isChainId(chainId)) return undefined;
    const { store } = this;
    const record = (id: string): ContainerdSnapshotRow | undefined => {
      const row = store.containerdSnapshots.byKey(id);
      if (row !== undefined) return row.kind === 'committed' ? row : undefined;
      const blob = store.blobs.readyByChain(id);
      const volume = blob?.volume_id == null ? undefined : store.objects.get(blob.volume_id);
      if (blob === undefined || volume?.state !== 'sealed') return undefined;
      let parent: ContainerdSnapshotRow | undefined;
      if (blob.parent_blob_id !== null) {
        const parentChain = store.blobs.get(blob.parent_blob_id)?.chain_id;
        parent = parentChain == null ? undefined : record(parentChain);
        if (parent === undefined) return undefined;
      }
      const labels = { [snapshotRefLabel]: id };
      return store.containerdSnapshots.create(
        {
          key: id,
          kind: 'committed',
          parent: parent?.key ?? null,
          objectId: null,
          blobId: blob.id,
          labels,
          state: 'ready',
        },
        null,
      );
    };
    return store.tx(() => record(chainId));
  }

  /** A failed Prepare releases the volume it started and forgets the key. */
  private async undoPrepare(row: ContainerdSnapshotRow, cause: unknown): Promise<void> {
    // Not there: the intent's (shared) commit failed, so nothing was recorded or made.
    const now = this.store.containerdSnapshots.get(row.id);
    if (now === undefined || now.key !== row.key) return;
    try {
      await this.removeRow(now);
    } catch (err) {
      this.deps.logger.error('could not release a failed prepare; recovery retries it', {
        key: row.key,
        error: errorMessage(err),
        cause: errorMessage(cause),
      });
    }
  }

  async mounts(key: string): Promise<SnapshotMount[]> {
    const row = this.settled(key);
    if (row.kind === 'committed')
      throw new UsageError('NOT_READY', `snapshot ${key} is committed: it has no mounts`);
    if (row.state !== 'ready') throw new UsageError('NOT_READY', `snapshot ${key} is ${row.state}`);
    return this.mountsFor(row);
  }

  /** Seal the active snapshot `key` into the committed snapshot `name`. */
  async commit(name: string, key: string, labels: Record<string, string>): Promise<void> {
    checkKey('name', name);
    checkLabels(labels);
    const active = this.settled(key);
    if (active.kind !== 'active')
      throw new UsageError('NOT_READY', `snapshot ${key} is ${active.kind}, not active`);
    if (this.store.containerdSnapshots.byKey(name) !== undefined) throw alreadyExists(name);
    const intent = this.store.tx(() => {
      const now = this.store.containerdSnapshots.get(active.id)!;
      if (now.state !== 'ready')
        throw new UsageError('NOT_READY', `snapshot ${key} is ${now.state}`);
      if (this.store.containerdSnapshots.byKey(name) !== undefined) throw alreadyExists(name);
      return this.store.containerdSnapshots.transition(active.id, 'committing', {
        owner: this.deps.owner,
        commitName: name,
      });
    });
    failpoint('snapshotter:commit:intent');
    try {
      await this.finishCommit(intent, labels);
    } catch (err) {
      // The active snapshot is as it was: containerd may retry or remove it.
      this.store.tx(() => {
        const now = this.store.containerdSnapshots.get(active.id)!;
        if (now.state === 'committing')
          this.store.containerdSnapshots.transition(active.id, 'ready', { commitName: null });
      });
      throw err;
    }
  }

  /**
   * The commit's work from its intent on, idempotent: seal the volume, and in
   * the seal's transaction record the layer (or share the one already ready
   * under that chain ID) and the committed snapshot in place of the active one.
   */
  private async finishCommit(
    active: ContainerdSnapshotRow,
    labels: Record<string, string>,
  ): Promise<void> {
    const { store, objects } = this.deps;
    const name = active.commit_name!;
    const volume = store.objects.get(active.object_id!)!;
    const chainId = chainIdOfName(name);
    let duplicate = false;
    await objects.seal(volume, () => {
      if (store.containerdSnapshots.byKey(name) !== undefined) throw alreadyExists(name);
      const parentBlob =
        active.parent === null
          ? undefined
          : store.blobs.get(store.containerdSnapshots.byKey(active.parent)?.blob_id ?? -1);
      const same = chainId === null ? undefined : store.blobs.readyByChain(chainId);
      let blobId: number;
      if (same !== undefined) {
        blobId = same.id;
        duplicate = true;
      } else {
        const blob = store.blobs.create(volume.id, null, {
          chainId,
          diffId: null,
          parentBlobId: parentBlob?.id ?? null,
          depth: (parentBlob?.depth ?? 0) + 1,
        });
        store.blobs.setStatus(blob.id, 'ready');
        blobId = blob.id;
      }
      store.containerdSnapshots.transition(active.id, 'removed');
      store.containerdSnapshots.create(
        {
          key: name,
          kind: 'committed',
          parent: active.parent,
          objectId: null,
          blobId,
          labels,
          state: 'ready',
        },
        null,
      );
    });
    // The same layer was ready already (an image thinrelay delivered, another namespace's commit).
    if (duplicate) await objects.remove(store.objects.get(volume.id)!);
    this.deps.logger.info('snapshot committed', { name, key: active.key, chainId, duplicate });
  }

  async remove(key: string): Promise<void> {
    const row = this.settled(key);
    if (row.kind === 'committed' && this.store.containerdSnapshots.childCount(key) > 0)
      throw new UsageError('IN_USE', `snapshot ${key} has snapshots based on it`);
    if (row.state !== 'ready' && isOwnerAlive(row.owner))
      throw new UsageError('NOT_READY', `snapshot ${key} is ${row.state}`);
    await this.removeRow(row);
  }

  /** Intent, then release what the snapshot holds; idempotent from any state. */
  private async removeRow(row: ContainerdSnapshotRow): Promise<void> {
    const { store, objects } = this.deps;
    if (row.state !== 'removing')
      store.tx(() =>
        store.containerdSnapshots.transition(row.id, 'removing', { owner: this.deps.owner }),
      );
    failpoint('snapshotter:remove:intent');
    if (row.object_id !== null) {
      const volume = store.objects.get(row.object_id);
      if (volume !== undefined && volume.state !== 'removed') await objects.remove(volume);
    }
    store.tx(() => store.containerdSnapshots.transition(row.id, 'removed'));
    // A layer nobody else holds (no image, no other containerd snapshot) goes with it.
    if (row.blob_id !== null) {
      const volume = releaseBlobIfUnused({ store }, row.blob_id);
      if (volume !== undefined) await objects.remove(volume);
    }
    this.deps.logger.info('snapshot removed', { key: row.key, kind: row.kind });
  }

  stat(key: string): SnapshotInfo {
    return this.info(this.settled(key));
  }

  list(): SnapshotInfo[] {
    return this.store.containerdSnapshots
      .listLive()
      .filter((r) => r.state !== 'preparing' && r.state !== 'removing')
      .map((r) => this.info(r));
  }

  /** Labels are the only mutable field: `paths` empty (all), "labels", or "labels.NAME". */
  update(key: string, labels: Record<string, string>, paths: string[]): SnapshotInfo {
    checkLabels(labels);
    const updated = this.store.tx(() => {
      const row = this.settled(key);
      const current = JSON.parse(row.labels) as Record<string, string>;
      let next: Record<string, string>;
      if (paths.length === 0 || paths.includes('labels')) next = { ...labels };
      else {
        next = { ...current };
        for (const p of paths) {
          if (!p.startsWith('labels.'))
            throw new UsageError('USAGE', `cannot update field ${p} of a snapshot`);
          const label = p.slice('labels.'.length);
          if (labels[label] === undefined) delete next[label];
          else next[label] = labels[label];
        }
      }
      return this.store.containerdSnapshots.setLabels(row.id, next);
    });
    return this.info(updated);
  }

  /** Bytes the snapshot's own volume takes (a view of a parent owns none). */
  async usage(key: string): Promise<{ size: number; inodes: number }> {
    const row = this.settled(key);
    let volume: StorageObjectRow | undefined;
    if (row.object_id !== null) volume = this.store.objects.get(row.object_id);
    else if (row.blob_id !== null) {
      const blob = this.store.blobs.get(row.blob_id);
      volume = blob?.volume_id == null ? undefined : this.store.objects.get(blob.volume_id);
    }
    if (volume === undefined || volume.state === 'removed') return { size: 0, inodes: 0 };
    return { size: await bytesUsed(this.deps.objects, volume), inodes: 0 };
  }

  /**
   * Finish or undo what a dead process left (run after reconcile at start):
   * a Prepare whose volume was made becomes ready, one whose volume reconcile
   * discarded is forgotten; a Commit is finished; a Remove is finished.
   */
  async recover(): Promise<number> {
    let finished = 0;
    for (const row of this.store.containerdSnapshots.listIntents()) {
      if (row.owner !== this.deps.owner && isOwnerAlive(row.owner)) continue;
      if (!this.store.containerdSnapshots.claim(row.id, row.owner, this.deps.owner)) continue;
      const mine = this.store.containerdSnapshots.get(row.id)!;
      try {
        if (mine.state === 'committing')
          await this.finishCommit(mine, JSON.parse(mine.labels) as Record<string, string>);
        else if (mine.state === 'preparing') {
          const volume =
            mine.object_id === null ? undefined : this.store.objects.get(mine.object_id);
          if (volume?.state === 'writable')
            this.store.tx(() => this.store.containerdSnapshots.transition(mine.id, 'ready'));
          else await this.removeRow(mine);
        } else await this.removeRow(mine);
        finished++;
        this.deps.logger.info('snapshotter recovered an interrupted change', {
          key: row.key,
          state: row.state,
        });
      } catch (err) {
        this.deps.logger.error('snapshotter could not recover a change; will retry next start', {
          key: row.key,
          state: row.state,
          error: errorMessage(err),
        });
      }
    }
    return finished;
  }
}
