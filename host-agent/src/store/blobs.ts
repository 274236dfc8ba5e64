/**
 * Blobs: unpacked content on a volume, shared by every image that needs it.
 * A blob is one layer of a chain: named by its OCI chain ID (which covers
 * the layers below it); an uncompressed flat tar by "flat:<diff_id>" (it is
 * unpacked without whiteouts, so never the same tree as a layer of those
 * bytes), a compressed one by the object's sha256 alone.
 */
import { InternalError } from '../errors.js';
import type { Db } from './db.js';
import { nowIso } from './db.js';
import { statementCache } from './statements.js';
import { assertTransition, blobTransitions, type BlobStatus } from './states.js';

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
  /** "sha256:<hex>" OCI chain ID, "flat:sha256:<hex>" for a flat tar; null when unknown. */
  chain_id: string | null;
  /** "sha256:<hex>" of this layer's uncompressed tar. */
  diff_id: string | null;
  /** The layer below, whose volume this one's was cloned from; null for a base. */
  parent_blob_id: number | null;
  /** 1 for a base layer, n for the nth layer of a chain. */
  depth: number;
  created_at: string;
  updated_at: string;
}

/** A layer about to be built: what the image's config says it is. */
export interface NewLayer {
  chainId: string | null;
  diffId: string | null;
  parentBlobId: number | null;
  depth: number;
}

export class BlobRepo {
  /** The hot statements (a blob by id), compiled once (statements.ts). */
  private readonly hot: ReturnType<typeof statementCache>;

  constructor(private readonly db: Db) {
    this.hot = statementCache(db);
  }

  create(
    volumeId: number,
    expectedSha256: string | null,
    layer: NewLayer = { chainId: null, diffId: null, parentBlobId: null, depth: 1 },
  ): BlobRow {
    const now = nowIso();
    const { lastInsertRowid } = this.db
      .prepare(
        `INSERT INTO blobs (expected_sha256, status, volume_id, chain_id, diff_id, parent_blob_id, depth, created_at, updated_at)
         VALUES (?, 'unpacking', ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(
        expectedSha256,
        volumeId,
        layer.chainId,
        layer.diffId,
        layer.parentBlobId,
        layer.depth,
        now,
        now,
      );
    return this.get(Number(lastInsertRowid))!;
  }

  readyByChain(chainId: string): BlobRow | undefined {
    return this.db
      .prepare(`SELECT * FROM blobs WHERE chain_id = ? AND status = 'ready'`)
      .get(chainId) as BlobRow | undefined;
  }

  /** Layers with this chain ID being built right now (by any job), oldest first. */
  buildingByChain(chainId: string): BlobRow[] {
    return this.db
      .prepare(`SELECT * FROM blobs WHERE chain_id = ? AND status = 'unpacking' ORDER BY id`)
      .all(chainId) as BlobRow[];
  }

  /** A layer's content is applied: its identity (a flat tar's is known only now) and size. */
  recordLayer(
    id: number,
    l: { diffId: string | null; chainId: string | null; size: number; compression: string },
  ): void {
    this.db
      .prepare(
        `UPDATE blobs SET diff_id = COALESCE(?, diff_id), chain_id = COALESCE(?, chain_id),
           size = ?, compression = ?, updated_at = ? WHERE id = ?`,
      )
      .run(l.diffId, l.chainId, l.size, l.compression, nowIso(), id);
  }

  /** Ready blobs no live image links: what gc releases. */
  listUnused(): BlobRow[] {
    return this.db
      .prepare(
        `SELECT * FROM blobs b WHERE b.status = 'ready' AND NOT EXISTS (
           SELECT 1 FROM image_blobs ib JOIN images i ON i.id = ib.image_id
            WHERE ib.blob_id = b.id AND i.status != 'removed')
         ORDER BY b.depth DESC, b.id`,
      )
      .all() as BlobRow[];
  }

  get(id: number): BlobRow | undefined {
    return this.hot(`SELECT * FROM blobs WHERE id = ?`).get(id) as BlobRow | undefined;
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
    const row = this.get(id);
    if (row === undefined) throw new InternalError(`blob ${id} does not exist`);
    if (row.status !== status) assertTransition(blobTransitions, 'blob', row.status, status);
    this.db
      .prepare(`UPDATE blobs SET status = ?, updated_at = ? WHERE id = ?`)
      .run(status, nowIso(), id);
  }

  /** Images (not removed, other than `except`) that still use a blob. */
  liveImageCount(blobId: number, except: number | null = null): number {
    return (
      this.db
        .prepare(
          `SELECT count(*) AS n FROM image_blobs ib JOIN images i ON i.id = ib.image_id
           WHERE ib.blob_id = ? AND i.status != 'removed' AND i.id IS NOT ?`,
        )
        .get(blobId, except) as { n: number }
    ).n;
  }
}
