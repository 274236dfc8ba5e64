/**
 * Reconcile: make what the backend really holds agree with the store. Runs
 * on every start (process-image, gc, daemon) and when a job is taken over.
 *
 * The inventory is read BEFORE the store: every object is recorded before it
 * is created, so anything in the inventory without a live row is an orphan.
 * Work of a live owner (another thinrelay process) is never touched.
 *
 * Thin pools: the backend first finishes any pool transaction a dead process
 * left open (prepare), then the pool's real thin id list is compared with the
 * store by thin id — a thin device no live object owns is deleted, so no id
 * is ever leaked — and active dm devices are compared by name and thin id.
 *
 * Reconciles are serialized per state dir (store/reconcile-lock.ts): each
 * reads its inventory after the previous one finished acting on its own.
 */
import { errorMessage, InternalError } from '../errors.js';
import type { Logger } from '../log.js';
import type { StateStore } from '../store/index.js';
import type { StorageObjectRow } from '../store/objects.js';
import { isOwnerAlive } from '../store/owner.js';
import { withReconcileLock } from '../store/reconcile-lock.js';
import { intentStates } from '../store/states.js';
import type { BackendInventory } from '../storage/backend.js';
import { deviceInUse } from '../sys/device-use.js';
import { objectName, parseObjectName } from '../storage/names.js';
import type { ObjectManager } from '../storage/object-manager.js';

export interface ReconcileAction {
  object: string;
  action: string;
  reason: string;
  /** Bytes on disk the action gave back, where it is a file outside the pool (a spool). */
  freedBytes?: number;
}

export interface ReconcileDeps {
  store: StateStore;
  objects: ObjectManager;
  owner: string;
  logger: Logger;
}

/** One reconcile at a time per state dir (two would act on one inventory twice). */
export function reconcile(deps: ReconcileDeps): Promise<ReconcileAction[]> {
  return withReconcileLock(deps.store.stateDir, deps.logger, () => reconcileNow(deps));
}

async function reconcileNow(deps: ReconcileDeps): Promise<ReconcileAction[]> {
  const actions: ReconcileAction[] = [...(await deps.objects.backend.prepare())];
  const inventory = await deps.objects.backend.inventory();
  reserveIdsSeen(deps, inventory, actions);
  const rows = deps.store.objects.listLive();
  for (const row of rows) await reconcileRow(deps, row, inventory, actions);
  await settleUnpacked(deps, inventory, actions);
  await releaseOrphans(deps, rows, inventory, actions);
  await releaseOrphanThins(deps, inventory, actions);
  for (const a of actions) deps.logger.info('reconcile', { ...a });
  return actions;
}

/**
 * Names and thin ids in the pool are never handed out again, even when the
 * store does not know them (a restored backup): allocation moves above them.
 */
function reserveIdsSeen(
  deps: ReconcileDeps,
  inv: BackendInventory,
  actions: ReconcileAction[],
): void {
  const names = [
    ...inv.objects.map((o) => o.name),
    ...inv.attached.map((a) => a.name),
    ...inv.mounted.map((m) => m.name),
    ...inv.strays.map((s) => s.path.split('/').pop()!.split('.')[0]!),
  ];
  let highest: { name: string; id: number } | null = null;
  for (const name of names) {
    const id = name === null ? undefined : parseObjectName(name)?.id;
    if (name !== null && id !== undefined && id > (highest?.id ?? 0)) highest = { name, id };
  }
  if (highest !== null && deps.store.tx(() => deps.store.objects.reserveIdsThrough(highest.id)))
    actions.push({
      object: highest.name,
      action: 'reserved ids',
      reason:
        'the pool holds names the store never recorded (a restored backup?): new ids start above',
    });
  let maxThin = 0;
  for (const o of inv.objects) if (o.thinId !== null) maxThin = Math.max(maxThin, o.thinId);
  deps.objects.notePoolThinIds(maxThin);
}

/** A device of `name` attached but not by our own unpack mount, and in use: why, else null. */
function foreignUse(inv: BackendInventory, name: string): string | null {
  if (inv.mounted.some((m) => m.name === name)) return null;
  for (const a of inv.attached) {
    if (a.name !== name) continue;
    const why = deviceInUse(a.devicePath);
    if (why !== null) return `${a.devicePath} is ${why}`;
  }
  return null;
}

/** Take over a row whose owner died; false if it is someone else's live work. */
function claimIfAbandoned(deps: ReconcileDeps, row: StorageObjectRow): boolean {
  if (row.owner === deps.owner) return true;
  if (isOwnerAlive(row.owner)) return false;
  return deps.store.objects.claim(row.id, row.owner, deps.owner);
}

async function reconcileRow(
  deps: ReconcileDeps,
  row: StorageObjectRow,
  inv: BackendInventory,
  actions: ReconcileAction[],
): Promise<void> {
  const name = objectName(row.kind, row.id);
  const act = (action: string, reason: string): void => {
    actions.push({ object: name, action, reason });
  };
  try {
    if (intentStates.includes(row.state)) {
      if (!claimIfAbandoned(deps, row)) return;
      const fresh = deps.store.objects.get(row.id)!;
      if (fresh.state === 'activating' || fresh.state === 'deactivating') {
        await deps.objects.deactivate(fresh);
        act('deactivated', `interrupted while ${fresh.state}`);
      } else {
        await deps.objects.remove(fresh);
        const blob = fresh.kind === 'volume' ? deps.store.blobs.byVolume(fresh.id) : undefined;
        if (blob?.status === 'unpacking') deps.store.blobs.setStatus(blob.id, 'failed');
        act('removed', `interrupted while ${fresh.state}`);
      }
      return;
    }
    const attached = inv.attached.filter((a) => a.name === name);
    const inPool = inv.objects.some((o) => o.name === null && o.thinId === row.thin_id);
    if (deps.objects.backend.usesThinIds && row.thin_id !== null && !inPool) {
      // Recorded as done but not in the pool: nothing here can bring the data back.
      act('missing', `thin device ${row.thin_id} is not in the pool (state ${row.state})`);
      return;
    }
    if (row.state === 'active') {
      const device = attached[0]?.devicePath;
      const wrongThin = attached.some((a) => a.thinId !== undefined && a.thinId !== row.thin_id);
      if (device === undefined || device !== row.device_path || attached.length > 1 || wrongThin) {
        const devicePath = await deps.objects.activate(row);
        act(
          'reactivated',
          device === undefined
            ? 'active in the store but not attached (reboot?)'
            : `attached as ${devicePath}`,
        );
      }
      return;
    }
    const mounted = inv.mounted.some((m) => m.name === name);
    if (
      (row.state === 'sealed' || row.state === 'inactive' || row.state === 'kept') &&
      (attached.length > 0 || mounted)
    ) {
      const use = foreignUse(inv, name);
      if (use !== null) {
        act('left in use', `${row.state} in the store, but ${use}: foreign-in-use, left alone`);
        return;
      }
      if (row.kind === 'volume') await deps.objects.backend.seal(deps.objects.spec(row));
      else await deps.objects.backend.deactivate(deps.objects.spec(row));
      act('detached', `${row.state} but attached or mounted`);
    }
    // 'unpacked' volumes are left to their job's seal step, which finishes them;
    // those no open job works on are settled by settleUnpacked.
  } catch (err) {
    deps.logger.error('reconcile could not fix an object; will retry next start', {
      object: name,
      error: errorMessage(err),
    });
    act('failed', errorMessage(err));
  }
}

/**
 * Unpacked volumes no open job works on. One held for a new signature
 * (failure.ts) rests detached: a crash between its flush and its detach
 * left it mounted. Any other is what a job that ended left (a hold given
 * up: its image was processed again or left the failed state): released.
 */
async function settleUnpacked(
  deps: ReconcileDeps,
  inv: BackendInventory,
  actions: ReconcileAction[],
): Promise<void> {
  const { store, objects } = deps;
  for (const row of store.objects.heldForSignature()) {
    const name = objectName(row.kind, row.id);
    const attached = inv.attached.some((a) => a.name === name);
    if (!attached && !inv.mounted.some((m) => m.name === name)) continue;
    try {
      if (foreignUse(inv, name) !== null) continue;
      await objects.detachUnpacked(row);
      actions.push({ object: name, action: 'detached', reason: 'held for a new signature' });
    } catch (err) {
      actions.push({ object: name, action: 'failed', reason: errorMessage(err) });
    }
  }
  for (const row of store.objects.unpackedLeftovers()) {
    const name = objectName(row.kind, row.id);
    try {
      // The layer is marked failed first: a crash after it leaves a leftover, never a live layer.
      store.tx(() => {
        const blob = store.blobs.byVolume(row.id);
        if (blob?.status === 'unpacking') store.blobs.setStatus(blob.id, 'failed');
      });
      if (await objects.remove(row))
        actions.push({
          object: name,
          action: 'removed',
          reason: 'unpacked by a job that ended; no image holds it',
        });
    } catch (err) {
      deps.logger.error('reconcile could not release an unpacked leftover; will retry', {
        object: name,
        error: errorMessage(err),
      });
      actions.push({ object: name, action: 'failed', reason: errorMessage(err) });
    }
  }
}

async function releaseOrphans(
  deps: ReconcileDeps,
  rows: StorageObjectRow[],
  inv: BackendInventory,
  actions: ReconcileAction[],
): Promise<void> {
  const live = new Set(rows.map((r) => objectName(r.kind, r.id)));
  const orphanNames = new Set<string>();
  for (const o of inv.objects) if (o.name !== null && !live.has(o.name)) orphanNames.add(o.name);
  for (const a of inv.attached) if (!live.has(a.name)) orphanNames.add(a.name);
  for (const m of inv.mounted) if (!live.has(m.name)) orphanNames.add(m.name);
  for (const name of orphanNames) {
    const parsed = parseObjectName(name);
    if (parsed === null) {
      deps.logger.warn('reconcile: unknown device or mount in our namespace left alone', { name });
      continue;
    }
    // A live row may have appeared since the inventory: re-check before releasing.
    const row = deps.store.objects.get(parsed.id);
    if (row !== undefined && row.state !== 'removed') continue;
    // Never detach or delete what someone uses: a device of a restored backup's future.
    const use = foreignUse(inv, name);
    if (use !== null) {
      deps.logger.warn('reconcile: a device the store does not know is in use; left alone', {
        name,
        use,
      });
      actions.push({
        object: name,
        action: 'left in use',
        reason: `not recorded in the store, but ${use}: foreign-in-use, left alone`,
      });
      continue;
    }
    await deps.objects.backend.remove({ kind: parsed.kind, name, sizeBytes: 0, thinId: null });
    actions.push({ object: name, action: 'removed', reason: 'not recorded in the store (orphan)' });
  }
  for (const stray of inv.strays) {
    const parsed = parseObjectName(stray.path.split('/').pop()!.split('.')[0]!);
    if (parsed === null && stray.owned !== true) {
      deps.logger.warn('reconcile: unknown file in the pool left alone', { path: stray.path });
      continue;
    }
    const row = parsed === null ? undefined : deps.store.objects.get(parsed.id);
    // A partial copy being written right now by a live process is not a stray yet.
    if (
      row !== undefined &&
      row.state !== 'removed' &&
      row.owner !== deps.owner &&
      isOwnerAlive(row.owner)
    )
      continue;
    try {
      await deps.objects.backend.removeStray(stray.path);
      actions.push({ object: stray.path, action: 'removed', reason: stray.description });
    } catch (err) {
      deps.logger.error('reconcile could not remove a stray; will retry next start', {
        path: stray.path,
        error: errorMessage(err),
      });
      actions.push({ object: stray.path, action: 'failed', reason: errorMessage(err) });
    }
  }
}

/** Thin ids in the pool that no live object owns: deleted, one by one, failures reported. */
async function releaseOrphanThins(
  deps: ReconcileDeps,
  inv: BackendInventory,
  actions: ReconcileAction[],
): Promise<void> {
  const backend = deps.objects.backend;
  for (const o of inv.objects) {
    if (o.name !== null || o.thinId === null) continue;
    // Re-read: a row is always committed before its thin device is created.
    const row = deps.store.objects.byThinId(o.thinId);
    if (row !== undefined && row.state !== 'removed') continue;
    // Its device was left alone above: it is in use.
    const inUse = inv.attached.find((a) => a.thinId === o.thinId && foreignUse(inv, a.name));
    if (inUse !== undefined) continue;
    const object = row === undefined ? `thin ${o.thinId}` : objectName(row.kind, row.id);
    const reason =
      row === undefined
        ? `thin device ${o.thinId} is recorded nowhere in the store`
        : `thin device ${o.thinId} of a removed object (interrupted delete)`;
    try {
      if (backend.removeThin === undefined)
        throw new InternalError(`${backend.name} has no thin devices`);
      // False: reconcile's own removal of the object above already deleted it.
      if (await backend.removeThin(o.thinId, reason))
        actions.push({ object, action: 'deleted thin', reason });
    } catch (err) {
      deps.logger.error('reconcile could not delete an orphan thin device; will retry next start', {
        thinId: o.thinId,
        error: errorMessage(err),
      });
      actions.push({ object, action: 'failed', reason: errorMessage(err) });
    }
  }
}
