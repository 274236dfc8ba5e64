/**
 * Every state machine of the store, in one place. Repositories refuse any
 * transition not listed here, so a bug shows up as an error, not as a row in
 * a state nobody knows how to recover from.
 */
import { InternalError } from '../errors.js';

export type JobStatus =
  'pending' | 'downloading' | 'unpacking' | 'snapshotting' | 'complete' | 'failed';

export const jobTransitions: Record<JobStatus, readonly JobStatus[]> = {
  pending: ['downloading', 'unpacking', 'snapshotting', 'complete', 'failed'],
  downloading: ['downloading', 'unpacking', 'snapshotting', 'complete', 'failed'],
  unpacking: ['unpacking', 'snapshotting', 'complete', 'failed'],
  snapshotting: ['snapshotting', 'complete', 'failed'],
  complete: [],
  failed: [],
};

export const terminalJobStatuses: readonly JobStatus[] = ['complete', 'failed'];

export type StepStatus = 'pending' | 'running' | 'complete' | 'failed' | 'skipped';

export const stepTransitions: Record<StepStatus, readonly StepStatus[]> = {
  pending: ['running', 'skipped', 'failed'],
  // running → running: an interrupted step is retried by a new owner.
  running: ['running', 'complete', 'failed', 'skipped'],
  complete: [],
  failed: [],
  skipped: [],
};

export type ImageStatus =
  'pending' | 'processing' | 'awaiting-signature' | 'ready' | 'untrusted' | 'failed' | 'removed';

/**
 * Images. `removed` is final for the image's storage but not for its
 * identity: the same object version may be asked for again (an operator's
 * process-image, a catch-up of an evicted current version) and is processed
 * anew. Why it was removed is on the row (RemovedReason).
 *
 * Signatures (trust/, docs/trust.md): `awaiting-signature` is an image whose
 * policy verifies and whose sidecar has not arrived; it holds no job and no
 * storage, and leaves for processing when the sidecar comes, or failed
 * (SIGNATURE_MISSING) at its deadline. `untrusted` is a held image that no
 * longer passes the policy (`thinrelay verify`): no new snapshots; it returns
 * to ready when it passes again.
 */
export const imageTransitions: Record<ImageStatus, readonly ImageStatus[]> = {
  pending: ['processing', 'awaiting-signature', 'failed', 'removed'],
  processing: ['processing', 'ready', 'failed', 'removed'],
  'awaiting-signature': ['processing', 'failed', 'removed'],
  ready: ['removed', 'untrusted'],
  untrusted: ['ready', 'removed'],
  failed: ['processing', 'awaiting-signature', 'failed', 'removed'],
  removed: ['processing', 'awaiting-signature', 'removed'],
};

/**
 * Why an image was removed: `removed` by an operator, `deleted` from the
 * bucket, `superseded` by newer versions of its key (retention), `evicted`
 * for pool space.
 */
export type RemovedReason = 'removed' | 'deleted' | 'superseded' | 'evicted';

/**
 * Blobs: unpacked content on its own volume (a flat image's one volume, or
 * one layer of a chain). `unpacking` is held while the volume is written;
 * `ready` content is sealed and shared by chain ID (and sha256 for flat tars).
 */
export type BlobStatus = 'unpacking' | 'ready' | 'failed' | 'removed';

export const blobTransitions: Record<BlobStatus, readonly BlobStatus[]> = {
  unpacking: ['ready', 'failed', 'removed'],
  ready: ['removed'],
  failed: ['removed'],
  removed: [],
};

/**
 * Storage objects. States ending in -ing are intents: the row was written
 * before the side effect, and an owner that died there left work for
 * recovery (see pipeline/reconcile.ts).
 */
export type ObjectState =
  | 'creating' // intent: backing being created
  | 'unpacking' // volume: filesystem being written (attached, mounted)
  | 'unpacked' // volume: content complete and flushed, maybe still mounted
  | 'sealed' // volume: complete, detached, read-only origin
  | 'inactive' // snapshot: exists, not attached
  | 'activating' // intent: attaching
  | 'active' // snapshot: attached, device_path set
  | 'deactivating' // intent: detaching
  | 'kept' // a failed volume kept for inspection (--keep-on-failure)
  | 'writable' // volume: a containerd snapshot its client mounts and writes (snapshotter/)
  | 'removing' // intent: deleting
  | 'removed';

export const objectTransitions: Record<ObjectState, readonly ObjectState[]> = {
  creating: ['unpacking', 'inactive', 'writable', 'removing', 'kept'],
  unpacking: ['unpacked', 'removing', 'kept'],
  unpacked: ['sealed', 'removing', 'kept'],
  sealed: ['removing'],
  inactive: ['activating', 'removing'],
  activating: ['active', 'deactivating', 'removing'],
  active: ['active', 'deactivating', 'removing'],
  deactivating: ['inactive', 'removing'],
  kept: ['removing'],
  // Commit seals it into a layer; Remove releases it.
  writable: ['sealed', 'removing'],
  removing: ['removed'],
  removed: [],
};

/** States in which a dead owner means interrupted work. */
export const intentStates: readonly ObjectState[] = [
  'creating',
  'unpacking',
  'activating',
  'deactivating',
  'removing',
];

/**
 * containerd's snapshots (snapshotter/): an active or view snapshot rests
 * `ready`; a committed one is `ready` from its creation (Commit records it in
 * the seal's transaction). -ing states are intents, written before the
 * storage change, finished or undone by recovery when their owner died.
 */
export type ContainerdSnapshotState =
  | 'preparing' // intent: its writable volume being made
  | 'ready'
  | 'committing' // intent: an active snapshot being sealed into a committed one
  | 'removing' // intent: its storage being released
  | 'removed';

export const containerdSnapshotTransitions: Record<
  ContainerdSnapshotState,
  readonly ContainerdSnapshotState[]
> = {
  preparing: ['ready', 'removing'],
  ready: ['committing', 'removing'],
  // A failed commit leaves the active snapshot as it was.
  committing: ['removed', 'ready', 'removing'],
  removing: ['removed'],
  removed: [],
};

export function assertTransition<S extends string>(
  table: Record<S, readonly S[]>,
  what: string,
  from: S,
  to: S,
): void {
  if (!table[from].includes(to)) {
    throw new InternalError(`invalid ${what} transition ${from} → ${to}`);
  }
}
