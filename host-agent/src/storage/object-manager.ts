/**
 * Storage operations with their intents: every side effect on the backend is
 * preceded by a committed row saying what is about to happen and followed by
 * a commit of the outcome. This is the only code that calls the backend's
 * mutating methods, so the intent rule holds everywhere by construction.
 */
import { InternalError, NotFoundError, errorMessage as errorText } from '../errors.js';
import { failpoint } from '../failpoints.js';
import type { StateStore } from '../store/index.js';
import type { StorageObjectRow } from '../store/objects.js';
import type { Logger } from '../log.js';
import type { CloneSpec, ObjectSpec, SnapshotSpec, StorageBackend } from './backend.js';
import { objectName } from './names.js';
import { isOwnerAlive } from '../store/owner.js';
import { objectTransitions, type ObjectState } from '../store/states.js';

/** What one storage change does, in order (see ObjectManager.change). */
interface ChangeStep<T> {
  /** The intent state, committed (with `also`) before the side effect; omitted when already recorded. */
  trying?: { state: ObjectState; also?: () => void };
  /** Fail point right after the intent. */
  atIntent?: string;
  /** The side effect: the backend operation. */
  operation: () => Promise<T>;
  /** Fail point right after the side effect, before its outcome is committed. */
  done?: string;
  /** The resting state recorded once the operation succeeded. */
  success: ObjectState;
  /** Who holds the object in that state (default: nobody). */
  owner?: string | null;
  /** The device path to record, from the operation's result (default: unchanged). */
  devicePath?: (result: T) => string | null;
  /** Runs in the transaction that records the resting state. */
  commit?: (result: T) => void;
  /** Record the resting state in a shared commit (StateStore.txShared) with the calls of this turn. */
  shareCommit?: boolean;
}

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

  /**
   * One storage change, the way every method here makes it: the intent state
   * committed before the side effect (unless the caller's intent transaction
   * already recorded it), a fail point, the backend operation, a fail point,
   * then the resting state and the caller's `commit` in one transaction. A
   * failed operation leaves the row in its intent state for recovery and
   * records the error on it (`last_error`, cleared by the next transition).
   */
  private async change<T>(row: StorageObjectRow, step: ChangeStep<T>): Promise<T> {
    if (step.trying !== undefined) {
      const { state, also } = step.trying;
      this.store.tx(() => {
        also?.();
        this.store.objects.transition(row.id, state, { owner: this.owner });
      });
    }
    if (step.atIntent !== undefined) failpoint(step.atIntent);
    let result: T;
    try {
      result = await step.operation();
    } catch (err) {
      this.recordError(row.id, err);
      throw err;
    }
    if (step.done !== undefined) failpoint(step.done);
    const outcome = (): void => {
      const now = this.store.objects.get(row.id)!;
      // Sealing a sealed volume again (recovery finishing a seal) is no state change.
      if (now.state !== step.success || objectTransitions[step.success].includes(step.success))
        this.store.objects.transition(row.id, step.success, {
          owner: step.owner ?? null,
          devicePath: step.devicePath?.(result),
        });
      step.commit?.(result);
    };
    if (step.shareCommit === true) await this.store.txShared(outcome);
    else this.store.tx(outcome);
    return result;
  }

  /** Best effort: the operation's own error is what the caller sees. */
  private recordError(id: number, err: unknown): void {
    try {
      this.store.tx(() => this.store.objects.recordError(id, errorText(err)));
    } catch (recordErr) {
      this.logger.warn('could not record a storage error on its row', {
        object: id,
        error: errorText(recordErr),
      });
    }
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
      throw new InternalError(`storage object ${row.id} is not a snapshot`);
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
    await this.change(volume, {
      atIntent: 'volume:intent',
      operation: () => this.backend.createVolume(this.spec(volume)),
      done: 'volume:created',
      success: 'unpacking',
      owner: this.owner,
    });
    const { mountpoint } = await this.backend.mountForUnpack(this.spec(volume));
    failpoint('volume:mounted');
    return { volume: this.store.objects.get(volume.id)!, mountpoint };
  }

  cloneSpec(row: StorageObjectRow): CloneSpec {
    if (row.kind !== 'volume' || row.parent_id === null) {
      throw new InternalError(`storage object ${row.id} is not a cloned volume`);
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
      throw new InternalError(
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
    await this.change(volume, {
      atIntent: 'layer:clone-intent',
      operation: () => this.backend.createVolumeFrom(this.cloneSpec(volume)),
      done: 'layer:cloned',
      success: 'unpacking',
      owner: this.owner,
    });
    const { mountpoint } = await this.backend.mountForApply(this.spec(volume));
    return { volume: this.store.objects.get(volume.id)!, mountpoint };
  }

  /**
   * Intent, then a volume a client (containerd) mounts and writes itself:
   * a writable clone of the sealed volume `parent`, or a fresh empty ext4
   * when there is none. It rests `writable`, attached and mounted by nobody
   * here. `onIntent` runs in the intent's transaction, `commit` in the one
   * that records it writable. Both transactions are shared commits
   * (StateStore.txShared): a burst of concurrent calls (containerd's
   * Prepares) pays one fsync for its intents and one for its outcomes, not
   * two per call; the clone still starts only once its own intent is durable.
   */
  async createWritable(
    o: { parent: StorageObjectRow | null; sizeBytes: number },
    onIntent: (volume: StorageObjectRow) => void,
    commit: () => void,
  ): Promise<StorageObjectRow> {
    if (o.parent !== null && o.parent.state !== 'sealed')
      throw new InternalError(
        `volume ${o.parent.id} is ${o.parent.state}, not sealed: it cannot be cloned`,
      );
    // A clone is its parent's size; `sizeBytes` sizes a fresh one.
    const sizeBytes = o.parent?.size_bytes ?? o.sizeBytes;
    const volume = await this.store.txShared(() => {
      // Again in the transaction: another call may have changed the parent before it ran.
      const parent = o.parent === null ? null : this.store.objects.get(o.parent.id);
      if (parent !== null && parent?.state !== 'sealed')
        throw new NotFoundError(
          'NOT_FOUND',
          `volume ${o.parent!.id} is ${parent?.state ?? 'gone'}, not sealed: it cannot be cloned`,
        );
      const row = this.store.objects.createIntent(
        {
          kind: 'volume',
          backend: this.backend.name,
          sizeBytes,
          parentId: o.parent?.id ?? null,
          thinId: this.nextThinId(),
        },
        this.owner,
      );
      onIntent(row);
      return row;
    });
    await this.change(volume, {
      atIntent: 'writable:intent',
      operation: async () => {
        if (o.parent !== null) return this.backend.createVolumeFrom(this.cloneSpec(volume));
        // A fresh filesystem: made the way an unpack's is, then released for the client.
        await this.backend.createVolume(this.spec(volume));
        await this.backend.mountForUnpack(this.spec(volume));
        await this.backend.seal(this.spec(volume));
      },
      done: 'writable:created',
      success: 'writable',
      commit,
      shareCommit: true,
    });
    return this.store.objects.get(volume.id)!;
  }

  /** The unpacked content is on stable storage. */
  async markUnpacked(volume: StorageObjectRow, commit: () => void): Promise<void> {
    await this.change(volume, {
      operation: () => this.backend.flush(this.spec(volume)),
      done: 'volume:flushed',
      success: 'unpacked',
      owner: this.owner,
      commit,
    });
  }

  /** Detach: a read-only origin. `commit` runs in the transaction that records it sealed. */
  async seal(volume: StorageObjectRow, commit: () => void = () => undefined): Promise<void> {
    await this.change(volume, {
      operation: () => this.backend.seal(this.spec(volume)),
      done: 'seal:detached',
      success: 'sealed',
      commit,
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
    await this.change(snap, {
      atIntent: 'snapshot:intent',
      operation: async () => {
        try {
          await this.backend.createSnapshot(this.snapshotSpec(snap));
        } catch (err) {
          // `remove --force` of the image took this snapshot (or its origin) away meanwhile.
          const now = this.store.objects.get(snap.id);
          const origin = this.store.objects.get(o.volume.id);
          if (
            now?.owner !== this.owner ||
            origin?.state === 'removing' ||
            origin?.state === 'removed'
          )
            throw new NotFoundError(
              'NOT_FOUND',
              `image ${o.imageId} was removed while snapshot ${snap.id} was being created`,
              'see `thinrelay images`; process the image again to use it',
            );
          throw err;
        }
      },
      done: 'snapshot:copied',
      success: 'inactive',
    });
    return this.store.objects.get(snap.id)!;
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
    const devicePath = await this.change(snap, {
      trying:
        snap.state === 'inactive'
          ? { state: 'activating', also: () => this.refuseRemovedImage(snap.image_id) }
          : undefined,
      atIntent: 'activate:intent',
      operation: () => this.backend.activate(this.snapshotSpec(snap)),
      done: 'activate:attached',
      success: 'active',
      devicePath: (path) => path,
      commit: (path) => {
        this.store.snapshots.activated(snap.id, snap.image_id!, path);
        this.store.images.touchActivated(snap.image_id!);
      },
    });
    this.logger.info('snapshot active', { object: snap.id, devicePath });
    return devicePath;
  }

  async deactivate(snap: StorageObjectRow): Promise<void> {
    const deactivated = (): void => this.store.snapshots.deactivated(snap.id);
    if (snap.state === 'deactivating') this.store.tx(deactivated);
    await this.change(snap, {
      trying:
        snap.state === 'deactivating' ? undefined : { state: 'deactivating', also: deactivated },
      operation: () => this.backend.deactivate(this.spec(snap)),
      success: 'inactive',
      devicePath: () => null,
    });
    this.logger.info('snapshot inactive', { object: snap.id });
  }

  /** Keep a failed volume for inspection: released from mounts and devices, backing kept. */
  /**
   * Detach an unpacked volume (unmounted, read-only origin) without sealing
   * it: its state stays `unpacked`, its layer unshared. A flat tar held for a
   * new signature rests so (trust/); seal() finishes it once one verifies.
   */
  async detachUnpacked(volume: StorageObjectRow): Promise<void> {
    await this.backend.seal(this.spec(volume));
  }

  async keep(volume: StorageObjectRow): Promise<void> {
    await this.change(volume, {
      operation: () => this.backend.seal(this.spec(volume)),
      success: 'kept',
    });
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
    await this.change(row, {
      operation: () => this.backend.remove(this.spec(row)),
      success: 'removed',
      devicePath: () => null,
    });
    this.logger.info('removed storage object', { object: row.id, kind: row.kind });
    return true;
  }
}
