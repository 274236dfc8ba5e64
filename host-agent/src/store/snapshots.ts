/** Activated snapshots: one row per attached device, the operators' view. */
import type { Db } from './db.js';
import { nowIso } from './db.js';

export interface SnapshotRow {
  id: number;
  object_id: number;
  image_id: number;
  device_path: string;
  activated_at: string;
}

export interface SnapshotListing extends SnapshotRow {
  bucket: string;
  key: string;
  etag: string;
}

export class SnapshotRepo {
  constructor(private readonly db: Db) {}

  activated(objectId: number, imageId: number, devicePath: string): void {
    this.db
      .prepare(
        `INSERT INTO snapshots (object_id, image_id, device_path, activated_at) VALUES (?, ?, ?, ?)
         ON CONFLICT (object_id) DO UPDATE SET device_path = excluded.device_path`,
      )
      .run(objectId, imageId, devicePath, nowIso());
  }

  deactivated(objectId: number): void {
    this.db.prepare(`DELETE FROM snapshots WHERE object_id = ?`).run(objectId);
  }

  byObject(objectId: number): SnapshotRow | undefined {
    return this.db.prepare(`SELECT * FROM snapshots WHERE object_id = ?`).get(objectId) as
      SnapshotRow | undefined;
  }

  forImage(imageId: number): SnapshotRow[] {
    return this.db
      .prepare(`SELECT * FROM snapshots WHERE image_id = ? ORDER BY id`)
      .all(imageId) as SnapshotRow[];
  }

  list(): SnapshotListing[] {
    return this.db
      .prepare(
        `SELECT s.*, i.bucket, i.key, i.etag FROM snapshots s JOIN images i ON i.id = s.image_id
         ORDER BY s.id`,
      )
      .all() as SnapshotListing[];
  }
}
