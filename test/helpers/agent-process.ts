/**
 * `thinrelay agent` as a child process, as systemd would run it: its JSON
 * log lines are collected so a test can wait for what the agent reports.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { cliPath } from './cli.js';

export type LogLine = Record<string, unknown> & { msg: string; level: string };

export interface AgentProcess {
  child: ChildProcess;
  logs: LogLine[];
  /** Resolves with the first log line matching, or rejects after timeoutMs. */
  waitForLog(pred: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /** Lines of "image event handled/failed/retried" for this agent. */
  outcomes(): LogLine[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  kill(signal?: NodeJS.Signals): void;
  /** SIGTERM, then wait for exit (SIGKILL after graceMs). */
  stop(graceMs?: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export function startAgent(args: readonly string[], env: NodeJS.ProcessEnv): AgentProcess {
  const child = spawn(process.execPath, [cliPath, 'agent', ...args], {
    env: { ...process.env, THINRELAY_LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: LogLine[] = [];
  const waiters: { pred: (l: LogLine) => boolean; resolve: (l: LogLine) => void }[] = [];
  let partial = '';
  child.stderr.on('data', (d: Buffer) => {
    partial += d.toString();
    const lines = partial.split('\n');
    partial = lines.pop()!;
    for (const text of lines) {
      if (text.trim() === '') continue;
      let line: LogLine;
      try {
        line = JSON.parse(text) as LogLine;
      } catch {
        line = { msg: text, level: 'raw' };
      }
      logs.push(line);
      if (process.env.THINRELAY_TEST_VERBOSE) process.stderr.write(`[agent] ${text}\n`);
      for (const w of [...waiters]) {
        if (w.pred(line)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(line);
        }
      }
    }
  });
  child.stdout.resume();
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal })),
  );
  const agent: AgentProcess = {
    child,
    logs,
    exited,
    waitForLog(pred, timeoutMs = 60_000) {
      const found = logs.find(pred);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          reject(
            new Error(
              `agent log line not seen in ${timeoutMs} ms; last lines:\n` +
                logs
                  .slice(-15)
                  .map((l) => JSON.stringify(l))
                  .join('\n'),
            ),
          );
        }, timeoutMs);
        const w = {
          pred,
          resolve: (l: LogLine) => {
            clearTimeout(timer);
            resolve(l);
          },
        };
        waiters.push(w);
        void exited.then(() => {
          if (!waiters.includes(w)) return;
          clearTimeout(timer);
          reject(
            new Error(
              `agent exited before the log line; last lines:\n${logs
                .slice(-15)
                .map((l) => JSON.stringify(l))
                .join('\n')}`,
            ),
          );
        });
      });
    },
    outcomes: () => logs.filter((l) => typeof l.outcome === 'string' && /image event/.test(l.msg)),
    kill(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
    async stop(graceMs = 30_000) {
      agent.kill('SIGTERM');
      const timer = setTimeout(() => agent.kill('SIGKILL'), graceMs);
      const r = await exited;
      clearTimeout(timer);
      return r;
    },
  };
  return agent;
}
