/**
 * Jobs and their steps: the checkpoint log. Every transition bumps the job's
 * serial, so an observer (or a test) can tell that something happened even
 * when the status reads the same.
 */
import { InternalError } from '../errors.js';
import type { Db } from './db.js';
import { nowIso } from './db.js';
import {
  assertTransition,
  jobTransitions,
  stepTransitions,
  type JobStatus,
  type StepStatus,
} from './states.js';

export interface JobRow {
  id: number;
  image_id: number;
  status: JobStatus;
  serial: number;
  owner: string | null;
  error_code: string | null;
  error_message: string | null;
  created_at: string;
  updated_at: string;
  finished_at: string | null;
}

export interface StepRow {
  job_id: number;
  position: number;
  name: string;
  status: StepStatus;
  attempts: number;
  started_at: string | null;
  ended_at: string | null;
  error_code: string | null;
  error_message: string | null;
  detail: string | null;
}

export interface StepError {
  code: string;
  message: string;
}

export class JobRepo {
  constructor(private readonly db: Db) {}

  create(imageId: number, owner: string, stepNames: readonly string[]): JobRow {
    const now = nowIso();
    const { lastInsertRowid } = this.db
      .prepare(
        `INSERT INTO jobs (image_id, status, serial, owner, created_at, updated_at)
         VALUES (?, 'pending', 1, ?, ?, ?)`,
      )
      .run(imageId, owner, now, now);
    const jobId = Number(lastInsertRowid);
    const insert = this.db.prepare(
      `INSERT INTO job_steps (job_id, position, name, status) VALUES (?, ?, ?, 'pending')`,
    );
    stepNames.forEach((name, i) => insert.run(jobId, i, name));
    return this.get(jobId)!;
  }

  get(id: number): JobRow | undefined {
    return this.db.prepare(`SELECT * FROM jobs WHERE id = ?`).get(id) as JobRow | undefined;
  }

  openForImage(imageId: number): JobRow | undefined {
    return this.db
      .prepare(`SELECT * FROM jobs WHERE image_id = ? AND status NOT IN ('complete', 'failed')`)
      .get(imageId) as JobRow | undefined;
  }

  latestForImage(imageId: number): JobRow | undefined {
    return this.db
      .prepare(`SELECT * FROM jobs WHERE image_id = ? ORDER BY id DESC LIMIT 1`)
      .get(imageId) as JobRow | undefined;
  }

  /** How many of an image's jobs failed with one of `codes` (its retry budget so far). */
  failedWithCodes(imageId: number, codes: readonly string[]): number {
    const marks = codes.map(() => '?').join(', ');
    const row = this.db
      .prepare(
        `SELECT COUNT(*) AS n FROM jobs WHERE image_id = ? AND status = 'failed' AND error_code IN (${marks})`,
      )
      .get(imageId, ...codes) as { n: number };
    return row.n;
  }

  listOpen(): JobRow[] {
    return this.db
      .prepare(`SELECT * FROM jobs WHERE status NOT IN ('complete', 'failed') ORDER BY id`)
      .all() as JobRow[];
  }

  steps(jobId: number): StepRow[] {
    return this.db
      .prepare(`SELECT * FROM job_steps WHERE job_id = ? ORDER BY position`)
      .all(jobId) as StepRow[];
  }

  /**
   * A new owner takes over an interrupted job (compare-and-swap on the old
   * owner); gc also hands a job it held while reclaiming its spool back to
   * its previous (dead, or null) owner.
   */
  claim(jobId: number, fromOwner: string | null, toOwner: string | null): boolean {
    const { changes } = this.db
      .prepare(
        `UPDATE jobs SET owner = ?, serial = serial + 1, updated_at = ? WHERE id = ? AND owner IS ?`,
      )
      .run(toOwner, nowIso(), jobId, fromOwner);
    return changes === 1;
  }

  setStatus(jobId: number, to: JobStatus, error?: StepError): void {
    const job = this.get(jobId)!;
    assertTransition(jobTransitions, 'job', job.status, to);
    const now = nowIso();
    const terminal = to === 'complete' || to === 'failed';
    this.db
      .prepare(
        `UPDATE jobs SET status = ?, serial = serial + 1, updated_at = ?,
           error_code = ?, error_message = ?, finished_at = ?
         WHERE id = ?`,
      )
      .run(to, now, error?.code ?? null, error?.message ?? null, terminal ? now : null, jobId);
  }

  setStep(
    jobId: number,
    position: number,
    to: StepStatus,
    extra: { error?: StepError; detail?: unknown } = {},
  ): void {
    const step = this.db
      .prepare(`SELECT status FROM job_steps WHERE job_id = ? AND position = ?`)
      .get(jobId, position) as { status: StepStatus } | undefined;
    if (step === undefined) throw new InternalError(`job ${jobId} has no step ${position}`);
    assertTransition(stepTransitions, 'step', step.status, to);
    const now = nowIso();
    const starting = to === 'running';
    this.db
      .prepare(
        `UPDATE job_steps SET status = ?,
           attempts = attempts + ?,
           started_at = CASE WHEN ? THEN ? ELSE started_at END,
           ended_at = CASE WHEN ? THEN NULL ELSE ? END,
           error_code = ?, error_message = ?,
           detail = COALESCE(?, detail)
         WHERE job_id = ? AND position = ?`,
      )
      .run(
        to,
        starting ? 1 : 0,
        starting ? 1 : 0,
        now,
        starting ? 1 : 0,
        now,
        extra.error?.code ?? null,
        extra.error?.message ?? null,
        extra.detail === undefined ? null : JSON.stringify(extra.detail),
        jobId,
        position,
      );
    this.db
      .prepare(`UPDATE jobs SET serial = serial + 1, updated_at = ? WHERE id = ?`)
      .run(now, jobId);
  }
}
