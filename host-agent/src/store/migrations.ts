/**
 * Versioned schema migrations. Each entry runs once, in order, inside one
 * transaction with the bump of `user_version`; never edit a shipped entry,
 * append a new one.
 */
export const migrations: readonly string[] = [
  // 1: initial schema
  `
  CREATE TABLE blobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256        TEXT,
    expected_sha256 TEXT,
    size          INTEGER,
    compression   TEXT,
    status        TEXT NOT NULL CHECK (status IN ('unpacking', 'ready', 'failed', 'removed')),
    volume_id     INTEGER REFERENCES storage_objects(id),
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
  );
  -- Content identity: at most one usable volume per sha256.
  CREATE UNIQUE INDEX blobs_ready_sha256 ON blobs(sha256) WHERE status = 'ready';

  CREATE TABLE images (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    bucket        TEXT NOT NULL,
    key           TEXT NOT NULL,
    version_id    TEXT,
    etag          TEXT NOT NULL,
    size          INTEGER NOT NULL,
    sha256        TEXT,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'ready', 'failed', 'removed')),
    error_code    TEXT,
    error_message TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    UNIQUE (bucket, key, etag)
  );
  CREATE INDEX images_by_key ON images(bucket, key);

  -- An image is an ordered list of blobs (layers); one for now.
  CREATE TABLE image_blobs (
    image_id      INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    position      INTEGER NOT NULL,
    blob_id       INTEGER NOT NULL REFERENCES blobs(id),
    PRIMARY KEY (image_id, position)
  );
  CREATE INDEX image_blobs_by_blob ON image_blobs(blob_id);

  -- Volumes and snapshots as the storage backend holds them. Rows are
  -- written before the side effect (intent) and never reused: ids come from
  -- AUTOINCREMENT, so a name derived from an id is never handed out twice.
  CREATE TABLE storage_objects (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT NOT NULL CHECK (kind IN ('volume', 'snapshot')),
    backend       TEXT NOT NULL,
    parent_id     INTEGER REFERENCES storage_objects(id),
    image_id      INTEGER REFERENCES images(id),
    thin_id       INTEGER UNIQUE,
    size_bytes    INTEGER NOT NULL,
    state         TEXT NOT NULL,
    device_path   TEXT,
    owner         TEXT,
    job_id        INTEGER REFERENCES jobs(id),
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
  );
  CREATE INDEX storage_objects_by_state ON storage_objects(state);

  -- One row per activated snapshot; device_path is the block device to mount.
  CREATE TABLE snapshots (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    object_id     INTEGER NOT NULL UNIQUE REFERENCES storage_objects(id),
    image_id      INTEGER NOT NULL REFERENCES images(id),
    device_path   TEXT NOT NULL,
    activated_at  TEXT NOT NULL
  );

  CREATE TABLE jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id      INTEGER NOT NULL REFERENCES images(id),
    status        TEXT NOT NULL CHECK (status IN ('pending', 'downloading', 'unpacking', 'snapshotting', 'complete', 'failed')),
    serial        INTEGER NOT NULL DEFAULT 0,
    owner         TEXT,
    error_code    TEXT,
    error_message TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    finished_at   TEXT
  );
  -- At most one open job per image: the second process joins the first.
  CREATE UNIQUE INDEX jobs_one_open_per_image ON jobs(image_id) WHERE status NOT IN ('complete', 'failed');

  CREATE TABLE job_steps (
    job_id        INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    position      INTEGER NOT NULL,
    name          TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'running', 'complete', 'failed', 'skipped')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    started_at    TEXT,
    ended_at      TEXT,
    error_code    TEXT,
    error_message TEXT,
    detail        TEXT,
    PRIMARY KEY (job_id, position)
  );
  `,
  // 2: the daemon's view of the queue: the newest event applied per key
  // (stale and duplicate deliveries are dropped against it) and a journal of
  // what was done with each message (operators' triage; a message that
  // already failed permanently is handed back to SQS without a rerun).
  `
  CREATE TABLE key_events (
    bucket        TEXT NOT NULL,
    key           TEXT NOT NULL,
    sequencer     TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('image.put', 'image.delete')),
    image_id      INTEGER REFERENCES images(id),
    applied_at    TEXT NOT NULL,
    PRIMARY KEY (bucket, key)
  );

  CREATE TABLE queue_messages (
    message_id    TEXT PRIMARY KEY,
    bucket        TEXT,
    key           TEXT,
    kind          TEXT,
    sequencer     TEXT,
    outcome       TEXT NOT NULL,
    reason_code   TEXT,
    reason        TEXT,
    receives      INTEGER NOT NULL,
    first_seen_at TEXT NOT NULL,
    last_seen_at  TEXT NOT NULL
  );
  CREATE INDEX queue_messages_by_key ON queue_messages(bucket, key);
  `,
  // 3: devmapper pool journal (one row per thin pool). The pool's own
  // transaction id is the commit marker of every thin create/delete; this
  // row holds the id we last committed, the change in flight (written
  // before the dmsetup message) and who holds the pool while changing it.
  `
  CREATE TABLE dm_pool_journal (
    pool            TEXT PRIMARY KEY,
    transaction_id  INTEGER NOT NULL,
    owner           TEXT,
    open_op         TEXT CHECK (open_op IN ('create_thin', 'create_snap', 'delete', 'metadata_snap')),
    open_thin_id    INTEGER,
    open_origin_id  INTEGER,
    open_purpose    TEXT,
    updated_at      TEXT NOT NULL
  );
  `,
  // 4: container images (docker save, OCI layout): what the image is and
  // its run config (Entrypoint, Cmd, Env, ...), as JSON, kept with the
  // content; NULL for a flat rootfs tar.
  `
  ALTER TABLE blobs ADD COLUMN image_config TEXT;
  `,
  // 5: layers as chains of volumes. A layer is a blob: unpacked content with
  // its own volume, shared by images through image_blobs (position = layer
  // order, base first), now also named by its OCI chain ID. A layer above the
  // base records the layer it was cloned from. The run config moves to the
  // image: two images may share every layer yet run different commands.
  // A flat tar already unpacked is a one-layer image: when it was stored
  // uncompressed its sha256 is its diff_id and so its chain ID.
  `
  ALTER TABLE blobs ADD COLUMN chain_id TEXT;
  ALTER TABLE blobs ADD COLUMN diff_id TEXT;
  ALTER TABLE blobs ADD COLUMN parent_blob_id INTEGER REFERENCES blobs(id);
  ALTER TABLE blobs ADD COLUMN depth INTEGER NOT NULL DEFAULT 1;
  -- Layer identity: at most one usable volume per chain ID.
  CREATE UNIQUE INDEX blobs_ready_chain ON blobs(chain_id) WHERE status = 'ready';
  CREATE INDEX blobs_by_chain ON blobs(chain_id);
  CREATE INDEX blobs_by_parent ON blobs(parent_blob_id);
  UPDATE blobs SET diff_id = 'sha256:' || sha256, chain_id = 'sha256:' || sha256
   WHERE status = 'ready' AND compression = 'none' AND sha256 IS NOT NULL AND image_config IS NULL;
  ALTER TABLE images ADD COLUMN image_config TEXT;
  UPDATE images SET image_config = (
    SELECT b.image_config FROM image_blobs ib JOIN blobs b ON b.id = ib.blob_id
     WHERE ib.image_id = images.id AND b.image_config IS NOT NULL ORDER BY ib.position LIMIT 1);
  `,
  // 6: pool lifecycle. Why an image left (removed_reason: removed by an
  // operator, deleted from the bucket, superseded by newer versions of its
  // key, evicted for space) and what triggered it; pins on an image and on
  // key patterns (globs); when an image was last activated and last seen in
  // use, for least-recently-used eviction.
  `
  ALTER TABLE images ADD COLUMN removed_reason TEXT
    CHECK (removed_reason IN ('removed', 'deleted', 'superseded', 'evicted'));
  ALTER TABLE images ADD COLUMN removed_detail TEXT;
  ALTER TABLE images ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE images ADD COLUMN last_activated_at TEXT;
  ALTER TABLE images ADD COLUMN last_used_at TEXT;
  UPDATE images SET last_activated_at = (
    SELECT max(activated_at) FROM snapshots s WHERE s.image_id = images.id);
  CREATE TABLE key_pins (
    pattern       TEXT PRIMARY KEY,
    created_at    TEXT NOT NULL
  );
  `,
  // 7: a flat tar's volume is keyed "flat:<diff_id>", not by the chain ID a
  // layer with the same bytes has: a flat tar is unpacked without whiteouts,
  // a layer with them, so the two trees differ and must not share a volume.
  // Flat rows are the ones holding the object's sha256 (layers never do).
  // Rows that already shared across the two rules keep their volume (its
  // tree is the first applier's): remove and process such an image again.
  `
  UPDATE blobs SET chain_id = 'flat:' || chain_id
   WHERE sha256 IS NOT NULL AND chain_id IS NOT NULL AND chain_id NOT LIKE 'flat:%';
  `,
  // 8: a storage object's last failed operation (the backend's error), kept
  // on the row in its intent state until the next state change.
  `
  ALTER TABLE storage_objects ADD COLUMN last_error TEXT;
  `,
  // 9: containerd's snapshots (the snapshotter service): its key, kind and
  // parent name, labels, and what holds the content. An active or view
  // snapshot has its own volume (object_id); a view of a committed parent
  // reads the parent's volume (object_id NULL); a committed one is a layer
  // (blob_id), shared by chain ID with the images thinrelay delivered.
  // commit_name: the name a Commit in flight gives it.
  `
  CREATE TABLE containerd_snapshots (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    key           TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('active', 'view', 'committed')),
    parent        TEXT,
    object_id     INTEGER REFERENCES storage_objects(id),
    blob_id       INTEGER REFERENCES blobs(id),
    state         TEXT NOT NULL CHECK (state IN ('preparing', 'ready', 'committing', 'removing', 'removed')),
    commit_name   TEXT,
    labels        TEXT NOT NULL DEFAULT '{}',
    owner         TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
  );
  -- One live snapshot per key: a second Prepare of it is AlreadyExists.
  CREATE UNIQUE INDEX containerd_snapshots_live_key ON containerd_snapshots(key) WHERE state != 'removed';
  CREATE INDEX containerd_snapshots_by_parent ON containerd_snapshots(parent);
  CREATE INDEX containerd_snapshots_by_blob ON containerd_snapshots(blob_id);
  `,
  // 10: signatures (trust/). Two image statuses — awaiting-signature (no
  // sidecar yet; waits without a job until its deadline) and untrusted (held,
  // but no longer passes the policy: no new snapshots) — need the status
  // CHECK widened, which SQLite can only do by rebuilding the table (its
  // documented procedure: migrate() runs with foreign keys off, so dropping
  // the old table cascades nothing, and checks them before committing).
  // trust: the last signature check (trust/trust-record.ts) as JSON;
  // signature_deadline: when an awaiting image fails SIGNATURE_MISSING.
  `
  CREATE TABLE images_v10 (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    bucket        TEXT NOT NULL,
    key           TEXT NOT NULL,
    version_id    TEXT,
    etag          TEXT NOT NULL,
    size          INTEGER NOT NULL,
    sha256        TEXT,
    status        TEXT NOT NULL CHECK (status IN
      ('pending', 'processing', 'awaiting-signature', 'ready', 'untrusted', 'failed', 'removed')),
    error_code    TEXT,
    error_message TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    image_config  TEXT,
    removed_reason TEXT
      CHECK (removed_reason IN ('removed', 'deleted', 'superseded', 'evicted')),
    removed_detail TEXT,
    pinned        INTEGER NOT NULL DEFAULT 0,
    last_activated_at TEXT,
    last_used_at  TEXT,
    trust         TEXT,
    signature_deadline TEXT,
    UNIQUE (bucket, key, etag)
  );
  INSERT INTO images_v10 (id, bucket, key, version_id, etag, size, sha256, status, error_code,
      error_message, created_at, updated_at, image_config, removed_reason, removed_detail, pinned,
      last_activated_at, last_used_at)
    SELECT id, bucket, key, version_id, etag, size, sha256, status, error_code,
      error_message, created_at, updated_at, image_config, removed_reason, removed_detail, pinned,
      last_activated_at, last_used_at FROM images;
  UPDATE sqlite_sequence SET seq = max(seq, coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'images'), 0))
   WHERE name = 'images_v10';
  DROP TABLE images;
  ALTER TABLE images_v10 RENAME TO images;
  CREATE INDEX images_by_key ON images(bucket, key);
  CREATE INDEX images_awaiting ON images(signature_deadline) WHERE status = 'awaiting-signature';
  `,
  // 11: a signature sidecar's event (sidecar.put, keyed by the sidecar's own
  // key) is recorded as applied like an image's, so a duplicate delivery is
  // dropped as stale instead of evaluating its image again. The kind CHECK
  // is widened by rebuilding the table (as 10 did for images).
  `
  CREATE TABLE key_events_v11 (
    bucket        TEXT NOT NULL,
    key           TEXT NOT NULL,
    sequencer     TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('image.put', 'image.delete', 'sidecar.put')),
    image_id      INTEGER REFERENCES images(id),
    applied_at    TEXT NOT NULL,
    PRIMARY KEY (bucket, key)
  );
  INSERT INTO key_events_v11 (bucket, key, sequencer, kind, image_id, applied_at)
    SELECT bucket, key, sequencer, kind, image_id, applied_at FROM key_events;
  DROP TABLE key_events;
  ALTER TABLE key_events_v11 RENAME TO key_events;
  `,
];
