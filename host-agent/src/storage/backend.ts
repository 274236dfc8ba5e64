/**
 * The storage backend seam. A backend turns recorded intents into real
 * devices; it keeps no state of its own (the store does) and every method is
 * idempotent, so recovery can call it again after a crash at any instant.
 * Implementations: loop (sparse files + loop devices) and devmapper (thin pool).
 */
import type { ObjectKind } from '../store/objects.js';

export type BackendName = 'loop' | 'devmapper';

export interface ObjectSpec {
  kind: ObjectKind;
  /** Derived from the object's id (see names.ts). */
  name: string;
  sizeBytes: number;
  /** devmapper: the thin device id allocated from the store; loop: null. */
  thinId: number | null;
}

export interface SnapshotSpec extends ObjectSpec {
  kind: 'snapshot';
  origin: ObjectSpec;
}

/** A volume made as a writable clone of a sealed volume (the layer below it). */
export interface CloneSpec extends ObjectSpec {
  kind: 'volume';
  origin: ObjectSpec;
}

/** What the backend really holds right now, for reconcile and gc. */
export interface BackendInventory {
  /**
   * Objects whose backing exists: by name (loop files) or by thin id alone
   * (a thin pool's metadata knows ids, not names).
   */
  objects: { name: string | null; thinId: number | null }[];
  /** Attached block devices, by object name (and the thin id they map, if any). */
  attached: { name: string; devicePath: string; thinId?: number }[];
  /** Mounts of our objects, by object name. */
  mounted: { name: string; mountpoint: string }[];
  /**
   * Things in our namespace that match no object name (partial copies, foreign files).
   * `owned`: only thinrelay makes things there (a dm device with the state dir's prefix),
   * so reconcile removes it even when its name maps no object; otherwise such a stray
   * (a file someone put in the pool dir) is left alone.
   */
  strays: { description: string; path: string; owned?: boolean }[];
}

export interface PoolStatus {
  backend: BackendName;
  /** Where the pool lives (directory or dm pool name). */
  location: string;
  exists: boolean;
  dataTotalBytes: number;
  /** Bytes the pool's data takes, blocks shared between volumes counted once. */
  dataUsedBytes: number;
  /** loop: the sum of each volume's own allocation (what `du` adds up). */
  dataReferencedBytes?: number;
  /** loop: bytes in extents reflinked volumes share (in dataUsedBytes once). */
  dataSharedBytes?: number;
  metadataTotalBytes: number | null;
  metadataUsedBytes: number | null;
  /** Space a new volume can still take. */
  freeBytes: number;
  /** null: there is no pool (yet) to judge; `exists` false and `detail` say why. */
  healthy: boolean | null;
  detail: string;
}

export interface ReadinessCheck {
  name: string;
  ok: boolean;
  detail: string;
  /** How to fix it, when not ok. */
  hint?: string;
  /**
   * Reported, but not a reason to refuse to start: the agent copes with it
   * itself (low space: it reconciles and frees, and reports degraded).
   */
  advisory?: boolean;
}

/** Something start-up or reconcile did, for the log and gc's report. */
export interface BackendAction {
  object: string;
  action: string;
  reason: string;
}

export interface StorageBackend {
  readonly name: BackendName;
  /** Whether object ids must be backed by backend ids (thin ids) allocated in the store. */
  readonly usesThinIds: boolean;

  /**
   * Bring the backend up on start, before inventory: devmapper reloads a pool
   * it created after a reboot and finishes a pool transaction a dead process
   * left open. Idempotent.
   */
  prepare(): Promise<BackendAction[]>;

  /** Environment checks (tools, kernel features, pool presence) for doctor and start-up. */
  checkReadiness(): Promise<ReadinessCheck[]>;

  createPool(opts: { sizeBytes?: number; devices?: string[] }): Promise<PoolStatus>;
  destroyPool(): Promise<void>;
  poolStatus(): Promise<PoolStatus>;
  /** Throws EnvironmentError LOW_SPACE when the pool cannot take `bytes` more. */
  ensureSpace(bytes: number): Promise<void>;

  /** Create the backing of a new, empty volume. Fails if it already exists. */
  createVolume(volume: ObjectSpec): Promise<void>;
  /** Make a fresh ext4 on the volume and mount it (nosuid,nodev) for the unpack. */
  mountForUnpack(volume: ObjectSpec): Promise<{ mountpoint: string }>;
  /**
   * Create a volume as a writable clone of a sealed volume, holding its
   * filesystem as it is (devmapper: create_snap of the origin's thin id;
   * loop: a reflink copy where the filesystem can, a sparse copy otherwise).
   * When `volume.sizeBytes` exceeds the origin's, the clone is that large and
   * its filesystem is grown to fill it before it is mounted; never shrunk.
   * Fails if it already exists; a partial clone is cleaned by remove().
   */
  createVolumeFrom(volume: CloneSpec): Promise<void>;
  /** Mount a cloned volume's filesystem (nosuid,nodev) WITHOUT mkfs, to apply a layer on top. */
  mountForApply(volume: ObjectSpec): Promise<{ mountpoint: string }>;
  /** Flush the unpacked filesystem to stable storage. */
  flush(volume: ObjectSpec): Promise<void>;
  /** Unmount and detach: the volume becomes a read-only origin. Idempotent. */
  seal(volume: ObjectSpec): Promise<void>;

  /** Create a writable snapshot of a sealed volume. Partial results are cleaned by remove(). */
  createSnapshot(snapshot: SnapshotSpec): Promise<void>;
  /** Attach (if not already) and return the block device path. Idempotent. */
  activate(snapshot: SnapshotSpec): Promise<string>;
  /** Detach. Idempotent. */
  deactivate(snapshot: ObjectSpec): Promise<void>;

  /** Release everything for this object: mounts, devices, backing. Idempotent. */
  remove(object: ObjectSpec): Promise<void>;

  /** Delete a stray reported by inventory() (a partial copy, a foreign file). */
  removeStray(path: string): Promise<void>;

  /** Thin pools only: delete a thin id no live object owns; false if the pool no longer held it. */
  removeThin?(thinId: number, reason: string): Promise<boolean>;

  /** What really exists in this backend's namespace. */
  inventory(): Promise<BackendInventory>;

  /**
   * Thin pools only: resolves true when the pool raises an event (dm-thin:
   * its low-water mark crossed, out of data space, a mode change), false
   * when `timeoutMs` passes without one; rejects when the signal aborts.
   * An event may be missed (it fires once per crossing): a caller must not
   * depend on it, only be woken by it.
   */
  waitForPoolEvent?(opts: { signal: AbortSignal; timeoutMs: number }): Promise<boolean>;
}
