import { readFileSync } from "node:fs";
import { getAddress, isAddress } from "ethers";
import { ConfigError } from "../errors.js";
import type { MeterConnection } from "../meters/modbusMeter.js";
import { resolveRegisterMap, type RegisterMap } from "../meters/registerMaps.js";
import { parseAssets, type AssetsConfig } from "./flexibility.js";

/** A meter agent's configuration, validated. Keys are not in it: they come from the environment. */
export interface MeterAgentConfig {
  /** The participant's wallet account (the one registered in the ParticipantRegistry). */
  account: string;
  rpcUrl: string;
  /** Settlement contract address, or an Ignition deployment folder to read it from. */
  settlement?: string | undefined;
  deploymentDir?: string | undefined;
  meter: { connection: MeterConnection; map: RegisterMap };
  /** Where the agent keeps its registers and pending readings. */
  stateFile: string;
  masterUrl?: string | undefined;
  pollIntervalMs: number;
  selfSubmitAfterMs: number;
  captureLagMs: number;
  /** The household's flexible assets (battery, EV charger, flexible loads), if it offers flexibility. */
  assets?: AssetsConfig | undefined;
}

const DEFAULTS = { pollIntervalMs: 5_000, selfSubmitAfterMs: 120_000, captureLagMs: 60_000 };

/** Reads and validates a JSON config file; every error names the field to fix. */
export function loadMeterAgentConfig(file: string): MeterAgentConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    throw new ConfigError(file, `cannot read the config as JSON: ${(e as Error).message}`);
  }
  return parseMeterAgentConfig(raw);
}

export function parseMeterAgentConfig(raw: unknown): MeterAgentConfig {
  if (typeof raw !== "object" || raw === null) throw new ConfigError("(config)", "must be a JSON object");
  const c = raw as Record<string, unknown>;
  const known = ["account", "rpcUrl", "settlement", "deploymentDir", "meter", "stateFile", "masterUrl", "pollIntervalMs", "selfSubmitAfterMs", "captureLagMs", "assets"];
  for (const key of Object.keys(c)) if (!known.includes(key)) throw new ConfigError(key, `unknown field; expected one of ${known.join(", ")}`);

  const settlement = optional(c, "settlement", address);
  const deploymentDir = optional(c, "deploymentDir", text);
  if (settlement === undefined && deploymentDir === undefined) {
    throw new ConfigError("settlement", "give the Settlement address, or deploymentDir to read it from Ignition's deployment folder");
  }
  return {
    account: address(c.account, "account"),
    rpcUrl: url(c.rpcUrl, "rpcUrl"),
    settlement,
    deploymentDir,
    meter: meter(c.meter),
    stateFile: text(c.stateFile, "stateFile"),
    masterUrl: optional(c, "masterUrl", url),
    pollIntervalMs: optional(c, "pollIntervalMs", positive) ?? DEFAULTS.pollIntervalMs,
    selfSubmitAfterMs: optional(c, "selfSubmitAfterMs", positive) ?? DEFAULTS.selfSubmitAfterMs,
    captureLagMs: optional(c, "captureLagMs", positive) ?? DEFAULTS.captureLagMs,
    assets: optional(c, "assets", parseAssets),
  };
}

function meter(value: unknown): MeterAgentConfig["meter"] {
  if (typeof value !== "object" || value === null) throw new ConfigError("meter", "must be an object with transport and model or registerMap");
  const m = value as Record<string, unknown>;
  const map = resolveRegisterMap(m.registerMap ?? m.model ?? "sdm630", m.registerMap !== undefined ? "meter.registerMap" : "meter.model");
  const unitId = m.unitId === undefined ? 1 : integer(m.unitId, "meter.unitId");
  let connection: MeterConnection;
  if (m.transport === "tcp") {
    connection = { kind: "tcp", host: text(m.host, "meter.host"), port: m.port === undefined ? 502 : integer(m.port, "meter.port"), unitId };
  } else if (m.transport === "rtu") {
    const parity = m.parity ?? "none";
    if (parity !== "none" && parity !== "even" && parity !== "odd") throw new ConfigError("meter.parity", `must be none, even or odd, got ${JSON.stringify(parity)}`);
    connection = { kind: "rtu", path: text(m.path, "meter.path"), baudRate: m.baudRate === undefined ? 9600 : integer(m.baudRate, "meter.baudRate"), parity, unitId };
  } else {
    throw new ConfigError("meter.transport", `must be "tcp" or "rtu", got ${JSON.stringify(m.transport)}`);
  }
  return { connection, map };
}

function optional<T>(c: Record<string, unknown>, key: string, parse: (v: unknown, field: string) => T): T | undefined {
  return c[key] === undefined ? undefined : parse(c[key], key);
}

function text(value: unknown, field: string): string {
  if (typeof value !== "string" || value.trim() === "") throw new ConfigError(field, "must be a non-empty string");
  return value;
}

function address(value: unknown, field: string): string {
  if (typeof value !== "string" || !isAddress(value)) throw new ConfigError(field, `must be a 0x address, got ${JSON.stringify(value)}`);
  return getAddress(value);
}

function url(value: unknown, field: string): string {
  const s = text(value, field);
  try {
    new URL(s);
  } catch {
    throw new ConfigError(field, `must be a URL such as http://127.0.0.1:8545, got ${JSON.stringify(s)}`);
  }
  return s;
}

function integer(value: unknown, field: string): number {
  if (typeof value !== "number" || !Number.isInteger(value)) throw new ConfigError(field, `must be an integer, got ${JSON.stringify(value)}`);
  return value;
}

function positive(value: unknown, field: string): number {
  if (typeof value !== "number" || !(value > 0)) throw new ConfigError(field, `must be a positive number, got ${JSON.stringify(value)}`);
  return value;
}
