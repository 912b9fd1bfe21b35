import { ConfigError, MarketError } from "../errors.js";
import { silentLogger, type Logger } from "../log.js";
import type { ModbusMeter, SetpointType } from "../meters/modbusMeter.js";
import { BATTERY_MODE, DEVICE_INPUTS, EV_MODE, SETPOINT_REGISTERS } from "../simulator/meterServer.js";
import type { HouseholdSpec } from "../simulator/profiles.js";

/**
 * The household's flexibility in the intra-day balancing market: what its battery, EV
 * charger and flexible loads can really deliver in a slot, and driving them over Modbus
 * when an offer is activated.
 *
 * Sign conventions follow IIntradayMarket: an upward offer (isUp) is more generation or
 * less consumption, the participant sells; a downward offer is the reverse, it buys. An
 * activation is signed like `activationOf`: + downward (the house draws more), - upward.
 *
 * Everything is measured against the devices' automatic behaviour, which is what the
 * household's forecasts already contain: the battery in self-consumption (it covers the
 * house's net load within its power and SoC limits), the EV charging at full power until
 * the car has what it asks for, the flexible loads running. Offers project the devices'
 * state from the last reading to the slot's start, assuming the house's net load stays
 * as it was read (persistence) and any activations the controller knows of take place.
 */

// ---------------------------------------------------------------------------------------
// Configuration

/** Holding registers (set-points) and input registers (state) of a battery inverter. */
export interface BatteryRegisters {
  /** Holding, uint16: 0 self-consumption, 1 hold the power set-point. */
  mode: number;
  /** Holding, int16 W, positive discharges. */
  powerW: number;
  /** Input, float32: state of charge in %. */
  socPct: number;
  /** Input, float32: AC power in W, positive discharging. */
  powerReadingW: number;
}

export interface EvRegisters {
  /** Holding, uint16: 0 full power, 1 paused, 2 hold the power set-point. */
  mode: number;
  /** Holding, uint16 W. */
  powerW: number;
  /** Input, float32: 1 while the car is plugged in. */
  pluggedIn: number;
  /** Input, float32: energy delivered in this plug-in session, Wh. */
  sessionWh: number;
  /** Input, float32: energy the car still asks for, Wh; null if the charger cannot tell (then energyNeededWh is the car's need). */
  remainingWh: number | null;
  /** Input, float32: charging power in W. */
  powerReadingW: number;
}

export interface FlexibleLoadRegisters {
  /** Holding, uint16 s: shed for this long from now (the load then resumes by itself); 0 runs it now. */
  shedSeconds: number;
  /** Input, float32: power in W; null if the load has no reading (then it is taken to run at powerW). */
  powerReadingW: number | null;
  /** Input, float32: seconds it stays shed; null if the load cannot tell. */
  shedSecondsReading: number | null;
}

export interface BatteryAsset {
  kind: "battery";
  capacityWh: number;
  maxPowerW: number;
  /** The controller never plans below this SoC, nor above maxSocPct. */
  minSocPct: number;
  maxSocPct: number;
  /** One-way efficiency, applied when charging and again when discharging (as in the simulator). */
  efficiency: number;
  /**
   * Share of the projected capacity offered (default 0.9). What the battery can add to or
   * take from its self-consumption depends on the house's load and PV at the slot, which
   * the projection holds at their last reading; the EV and flexible loads need no margin.
   */
  offerShare: number;
  registers: BatteryRegisters;
}

export interface EvAsset {
  kind: "ev";
  /** "HH:MM" in the household's time (UTC + assets.utcOffsetMinutes): from when the charging may be shifted. */
  availableFrom: string;
  /** "HH:MM": when the car leaves; energyNeededWh must be in it by then. */
  departure: string;
  /** What a session must deliver by departure. */
  energyNeededWh: number;
  maxPowerW: number;
  registers: EvRegisters;
}

export interface FlexibleLoadAsset {
  kind: "flexibleLoad";
  name: string;
  /** The power it draws while running. */
  powerW: number;
  /** Longest it may be held off in one go; it must then run at least as long before the next shed. */
  maxDelayMinutes: number;
  registers: FlexibleLoadRegisters;
}

export type Asset = BatteryAsset | EvAsset | FlexibleLoadAsset;

/**
 * The directions the household offers flexibility in. The intra-day trader offers each slot
 * the direction the neighbourhood's expected imbalance needs: "both" (the default) lets it go
 * either way, "upOnly" and "downOnly" keep it to one (a slot that needs the other gets no
 * offer): offersFor never gives the excluded direction.
 */
export type OfferPreference = "both" | "upOnly" | "downOnly";
const PREFERENCES: readonly OfferPreference[] = ["both", "upOnly", "downOnly"];
/**
 * Accepted before, to choose between an upward and a downward offer, but never applied: the
 * trader takes the direction from the slot's imbalance. Refused, so that no config relies on them.
 */
const RETIRED_PREFERENCES = ["larger", "up", "down"];

export interface AssetsConfig {
  /** Local time of the EV's HH:MM times is UTC plus this (fixed, no daylight saving, as in the simulator). Default 0: UTC. */
  utcOffsetMinutes: number;
  /** The directions offered (default "both"). */
  preference: OfferPreference;
  /** Offers below this are not made. */
  minOfferWh: number;
  /** In the order they are used when an activation is split between them. */
  devices: Asset[];
}

const DEFAULT_BATTERY_REGISTERS: BatteryRegisters = {
  mode: SETPOINT_REGISTERS.batteryMode,
  powerW: SETPOINT_REGISTERS.batteryPowerW,
  socPct: DEVICE_INPUTS.batterySocPct,
  powerReadingW: DEVICE_INPUTS.batteryPowerW,
};
const DEFAULT_EV_REGISTERS: EvRegisters = {
  mode: SETPOINT_REGISTERS.evMode,
  powerW: SETPOINT_REGISTERS.evPowerW,
  pluggedIn: DEVICE_INPUTS.evPluggedIn,
  sessionWh: DEVICE_INPUTS.evSessionWh,
  remainingWh: DEVICE_INPUTS.evRemainingWh,
  powerReadingW: DEVICE_INPUTS.evPowerW,
};
const DEFAULT_FLEXIBLE_LOAD_REGISTERS: FlexibleLoadRegisters = {
  shedSeconds: SETPOINT_REGISTERS.flexibleLoadShedSeconds,
  powerReadingW: DEVICE_INPUTS.flexibleLoadPowerW,
  shedSecondsReading: DEVICE_INPUTS.flexibleLoadShedSeconds,
};
/** Which registers are set-points (holding) and which are readings (input, float32). */
const HOLDING_KEYS = new Set(["mode", "powerW", "shedSeconds"]);

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function rejectUnknown(obj: Record<string, unknown>, known: readonly string[], field: string): void {
  for (const key of Object.keys(obj)) {
    if (!known.includes(key)) throw new ConfigError(`${field}.${key}`, `unknown field; expected one of ${known.join(", ")}`);
  }
}

function num(value: unknown, field: string, check: (n: number) => boolean, expected: string): number {
  if (typeof value !== "number" || !Number.isFinite(value) || !check(value)) {
    throw new ConfigError(field, `must be ${expected}, got ${JSON.stringify(value)}`);
  }
  return value;
}

const positive = (value: unknown, field: string, max = Infinity, unit = "") =>
  num(value, field, (n) => n > 0 && n <= max, max === Infinity ? `a positive number${unit}` : `a positive number${unit} up to ${max}`);

function clockTime(value: unknown, field: string): string {
  if (typeof value !== "string" || !/^([01]\d|2[0-3]):[0-5]\d$/.test(value)) {
    throw new ConfigError(field, `must be a time "HH:MM" from 00:00 to 23:59, got ${JSON.stringify(value)}`);
  }
  return value;
}

function minutesOfDay(hhmm: string): number {
  return Number(hhmm.slice(0, 2)) * 60 + Number(hhmm.slice(3, 5));
}

/** Register addresses of one device: the defaults, with the configured ones over them. `nullable` ones may be null (no such register). */
function registers<T extends object>(value: unknown, defaults: T, nullable: readonly string[], field: string): T {
  if (value === undefined) return { ...defaults };
  if (!isObject(value)) throw new ConfigError(field, "must be an object of register addresses");
  const keys = Object.keys(defaults);
  rejectUnknown(value, keys, field);
  const out: Record<string, number | null> = { ...(defaults as Record<string, number | null>) };
  for (const key of keys) {
    const v = value[key];
    if (v === undefined) continue;
    if (v === null && nullable.includes(key)) {
      out[key] = null;
      continue;
    }
    const words = HOLDING_KEYS.has(key) ? 1 : 2;
    out[key] = num(v, `${field}.${key}`, (n) => Number.isInteger(n) && n >= 0 && n + words - 1 <= 0xffff, `a register address from 0 to ${0x10000 - words}`);
  }
  return out as T;
}

function parseDevice(value: unknown, field: string): Asset {
  if (!isObject(value)) throw new ConfigError(field, 'must be an object with kind "battery", "ev" or "flexibleLoad"');
  switch (value.kind) {
    case "battery": {
      rejectUnknown(value, ["kind", "capacityWh", "maxPowerW", "minSocPct", "maxSocPct", "efficiency", "offerShare", "registers"], field);
      const minSocPct = num(value.minSocPct, `${field}.minSocPct`, (n) => n >= 0 && n < 100, "a percentage from 0 to below 100");
      const maxSocPct = num(value.maxSocPct, `${field}.maxSocPct`, (n) => n > minSocPct && n <= 100, `a percentage above minSocPct (${minSocPct}) up to 100`);
      return {
        kind: "battery",
        capacityWh: positive(value.capacityWh, `${field}.capacityWh`, Infinity, " of Wh"),
        // The simulator's (and most inverters') power set-point is an int16 in W.
        maxPowerW: positive(value.maxPowerW, `${field}.maxPowerW`, 0x7fff, " of W"),
        minSocPct,
        maxSocPct,
        efficiency: value.efficiency === undefined ? 0.95 : num(value.efficiency, `${field}.efficiency`, (n) => n > 0 && n <= 1, "a fraction above 0 up to 1"),
        offerShare: value.offerShare === undefined ? 0.9 : num(value.offerShare, `${field}.offerShare`, (n) => n > 0 && n <= 1, "a fraction above 0 up to 1"),
        registers: registers(value.registers, DEFAULT_BATTERY_REGISTERS, [], `${field}.registers`),
      };
    }
    case "ev": {
      rejectUnknown(value, ["kind", "availableFrom", "departure", "energyNeededWh", "maxPowerW", "registers"], field);
      const availableFrom = clockTime(value.availableFrom, `${field}.availableFrom`);
      const departure = clockTime(value.departure, `${field}.departure`);
      if (availableFrom === departure) throw new ConfigError(`${field}.departure`, `must differ from availableFrom (${availableFrom})`);
      return {
        kind: "ev",
        availableFrom,
        departure,
        energyNeededWh: num(value.energyNeededWh, `${field}.energyNeededWh`, (n) => n >= 0, "a non-negative number of Wh"),
        maxPowerW: positive(value.maxPowerW, `${field}.maxPowerW`, 0xffff, " of W"),
        registers: registers(value.registers, DEFAULT_EV_REGISTERS, ["remainingWh"], `${field}.registers`),
      };
    }
    case "flexibleLoad": {
      rejectUnknown(value, ["kind", "name", "powerW", "maxDelayMinutes", "registers"], field);
      if (value.name !== undefined && (typeof value.name !== "string" || value.name.trim() === "")) {
        throw new ConfigError(`${field}.name`, "must be a non-empty string");
      }
      return {
        kind: "flexibleLoad",
        name: (value.name as string | undefined) ?? "flexible load",
        powerW: positive(value.powerW, `${field}.powerW`, Infinity, " of W"),
        // The shed time goes into a uint16 register of seconds.
        maxDelayMinutes: positive(value.maxDelayMinutes, `${field}.maxDelayMinutes`, Math.floor(0xffff / 60), " of minutes"),
        registers: registers(value.registers, DEFAULT_FLEXIBLE_LOAD_REGISTERS, ["powerReadingW", "shedSecondsReading"], `${field}.registers`),
      };
    }
    default:
      throw new ConfigError(`${field}.kind`, `must be "battery", "ev" or "flexibleLoad", got ${JSON.stringify(value.kind)}`);
  }
}

/**
 * Validates the `assets` section of a meter agent's configuration:
 * `{ utcOffsetMinutes?, preference?, minOfferWh?, devices: [...] }`. Every error names the
 * field to fix, prefixed with `field`.
 */
export function parseAssets(raw: unknown, field = "assets"): AssetsConfig {
  if (!isObject(raw)) throw new ConfigError(field, "must be an object { utcOffsetMinutes?, preference?, minOfferWh?, devices }");
  rejectUnknown(raw, ["utcOffsetMinutes", "preference", "minOfferWh", "devices"], field);
  const utcOffsetMinutes =
    raw.utcOffsetMinutes === undefined
      ? 0
      : num(raw.utcOffsetMinutes, `${field}.utcOffsetMinutes`, (n) => Number.isInteger(n) && n >= -720 && n <= 840, "an integer from -720 to 840");
  const preference = raw.preference ?? "both";
  if (typeof preference === "string" && RETIRED_PREFERENCES.includes(preference)) {
    throw new ConfigError(
      `${field}.preference`,
      `${JSON.stringify(preference)} chose between an upward and a downward offer, which the agent never does: it offers each slot the direction the neighbourhood's imbalance needs. Leave preference out (or "both"), or give "upOnly" or "downOnly" to offer in one direction only`,
    );
  }
  if (typeof preference !== "string" || !(PREFERENCES as readonly string[]).includes(preference)) {
    throw new ConfigError(`${field}.preference`, `must be one of ${PREFERENCES.join(", ")}, got ${JSON.stringify(preference)}`);
  }
  const minOfferWh = raw.minOfferWh === undefined ? 10 : num(raw.minOfferWh, `${field}.minOfferWh`, (n) => Number.isInteger(n) && n >= 1, "a whole number of Wh, at least 1");
  if (!Array.isArray(raw.devices) || raw.devices.length === 0) throw new ConfigError(`${field}.devices`, "must be a non-empty array of assets");
  const devices = raw.devices.map((d, i) => parseDevice(d, `${field}.devices[${i}]`));

  // One battery and one EV: their automatic behaviours would otherwise interact in ways
  // the baseline cannot tell. Flexible loads can be many, each on its own registers.
  for (const kind of ["battery", "ev"] as const) {
    const at = devices.flatMap((d, i) => (d.kind === kind ? [i] : []));
    if (at.length > 1) throw new ConfigError(`${field}.devices[${at[1]}]`, `only one ${kind} is supported; devices[${at[0]}] is one already`);
  }
  const used = new Map<string, string>();
  devices.forEach((d, i) => {
    for (const [key, address] of Object.entries(d.registers) as Array<[string, number | null]>) {
      if (address === null) continue;
      const id = `${HOLDING_KEYS.has(key) ? "holding" : "input"} ${address}`;
      const where = `${field}.devices[${i}].registers.${key}`;
      const other = used.get(id);
      if (other !== undefined) throw new ConfigError(where, `${id} is already ${other}; give this device its own registers`);
      used.set(id, where);
    }
  });
  return { utcOffsetMinutes, preference: preference as OfferPreference, minOfferWh, devices };
}

/**
 * The assets of a simulated household (agents/simulator/profiles.ts), as a meter agent
 * would configure them, or undefined if it has none: for demos and tests. The plan asks
 * for the most a session may need, so the car always leaves with what it asked for.
 */
export function assetsOfSimulatedHousehold(spec: HouseholdSpec, preference: OfferPreference = "both"): AssetsConfig | undefined {
  const hhmm = (hours: number) => {
    const minutes = Math.round(hours * 60) % 1440;
    return `${String(Math.floor(minutes / 60)).padStart(2, "0")}:${String(minutes % 60).padStart(2, "0")}`;
  };
  const devices: unknown[] = [];
  const b = spec.battery;
  if (b !== undefined) {
    devices.push({ kind: "battery", capacityWh: b.capacityKwh * 1000, maxPowerW: b.maxPowerKw * 1000, minSocPct: b.socMin * 100, maxSocPct: b.socMax * 100, efficiency: b.efficiency });
  }
  const ev = spec.ev;
  if (ev !== undefined) {
    devices.push({ kind: "ev", availableFrom: hhmm(ev.arriveHour), departure: hhmm(ev.departHour), energyNeededWh: ev.needKwh * 1500, maxPowerW: ev.maxPowerKw * 1000 });
  }
  if (spec.flexibleLoad !== undefined) devices.push({ kind: "flexibleLoad", powerW: spec.flexibleLoad.powerW, maxDelayMinutes: 15 });
  return devices.length === 0 ? undefined : parseAssets({ utcOffsetMinutes: spec.utcOffsetMinutes, preference, devices });
}

// ---------------------------------------------------------------------------------------
// Device access

/** What the controller needs of the Modbus link. */
export interface FlexibilityIo {
  /** Raw 16-bit input registers. */
  readInputRegisters(address: number, length: number): Promise<number[]>;
  /** The meter's net power, W, positive importing. */
  readPowerW(): Promise<number>;
  writeSetpoint(register: number, value: number, type: SetpointType): Promise<void>;
}

/**
 * FlexibilityIo through ModbusMeter clients, for the meter agent on a Pi as for the demo and
 * tests: the house's power from the meter, the devices' state and set-points through `devices`
 * (the meter's own client when the inverter and charger answer on the meter's link, over RTU
 * too, or a client of their own link), addressed to `unitId` if they have a unit id of their
 * own on that link. Every request goes through the client's queue, retries and backoff, so one
 * serial bus serves all.
 */
export class ModbusDeviceIo implements FlexibilityIo {
  constructor(
    private readonly meter: ModbusMeter,
    private readonly devices: ModbusMeter = meter,
    private readonly unitId?: number,
  ) {}

  readPowerW(): Promise<number> {
    return this.meter.readPowerW();
  }

  async readInputRegisters(address: number, length: number): Promise<number[]> {
    try {
      return await this.devices.readInputRegisters(address, length, this.unitId);
    } catch (error) {
      if (error instanceof MarketError && error.code === "METER_READ") {
        throw new MarketError("FLEX_DEVICE", `device registers ${address} to ${address + length - 1}: ${error.message}; check assets.devices[].registers and assets.connection`, { cause: error });
      }
      throw error;
    }
  }

  writeSetpoint(register: number, value: number, type: SetpointType): Promise<void> {
    return this.devices.writeSetpoint(register, value, type, this.unitId);
  }
}

function float32At(words: Map<number, number>, address: number): number {
  const view = new DataView(new ArrayBuffer(4));
  view.setUint16(0, words.get(address) ?? 0);
  view.setUint16(2, words.get(address + 1) ?? 0);
  return view.getFloat32(0);
}

// ---------------------------------------------------------------------------------------
// State

export interface BatteryState {
  kind: "battery";
  socPct: number;
  storedWh: number;
  /** AC power, positive discharging. */
  powerW: number;
}

export interface EvState {
  kind: "ev";
  pluggedIn: boolean;
  /** Delivered in this plug-in session. */
  sessionWh: number;
  /** What the car still asks for, if the charger can tell. */
  remainingWh: number | undefined;
  powerW: number;
}

export interface FlexibleLoadState {
  kind: "flexibleLoad";
  powerW: number | undefined;
  shedSeconds: number | undefined;
}

export type DeviceState = BatteryState | EvState | FlexibleLoadState;

export interface FlexibilityState {
  at: Date;
  /** The meter's net power, W, positive importing (read only when there is a battery). */
  meterPowerW: number | undefined;
  /** One entry per configured device, in the same order. */
  devices: DeviceState[];
}

export interface FlexibilityOffer {
  slot: number;
  isUp: boolean;
  qtyWh: bigint;
}

/** What a device is told to do. */
export type DeviceCommand =
  | { kind: "battery"; mode: "auto" }
  | { kind: "battery"; mode: "fixed"; dischargeW: number }
  | { kind: "ev"; mode: "auto" }
  | { kind: "ev"; mode: "paused" }
  | { kind: "ev"; mode: "power"; powerW: number }
  | { kind: "flexibleLoad"; mode: "run" }
  | { kind: "flexibleLoad"; mode: "shed"; seconds: number };

export interface ActivationResult {
  slot: number;
  requestedWh: bigint;
  /** What the set-points should deliver in the rest of the slot, against automatic behaviour (+ more drawn, − less). */
  plannedWh: number;
  /** Part of the request the devices could not take (they changed since the offer). */
  shortfallWh: number;
  /** One per configured device, in order. */
  commands: DeviceCommand[];
}

// ---------------------------------------------------------------------------------------
// Model: the devices' energy over a stretch of time, against their automatic behaviour.
// Pure functions of the configuration and a projected state.

const HOUR_S = 3600;
const EPS_WH = 1e-6;

type Episode = { startMs: number; endMs: number };

/** A device's projected state. */
type DeviceModel =
  | { kind: "battery"; storedWh: number }
  | {
      kind: "ev";
      pluggedIn: boolean;
      sessionWh: number;
      carRemainingWh: number;
      /**
       * What the session left alone (full power from plug-in) would still draw. Less than
       * carRemainingWh by what activations have held back: that energy is not offered again.
       */
      planLeftWh: number;
    }
  | { kind: "flexibleLoad"; runW: number; episode: Episode | undefined };

interface PlantModel {
  atMs: number;
  /** The house's net load without the controllable devices (load minus PV), held constant. */
  houseW: number;
  devices: DeviceModel[];
}

/** Per device, over a stretch: the energy automatic behaviour moves and what more or less it could. */
interface Capacity {
  /** Energy the device would draw (+) or supply (−) in automatic mode, Wh. */
  baselineWh: number;
  upWh: number;
  downWh: number;
}

const clamp = (x: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, x));

/** The EV's window around `atMs`: when the car leaves next, and when shifting its charge may start. */
function evWindow(asset: EvAsset, atMs: number, utcOffsetMinutes: number): { fromMs: number; departMs: number } {
  const DAY_MS = 86_400_000;
  const mod = (x: number) => ((x % DAY_MS) + DAY_MS) % DAY_MS;
  const departOfDayMs = minutesOfDay(asset.departure) * 60_000;
  const departMs = atMs + mod(departOfDayMs - (atMs + utcOffsetMinutes * 60_000));
  const spanMs = mod(departOfDayMs - minutesOfDay(asset.availableFrom) * 60_000);
  return { fromMs: departMs - spanMs, departMs };
}

/** Seconds a flexible load may be shed from `atMs`, in a slot that started at `slotStartMs`. */
function shedBudgetS(asset: FlexibleLoadAsset, episode: Episode | undefined, atMs: number, slotStartMs: number): number {
  const maxS = asset.maxDelayMinutes * 60;
  if (episode === undefined) return maxS;
  const lengthMs = episode.endMs - episode.startMs;
  // Shed up to the start of this slot: the new shed continues the same delay.
  if (episode.endMs >= slotStartMs && episode.endMs <= atMs + 1_000) return Math.max(0, maxS - lengthMs / 1000);
  // Otherwise it must have run at least as long as it was held off.
  return atMs >= episode.endMs + lengthMs ? maxS : 0;
}

class Model {
  constructor(
    private readonly config: AssetsConfig,
    private readonly slotSeconds: number,
  ) {}

  private battery(i: number): BatteryAsset {
    return this.config.devices[i] as BatteryAsset;
  }

  private ev(i: number): EvAsset {
    return this.config.devices[i] as EvAsset;
  }

  private limitsWh(a: BatteryAsset): { minWh: number; maxWh: number } {
    return { minWh: (a.capacityWh * a.minSocPct) / 100, maxWh: (a.capacityWh * a.maxSocPct) / 100 };
  }

  /** Signed battery energy (+ out) a power `w` moves in `seconds`, within the SoC limits. */
  private batteryEnergy(i: number, storedWh: number, w: number, seconds: number): number {
    const a = this.battery(i);
    const { minWh, maxWh } = this.limitsWh(a);
    if (w > 0) return Math.min((w * seconds) / HOUR_S, Math.max(0, storedWh - minWh) * a.efficiency);
    if (w < 0) return -Math.min((-w * seconds) / HOUR_S, Math.max(0, maxWh - storedWh) / a.efficiency);
    return 0;
  }

  /** Device powers under commands (auto where none), at the model's state. */
  powers(m: PlantModel, commands: ReadonlyArray<DeviceCommand | undefined>, atMs: number, commandStartMs: number): number[] {
    const powers = this.config.devices.map((asset, i): number => {
      const d = m.devices[i]!;
      const c = commands[i];
      if (asset.kind === "ev" && d.kind === "ev") {
        if (!d.pluggedIn || d.carRemainingWh <= EPS_WH) return 0;
        if (c?.kind === "ev" && c.mode === "paused") return 0;
        if (c?.kind === "ev" && c.mode === "power") return clamp(c.powerW, 0, asset.maxPowerW);
        return asset.maxPowerW;
      }
      if (asset.kind === "flexibleLoad" && d.kind === "flexibleLoad") {
        const shedUntil = c?.kind === "flexibleLoad" && c.mode === "shed" ? commandStartMs + c.seconds * 1000 : -Infinity;
        return atMs < shedUntil ? 0 : d.runW;
      }
      return 0;
    });
    // The battery comes last: in self-consumption it covers what the others leave.
    this.config.devices.forEach((asset, i) => {
      const d = m.devices[i]!;
      if (asset.kind !== "battery" || d.kind !== "battery") return;
      const c = commands[i];
      if (c?.kind === "battery" && c.mode === "fixed") {
        powers[i] = clamp(c.dischargeW, -asset.maxPowerW, asset.maxPowerW);
        return;
      }
      const drawn = powers.reduce((sum, p, j) => sum + (this.config.devices[j]!.kind === "battery" ? 0 : p), 0);
      const { minWh, maxWh } = this.limitsWh(asset);
      const wanted = clamp(m.houseW + drawn, -asset.maxPowerW, asset.maxPowerW);
      powers[i] = (wanted > 0 && d.storedWh <= minWh + EPS_WH) || (wanted < 0 && d.storedWh >= maxWh - EPS_WH) ? 0 : wanted;
    });
    return powers;
  }

  /** Moves the model from `m.atMs` to `toMs` under `commands` given at `commandStartMs`. */
  advance(m: PlantModel, commands: ReadonlyArray<DeviceCommand | undefined>, commandStartMs: number, toMs: number): PlantModel {
    let state = m;
    while (state.atMs < toMs) {
      // Split where a shed ends, since the load's power (and the battery's answer) changes there.
      let endMs = toMs;
      commands.forEach((c) => {
        if (c?.kind === "flexibleLoad" && c.mode === "shed") {
          const until = commandStartMs + c.seconds * 1000;
          if (until > state.atMs && until < endMs) endMs = until;
        }
      });
      const seconds = (endMs - state.atMs) / 1000;
      const powers = this.powers(state, commands, state.atMs, commandStartMs);
      const devices = state.devices.map((d, i): DeviceModel => {
        const w = powers[i] ?? 0;
        switch (d.kind) {
          case "battery": {
            const a = this.battery(i);
            const e = this.batteryEnergy(i, d.storedWh, w, seconds);
            return { kind: "battery", storedWh: e > 0 ? d.storedWh - e / a.efficiency : d.storedWh - e * a.efficiency };
          }
          case "ev": {
            const e = Math.min((w * seconds) / HOUR_S, d.carRemainingWh);
            const planLeftWh = Math.max(0, d.planLeftWh - (this.ev(i).maxPowerW * seconds) / HOUR_S);
            return { ...d, sessionWh: d.sessionWh + e, carRemainingWh: d.carRemainingWh - e, planLeftWh };
          }
          case "flexibleLoad":
            return d;
        }
      });
      state = { ...state, atMs: endMs, devices };
    }
    return state;
  }

  /**
   * What each device could do over `seconds` from the model's time (in the slot starting at
   * `slotStartMs`), against automatic behaviour, within its limits. `ev` is the EV's
   * window (undefined: the car leaves before, so it offers nothing).
   */
  capacities(m: PlantModel, seconds: number, slotStartMs: number, ev: { fromMs: number; departMs: number } | undefined): Capacity[] {
    const auto = this.powers(m, [], m.atMs, m.atMs);
    const endMs = m.atMs + seconds * 1000;
    return this.config.devices.map((asset, i): Capacity => {
      const d = m.devices[i]!;
      const w = auto[i] ?? 0;
      if (asset.kind === "battery" && d.kind === "battery") {
        const baselineWh = this.batteryEnergy(i, d.storedWh, w, seconds); // + out
        const dischargeWh = this.batteryEnergy(i, d.storedWh, asset.maxPowerW, seconds);
        const chargeWh = -this.batteryEnergy(i, d.storedWh, -asset.maxPowerW, seconds);
        return { baselineWh: -baselineWh, upWh: Math.max(0, dischargeWh - baselineWh), downWh: Math.max(0, baselineWh + chargeWh) };
      }
      if (asset.kind === "ev" && d.kind === "ev") {
        const inWindow = ev !== undefined && d.pluggedIn && m.atMs >= ev.fromMs && endMs <= ev.departMs;
        const baselineWh = Math.min((w * seconds) / HOUR_S, d.carRemainingWh);
        if (!inWindow) return { baselineWh, upWh: 0, downWh: 0 };
        // Holding back x Wh now still gets the plan's need in by departure at full power if
        // need − (baseline − x) ≤ maxPower × (departure − end of this stretch).
        const planWh = Math.min(d.carRemainingWh, Math.max(0, asset.energyNeededWh - d.sessionWh));
        const afterWh = (asset.maxPowerW * (ev.departMs - endMs)) / 1000 / HOUR_S;
        // Holding back more than the untouched session would draw now would sell again what an
        // earlier activation held back: the car draws it later anyway, so only the plan's own
        // draw is offered (each Wh deferred once, against the plan as a demand-response baseline).
        const planDrawWh = Math.min((asset.maxPowerW * seconds) / HOUR_S, d.planLeftWh);
        const upWh = clamp(Math.min(afterWh + baselineWh - planWh, planDrawWh), 0, baselineWh);
        const downWh = Math.max(0, Math.min((asset.maxPowerW * seconds) / HOUR_S, d.carRemainingWh) - baselineWh);
        return { baselineWh, upWh, downWh };
      }
      if (asset.kind === "flexibleLoad" && d.kind === "flexibleLoad") {
        const budget = Math.min(seconds, shedBudgetS(asset, d.episode, m.atMs, slotStartMs));
        return { baselineWh: (d.runW * seconds) / HOUR_S, upWh: (d.runW * budget) / HOUR_S, downWh: 0 };
      }
      return { baselineWh: 0, upWh: 0, downWh: 0 };
    });
  }

  /**
   * Splits `activatedWh` (+ downward, − upward) over the devices in configuration order and
   * turns each share into a command held for `seconds`. If anything is activated, the
   * battery is pinned to a fixed power, so that self-consumption does not cancel the others.
   */
  allocate(m: PlantModel, activatedWh: number, seconds: number, caps: Capacity[]): { commands: DeviceCommand[]; plannedWh: number } {
    const up = activatedWh < 0;
    let left = Math.abs(activatedWh);
    const takes = caps.map((c) => {
      const take = Math.min(left, up ? c.upWh : c.downWh);
      left -= take;
      return take;
    });
    const any = takes.some((t) => t > EPS_WH);
    const commands = this.config.devices.map((asset, i): DeviceCommand => {
      const take = takes[i] ?? 0;
      const cap = caps[i]!;
      switch (asset.kind) {
        case "battery": {
          if (!any) return { kind: "battery", mode: "auto" };
          // Battery output over the stretch: −baseline (baseline is + drawn) plus or minus its share.
          const outWh = -cap.baselineWh + (up ? take : -take);
          return { kind: "battery", mode: "fixed", dischargeW: Math.round((outWh * HOUR_S) / seconds) };
        }
        case "ev": {
          if (take <= EPS_WH) return { kind: "ev", mode: "auto" };
          const drawWh = cap.baselineWh + (up ? -take : take);
          const powerW = Math.round((drawWh * HOUR_S) / seconds);
          return powerW <= 0 ? { kind: "ev", mode: "paused" } : { kind: "ev", mode: "power", powerW: Math.min(powerW, asset.maxPowerW) };
        }
        case "flexibleLoad": {
          const d = m.devices[i] as Extract<DeviceModel, { kind: "flexibleLoad" }>;
          if (take <= EPS_WH || d.runW <= 0) return { kind: "flexibleLoad", mode: "run" };
          return { kind: "flexibleLoad", mode: "shed", seconds: Math.min(Math.round((take * HOUR_S) / d.runW), Math.floor(seconds)) };
        }
      }
    });
    const planned = takes.reduce((a, b) => a + b, 0);
    return { commands, plannedWh: up && planned > 0 ? -planned : planned };
  }

  /** Records the sheds of `commands`, given at `atMs` in the slot starting at `slotStartMs`. */
  withEpisodes(m: PlantModel, commands: ReadonlyArray<DeviceCommand>, atMs: number, slotStartMs: number): PlantModel {
    const devices = m.devices.map((d, i): DeviceModel => {
      const c = commands[i];
      if (d.kind !== "flexibleLoad" || c?.kind !== "flexibleLoad" || c.mode !== "shed") return d;
      const continues = d.episode !== undefined && d.episode.endMs >= slotStartMs && d.episode.endMs <= atMs + 1_000;
      return { ...d, episode: { startMs: continues ? d.episode!.startMs : atMs, endMs: atMs + c.seconds * 1000 } };
    });
    return { ...m, devices };
  }

  get slotMs(): number {
    return this.slotSeconds * 1000;
  }
}

// ---------------------------------------------------------------------------------------
// Controller

export interface FlexibilityControllerOptions {
  assets: AssetsConfig;
  io: FlexibilityIo;
  /** The market's slot length. */
  slotSeconds: number;
  /** A Date or ms since the epoch: agents/clock.ts's clocks and the simulator's fit. */
  clock: { now(): Date | number };
  logger?: Logger;
}

/**
 * The household's flexibility, slot by slot. Per slot S of the balancing market:
 *  - before its gate closure: `readState()`, then `offersFor(S)`, and `noteOffer(S, offer)` for the one placed;
 *  - once S is cleared: `noteActivation(S, wh)` (optional, as noteOffer: later offers then allow for it);
 *  - at S's start: `activate(S, wh)` if activated (it reads the devices and writes the set-points);
 *  - during S: `track()` on every poll (keeps the battery following the house as self-consumption would);
 *  - at S's end: `release()` if nothing is activated in the next slot (activating the next slot replaces the set-points).
 * At start-up, `release()` once puts devices a crashed agent left under control back to automatic.
 */
export class FlexibilityController {
  private readonly model: Model;
  private readonly logger: Logger;
  private state: FlexibilityState | undefined;
  /** Cleared activations the controller knows of, by slot (+ downward, − upward). */
  private readonly activations = new Map<number, number>();
  /** Offers placed but not cleared yet, by slot (signed as activations): each may still be activated in full. */
  private readonly pending = new Map<number, number>();
  private active: { slot: number; atMs: number; commands: DeviceCommand[]; batteryOffsetW: number } | undefined;
  /** Shed episodes of flexible loads, by device index. */
  private readonly episodes = new Map<number, Episode>();
  /** The EV session's plan as of the last reading (see DeviceModel's planLeftWh). */
  private evPlan: { atMs: number; sessionWh: number; planLeftWh: number } | undefined;

  constructor(private readonly o: FlexibilityControllerOptions) {
    if (!Number.isInteger(o.slotSeconds) || o.slotSeconds <= 0) throw new RangeError(`slotSeconds must be a positive integer, got ${o.slotSeconds}`);
    this.model = new Model(o.assets, o.slotSeconds);
    this.logger = o.logger ?? silentLogger;
  }

  get assets(): AssetsConfig {
    return this.o.assets;
  }

  /** The last state read, if any. */
  get lastState(): FlexibilityState | undefined {
    return this.state;
  }

  /** Reads the devices' state over Modbus (and the meter's power, if there is a battery). */
  async readState(): Promise<FlexibilityState> {
    const devices = this.o.assets.devices;
    const addresses = devices.flatMap((d) =>
      Object.entries(d.registers).flatMap(([key, a]) => (a === null || HOLDING_KEYS.has(key) ? [] : [a as number])),
    );
    const words = new Map<number, number>();
    if (addresses.length > 0) {
      const first = Math.min(...addresses);
      const span = Math.max(...addresses) + 2 - first;
      const blocks: Array<[number, number]> = span <= 125 ? [[first, span]] : addresses.map((a) => [a, 2]);
      for (const [address, length] of blocks) {
        const data = await this.o.io.readInputRegisters(address, length);
        data.forEach((w, k) => words.set(address + k, w));
      }
    }
    const hasBattery = devices.some((d) => d.kind === "battery");
    const meterPowerW = hasBattery ? await this.o.io.readPowerW() : undefined;
    const at = new Date(this.o.clock.now());
    const value = (address: number, what: string, i: number): number => {
      const v = float32At(words, address);
      if (Number.isNaN(v)) {
        throw new MarketError("FLEX_DEVICE", `assets.devices[${i}]: register ${address} (${what}) reads "not available": does this house have that device?`);
      }
      return v;
    };
    const optional = (address: number | null, what: string, i: number): number | undefined => (address === null ? undefined : value(address, what, i));
    const states = devices.map((d, i): DeviceState => {
      switch (d.kind) {
        case "battery": {
          const socPct = value(d.registers.socPct, "battery SoC", i);
          return { kind: "battery", socPct, storedWh: (socPct / 100) * d.capacityWh, powerW: value(d.registers.powerReadingW, "battery power", i) };
        }
        case "ev":
          return {
            kind: "ev",
            pluggedIn: value(d.registers.pluggedIn, "EV plugged in", i) >= 0.5,
            sessionWh: value(d.registers.sessionWh, "EV session energy", i),
            remainingWh: optional(d.registers.remainingWh, "EV remaining energy", i),
            powerW: value(d.registers.powerReadingW, "EV power", i),
          };
        case "flexibleLoad":
          return {
            kind: "flexibleLoad",
            powerW: optional(d.registers.powerReadingW, "flexible load power", i),
            shedSeconds: optional(d.registers.shedSecondsReading, "flexible load shed time", i),
          };
      }
    });
    this.state = { at, meterPowerW, devices: states };
    this.followEvPlan(at.getTime(), states);
    // A shed the controller does not know of (an agent restart): count it from now.
    states.forEach((s, i) => {
      if (s.kind === "flexibleLoad" && (s.shedSeconds ?? 0) > 0 && !this.episodes.has(i)) {
        this.episodes.set(i, { startMs: at.getTime(), endMs: at.getTime() + (s.shedSeconds ?? 0) * 1000 });
      }
    });
    return this.state;
  }

  /**
   * What the assets can deliver in `slot`, netted into at most one upward and one downward
   * offer (quantities rounded down; below minOfferWh left out), in the directions
   * assets.preference allows. Uses the last readState(), projected to the slot's start. A slot
   * that has begun gets no offers.
   */
  offersFor(slot: number, slotSeconds: number = this.o.slotSeconds, now: Date = new Date(this.o.clock.now())): FlexibilityOffer[] {
    if (slotSeconds !== this.o.slotSeconds) throw new RangeError(`slotSeconds ${slotSeconds} differs from the controller's ${this.o.slotSeconds}`);
    const state = this.state;
    if (state === undefined) throw new MarketError("FLEX_NO_STATE", "call readState() before offersFor()");
    const startMs = slot * this.model.slotMs;
    if (startMs < now.getTime()) return [];
    if (now.getTime() - state.at.getTime() > this.model.slotMs) {
      throw new MarketError("FLEX_STALE_STATE", `the devices were last read at ${state.at.toISOString()}, more than a slot before ${now.toISOString()}; call readState() first`);
    }
    // Offers of earlier slots not cleared yet may still be activated in full: each direction
    // is offered from the state it would leave behind (an upward offer after the pending
    // upward ones have drained the battery), so that every offer stays deliverable.
    const capsFor = (side: "up" | "down") => this.model.capacities(this.project(startMs, side), slotSeconds, startMs, this.evWindow(startMs));
    const offers: FlexibilityOffer[] = [];
    const share = (i: number) => {
      const d = this.o.assets.devices[i]!;
      return d.kind === "battery" ? d.offerShare : 1;
    };
    const { preference } = this.o.assets;
    const min = BigInt(this.o.assets.minOfferWh);
    if (preference !== "downOnly") {
      const upWh = BigInt(Math.floor(capsFor("up").reduce((s, c, i) => s + c.upWh * share(i), 0) + 1e-9));
      if (upWh >= min) offers.push({ slot, isUp: true, qtyWh: upWh });
    }
    if (preference !== "upOnly") {
      const downWh = BigInt(Math.floor(capsFor("down").reduce((s, c, i) => s + c.downWh * share(i), 0) + 1e-9));
      if (downWh >= min) offers.push({ slot, isUp: false, qtyWh: downWh });
    }
    return offers;
  }

  /** Tells the controller of a cleared activation ahead of its slot, so that later slots' offers allow for it. */
  noteActivation(slot: number, activatedWh: bigint): void {
    this.activations.set(slot, Number(activatedWh));
    this.pending.delete(slot);
    for (const s of this.activations.keys()) if (s < slot - 96) this.activations.delete(s);
  }

  /**
   * Tells the controller of an offer placed for `slot` (undefined: none), until its clearing is
   * known (noteActivation): later slots' offers then allow for its being activated in full.
   */
  noteOffer(slot: number, offer: FlexibilityOffer | undefined): void {
    if (offer === undefined || offer.qtyWh === 0n) this.pending.delete(slot);
    else this.pending.set(slot, Number(offer.isUp ? -offer.qtyWh : offer.qtyWh));
    for (const s of this.pending.keys()) if (s < slot - 96) this.pending.delete(s);
  }

  /**
   * Drives the devices so that the rest of `slot` delivers `activatedWh` (+ downward: the
   * house draws more; − upward: less) against their automatic behaviour. Call it at the
   * slot's start; set-points are powers held to the slot's end, so a late call spreads the
   * energy over what is left of the slot. Devices not needed go back to automatic.
   */
  async activate(slot: number, activatedWh: bigint): Promise<ActivationResult> {
    const nowMs = new Date(this.o.clock.now()).getTime();
    const startMs = slot * this.model.slotMs;
    const endMs = startMs + this.model.slotMs;
    if (nowMs < startMs || nowMs >= endMs) {
      throw new MarketError("FLEX_NOT_IN_SLOT", `slot ${slot} runs from ${new Date(startMs).toISOString()} to ${new Date(endMs).toISOString()}; activate it during the slot, not at ${new Date(nowMs).toISOString()}`);
    }
    this.noteActivation(slot, activatedWh);
    await this.readState();
    const seconds = (endMs - nowMs) / 1000;
    const plant = this.plantFromState();
    const caps = this.model.capacities(plant, seconds, startMs, this.evWindow(nowMs));
    const requested = Number(activatedWh);
    const { commands, plannedWh } = this.model.allocate(plant, requested, seconds, caps);
    try {
      await this.write(commands);
    } catch (error) {
      this.logger({ level: "error", msg: "flexibility set-points failed; returning devices to automatic", slot, error: (error as Error).message });
      await this.release().catch(() => {});
      throw error;
    }
    // The battery's share as a power on top of what self-consumption would do: track() keeps it there.
    const b = this.o.assets.devices.findIndex((d) => d.kind === "battery");
    const bc = commands[b];
    const batteryOffsetW = bc?.kind === "battery" && bc.mode === "fixed" ? bc.dischargeW + (caps[b]!.baselineWh * HOUR_S) / seconds : 0;
    this.active = { slot, atMs: nowMs, commands, batteryOffsetW };
    const after = this.model.withEpisodes(plant, commands, nowMs, startMs);
    after.devices.forEach((d, i) => {
      if (d.kind === "flexibleLoad" && d.episode !== undefined) this.episodes.set(i, d.episode);
    });
    const shortfallWh = Math.max(0, Math.abs(requested) - Math.abs(plannedWh));
    this.logger({ level: shortfallWh > 1 ? "warn" : "info", msg: "flexibility activated", slot, requestedWh: requested, plannedWh: Math.round(plannedWh), shortfallWh: Math.round(shortfallWh), commands });
    return { slot, requestedWh: activatedWh, plannedWh, shortfallWh, commands };
  }

  /**
   * During an activated slot, re-pins the battery to what self-consumption would do now
   * plus its share of the activation, so that it keeps following the house's load and PV
   * as the baseline does. Without it the battery holds the power set at activation, and
   * the slot delivers the activation give or take how far load and PV move in the slot.
   * Call it on every poll; it does nothing when no battery is held or the slot is over.
   */
  async track(): Promise<void> {
    const a = this.active;
    const b = this.o.assets.devices.findIndex((d) => d.kind === "battery");
    const command = a?.commands[b];
    const nowMs = new Date(this.o.clock.now()).getTime();
    if (a === undefined || command?.kind !== "battery" || command.mode !== "fixed" || nowMs >= (a.slot + 1) * this.model.slotMs) return;
    await this.readState();
    const battery = this.o.assets.devices[b] as BatteryAsset;
    const auto = this.model.powers(this.plantFromState(), [], nowMs, nowMs)[b] ?? 0;
    const dischargeW = Math.round(clamp(auto + a.batteryOffsetW, -battery.maxPowerW, battery.maxPowerW));
    if (dischargeW === command.dischargeW) return;
    await this.o.io.writeSetpoint(battery.registers.powerW, dischargeW, "int16");
    a.commands[b] = { kind: "battery", mode: "fixed", dischargeW };
  }

  /** Returns every device to its automatic behaviour. Safe to repeat. */
  async release(): Promise<void> {
    const nowMs = new Date(this.o.clock.now()).getTime();
    const auto = this.o.assets.devices.map((d): DeviceCommand => (d.kind === "flexibleLoad" ? { kind: "flexibleLoad", mode: "run" } : { kind: d.kind, mode: "auto" }));
    await this.write(auto);
    // A shed cut short ends now.
    for (const [i, e] of this.episodes) if (e.endMs > nowMs) this.episodes.set(i, { ...e, endMs: Math.max(e.startMs, nowMs) });
    if (this.active !== undefined) {
      this.logger({ level: "info", msg: "flexibility released", slot: this.active.slot });
      this.activations.delete(this.active.slot); // what is left of it no longer happens
    }
    this.active = undefined;
  }

  // -------------------------------------------------------------------------------------

  private async write(commands: readonly DeviceCommand[]): Promise<void> {
    const { io } = this.o;
    for (const [i, d] of this.o.assets.devices.entries()) {
      const c = commands[i]!;
      if (d.kind === "battery" && c.kind === "battery") {
        if (c.mode === "fixed") {
          await io.writeSetpoint(d.registers.powerW, clamp(c.dischargeW, -d.maxPowerW, d.maxPowerW), "int16");
          await io.writeSetpoint(d.registers.mode, BATTERY_MODE.fixed, "uint16");
        } else {
          await io.writeSetpoint(d.registers.mode, BATTERY_MODE.auto, "uint16");
        }
      } else if (d.kind === "ev" && c.kind === "ev") {
        if (c.mode === "power") {
          await io.writeSetpoint(d.registers.powerW, clamp(c.powerW, 0, d.maxPowerW), "uint16");
          await io.writeSetpoint(d.registers.mode, EV_MODE.power, "uint16");
        } else {
          await io.writeSetpoint(d.registers.mode, c.mode === "paused" ? EV_MODE.paused : EV_MODE.auto, "uint16");
        }
      } else if (d.kind === "flexibleLoad" && c.kind === "flexibleLoad") {
        await io.writeSetpoint(d.registers.shedSeconds, c.mode === "shed" ? clamp(c.seconds, 0, 0xffff) : 0, "uint16");
      }
    }
  }

  /**
   * Moves the EV session's plan (full power from plug-in) along to `atMs`: a new session
   * (plugged in again, or the session's energy reset) starts a new plan from what the car asks for.
   */
  private followEvPlan(atMs: number, states: readonly DeviceState[]): void {
    const i = this.o.assets.devices.findIndex((d) => d.kind === "ev");
    const s = states[i];
    if (s?.kind !== "ev") return;
    const asset = this.o.assets.devices[i] as EvAsset;
    const remainingWh = s.remainingWh ?? Math.max(0, asset.energyNeededWh - s.sessionWh);
    const prev = this.evPlan;
    if (!s.pluggedIn) {
      this.evPlan = undefined;
    } else if (prev === undefined || s.sessionWh < prev.sessionWh - 1) {
      this.evPlan = { atMs, sessionWh: s.sessionWh, planLeftWh: remainingWh };
    } else {
      const planLeftWh = Math.max(0, prev.planLeftWh - (asset.maxPowerW * Math.max(0, atMs - prev.atMs)) / 1000 / HOUR_S);
      this.evPlan = { atMs, sessionWh: s.sessionWh, planLeftWh: Math.min(planLeftWh, remainingWh) };
    }
  }

  /** The model of the last state read, with the shed episodes the controller knows. */
  private plantFromState(): PlantModel {
    const state = this.state!;
    const devices = this.o.assets.devices.map((asset, i): DeviceModel => {
      const s = state.devices[i]!;
      if (asset.kind === "battery" && s.kind === "battery") return { kind: "battery", storedWh: s.storedWh };
      if (asset.kind === "ev" && s.kind === "ev") {
        const carRemainingWh = !s.pluggedIn ? 0 : (s.remainingWh ?? Math.max(0, asset.energyNeededWh - s.sessionWh));
        return { kind: "ev", pluggedIn: s.pluggedIn, sessionWh: s.sessionWh, carRemainingWh, planLeftWh: Math.min(carRemainingWh, this.evPlan?.planLeftWh ?? carRemainingWh) };
      }
      const f = s as FlexibleLoadState;
      const a = asset as FlexibleLoadAsset;
      const episode = this.episodes.get(i);
      // While shed (or without a reading) it is taken to run at its rated power; otherwise as read.
      const shed = (f.shedSeconds ?? 0) > 0 || (episode !== undefined && episode.endMs > state.at.getTime());
      const runW = f.powerW === undefined || shed ? a.powerW : f.powerW;
      return { kind: "flexibleLoad", runW, episode };
    });
    // The house without the devices: the meter's power, plus what the battery supplies,
    // minus what the EV and the flexible loads draw.
    let houseW = state.meterPowerW ?? 0;
    state.devices.forEach((s) => {
      if (s.kind === "battery") houseW += s.powerW;
      else if (s.kind === "ev") houseW -= s.powerW;
      else houseW -= s.powerW ?? 0;
    });
    return { atMs: state.at.getTime(), houseW, devices };
  }

  /**
   * The model projected from the last reading to `toMs`, through the activations known and,
   * with `side`, the pending offers in that direction (taken as activated in full).
   */
  private project(toMs: number, side?: "up" | "down"): PlantModel {
    let m = this.plantFromState();
    const slotMs = this.model.slotMs;
    while (m.atMs < toMs) {
      const slot = Math.floor(m.atMs / slotMs);
      const slotStart = slot * slotMs;
      const endMs = Math.min(toMs, slotStart + slotMs);
      if (this.active?.slot === slot) {
        m = this.model.advance(m, this.active.commands, this.active.atMs, endMs);
        continue;
      }
      const offered = this.pending.get(slot);
      const assumed = offered !== undefined && side !== undefined && (offered < 0) === (side === "up") ? offered : undefined;
      const activated = this.activations.get(slot) ?? assumed;
      if (activated === undefined || activated === 0) {
        m = this.model.advance(m, [], m.atMs, endMs);
        continue;
      }
      const seconds = (slotStart + slotMs - m.atMs) / 1000;
      const caps = this.model.capacities(m, seconds, slotStart, this.evWindow(m.atMs));
      const { commands } = this.model.allocate(m, activated, seconds, caps);
      const at = m.atMs;
      m = this.model.advance(this.model.withEpisodes(m, commands, at, slotStart), commands, at, endMs);
    }
    return m;
  }

  private evWindow(atMs: number): { fromMs: number; departMs: number } | undefined {
    const ev = this.o.assets.devices.find((d): d is EvAsset => d.kind === "ev");
    if (ev === undefined || this.state === undefined) return undefined;
    // The session's departure is the next one after the reading (the car is there now).
    const w = evWindow(ev, this.state.at.getTime(), this.o.assets.utcOffsetMinutes);
    return atMs >= w.departMs ? undefined : w;
  }
}
