/** Progress of a byte stream, reported to whoever shows it (TTY bars, JSON logs, nothing). */
export interface ProgressSink {
  start(phase: ProgressPhase, totalBytes: number | null): void;
  update(phase: ProgressPhase, doneBytes: number): void;
  end(phase: ProgressPhase): void;
}

export type ProgressPhase = 'download' | 'unpack';

export const noProgress: ProgressSink = {
  start: () => undefined,
  update: () => undefined,
  end: () => undefined,
};
