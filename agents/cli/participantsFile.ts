/**
 * The participants file: a CSV with the header `account,meterId,meterKey,kind,amount` (columns
 * in any order), one participant per line, read by `npm run distribute`. Everything is checked
 * before any transaction, and every problem is reported with its line number, so that a file
 * is fixed in one go rather than one error per run.
 */
import { readFileSync } from "node:fs";
import { decodeBytes32String, encodeBytes32String, formatUnits, getAddress, ZeroAddress } from "ethers";
import { ConfigError } from "../errors.js";
import { PARTICIPANT_KINDS, type ParticipantKind, type ParticipantSpec } from "../chain/participants.js";

export const PARTICIPANT_COLUMNS = ["account", "meterId", "meterKey", "kind", "amount"] as const;
type Column = (typeof PARTICIPANT_COLUMNS)[number];

/** The token's decimals: amounts in the file may have at most this many. */
export const TOKEN_DECIMALS = 6;

/** One valid line of the file. */
export interface ParticipantRow extends ParticipantSpec {
  /** 1-based line number in the file. */
  line: number;
  /** The meter id as written (≤31 ASCII characters). */
  meterIdText: string;
}

export interface FileProblem {
  /** 1-based line number; the header is line 1. */
  line: number;
  reason: string;
}

/** The file has problems; `problems` lists all of them in line order. */
export class ParticipantsFileError extends ConfigError {
  constructor(
    readonly source: string,
    readonly problems: readonly FileProblem[],
  ) {
    const shown = problems.slice(0, 50).map((p) => `  line ${p.line}: ${p.reason}`);
    if (problems.length > shown.length) shown.push(`  ... and ${problems.length - shown.length} more`);
    super(source, `${problems.length} problem${problems.length === 1 ? "" : "s"}, nothing was sent:\n${shown.join("\n")}`);
  }
}

/** Reads and checks a participants file; throws ParticipantsFileError listing every problem. */
export function readParticipantsFile(file: string): ParticipantRow[] {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new ConfigError(file, `cannot read the participants file: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return parseParticipantsCsv(text, file);
}

/** Parses and checks participants CSV text; `source` names it in errors. */
export function parseParticipantsCsv(text: string, source = "participants file"): ParticipantRow[] {
  const problems: FileProblem[] = [];
  const lines = text.replace(/^\uFEFF/, "").split(/\r?\n/);
  const headerIndex = lines.findIndex((l) => l.trim() !== "");
  if (headerIndex < 0) {
    throw new ParticipantsFileError(source, [{ line: 1, reason: `the file is empty; expected the header ${PARTICIPANT_COLUMNS.join(",")}` }]);
  }

  // ---- header: every known column exactly once, nothing else
  const headerLine = headerIndex + 1;
  const header = splitCsvLine(lines[headerIndex] ?? "");
  const columnAt = new Map<Column, number>();
  if (typeof header === "string") {
    problems.push({ line: headerLine, reason: header });
  } else {
    header.forEach((name, i) => {
      if (!isColumn(name)) {
        problems.push({ line: headerLine, reason: `unknown column "${name}" (expected ${PARTICIPANT_COLUMNS.join(",")})` });
      } else if (columnAt.has(name)) {
        problems.push({ line: headerLine, reason: `column "${name}" appears twice` });
      } else {
        columnAt.set(name, i);
      }
    });
    for (const name of PARTICIPANT_COLUMNS) {
      if (!columnAt.has(name)) problems.push({ line: headerLine, reason: `missing column "${name}"` });
    }
  }
  const width = typeof header === "string" ? PARTICIPANT_COLUMNS.length : header.length;

  // ---- rows: each field on its own, then uniqueness across rows
  const rows: ParticipantRow[] = [];
  const firstLineOf = { account: new Map<string, number>(), meterId: new Map<string, number>(), meterKey: new Map<string, number>() };
  let slackLine: number | undefined;
  let dataLines = 0;

  for (let i = headerIndex + 1; i < lines.length; i++) {
    const raw = lines[i] ?? "";
    if (raw.trim() === "") continue;
    dataLines++;
    const line = i + 1;
    const fields = splitCsvLine(raw);
    if (typeof fields === "string") {
      problems.push({ line, reason: fields });
      continue;
    }
    if (fields.length !== width) {
      problems.push({ line, reason: `${fields.length} field${fields.length === 1 ? "" : "s"}, expected ${width} as in the header` });
      continue;
    }
    const rowProblems: string[] = [];
    const field = (c: Column): string | undefined => {
      const at = columnAt.get(c);
      return at === undefined ? undefined : fields[at];
    };

    const account = parseAddress(field("account"), "account", rowProblems);
    const meterKey = parseAddress(field("meterKey"), "meterKey", rowProblems);
    const meterIdText = field("meterId");
    const meterId = meterIdText === undefined ? undefined : parseMeterId(meterIdText, rowProblems);
    const kindText = field("kind");
    const kind = kindText === undefined ? undefined : parseKind(kindText, rowProblems);
    const amountText = field("amount");
    const amount = amountText === undefined ? undefined : parseAmount(amountText, rowProblems);

    // Duplicates are reported on the later line, pointing at the first.
    const unique = (what: "account" | "meterId" | "meterKey", key: string | undefined): void => {
      if (key === undefined) return;
      const first = firstLineOf[what].get(key);
      if (first !== undefined) rowProblems.push(`duplicate ${what} ${what === "meterId" ? `"${meterIdText}"` : key} (first on line ${first})`);
      else firstLineOf[what].set(key, line);
    };
    unique("account", account);
    unique("meterId", meterId);
    unique("meterKey", meterKey);
    if (kind === "slackUnit") {
      if (slackLine !== undefined) rowProblems.push(`a second slack unit (the first is on line ${slackLine}); a market has one`);
      else slackLine = line;
    }

    for (const reason of rowProblems) problems.push({ line, reason });
    if (
      rowProblems.length === 0 &&
      account !== undefined &&
      meterKey !== undefined &&
      meterId !== undefined &&
      meterIdText !== undefined &&
      kind !== undefined &&
      amount !== undefined
    ) {
      rows.push({ line, account, meterId, meterIdText, meterKey, kind, amount });
    }
  }

  if (dataLines === 0) problems.push({ line: headerLine, reason: "no participants after the header" });
  if (problems.length > 0) throw new ParticipantsFileError(source, problems.sort((a, b) => a.line - b.line));
  return rows;
}

/** Writes participants as a participants file (used to generate test and benchmark files). */
export function formatParticipantsCsv(rows: readonly ParticipantSpec[]): string {
  const out = [PARTICIPANT_COLUMNS.join(",")];
  for (const r of rows) {
    out.push([r.account, decodeBytes32String(r.meterId), r.meterKey, r.kind, formatUnits(r.amount, TOKEN_DECIMALS)].join(","));
  }
  return `${out.join("\n")}\n`;
}

function isColumn(name: string): name is Column {
  return (PARTICIPANT_COLUMNS as readonly string[]).includes(name);
}

/**
 * Splits one CSV line into trimmed fields. Double quotes may enclose a field ("" is a quote);
 * a field never spans lines. Returns a reason string when the quoting is broken.
 */
function splitCsvLine(line: string): string[] | string {
  const fields: string[] = [];
  let i = 0;
  for (;;) {
    while (line[i] === " " || line[i] === "\t") i++;
    let value = "";
    if (line[i] === '"') {
      i++;
      for (;;) {
        if (i >= line.length) return "a quoted field is not closed";
        if (line[i] === '"') {
          if (line[i + 1] === '"') {
            value += '"';
            i += 2;
            continue;
          }
          i++;
          break;
        }
        value += line[i];
        i++;
      }
      while (line[i] === " " || line[i] === "\t") i++;
      if (i < line.length && line[i] !== ",") return "text after a closing quote";
    } else {
      const end = line.indexOf(",", i);
      value = (end < 0 ? line.slice(i) : line.slice(i, end)).trim();
      if (value.includes('"')) return "a quote inside an unquoted field";
      i = end < 0 ? line.length : end;
    }
    fields.push(value);
    if (i >= line.length) return fields;
    i++; // the comma
  }
}

function parseAddress(text: string | undefined, column: "account" | "meterKey", problems: string[]): string | undefined {
  if (text === undefined) return undefined;
  if (text === "") {
    problems.push(`${column} is empty`);
    return undefined;
  }
  if (!/^0x[0-9a-fA-F]{40}$/.test(text)) {
    problems.push(`${column} "${text}" is not an address (0x and 40 hex digits)`);
    return undefined;
  }
  let address: string;
  try {
    address = getAddress(text);
  } catch {
    // Mixed case is an EIP-55 checksum, and this one does not match: likely a typo.
    problems.push(`${column} ${text} has a bad checksum (mixed case that is not EIP-55); check the address, or write it all lower case`);
    return undefined;
  }
  if (address === ZeroAddress) {
    problems.push(`${column} is the zero address`);
    return undefined;
  }
  return address;
}

function parseMeterId(text: string, problems: string[]): string | undefined {
  if (text === "") {
    problems.push("meterId is empty");
    return undefined;
  }
  if (!/^[\x20-\x7e]+$/.test(text)) {
    problems.push(`meterId "${text}" has characters that are not printable ASCII`);
    return undefined;
  }
  // bytes32 holds 31 characters plus the terminating zero of encodeBytes32String.
  if (text.length > 31) {
    problems.push(`meterId "${text}" is ${text.length} characters long; at most 31 fit in bytes32`);
    return undefined;
  }
  return encodeBytes32String(text);
}

function parseKind(text: string, problems: string[]): ParticipantKind | undefined {
  const kind = PARTICIPANT_KINDS.find((k) => k.toLowerCase() === text.toLowerCase());
  if (kind === undefined) problems.push(`unknown kind "${text}" (expected one of ${PARTICIPANT_KINDS.join(", ")})`);
  return kind;
}

/** A decimal token amount ("100", "100.5", "0.000001") into base units. */
function parseAmount(text: string, problems: string[]): bigint | undefined {
  if (text === "") {
    problems.push("amount is empty");
    return undefined;
  }
  if (/^-\s*\d*\.?\d+$/.test(text) || /^-\s*\d+\.?\d*$/.test(text)) {
    problems.push(`amount ${text} is negative`);
    return undefined;
  }
  const match = /^\+?(\d+)(?:\.(\d*))?$/.exec(text) ?? /^\+?()\.(\d+)$/.exec(text);
  if (match === null) {
    problems.push(`amount "${text}" is not a decimal number of tokens (like 100 or 100.5)`);
    return undefined;
  }
  const whole = match[1] ?? "";
  const fraction = match[2] ?? "";
  if (fraction.length > TOKEN_DECIMALS) {
    problems.push(`amount ${text} has ${fraction.length} decimals; the token has ${TOKEN_DECIMALS}`);
    return undefined;
  }
  return BigInt(whole === "" ? "0" : whole) * 10n ** BigInt(TOKEN_DECIMALS) + BigInt(fraction.padEnd(TOKEN_DECIMALS, "0") || "0");
}
