/**
 * Storage operations with their intents: every side effect on the backend is
 * preceded by a committed row saying what is about to happen and followed by
 * a commit of the outcome. This is the only code that calls the backend's
 * mutating methods, so the intent rule holds everywhere by construction.
 */
import { NotFoundError } from '../errors.js';
import { failpoint } from '../failpoints.js';
import type { StateStore } from '../store/index.js';
import type { StorageObjectRow } from '../store/objects.js';
import type { Logger } from '../log.js';
import type { CloneSpec, ObjectSpec, SnapshotSpec, StorageBackend } from './backend.js';
import { objectName } from './names.js';
import { isOwnerAlive } from '../store/owner.js';

export class ObjectManager {
  constructor(
    private readonly store: StateStore,
    readonly backend: StorageBackend,
    private readonly owner: string,
    private readonly logger: Logger,
  ) {}

  /** The same manager logging through `logger` (e.g. one carrying an image's key and job). */
  withLogger(logger: Logger): ObjectManager {
    return new ObjectManager(this.store, this.backend, this.owner, logger);
  }

  /** A single-row transition in its own transaction (which may use the space reserve). */
  private transition(
    id: number,
    to: StorageObjectRow['state'],
    opts: Parameters<StateStore['objects']['transition']>[2] = {},
  ): StorageObjectRow {
    return this.store.tx(() => this.store.objects.transition(id, to, opts));
  }

  spec(row: StorageObjectRow): ObjectSpec {
    return {
      kind: row.kind,
      name: objectName(row.kind, row.id),
      sizeBytes: row.size_bytes,
      thinId: row.thin_id,
    };
  }

  snapshotSpec(row: StorageObjectRow): SnapshotSpec {
    if (row.kind !== 'snapshot' || row.parent_id === null) {
      throw new Error(`storage object ${row.id} is not a snapshot`);
    }
    const origin = this.store.objects.get(row.parent_id)!;
    return { ...this.spec(row), kind: 'snapshot', origin: this.spec(origin) };
  }

  /** The highest thin id reconcile found in the pool (a restored store may know fewer). */
  private poolThinIdFloor = 0;

  /** Reconcile saw these thin ids in the pool: never allocate at or below them. */
  notePoolThinIds(maxThinId: number): void {
    this.poolThinIdFloor = Math.max(this.poolThinIdFloor, maxThinId);
  }

  /** A new thin id: above every id the store has ever recorded or the pool holds (never reused). */
  private nextThinId(): number | null {
    return this.backend.usesThinIds
      ? Math.max(this.store.objects.maxThinId(), this.poolThinIdFloor) + 1
      : null;
  }

  /**
   * Intent, then create the backing and mount a fresh filesystem for the
   * unpack. `onIntent` runs inside the intent's transaction (the blob row).
   */
  async createVolumeForUnpack(
    o: { sizeBytes: number; jobId: number },
    onIntent: (volume: StorageObjectRow) => void,
  ): Promise<{ volume: StorageObjectRow; mountpoint: string }> {
    const volume = this.store.tx(() => {
      const row = this.store.objects.createIntent(
        {
          kind: 'volume',
          backend: this.backend.name,
          sizeBytes: o.sizeBytes,
          jobId: o.jobId,
          thinId: this.nextThinId(),
        },
        this.owner,
      );
      onIntent(row);
      return row;
    });
    this.logger.debug('volume intent', { object: volume.id });
    failpoint('volume:intent');
    await this.backend.createVolume(this.spec(volume));
    failpoint('volume:created');
    this.transition(volume.id, 'unpacking', { owner: this.owner });
    const { mountpoint } = await this.backend.mountForUnpack(this.spec(volume));
    failpoint('volume:mounted');
    return { volume: this.store.objects.get(volume.id)!, mountpoint };
  }

  cloneSpec(row: StorageObjectRow): CloneSpec {
    if (row.kind !== 'volume' || row.parent_id === null) {
      throw new Error(`storage object ${row.id} is not a cloned volume`);
    }
    const origin = this.store.objects.get(row.parent_id)!;
    return { ...this.spec(row), kind: 'volume', origin: this.spec(origin) };
  }

  /**
   * Intent, then a writable clone of the sealed volume `parent` (the layer
   * below), mounted without mkfs so the next layer is applied on top of it.
   * The clone is `sizeBytes` when the parent is smaller (its filesystem
   * grown to fit; the intent records the size, so recovery and the snapshots
   * above know it), else the parent's size: never shrunk.
   * `onIntent` runs inside the intent's transaction (the layer's blob row).
   */
  async cloneVolumeForApply(
    o: { parent: StorageObjectRow; jobId: number; sizeBytes?: number },
    onIntent: (volume: StorageObjectRow) => void,
  ): Promise<{ volume: StorageObjectRow; mountpoint: string }> {
    if (o.parent.state !== 'sealed')
      throw new Error(
        `volume ${o.parent.id} is ${o.parent.state}, not sealed: it cannot be cloned`,
      );
    const sizeBytes = Math.max(o.parent.size_bytes, o.sizeBytes ?? 0);
    const volume = this.store.tx(() => {
      const row = this.store.objects.createIntent(
        {
          kind: 'volume',
          backend: this.backend.name,
          sizeBytes,
          parentId: o.parent.id,
          jobId: o.jobId,
          thinId: this.nextThinId(),
        },
        this.owner,
      );
      onIntent(row);
      return row;
    });
    this.logger.debug('layer volume intent', { object: volume.id, parent: o.parent.id });
    if (sizeBytes > o.parent.size_bytes)
      this.logger.info('layer volume grown beyond its parent', {
        object: volume.id,
        parent: o.parent.id,
        fromBytes: o.parent.size_bytes,
        toBytes: sizeBytes,
      });
    failpoint('layer:clone-intent');
    await this.backend.createVolumeFrom(this.cloneSpec(volume));
    failpoint('layer:cloned');
    this.transition(volume.id, 'unpacking', { owner: this.owner });
    const { mountpoint } = await this.backend.mountForApply(this.spec(volume));
    return { volume: this.store.objects.get(volume.id)!, mountpoint };
  }

  /** The unpacked content is on stable storage. */
  async markUnpacked(volume: StorageObjectRow, commit: () => void): Promise<void> {
    await this.backend.flush(this.spec(volume));
    failpoint('volume:flushed');
    this.store.tx(() => {
      this.transition(volume.id, 'unpacked', { owner: this.owner });
      commit();
    });
  }

  /** Detach: a read-only origin. `commit` runs in the transaction that records it sealed. */
  async seal(volume: StorageObjectRow, commit: () => void = () => undefined): Promise<void> {
    await this.backend.seal(this.spec(volume));
    failpoint('seal:detached');
    this.store.tx(() => {
      if (this.store.objects.get(volume.id)!.state !== 'sealed')
        this.transition(volume.id, 'sealed', { owner: null });
      commit();
    });
  }

  async createSnapshot(o: {
    volume: StorageObjectRow;
    imageId: number;
    jobId: number | null;
  }): Promise<StorageObjectRow> {
    const snap = this.store.tx(() => {
      this.refuseRemovedImage(o.imageId);
      return this.store.objects.createIntent(
        {
          kind: 'snapshot',
          backend: this.backend.name,
          sizeBytes: o.volume.size_bytes,
          parentId: o.volume.id,
          imageId: o.imageId,
          jobId: o.jobId,
          thinId: this.nextThinId(),
        },
        this.owner,
      );
    });
    failpoint('snapshot:intent');
    try {
      await this.backend.createSnapshot(this.snapshotSpec(snap));
    } catch (err) {
      // `remove --force` of the image took this snapshot (or its origin) away meanwhile.
      const now = this.store.objects.get(snap.id);
      const origin = this.store.objects.get(o.volume.id);
      if (now?.owner !== this.owner || origin?.state === 'removing' || origin?.state === 'removed')
        throw new NotFoundError(
          'NOT_FOUND',
          `image ${o.imageId} was removed while snapshot ${snap.id} was being created`,
          'see `thinrelay images`; process the image again to use it',
        );
      throw err;
    }
    failpoint('snapshot:copied');
    return this.transition(snap.id, 'inactive', { owner: null });
  }

  /**
   * An image being released (removed, retired, evicted) takes no new
   * activation. Checked in the activation's intent transaction, and the
   * release refuses while an activation's intent stands: whichever commits
   * first wins, and the other fails cleanly (pool/release.ts).
   */
  private refuseRemovedImage(imageId: number | null): void {
    const image = imageId === null ? undefined : this.store.images.get(imageId);
    if (image?.status === 'removed')
      throw new NotFoundError(
        'NOT_FOUND',
        `image ${image.id} (${image.key}) was ${image.removed_reason ?? 'removed'}: it takes no new snapshot`,
        'process the image again to use it (thinrelay process-image)',
      );
  }

  async activate(snap: StorageObjectRow): Promise<string> {
    if (snap.state === 'inactive')
      this.store.tx(() => {
        this.refuseRemovedImage(snap.image_id);
        this.store.objects.transition(snap.id, 'activating', { owner: this.owner });
      });
    failpoint('activate:intent');
    const devicePath = await this.backend.activate(this.snapshotSpec(snap));
    failpoint('activate:attached');
    this.store.tx(() => {
      this.transition(snap.id, 'active', { owner: null, devicePath });
      this.store.snapshots.activated(snap.id, snap.image_id!, devicePath);
      this.store.images.touchActivated(snap.image_id!);
    });
    this.logger.info('snapshot active', { object: snap.id, devicePath });
    return devicePath;
  }

  async deactivate(snap: StorageObjectRow): Promise<void> {
    this.store.tx(() => {
      if (snap.state !== 'deactivating')
        this.transition(snap.id, 'deactivating', { owner: this.owner });
      this.store.snapshots.deactivated(snap.id);
    });
    await this.backend.deactivate(this.spec(snap));
    this.transition(snap.id, 'inactive', { owner: null, devicePath: null });
    this.logger.info('snapshot inactive', { object: snap.id });
  }

  /** Keep a failed volume for inspection: released from mounts and devices, backing kept. */
  async keep(volume: StorageObjectRow): Promise<void> {
    await this.backend.seal(this.spec(volume));
    this.transition(volume.id, 'kept', { owner: null });
    this.logger.warn('kept failed volume for inspection', {
      object: volume.id,
      name: this.spec(volume).name,
    });
  }

  /**
   * Intent, then release everything for the object. Decided on the row as it
   * is now, not as the caller read it: another process may have released it
   * meanwhile (two passes releasing one image), or be releasing it — then
   * this call leaves it to that process and returns false.
   */
  async remove(row: StorageObjectRow): Promise<boolean> {
    const mine = this.store.tx(() => {
      const now = this.store.objects.get(row.id);
      if (now === undefined || now.state === 'removed') return false;
      if (now.state === 'removing') {
        if (now.owner !== null && now.owner !== this.owner && isOwnerAlive(now.owner)) return false;
        if (now.owner !== this.owner) this.store.objects.claim(row.id, now.owner, this.owner);
      } else this.store.objects.transition(row.id, 'removing', { owner: this.owner });
      this.store.snapshots.deactivated(row.id);
      return true;
    });
    if (!mine) return false;
    await this.backend.remove(this.spec(row));
    this.transition(row.id, 'removed', { owner: null, devicePath: null });
    this.logger.info('removed storage object', { object: row.id, kind: row.kind });
    return true;
  }
}
