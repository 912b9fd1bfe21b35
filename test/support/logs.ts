import type { LogRecord, Logger } from "../../agents/log.js";

/** A logger that keeps every record, to check what an agent reported. */
export class LogCollector {
  readonly records: LogRecord[] = [];
  readonly logger: Logger = (record) => {
    this.records.push(record);
  };

  /** Records with message `msg` whose fields include `fields`. */
  find(msg: string, fields: Record<string, unknown> = {}): LogRecord[] {
    return this.records.filter((r) => r.msg === msg && Object.entries(fields).every(([k, v]) => r[k] === v));
  }

  /** Every message, for assertion failures. */
  dump(): string {
    return this.records.map((r) => JSON.stringify(r, (_k, v) => (typeof v === "bigint" ? v.toString() : v))).join("\n");
  }
}
