import { ConfigError } from "../errors.js";

/**
 * Modbus register maps of the energy registers a meter agent reads. Addresses are
 * zero-based protocol addresses (what goes on the wire), not the 3xxxx/4xxxx "register
 * numbers" of data sheets: SDM's "30073" is input register 0x0048.
 */

export type RegisterType = "input" | "holding";
/** Order of the 16-bit words of a multi-word value; bytes inside a word are always big-endian. */
export type WordOrder = "big" | "little";
export type DataType = "float32" | "uint32" | "int32" | "uint64";

export interface PowerRegister {
  address: number;
  /** Watts per raw unit. A positive value means power drawn from the grid. */
  scaleW: number;
}

export interface RegisterMap {
  name: string;
  registerType: RegisterType;
  wordOrder: WordOrder;
  dataType: DataType;
  /** Watt-hours per raw unit: 1000 for registers in kWh, 1 for registers in Wh. */
  scaleWh: number;
  importAddress: number;
  exportAddress: number;
  power?: PowerRegister;
}

export const WORDS_PER_TYPE: Readonly<Record<DataType, number>> = {
  float32: 2,
  uint32: 2,
  int32: 2,
  uint64: 4,
};

/** Largest block one Modbus read may request (FC3/FC4 limit). */
export const MAX_REGISTERS_PER_READ = 125;

// SDM120 (single phase): 0x000C is "active power" and the only power register it has.
export const SDM120: Readonly<RegisterMap> = Object.freeze({
  name: "SDM120",
  registerType: "input",
  wordOrder: "big",
  dataType: "float32",
  scaleWh: 1000,
  importAddress: 0x0048,
  exportAddress: 0x004a,
  power: Object.freeze({ address: 0x000c, scaleW: 1 }),
});

// SDM630 (three phase): 0x000C is phase 1 power only, so the map uses 0x0034,
// "total system power", which is what a household's import/export depends on.
export const SDM630: Readonly<RegisterMap> = Object.freeze({
  name: "SDM630",
  registerType: "input",
  wordOrder: "big",
  dataType: "float32",
  scaleWh: 1000,
  importAddress: 0x0048,
  exportAddress: 0x004a,
  power: Object.freeze({ address: 0x0034, scaleW: 1 }),
});

export const PRESET_MAPS: Readonly<Record<string, Readonly<RegisterMap>>> = Object.freeze({
  SDM120,
  SDM630,
});

const MAP_KEYS = new Set([
  "name",
  "registerType",
  "wordOrder",
  "dataType",
  "scaleWh",
  "importAddress",
  "exportAddress",
  "power",
]);
const POWER_KEYS = new Set(["address", "scaleW"]);

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function oneOf<T extends string>(value: unknown, allowed: readonly T[], field: string): T {
  if (typeof value !== "string" || !(allowed as readonly string[]).includes(value)) {
    throw new ConfigError(field, `must be one of ${allowed.map((a) => `"${a}"`).join(", ")}, got ${JSON.stringify(value)}`);
  }
  return value as T;
}

function address(value: unknown, words: number, field: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0 || value + words - 1 > 0xffff) {
    throw new ConfigError(
      field,
      `must be an integer register address from 0 to ${0xffff - words + 1} (the value spans ${words} registers), got ${JSON.stringify(value)}`,
    );
  }
  return value;
}

function positiveScale(value: unknown, field: string): number {
  if (typeof value !== "number" || !Number.isFinite(value) || value <= 0) {
    throw new ConfigError(field, `must be a positive finite number, got ${JSON.stringify(value)}`);
  }
  return value;
}

function rejectUnknownKeys(obj: Record<string, unknown>, known: Set<string>, field: string): void {
  for (const key of Object.keys(obj)) {
    // An unknown key is usually a typo ("importAdress") that would otherwise fall back silently.
    if (!known.has(key)) throw new ConfigError(`${field}.${key}`, `unknown field; expected one of ${[...known].join(", ")}`);
  }
}

/**
 * Validates a register map from configuration (a plain object, e.g. parsed JSON) and
 * returns a typed copy. Throws ConfigError naming the first invalid field, prefixed with
 * `field` so that the message points into the caller's configuration file.
 */
export function parseRegisterMap(input: unknown, field = "meter.registerMap"): RegisterMap {
  if (!isPlainObject(input)) throw new ConfigError(field, `must be an object, got ${JSON.stringify(input)}`);
  rejectUnknownKeys(input, MAP_KEYS, field);

  const name = input.name;
  if (typeof name !== "string" || name.trim() === "") {
    throw new ConfigError(`${field}.name`, "must be a non-empty string");
  }
  const registerType = oneOf(input.registerType, ["input", "holding"], `${field}.registerType`);
  const wordOrder = oneOf(input.wordOrder, ["big", "little"], `${field}.wordOrder`);
  const dataType = oneOf(input.dataType, ["float32", "uint32", "int32", "uint64"], `${field}.dataType`);
  const scaleWh = positiveScale(input.scaleWh, `${field}.scaleWh`);
  toRational(scaleWh, `${field}.scaleWh`);
  const words = WORDS_PER_TYPE[dataType];
  const importAddress = address(input.importAddress, words, `${field}.importAddress`);
  const exportAddress = address(input.exportAddress, words, `${field}.exportAddress`);
  if (Math.abs(importAddress - exportAddress) < words) {
    throw new ConfigError(
      `${field}.exportAddress`,
      `overlaps importAddress ${importAddress}: a ${dataType} value spans ${words} registers`,
    );
  }

  const map: RegisterMap = { name, registerType, wordOrder, dataType, scaleWh, importAddress, exportAddress };
  if (input.power !== undefined) {
    const p = input.power;
    if (!isPlainObject(p)) throw new ConfigError(`${field}.power`, "must be an object { address, scaleW }");
    rejectUnknownKeys(p, POWER_KEYS, `${field}.power`);
    map.power = {
      address: address(p.address, words, `${field}.power.address`),
      scaleW: positiveScale(p.scaleW, `${field}.power.scaleW`),
    };
  }
  return map;
}

/**
 * A preset name ("SDM120", "SDM630") or a custom map object, as found in a meter's
 * configuration.
 */
export function resolveRegisterMap(input: unknown, field = "meter.registerMap"): RegisterMap {
  if (typeof input === "string") {
    // Model names are matched case-insensitively: "sdm630" in a config means SDM630.
    const key = Object.keys(PRESET_MAPS).find((name) => name.toLowerCase() === input.toLowerCase());
    const preset = key === undefined ? undefined : PRESET_MAPS[key];
    if (preset === undefined) {
      throw new ConfigError(field, `unknown preset "${input}"; use one of ${Object.keys(PRESET_MAPS).join(", ")} or a custom map object`);
    }
    return { ...preset, ...(preset.power ? { power: { ...preset.power } } : {}) };
  }
  return parseRegisterMap(input, field);
}

/** An exact non-negative rational, so that scaling a register never adds rounding of its own. */
export interface Rational {
  num: bigint;
  den: bigint;
}

/**
 * The exact decimal value of a scale such as 1000, 0.1 or 2.5e-3. Rejects scales whose
 * decimal form has more than 12 fractional digits: a scale like 1/3 cannot be meant exactly.
 */
export function toRational(value: number, field: string): Rational {
  const match = /^(\d+)(?:\.(\d+))?(?:e([+-]?\d+))?$/.exec(String(value));
  if (match === null) throw new ConfigError(field, `cannot use ${value} as an exact decimal scale`);
  const [, intPart = "0", frac = "", expText = "0"] = match;
  const exp = Number(expText) - frac.length;
  if (exp < -12) throw new ConfigError(field, `${value} has more than 12 decimal places; give an exact decimal scale`);
  const digits = BigInt(intPart + frac);
  return exp >= 0 ? { num: digits * 10n ** BigInt(exp), den: 1n } : { num: digits, den: 10n ** BigInt(-exp) };
}
