/** Blobs: unpacked content, identified by sha256 and shared by every image with those bytes. */
import type { Db } from './db.js';
import { nowIso } from './db.js';
import type { BlobStatus } from './states.js';

export interface BlobRow {
  id: number;
  sha256: string | null;
  expected_sha256: string | null;
  size: number | null;
  compression: string | null;
  /** JSON of a container image's format, layers and run config; null for a flat tar. */
  image_config: string | null;
  status: BlobStatus;
  volume_id: number | null;
  created_at: string;
  updated_at: string;
}

export class BlobRepo {
  constructor(private readonly db: Db) {}

  create(volumeId: number, expectedSha256: string | null): BlobRow {
    const now = nowIso();
    const { lastInsertRowid } = this.db
      .prepare(
        `INSERT INTO blobs (expected_sha256, status, volume_id, created_at, updated_at)
         VALUES (?, 'unpacking', ?, ?, ?)`,
      )
      .run(expectedSha256, volumeId, now, now);
    return this.get(Number(lastInsertRowid))!;
  }

  get(id: number): BlobRow | undefined {
    return this.db.prepare(`SELECT * FROM blobs WHERE id = ?`).get(id) as BlobRow | undefined;
  }

  byVolume(volumeId: number): BlobRow | undefined {
    return this.db.prepare(`SELECT * FROM blobs WHERE volume_id = ?`).get(volumeId) as
      BlobRow | undefined;
  }

  readyBySha256(sha256: string): BlobRow | undefined {
    return this.db
      .prepare(`SELECT * FROM blobs WHERE sha256 = ? AND status = 'ready'`)
      .get(sha256) as BlobRow | undefined;
  }

  /** Content is known: record what was unpacked (still not ready until sealed). */
  recordContent(
    id: number,
    c: { sha256: string; size: number; compression: string; imageConfig?: string | null },
  ): void {
    this.db
      .prepare(
        `UPDATE blobs SET sha256 = ?, size = ?, compression = ?, image_config = ?, updated_at = ? WHERE id = ?`,
      )
      .run(c.sha256, c.size, c.compression, c.imageConfig ?? null, nowIso(), id);
  }

  setStatus(id: number, status: BlobStatus): void {
    this.db
      .prepare(`UPDATE blobs SET status = ?, updated_at = ? WHERE id = ?`)
      .run(status, nowIso(), id);
  }

  /** Images (not removed) that still use a blob. */
  liveImageCount(blobId: number): number {
    return (
      this.db
        .prepare(
          `SELECT count(*) AS n FROM image_blobs ib JOIN images i ON i.id = ib.image_id
           WHERE ib.blob_id = ? AND i.status != 'removed'`,
        )
        .get(blobId) as { n: number }
    ).n;
  }
}
