import { readFileSync } from "node:fs";
import { getAddress, isAddress } from "ethers";
import { ConfigError } from "../errors.js";
import type { MeterConnection } from "../meters/modbusMeter.js";
import { resolveRegisterMap, type RegisterMap } from "../meters/registerMaps.js";
import { DEFAULT_STRATEGY, type PriceStrategy } from "./dayAheadTrader.js";
import { parseAssets, type AssetsConfig } from "./flexibility.js";
import { DEFAULT_FLEX_PRICING, type FlexPricing } from "./intradayTrader.js";

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
  /**
   * The markets, if not those of the deployment folder: by default those the Settlement
   * contract takes schedules from (Settlement.dayAheadMarket(), intradayMarket()).
   */
  dayAheadMarket?: string | undefined;
  intradayMarket?: string | undefined;
  /** Day-ahead trading from the household's forecasts; undefined: turned off (`"dayAhead": false`). */
  dayAhead: DayAheadConfig | undefined;
  /** Hour-ahead forecasts and flexibility offers; undefined: turned off (`"intraday": false`). */
  intraday: IntradayConfig | undefined;
  /** The household's flexible assets (battery, EV charger, flexible loads), if it offers flexibility. */
  assets?: AssetsConfig | undefined;
  /** Where the assets' set-points and state registers are, if not at the meter's Modbus address. */
  assetsLink?: AssetsLink | undefined;
}

export interface DayAheadConfig {
  strategy: PriceStrategy;
  /** How long before gate closure the day's orders are placed (ms). */
  tradeLeadMs: number;
}

export interface IntradayConfig {
  pricing: FlexPricing;
}

/** The inverter's and charger's Modbus address: a link of their own, or the meter's link with another unit id. */
export interface AssetsLink {
  /** Their own link; undefined: the meter's. */
  connection: MeterConnection | undefined;
  /** Their unit id on the meter's link; undefined: the meter's (or, with a link of their own, the link's). */
  unitId: number | undefined;
}

const DEFAULTS = { pollIntervalMs: 5_000, selfSubmitAfterMs: 120_000, captureLagMs: 60_000, tradeLeadMinutes: 120 };

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
  const known = [
    "account",
    "rpcUrl",
    "settlement",
    "deploymentDir",
    "dayAheadMarket",
    "intradayMarket",
    "meter",
    "stateFile",
    "masterUrl",
    "pollIntervalMs",
    "selfSubmitAfterMs",
    "captureLagMs",
    "dayAhead",
    "intraday",
    "assets",
  ];
  for (const key of Object.keys(c)) if (!known.includes(key)) throw new ConfigError(key, `unknown field; expected one of ${known.join(", ")}`);

  const settlement = optional(c, "settlement", address);
  const deploymentDir = optional(c, "deploymentDir", text);
  if (settlement === undefined && deploymentDir === undefined) {
    throw new ConfigError("settlement", "give the Settlement address, or deploymentDir to read it from Ignition's deployment folder");
  }
  const meterConfig = meter(c.meter);
  const intraday = c.intraday === false ? undefined : intradayConfig(c.intraday ?? {});
  let assets: AssetsConfig | undefined;
  let assetsLink: AssetsLink | undefined;
  if (c.assets !== undefined) {
    if (intraday === undefined) {
      throw new ConfigError("assets", 'flexibility is offered in the balancing market, which "intraday": false turns off; remove one of them');
    }
    ({ assets, link: assetsLink } = assetsConfig(c.assets, meterConfig));
  }
  return {
    account: address(c.account, "account"),
    rpcUrl: url(c.rpcUrl, "rpcUrl"),
    settlement,
    deploymentDir,
    dayAheadMarket: optional(c, "dayAheadMarket", address),
    intradayMarket: optional(c, "intradayMarket", address),
    meter: meterConfig,
    stateFile: text(c.stateFile, "stateFile"),
    masterUrl: optional(c, "masterUrl", url),
    pollIntervalMs: optional(c, "pollIntervalMs", positive) ?? DEFAULTS.pollIntervalMs,
    selfSubmitAfterMs: optional(c, "selfSubmitAfterMs", positive) ?? DEFAULTS.selfSubmitAfterMs,
    captureLagMs: optional(c, "captureLagMs", positive) ?? DEFAULTS.captureLagMs,
    dayAhead: c.dayAhead === false ? undefined : dayAheadConfig(c.dayAhead ?? {}),
    intraday,
    assets,
    assetsLink,
  };
}

/** `"dayAhead": { buyAt?, sellAt?, sellShare?, minOrderWh?, tradeLeadMinutes? }` (or false). */
function dayAheadConfig(value: unknown): DayAheadConfig {
  const d = object(value, "dayAhead", "an object { buyAt?, sellAt?, sellShare?, minOrderWh?, tradeLeadMinutes? }, or false to place no day-ahead orders");
  known(d, ["buyAt", "sellAt", "sellShare", "minOrderWh", "tradeLeadMinutes"], "dayAhead");
  const strategy: PriceStrategy = {
    buyAt: d.buyAt === undefined ? DEFAULT_STRATEGY.buyAt : fraction(d.buyAt, "dayAhead.buyAt"),
    sellAt: d.sellAt === undefined ? DEFAULT_STRATEGY.sellAt : fraction(d.sellAt, "dayAhead.sellAt"),
    sellShare: d.sellShare === undefined ? DEFAULT_STRATEGY.sellShare : fraction(d.sellShare, "dayAhead.sellShare"),
    minOrderWh: d.minOrderWh === undefined ? DEFAULT_STRATEGY.minOrderWh : wholeWh(d.minOrderWh, "dayAhead.minOrderWh"),
  };
  const minutes = d.tradeLeadMinutes === undefined ? DEFAULTS.tradeLeadMinutes : positive(d.tradeLeadMinutes, "dayAhead.tradeLeadMinutes");
  if (minutes > 1440) throw new ConfigError("dayAhead.tradeLeadMinutes", `must be at most 1440 (a day), got ${minutes}`);
  return { strategy, tradeLeadMs: Math.round(minutes * 60_000) };
}

/** `"intraday": { upAt?, downAt? }` (or false). */
function intradayConfig(value: unknown): IntradayConfig {
  const d = object(value, "intraday", "an object { upAt?, downAt? }, or false to send no balancing forecasts or offers");
  known(d, ["upAt", "downAt"], "intraday");
  return {
    pricing: {
      upAt: d.upAt === undefined ? DEFAULT_FLEX_PRICING.upAt : fraction(d.upAt, "intraday.upAt"),
      downAt: d.downAt === undefined ? DEFAULT_FLEX_PRICING.downAt : fraction(d.downAt, "intraday.downAt"),
    },
  };
}

/** `"assets"`: the devices (flexibility.ts's parseAssets) and, in `connection`, where their registers are. */
function assetsConfig(value: unknown, meterConfig: MeterAgentConfig["meter"]): { assets: AssetsConfig; link: AssetsLink } {
  const a = object(value, "assets", "an object { utcOffsetMinutes?, preference?, minOfferWh?, connection?, devices }");
  const { connection: rawLink, ...rest } = a;
  const assets = parseAssets(rest);
  let link: AssetsLink = { connection: undefined, unitId: undefined };
  if (rawLink !== undefined) {
    const l = object(rawLink, "assets.connection", 'an object: { "unitId": n } for the meter\'s link, or a link of their own like meter\'s');
    if (l.transport === undefined) {
      known(l, ["unitId"], "assets.connection");
      link = { connection: undefined, unitId: unit(l.unitId, "assets.connection.unitId") };
    } else {
      known(l, ["transport", "host", "port", "path", "baudRate", "parity", "unitId"], "assets.connection");
      link = { connection: connection(l, "assets.connection"), unitId: undefined };
    }
    const own = link.connection;
    const meterLink = meterConfig.connection;
    if (own?.kind === "rtu" && meterLink.kind === "rtu" && own.path === meterLink.path) {
      throw new ConfigError("assets.connection.path", `${own.path} is the meter's serial port: give only { "unitId": ${own.unitId} } to reach the devices on the meter's bus`);
    }
  }
  if (assets.devices.some((d) => d.kind === "battery") && meterConfig.map.power === undefined) {
    throw new ConfigError("meter.registerMap.power", "a battery's offers need the meter's power register (the house's load); add it to the register map");
  }
  return { assets, link };
}

function meter(value: unknown): MeterAgentConfig["meter"] {
  const m = object(value, "meter", "an object with transport and model or registerMap");
  const map = resolveRegisterMap(m.registerMap ?? m.model ?? "sdm630", m.registerMap !== undefined ? "meter.registerMap" : "meter.model");
  return { connection: connection(m, "meter"), map };
}

/** A Modbus link: `{ transport: "tcp", host, port?, unitId? }` or `{ transport: "rtu", path, baudRate?, parity?, unitId? }`. */
function connection(m: Record<string, unknown>, field: string): MeterConnection {
  const unitId = m.unitId === undefined ? 1 : integer(m.unitId, `${field}.unitId`);
  if (m.transport === "tcp") {
    return { kind: "tcp", host: text(m.host, `${field}.host`), port: m.port === undefined ? 502 : integer(m.port, `${field}.port`), unitId };
  }
  if (m.transport === "rtu") {
    const parity = m.parity ?? "none";
    if (parity !== "none" && parity !== "even" && parity !== "odd") throw new ConfigError(`${field}.parity`, `must be none, even or odd, got ${JSON.stringify(parity)}`);
    return { kind: "rtu", path: text(m.path, `${field}.path`), baudRate: m.baudRate === undefined ? 9600 : integer(m.baudRate, `${field}.baudRate`), parity, unitId };
  }
  throw new ConfigError(`${field}.transport`, `must be "tcp" or "rtu", got ${JSON.stringify(m.transport)}`);
}

function object(value: unknown, field: string, expected: string): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new ConfigError(field, `must be ${expected}`);
  return value as Record<string, unknown>;
}

function known(o: Record<string, unknown>, keys: readonly string[], field: string): void {
  for (const key of Object.keys(o)) if (!keys.includes(key)) throw new ConfigError(`${field}.${key}`, `unknown field; expected one of ${keys.join(", ")}`);
}

function fraction(value: unknown, field: string): number {
  if (typeof value !== "number" || !(value >= 0 && value <= 1)) throw new ConfigError(field, `must be a fraction from 0 to 1 of the price band [floor, cap], got ${JSON.stringify(value)}`);
  return value;
}

function wholeWh(value: unknown, field: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1) throw new ConfigError(field, `must be a whole number of Wh, at least 1, got ${JSON.stringify(value)}`);
  return value;
}

function unit(value: unknown, field: string): number {
  const n = integer(value, field);
  if (n < 0 || n > 255) throw new ConfigError(field, `must be a Modbus unit id from 0 to 255, got ${n}`);
  return n;
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
