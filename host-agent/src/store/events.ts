/**
 * What the daemon did with queue messages: the newest applied event per key
 * (the stale/duplicate filter) and a journal per SQS message id.
 */
import { compareSequencers, type ImageEventKind } from '../../../schema/image-event.js';
import type { Db } from './db.js';
import { nowIso } from './db.js';

export interface KeyEventRow {
  bucket: string;
  key: string;
  sequencer: string;
  kind: ImageEventKind;
  image_id: number | null;
  applied_at: string;
}

/** What became of a message. Only `failed` leaves it to the queue's redrive policy. */
export type MessageOutcome =
  | 'applied' // the event's outcome is recorded; message deleted
  | 'stale' // an event at least as new was already applied; deleted
  | 'superseded' // the object changed or vanished since; deleted (a newer event follows)
  | 'failed' // permanent: left to reach the DLQ
  | 'retrying' // transient: handed back with a delay
  | 'awaiting-signature' // no signature sidecar yet: handed back to return at the image's deadline
  | 'released'; // shutdown: handed back at once

export interface QueueMessageRow {
  message_id: string;
  bucket: string | null;
  key: string | null;
  kind: string | null;
  sequencer: string | null;
  outcome: MessageOutcome;
  reason_code: string | null;
  reason: string | null;
  receives: number;
  first_seen_at: string;
  last_seen_at: string;
}

export interface MessageRecord {
  messageId: string;
  bucket: string | null;
  key: string | null;
  kind: string | null;
  sequencer: string | null;
  outcome: MessageOutcome;
  reasonCode?: string | null;
  reason?: string | null;
}

export class EventRepo {
  constructor(private readonly db: Db) {}

  applied(bucket: string, key: string): KeyEventRow | undefined {
    return this.db
      .prepare(`SELECT * FROM key_events WHERE bucket = ? AND key = ?`)
      .get(bucket, key) as KeyEventRow | undefined;
  }

  /**
   * Record an applied event unless one at least as new is recorded already
   * (checked again here, in one transaction: a key's sequencer never moves
   * backwards, whoever applied what in between). False if it was not newer.
   */
  markApplied(e: {
    bucket: string;
    key: string;
    sequencer: string;
    kind: ImageEventKind;
    imageId: number | null;
  }): boolean {
    return this.db
      .transaction(() => {
        const applied = this.applied(e.bucket, e.key);
        if (applied !== undefined && compareSequencers(e.sequencer, applied.sequencer) <= 0)
          return false;
        this.db
          .prepare(
            `INSERT INTO key_events (bucket, key, sequencer, kind, image_id, applied_at)
             VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (bucket, key) DO UPDATE SET sequencer = excluded.sequencer,
               kind = excluded.kind, image_id = excluded.image_id, applied_at = excluded.applied_at`,
          )
          .run(e.bucket, e.key, e.sequencer, e.kind, e.imageId, nowIso());
        return true;
      })
      .immediate();
  }

  message(messageId: string): QueueMessageRow | undefined {
    return this.db.prepare(`SELECT * FROM queue_messages WHERE message_id = ?`).get(messageId) as
      QueueMessageRow | undefined;
  }

  recordMessage(m: MessageRecord): void {
    const now = nowIso();
    this.db
      .prepare(
        `INSERT INTO queue_messages
           (message_id, bucket, key, kind, sequencer, outcome, reason_code, reason, receives, first_seen_at, last_seen_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)
         ON CONFLICT (message_id) DO UPDATE SET outcome = excluded.outcome,
           reason_code = excluded.reason_code, reason = excluded.reason,
           receives = receives + 1, last_seen_at = excluded.last_seen_at`,
      )
      .run(
        m.messageId,
        m.bucket,
        m.key,
        m.kind,
        m.sequencer,
        m.outcome,
        m.reasonCode ?? null,
        m.reason ?? null,
        now,
        now,
      );
  }

  /**
   * Messages that failed before any image of their key existed here (e.g. the
   * HEAD was refused: ACCESS_DENIED), newest first: `thinrelay failed` lists
   * them beside failed images, so no permanent failure is invisible.
   */
  failedWithoutImage(): QueueMessageRow[] {
    return this.db
      .prepare(
        `SELECT * FROM queue_messages m WHERE m.outcome = 'failed'
           AND NOT EXISTS (SELECT 1 FROM images i WHERE i.bucket = m.bucket AND i.key = m.key)
         ORDER BY m.last_seen_at DESC, m.rowid DESC`,
      )
      .all() as QueueMessageRow[];
  }

  /** Newest first: what the queue brought lately (for `thinrelay messages`). */
  recentMessages(limit: number): QueueMessageRow[] {
    return this.db
      .prepare(`SELECT * FROM queue_messages ORDER BY last_seen_at DESC, rowid DESC LIMIT ?`)
      .all(limit) as QueueMessageRow[];
  }
}
