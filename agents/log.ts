/**
 * Structured logs: one JSON object per line, so journald, Loki or `jq` can filter by field.
 * Callers give level, message and fields; the logger stamps the time.
 */
export type LogLevel = "debug" | "info" | "warn" | "error";

export interface LogRecord {
  level: LogLevel;
  msg: string;
  [field: string]: unknown;
}

export type Logger = (record: LogRecord) => void;

/** Writes each record as one JSON line (to stdout unless told otherwise), bigints as strings. */
export function jsonLineLogger(
  write: (line: string) => void = (line) => process.stdout.write(line),
  fields: Record<string, unknown> = {},
): Logger {
  return (record) =>
    write(`${JSON.stringify({ ts: new Date().toISOString(), ...fields, ...record }, (_k, v) => (typeof v === "bigint" ? v.toString() : v))}\n`);
}

export const silentLogger: Logger = () => {};
