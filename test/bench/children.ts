/**
 * The benchmarks' child processes: Ctrl-C or SIGTERM stops the one running
 * and no other starts, so a bench interrupted by hand still cleans up.
 */
import { execFile, type ChildProcess } from 'node:child_process';
import { performance } from 'node:perf_hooks';

export interface ChildResult {
  code: number;
  ms: number;
  stdout: string;
  stderr: string;
}

export class Children {
  private running: ChildProcess | null = null;
  private stoppedBy: NodeJS.Signals | null = null;
  private readonly onSignal = (sig: NodeJS.Signals): void => {
    this.stoppedBy = sig;
    this.running?.kill('SIGTERM');
  };

  constructor() {
    process.on('SIGINT', this.onSignal).on('SIGTERM', this.onSignal);
  }

  /** Runs to the end; a non-zero exit is a result, not an error. */
  run(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<ChildResult> {
    if (this.stoppedBy !== null) return Promise.reject(new Error(`stopped by ${this.stoppedBy}`));
    const t0 = performance.now();
    return new Promise((resolve, reject) => {
      this.running = execFile(
        cmd,
        args,
        { env, maxBuffer: 256 * 1024 * 1024 },
        (err, stdout, stderr) => {
          this.running = null;
          const ms = performance.now() - t0;
          if (this.stoppedBy !== null) reject(new Error(`stopped by ${this.stoppedBy}`));
          else if (err === null) resolve({ code: 0, ms, stdout, stderr });
          else if (typeof err.code === 'number') resolve({ code: err.code, ms, stdout, stderr });
          else reject(new Error(`${cmd} ${args.join(' ')}: ${err.message}\n${stderr}`));
        },
      );
    });
  }

  /** Runs and expects exit 0. */
  async ok(
    cmd: string,
    args: string[],
    env: NodeJS.ProcessEnv = process.env,
  ): Promise<ChildResult> {
    const r = await this.run(cmd, args, env);
    if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.code}\n${r.stderr}`);
    return r;
  }

  close(): void {
    process.off('SIGINT', this.onSignal).off('SIGTERM', this.onSignal);
  }
}
