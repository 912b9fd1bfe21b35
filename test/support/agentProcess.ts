/**
 * The meter agent as a real process (agents/meter-agent/main.ts) for tests: spawned with its
 * key in the environment, its JSON log lines collected, waited for and dumped on failure.
 */
import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";
import { PROJECT_ROOT } from "../../agents/chain/localNode.js";

export interface LogLine {
  ts: string;
  level: string;
  msg: string;
  slot?: number;
  importWh?: string;
  exportWh?: string;
  [field: string]: unknown;
}

/** One run of the meter agent process, with its JSON log lines. */
export class AgentProcess {
  readonly lines: LogLine[] = [];
  stderr = "";
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly child: ChildProcess;
  private readonly waiters = new Set<() => void>();

  constructor(configFile: string, privateKey: string) {
    // `node --import tsx`, not the tsx CLI: the CLI runs the script in a child process of its
    // own, which a SIGKILL of the CLI would leave running.
    this.child = spawn(process.execPath, ["--import", "tsx", path.join("agents", "meter-agent", "main.ts"), "--config", configFile], {
      cwd: PROJECT_ROOT,
      env: { ...process.env, METER_AGENT_PRIVATE_KEY: privateKey },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let buffer = "";
    this.child.stdout!.on("data", (chunk: Buffer) => {
      buffer += chunk.toString("utf8");
      let newline: number;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        try {
          this.lines.push(JSON.parse(line) as LogLine);
        } catch {
          this.lines.push({ ts: new Date().toISOString(), level: "raw", msg: line });
        }
        for (const wake of this.waiters) wake();
      }
    });
    this.child.stderr!.on("data", (chunk: Buffer) => (this.stderr += chunk.toString("utf8")));
    this.exited = new Promise((resolve) => this.child.once("exit", (code, signal) => resolve({ code, signal })));
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** The first log line matching `match`, waiting up to `timeoutMs`. */
  async waitFor(match: (l: LogLine) => boolean, timeoutMs: number, what: string): Promise<LogLine> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.lines.find(match);
      if (found !== undefined) return found;
      if (!this.running) throw new Error(`agent exited while waiting for ${what}:\n${this.dump()}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${what} within ${timeoutMs} ms:\n${this.dump()}`);
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          clearTimeout(timer);
          this.waiters.delete(wake);
          resolve();
        };
        const timer = setTimeout(wake, Math.min(left, 200));
        this.waiters.add(wake);
      });
    }
  }

  kill(signal: NodeJS.Signals): void {
    if (this.running) this.child.kill(signal);
  }

  dump(): string {
    return `${this.lines.map((l) => JSON.stringify(l)).join("\n")}\n${this.stderr}`;
  }
}
