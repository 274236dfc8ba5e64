/**
 * Progress for people and for machines. On a TTY: one bar per phase with
 * bytes, rate and ETA, redrawn at most 10 times a second. Otherwise: a JSON
 * progress line per phase about once a second.
 */
import type { Logger } from '../log.js';
import type { ProgressPhase, ProgressSink } from '../pipeline/progress.js';
import { formatBytes } from './output.js';

interface PhaseState {
  ended?: boolean;
  total: number | null;
  done: number;
  startedAt: number;
  lastDrawn: number;
}

function line(phase: ProgressPhase, s: PhaseState, now: number): string {
  const secs = Math.max((now - s.startedAt) / 1000, 0.001);
  const rate = s.done / secs;
  const width = 24;
  const frac = s.total ? Math.min(1, s.done / s.total) : 0;
  const bar = '#'.repeat(Math.round(frac * width)).padEnd(width, '.');
  const eta =
    s.total && rate > 0 ? `ETA ${Math.max(0, (s.total - s.done) / rate).toFixed(0)}s` : '';
  const total = s.total === null ? '' : ` / ${formatBytes(s.total)}`;
  return `${phase.padEnd(8)} [${bar}] ${formatBytes(s.done)}${total}  ${formatBytes(rate)}/s  ${eta}`;
}

export function ttyProgress(stream: NodeJS.WriteStream): ProgressSink {
  const phases = new Map<ProgressPhase, PhaseState>();
  let drawnLines = 0;
  const draw = (force: boolean): void => {
    const now = Date.now();
    const states = [...phases.entries()];
    if (!force && states.every(([, s]) => now - s.lastDrawn < 100)) return;
    const up = drawnLines > 0 ? `\x1b[${drawnLines}A` : '';
    const text = states
      .map(([p, s]) => ((s.lastDrawn = now), `\x1b[2K${line(p, s, now)}`))
      .join('\n');
    stream.write(`${up}\r${text}\n`);
    drawnLines = states.length;
  };
  return {
    start(phase, total) {
      phases.set(phase, { total, done: 0, startedAt: Date.now(), lastDrawn: 0 });
      draw(true);
    },
    update(phase, done) {
      const s = phases.get(phase);
      if (s === undefined) return;
      s.done = done;
      draw(false);
    },
    end(phase) {
      const s = phases.get(phase);
      if (s === undefined || s.ended) return;
      s.ended = true;
      draw(true);
      // Finished bars stay on screen; the next set starts below them.
      if ([...phases.values()].every((p) => p.ended)) {
        phases.clear();
        drawnLines = 0;
      }
    },
  };
}

export function logProgress(logger: Logger): ProgressSink {
  const phases = new Map<ProgressPhase, PhaseState>();
  const emit = (phase: ProgressPhase, s: PhaseState, final: boolean): void => {
    const secs = Math.max((Date.now() - s.startedAt) / 1000, 0.001);
    logger.info(final ? 'progress done' : 'progress', {
      phase,
      bytes: s.done,
      totalBytes: s.total,
      bytesPerSecond: Math.round(s.done / secs),
    });
  };
  return {
    start(phase, total) {
      phases.set(phase, { total, done: 0, startedAt: Date.now(), lastDrawn: Date.now() });
    },
    update(phase, done) {
      const s = phases.get(phase);
      if (s === undefined) return;
      s.done = done;
      if (Date.now() - s.lastDrawn >= 1000) {
        s.lastDrawn = Date.now();
        emit(phase, s, false);
      }
    },
    end(phase) {
      const s = phases.get(phase);
      if (s !== undefined) emit(phase, s, true);
      phases.delete(phase);
    },
  };
}
