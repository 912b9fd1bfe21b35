/**
 * Deterministic energy profiles of households: load, PV, home battery, EV charger.
 *
 * Load and PV are pure functions of time and a seed (noise comes from hashing the seed
 * with the time bucket, not from a sequential PRNG), so a household's inputs do not
 * depend on how often the simulation is stepped. Only the battery, the EV charger and the
 * flexible load carry state. All times are UTC instants; "local" time is UTC plus a fixed offset, so
 * results do not depend on the machine's time zone (daylight saving is ignored).
 */

// ---------------------------------------------------------------------------------------
// Seeded randomness

/** mulberry32: a small seeded PRNG for drawing household parameters. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A uniform number in [0, 1) determined by the seed and the keys (a counter-based generator). */
export function hashUnit(seed: number, ...keys: number[]): number {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  for (const key of keys) {
    // Split large keys (bucket indices exceed 2^32 over centuries; keep them exact).
    for (const part of [Math.floor(key / 4294967296), key >>> 0]) {
      h = Math.imul(h ^ part, 0x85ebca6b) >>> 0;
      h ^= h >>> 13;
      h = Math.imul(h, 0xc2b2ae35) >>> 0;
      h ^= h >>> 16;
    }
  }
  return mulberry32(h)();
}

// ---------------------------------------------------------------------------------------
// Calendar

const HOUR_MS = 3_600_000;
const DAY_MS = 86_400_000;

/** Hours since local midnight, in [0, 24). */
export function localHours(t: Date, utcOffsetMinutes: number): number {
  const ms = t.getTime() + utcOffsetMinutes * 60_000;
  return (((ms % DAY_MS) + DAY_MS) % DAY_MS) / HOUR_MS;
}

/** Days since 1970-01-01 in local time. */
export function localDayIndex(t: Date, utcOffsetMinutes: number): number {
  return Math.floor((t.getTime() + utcOffsetMinutes * 60_000) / DAY_MS);
}

export function isWeekend(t: Date, utcOffsetMinutes: number): boolean {
  const weekday = (((localDayIndex(t, utcOffsetMinutes) + 4) % 7) + 7) % 7; // 1970-01-01 was a Thursday; 0 = Sunday
  return weekday === 0 || weekday === 6;
}

/** Day of the year, 1 to 366 (UTC). */
export function dayOfYear(t: Date): number {
  return Math.floor((t.getTime() - Date.UTC(t.getUTCFullYear(), 0, 1)) / DAY_MS) + 1;
}

// ---------------------------------------------------------------------------------------
// Household load

export interface LoadSpec {
  /** Yearly consumption; typical European homes use 2 500 to 5 000 kWh. */
  annualKwh: number;
  seed: number;
  /** Relative amplitude of the 5-minute noise, e.g. 0.15 for ±15 %. */
  noise: number;
}

function bump(hours: number, centre: number, width: number): number {
  return Math.exp(-0.5 * ((hours - centre) / width) ** 2);
}

/** Shape of a day's load in arbitrary units: base load, a morning peak and a larger evening peak. */
function loadShape(hours: number, weekend: boolean): number {
  return weekend
    ? 0.45 + 0.9 * bump(hours, 9.5, 1.5) + 0.6 * bump(hours, 13, 1.5) + 1.5 * bump(hours, 18.5, 2)
    : 0.45 + 1.0 * bump(hours, 7, 1) + 0.3 * bump(hours, 13, 2) + 1.8 * bump(hours, 19, 2);
}

function meanShape(weekend: boolean): number {
  let sum = 0;
  for (let minute = 0; minute < 1440; minute += 1) sum += loadShape(minute / 60, weekend);
  return sum / 1440;
}

const WEEK_MEAN_SHAPE = (5 * meanShape(false) + 2 * meanShape(true)) / 7;
const LOAD_NOISE_BUCKET_MS = 5 * 60_000;

/** Household consumption in W at instant t. */
export function householdLoadW(spec: LoadSpec, t: Date, utcOffsetMinutes: number): number {
  const averageW = (spec.annualKwh * 1000) / 8766;
  // More lighting and heating-circulation pumps in winter; the factor averages 1 over a year.
  const season = 1 + 0.15 * Math.cos((2 * Math.PI * (dayOfYear(t) - 15)) / 365.25);
  const shape = loadShape(localHours(t, utcOffsetMinutes), isWeekend(t, utcOffsetMinutes)) / WEEK_MEAN_SHAPE;
  const u = hashUnit(spec.seed, 1, Math.floor(t.getTime() / LOAD_NOISE_BUCKET_MS));
  return averageW * season * shape * (1 + spec.noise * (2 * u - 1));
}

// ---------------------------------------------------------------------------------------
// PV generation

export interface PvSpec {
  peakKw: number;
  /** Shared by the houses of one neighbourhood: they see the same clouds. */
  weatherSeed: number;
  latitudeDeg: number;
  longitudeDeg: number;
  /** Inverter, wiring, soiling and temperature losses. */
  performanceRatio: number;
}

const RAD = Math.PI / 180;

/** Solar declination in radians (Cooper's approximation). */
function declination(day: number): number {
  return -23.44 * RAD * Math.cos((2 * Math.PI * (day + 10)) / 365);
}

/**
 * Sine of the sun's elevation. Solar time is taken as UTC plus longitude / 15 h; the
 * equation of time (up to ±16 min) is ignored.
 */
export function sunElevationSin(t: Date, latitudeDeg: number, longitudeDeg: number): number {
  const phi = latitudeDeg * RAD;
  const delta = declination(dayOfYear(t));
  const solarHours = localHours(t, longitudeDeg * 4); // 4 minutes per degree
  const omega = 15 * RAD * (solarHours - 12);
  return Math.sin(phi) * Math.sin(delta) + Math.cos(phi) * Math.cos(delta) * Math.cos(omega);
}

/** Sunrise and sunset in local solar hours (12 = solar noon) for a day of the year. */
export function sunriseSunset(day: number, latitudeDeg: number): { sunrise: number; sunset: number } {
  const x = -Math.tan(latitudeDeg * RAD) * Math.tan(declination(day));
  const halfDayHours = x <= -1 ? 12 : x >= 1 ? 0 : Math.acos(x) / (15 * RAD);
  return { sunrise: 12 - halfDayHours, sunset: 12 + halfDayHours };
}

const CLOUD_BUCKET_MS = 15 * 60_000;

/** Share of clear-sky output that gets through the clouds, in [0.05, 1]. */
export function clearness(weatherSeed: number, t: Date): number {
  const day = Math.floor(t.getTime() / DAY_MS);
  // Mostly clear days are commoner than overcast ones; the exponent skews towards clear.
  const dayClearness = 0.2 + 0.8 * hashUnit(weatherSeed, 2, day) ** 0.6;
  const cover = 1 - dayClearness;
  const bucketAt = (bucket: number) => Math.min(1, Math.max(0.05, 1 - cover * (0.4 + 1.2 * hashUnit(weatherSeed, 3, bucket))));
  // Interpolate between 15-minute buckets so that output does not jump at bucket edges.
  const position = t.getTime() / CLOUD_BUCKET_MS;
  const bucket = Math.floor(position);
  const frac = position - bucket;
  return bucketAt(bucket) * (1 - frac) + bucketAt(bucket + 1) * frac;
}

/** PV output in W at instant t: clear-sky bell curve (by sun elevation) times clearness. */
export function pvPowerW(spec: PvSpec, t: Date): number {
  const sinElevation = sunElevationSin(t, spec.latitudeDeg, spec.longitudeDeg);
  if (sinElevation <= 0) return 0;
  // Tilted south-facing modules catch relatively more than a flat surface when the sun is
  // low; the (1.3 - 0.5 sin h) gain is a coarse stand-in for that. With the clouds below
  // it gives about 1 000 kWh per kWp a year at 50°N, close to PVGIS figures for Germany.
  const clearSky = sinElevation ** 1.15 * (1.3 - 0.5 * sinElevation);
  return spec.peakKw * 1000 * spec.performanceRatio * Math.min(1, clearSky) * clearness(spec.weatherSeed, t);
}

// ---------------------------------------------------------------------------------------
// Home battery

export interface BatterySpec {
  capacityKwh: number;
  maxPowerKw: number;
  socMin: number;
  socMax: number;
  initialSoc: number;
  /** One-way efficiency, applied when charging and again when discharging. */
  efficiency: number;
}

/** `auto`: self-consumption. `fixed`: hold `dischargeW` (negative to charge) within power and SoC limits. */
export type BatterySetpoint = { mode: "auto" } | { mode: "fixed"; dischargeW: number };

const ENERGY_EPSILON_WH = 1e-6;

export class Battery {
  storedWh: number;
  setpoint: BatterySetpoint = { mode: "auto" };

  constructor(readonly spec: BatterySpec) {
    this.storedWh = spec.capacityKwh * 1000 * spec.initialSoc;
  }

  get soc(): number {
    return this.storedWh / (this.spec.capacityKwh * 1000);
  }

  private get minWh(): number {
    return this.spec.capacityKwh * 1000 * this.spec.socMin;
  }

  private get maxWh(): number {
    return this.spec.capacityKwh * 1000 * this.spec.socMax;
  }

  /** Power at the AC side in W, positive when discharging, for a house drawing `netLoadW` without the battery. */
  powerW(netLoadW: number): number {
    const maxW = this.spec.maxPowerKw * 1000;
    const wanted = this.setpoint.mode === "auto" ? netLoadW : this.setpoint.dischargeW;
    const clipped = Math.max(-maxW, Math.min(maxW, wanted));
    if (clipped > 0 && this.storedWh <= this.minWh + ENERGY_EPSILON_WH) return 0;
    if (clipped < 0 && this.storedWh >= this.maxWh - ENERGY_EPSILON_WH) return 0;
    return clipped;
  }

  /** Seconds until a SoC limit stops power `w`. */
  secondsToLimit(w: number): number {
    if (w > 0) return ((this.storedWh - this.minWh) * this.spec.efficiency * 3600) / w;
    if (w < 0) return ((this.maxWh - this.storedWh) * 3600) / (-w * this.spec.efficiency);
    return Infinity;
  }

  apply(w: number, seconds: number, reachesLimit: boolean): void {
    if (w > 0) this.storedWh = reachesLimit ? this.minWh : this.storedWh - (w * seconds) / 3600 / this.spec.efficiency;
    if (w < 0) this.storedWh = reachesLimit ? this.maxWh : this.storedWh - (w * seconds * this.spec.efficiency) / 3600;
  }
}

// ---------------------------------------------------------------------------------------
// EV charger

export interface EvSpec {
  maxPowerKw: number;
  /** Local hour the car arrives and is plugged in, and the hour it leaves. */
  arriveHour: number;
  departHour: number;
  /** Typical energy a session needs; each session draws 0.5× to 1.5× of it. */
  needKwh: number;
  seed: number;
}

/** `auto`: charge at full power until the car has what it needs. */
export type EvSetpoint = { mode: "auto" } | { mode: "paused" } | { mode: "power"; powerW: number };

export class EvCharger {
  setpoint: EvSetpoint = { mode: "auto" };
  private session: number | undefined;
  private needWh = 0;
  deliveredWh = 0;

  constructor(
    readonly spec: EvSpec,
    private readonly utcOffsetMinutes: number,
  ) {}

  /** The local day the current plug-in session began, or undefined while the car is away. */
  sessionAt(t: Date): number | undefined {
    const h = localHours(t, this.utcOffsetMinutes);
    const day = localDayIndex(t, this.utcOffsetMinutes);
    const { arriveHour: a, departHour: d } = this.spec;
    if (a > d) return h >= a ? day : h < d ? day - 1 : undefined; // window spans midnight
    return h >= a && h < d ? day : undefined;
  }

  /** Starts a new session when the car has (re)arrived. */
  update(t: Date): void {
    const session = this.sessionAt(t);
    if (session !== this.session) {
      this.session = session;
      this.deliveredWh = 0;
      this.needWh = session === undefined ? 0 : this.spec.needKwh * 1000 * (0.5 + hashUnit(this.spec.seed, 4, session));
    }
  }

  get remainingWh(): number {
    return Math.max(0, this.needWh - this.deliveredWh);
  }

  get pluggedIn(): boolean {
    return this.session !== undefined;
  }

  powerW(): number {
    if (this.session === undefined || this.remainingWh <= ENERGY_EPSILON_WH) return 0;
    const maxW = this.spec.maxPowerKw * 1000;
    switch (this.setpoint.mode) {
      case "auto":
        return maxW;
      case "paused":
        return 0;
      case "power":
        return Math.max(0, Math.min(maxW, this.setpoint.powerW));
    }
  }

  secondsToLimit(w: number): number {
    return w > 0 ? (this.remainingWh * 3600) / w : Infinity;
  }

  apply(w: number, seconds: number, reachesLimit: boolean): void {
    this.deliveredWh = reachesLimit ? this.needWh : this.deliveredWh + (w * seconds) / 3600;
  }
}

// ---------------------------------------------------------------------------------------
// Flexible load

/**
 * A load that runs at a steady power (a heat pump, a pool pump) and may be shed for a
 * while, as with an SG-Ready or EEBus "limit for a duration" command: it resumes by
 * itself when the shed time runs out, so a lost controller cannot leave it off.
 * The delayed consumption is not made up afterwards (no rebound is modelled).
 */
export interface FlexibleLoadSpec {
  powerW: number;
}

export class FlexibleLoad {
  /** Seconds the load stays shed from the simulator's current time; 0 while it runs. */
  shedSeconds = 0;

  constructor(readonly spec: FlexibleLoadSpec) {}

  powerW(): number {
    return this.shedSeconds > 0 ? 0 : this.spec.powerW;
  }

  secondsToLimit(): number {
    return this.shedSeconds > 0 ? this.shedSeconds : Infinity;
  }

  apply(seconds: number, reachesLimit: boolean): void {
    if (this.shedSeconds > 0) this.shedSeconds = reachesLimit ? 0 : this.shedSeconds - seconds;
  }
}

// ---------------------------------------------------------------------------------------
// Household

export type HouseholdKind = "consumer" | "pvProsumer" | "batteryProsumer" | "evOwner" | "producer" | "slackUnit";
export const HOUSEHOLD_KINDS: readonly HouseholdKind[] = ["consumer", "pvProsumer", "batteryProsumer", "evOwner", "producer", "slackUnit"];

export interface HouseholdSpec {
  kind: HouseholdKind;
  utcOffsetMinutes: number;
  load?: LoadSpec;
  pv?: PvSpec;
  battery?: BatterySpec;
  ev?: EvSpec;
  /** Part of the house's load that can be shed; its power counts in `loadW`. */
  flexibleLoad?: FlexibleLoadSpec;
}

/** Where the default neighbourhood lies: about 50°N, 8.7°E (Frankfurt am Main), CET. */
export const DEFAULT_SITE = { latitudeDeg: 50.1, longitudeDeg: 8.7, utcOffsetMinutes: 60 } as const;

/**
 * A household of the given kind with parameters drawn from `seed`. The slack unit is the
 * feeder's supplier of last resort, not a house behind a meter, so its profile is empty.
 */
export function householdSpec(kind: HouseholdKind, seed: number, weatherSeed: number): HouseholdSpec {
  const rnd = mulberry32(seed);
  const between = (lo: number, hi: number) => Math.round((lo + (hi - lo) * rnd()) * 10) / 10;
  const load = (lo: number, hi: number): LoadSpec => ({ annualKwh: Math.round(between(lo, hi)), seed, noise: 0.15 });
  const pv = (lo: number, hi: number): PvSpec => ({
    peakKw: between(lo, hi),
    weatherSeed,
    latitudeDeg: DEFAULT_SITE.latitudeDeg,
    longitudeDeg: DEFAULT_SITE.longitudeDeg,
    performanceRatio: 0.85,
  });
  const base = { kind, utcOffsetMinutes: DEFAULT_SITE.utcOffsetMinutes };
  switch (kind) {
    case "consumer":
      return { ...base, load: load(2500, 4500) };
    case "pvProsumer":
      return { ...base, load: load(3000, 5000), pv: pv(4, 9) };
    case "batteryProsumer":
      return {
        ...base,
        load: load(3500, 5000),
        pv: pv(6, 10),
        battery: { capacityKwh: between(5, 12), maxPowerKw: between(3, 5), socMin: 0.1, socMax: 0.95, initialSoc: 0.5, efficiency: 0.95 },
      };
    case "evOwner":
      return {
        ...base,
        load: load(3000, 4500),
        ev: { maxPowerKw: rnd() < 0.5 ? 7.4 : 11, arriveHour: between(17, 19), departHour: between(6, 8), needKwh: between(8, 16), seed },
      };
    case "producer":
      // A farm or workshop roof: a large array and a small own consumption.
      return { ...base, load: load(500, 1500), pv: pv(25, 40) };
    case "slackUnit":
      return base;
  }
}

export interface PowerBreakdown {
  loadW: number;
  pvW: number;
  /** Positive when the battery discharges into the house. */
  batteryW: number;
  evW: number;
  /** What the meter sees: positive is import from the grid, negative export. */
  netW: number;
}

export interface EnergyRegisters {
  importWh: number;
  exportWh: number;
}

/** Energy through each device since the start, behind the meter (AC side). */
export interface EnergyFlows {
  loadWh: number;
  pvWh: number;
  evWh: number;
  batteryDischargeWh: number;
  batteryChargeWh: number;
}

/**
 * Steps a household through time and accumulates its meter's import and export energy.
 *
 * Time is cut into fixed intervals aligned to the epoch (default 60 s). Load, PV and the
 * EV's plug-in state are sampled at the start of each interval and held through it; the
 * battery and EV powers are held too, except that an interval is split where one of
 * them hits a limit (full, empty, charged) or a set-point changes. Advancing to t in one
 * call or in many therefore gives the same registers.
 */
export class HouseholdSimulator {
  private cursor: number;
  private readonly stepMs: number;
  private readonly battery: Battery | undefined;
  private readonly ev: EvCharger | undefined;
  private readonly flexibleLoad: FlexibleLoad | undefined;
  private importWh = 0;
  private exportWh = 0;
  private readonly flowWh: EnergyFlows = { loadWh: 0, pvWh: 0, evWh: 0, batteryDischargeWh: 0, batteryChargeWh: 0 };
  private inputs: { interval: number; loadW: number; pvW: number } | undefined;

  constructor(
    readonly spec: HouseholdSpec,
    start: Date,
    options: { stepSeconds?: number } = {},
  ) {
    const stepSeconds = options.stepSeconds ?? 60;
    if (!(stepSeconds > 0) || !Number.isInteger(stepSeconds * 1000)) throw new RangeError(`stepSeconds must be a positive whole number of ms, got ${stepSeconds}`);
    this.stepMs = stepSeconds * 1000;
    this.cursor = start.getTime();
    this.battery = spec.battery === undefined ? undefined : new Battery(spec.battery);
    this.ev = spec.ev === undefined ? undefined : new EvCharger(spec.ev, spec.utcOffsetMinutes);
    this.flexibleLoad = spec.flexibleLoad === undefined ? undefined : new FlexibleLoad(spec.flexibleLoad);
  }

  get time(): Date {
    return new Date(this.cursor);
  }

  get registers(): EnergyRegisters {
    return { importWh: this.importWh, exportWh: this.exportWh };
  }

  get flows(): EnergyFlows {
    return { ...this.flowWh };
  }

  get hasBattery(): boolean {
    return this.battery !== undefined;
  }

  get hasEv(): boolean {
    return this.ev !== undefined;
  }

  get hasFlexibleLoad(): boolean {
    return this.flexibleLoad !== undefined;
  }

  batteryState(): { storedWh: number; soc: number; setpoint: BatterySetpoint } | undefined {
    const b = this.battery;
    return b === undefined ? undefined : { storedWh: b.storedWh, soc: b.soc, setpoint: b.setpoint };
  }

  evState(): { pluggedIn: boolean; deliveredWh: number; remainingWh: number; setpoint: EvSetpoint } | undefined {
    const ev = this.ev;
    this.inputsFor(Math.floor(this.cursor / this.stepMs)); // enter the current interval: the car may just have arrived
    return ev === undefined ? undefined : { pluggedIn: ev.pluggedIn, deliveredWh: ev.deliveredWh, remainingWh: ev.remainingWh, setpoint: ev.setpoint };
  }

  flexibleLoadState(): { powerW: number; shedSeconds: number } | undefined {
    const f = this.flexibleLoad;
    return f === undefined ? undefined : { powerW: f.powerW(), shedSeconds: f.shedSeconds };
  }

  /** Takes effect from the simulator's current time; advance it to "now" first. */
  setBatterySetpoint(setpoint: BatterySetpoint): void {
    if (this.battery === undefined) throw new RangeError(`a ${this.spec.kind} household has no battery`);
    this.battery.setpoint = setpoint;
  }

  setEvSetpoint(setpoint: EvSetpoint): void {
    if (this.ev === undefined) throw new RangeError(`a ${this.spec.kind} household has no EV charger`);
    this.ev.setpoint = setpoint;
  }

  /** Sheds the flexible load for `seconds` from the simulator's current time (0: it runs again now). */
  shedFlexibleLoad(seconds: number): void {
    if (this.flexibleLoad === undefined) throw new RangeError(`a ${this.spec.kind} household has no flexible load`);
    if (!(seconds >= 0) || !Number.isFinite(seconds)) throw new RangeError(`shed time must be a non-negative number of seconds, got ${seconds}`);
    this.flexibleLoad.shedSeconds = seconds;
  }

  /** The powers in effect at the simulator's current time. */
  powers(): PowerBreakdown {
    const { loadW, pvW } = this.inputsFor(Math.floor(this.cursor / this.stepMs));
    return this.split(loadW, pvW);
  }

  advanceTo(t: Date): void {
    const target = t.getTime();
    if (target < this.cursor) {
      throw new RangeError(`cannot step back in time from ${this.time.toISOString()} to ${t.toISOString()}`);
    }
    while (this.cursor < target) {
      const interval = Math.floor(this.cursor / this.stepMs);
      const end = Math.min(target, (interval + 1) * this.stepMs);
      this.integrate(interval, (end - this.cursor) / 1000);
      this.cursor = end;
    }
  }

  private inputsFor(interval: number): { loadW: number; pvW: number } {
    if (this.inputs?.interval !== interval) {
      const at = new Date(interval * this.stepMs);
      const loadW = this.spec.load === undefined ? 0 : householdLoadW(this.spec.load, at, this.spec.utcOffsetMinutes);
      const pvW = this.spec.pv === undefined ? 0 : pvPowerW(this.spec.pv, at);
      this.ev?.update(at);
      this.inputs = { interval, loadW, pvW };
    }
    return this.inputs;
  }

  private split(baseLoadW: number, pvW: number): PowerBreakdown {
    const loadW = baseLoadW + (this.flexibleLoad?.powerW() ?? 0);
    const evW = this.ev?.powerW() ?? 0;
    const batteryW = this.battery?.powerW(loadW + evW - pvW) ?? 0;
    return { loadW, pvW, batteryW, evW, netW: loadW + evW - pvW - batteryW };
  }

  private integrate(interval: number, seconds: number): void {
    const { loadW, pvW } = this.inputsFor(interval);
    let remaining = seconds;
    // Each pass ends at the interval's end or where a device reaches a limit, after which
    // that device's power changes; a handful of passes covers every sequence of limits.
    for (let pass = 0; remaining > 0; pass += 1) {
      if (pass === 16) throw new Error(`simulation did not converge in interval ${interval}`);
      const p = this.split(loadW, pvW);
      const evLimit = this.ev?.secondsToLimit(p.evW) ?? Infinity;
      const batteryLimit = this.battery?.secondsToLimit(p.batteryW) ?? Infinity;
      const flexLimit = this.flexibleLoad?.secondsToLimit() ?? Infinity;
      const dt = Math.min(remaining, evLimit, batteryLimit, flexLimit);
      if (p.netW > 0) this.importWh += (p.netW * dt) / 3600;
      else this.exportWh += (-p.netW * dt) / 3600;
      const f = this.flowWh;
      f.loadWh += (p.loadW * dt) / 3600;
      f.pvWh += (p.pvW * dt) / 3600;
      f.evWh += (p.evW * dt) / 3600;
      if (p.batteryW > 0) f.batteryDischargeWh += (p.batteryW * dt) / 3600;
      else f.batteryChargeWh += (-p.batteryW * dt) / 3600;
      this.ev?.apply(p.evW, dt, evLimit <= dt);
      this.battery?.apply(p.batteryW, dt, batteryLimit <= dt);
      this.flexibleLoad?.apply(dt, flexLimit <= dt);
      remaining -= dt;
    }
  }
}
