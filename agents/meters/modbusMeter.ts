import modbusSerial from "modbus-serial";
import { ConfigError, MarketError } from "../errors.js";
import {
  MAX_REGISTERS_PER_READ,
  WORDS_PER_TYPE,
  toRational,
  type DataType,
  type Rational,
  type RegisterMap,
  type WordOrder,
} from "./registerMaps.js";
import { silentLogger, type LogLevel, type Logger } from "../log.js";

// Logs carry `ts` from the injected clock (agents/log.ts keeps a given one), so that logs of a
// simulated day show simulated time.

// ---------------------------------------------------------------------------------------
// Errors

/** The meter did not answer (connection refused, dropped or timed out) within the read's time budget. */
export class MeterOfflineError extends MarketError {
  constructor(
    readonly meter: string,
    readonly attempts: number,
    /** When (real time) the client will next try to connect; a read() whose budget ends before then fails fast. */
    readonly retryAt: Date,
    cause: unknown,
  ) {
    super(
      "METER_OFFLINE",
      `meter ${meter} is not answering after ${attempts} attempt(s) (last error: ${describe(cause)}); ` +
        `check its power, cable and address; next attempt at ${retryAt.toISOString()}`,
      { cause },
    );
  }
}

/** The meter answered, but with a Modbus exception or with a value that cannot be an energy register. */
export class MeterReadError extends MarketError {
  constructor(
    readonly meter: string,
    problem: string,
    cause?: unknown,
  ) {
    super("METER_READ", `meter ${meter}: ${problem}`, cause === undefined ? undefined : { cause });
  }
}

function describe(error: unknown): string {
  if (error instanceof Error) return error.message;
  if (typeof error === "object" && error !== null && "message" in error) return String(error.message);
  return String(error);
}

// ---------------------------------------------------------------------------------------
// Decoding

/** Orders a value's words most significant first. */
function msbFirst(words: readonly number[], order: WordOrder): number[] {
  return order === "big" ? [...words] : [...words].reverse();
}

/**
 * An energy register as integer Wh, rounded down, computed exactly.
 *
 * Float32 registers (Eastron SDM and most DIN-rail meters) have a 24-bit mantissa, so a
 * kWh value keeps 1 Wh resolution only below 2^14 = 16384 kWh; above it the register
 * steps by 2 Wh, 4 Wh, ... (at 100 000 kWh by about 8 Wh). Rounding to float32 is
 * monotonic, so the register still never decreases, and energy between two coarse steps
 * is not lost but shows up in a later reading. Few decimal kWh values are exact in
 * float32 (1.234 kWh is stored as 1.23399997 kWh, so 1233 Wh): rounding down keeps every
 * reading at or below the meter's own figure, and the next reading regains the fraction.
 * The conversion uses exact integer arithmetic (mantissa × 2^exponent × scale), so that
 * decimal scales of custom maps (e.g. 0.1 Wh per count) add no float64 rounding.
 */
export function decodeEnergyWh(words: readonly number[], dataType: DataType, order: WordOrder, scale: Rational): bigint {
  const w = msbFirst(words, order);
  if (w.length !== WORDS_PER_TYPE[dataType]) throw new RangeError(`${dataType} needs ${WORDS_PER_TYPE[dataType]} words, got ${w.length}`);
  const [w0 = 0, w1 = 0, w2 = 0, w3 = 0] = w;
  switch (dataType) {
    case "float32": {
      const bits = ((w0 << 16) | w1) >>> 0;
      const sign = bits >>> 31;
      const exponent = (bits >>> 23) & 0xff;
      const fraction = bits & 0x7fffff;
      if (exponent === 0xff) throw new RangeError(fraction === 0 ? "register holds infinity" : "register holds NaN");
      const mantissa = BigInt(exponent === 0 ? fraction : fraction | 0x800000);
      if (sign === 1 && mantissa !== 0n) throw new RangeError(`register holds a negative value (${floatFromWords(w0, w1)})`);
      const shift = exponent === 0 ? -149 : exponent - 150;
      return shift >= 0
        ? (mantissa * scale.num << BigInt(shift)) / scale.den
        : (mantissa * scale.num) / (scale.den << BigInt(-shift));
    }
    case "uint32":
      return (BigInt(((w0 << 16) | w1) >>> 0) * scale.num) / scale.den;
    case "int32": {
      const raw = (w0 << 16) | w1; // JS bit operations give a signed 32-bit result
      if (raw < 0) throw new RangeError(`register holds a negative value (${raw})`);
      return (BigInt(raw) * scale.num) / scale.den;
    }
    case "uint64": {
      const raw = (BigInt(w0) << 48n) | (BigInt(w1) << 32n) | (BigInt(w2) << 16n) | BigInt(w3);
      return (raw * scale.num) / scale.den;
    }
  }
}

function floatFromWords(w0: number, w1: number): number {
  const view = new DataView(new ArrayBuffer(4));
  view.setUint16(0, w0);
  view.setUint16(2, w1);
  return view.getFloat32(0);
}

/** A power register as W (float64; power is informative, not billed). */
export function decodePowerW(words: readonly number[], dataType: DataType, order: WordOrder, scaleW: number): number {
  const [w0 = 0, w1 = 0, w2 = 0, w3 = 0] = msbFirst(words, order);
  switch (dataType) {
    case "float32":
      return floatFromWords(w0, w1) * scaleW;
    case "uint32":
      return (((w0 << 16) | w1) >>> 0) * scaleW;
    case "int32":
      return ((w0 << 16) | w1) * scaleW;
    case "uint64":
      return Number((BigInt(w0) << 48n) | (BigInt(w1) << 32n) | (BigInt(w2) << 16n) | BigInt(w3)) * scaleW;
  }
}

/** The words of a set-point value, most significant first before applying `order`. */
export type SetpointType = "int16" | "uint16" | "int32" | "uint32" | "float32";

export function encodeSetpoint(value: number, type: SetpointType, order: WordOrder): number[] {
  const view = new DataView(new ArrayBuffer(4));
  const inRange = (min: number, max: number) => Number.isInteger(value) && value >= min && value <= max;
  switch (type) {
    case "int16":
      if (!inRange(-0x8000, 0x7fff)) throw new RangeError(`${value} is not an int16`);
      return [value & 0xffff];
    case "uint16":
      if (!inRange(0, 0xffff)) throw new RangeError(`${value} is not a uint16`);
      return [value];
    case "int32":
      if (!inRange(-0x80000000, 0x7fffffff)) throw new RangeError(`${value} is not an int32`);
      view.setInt32(0, value);
      break;
    case "uint32":
      if (!inRange(0, 0xffffffff)) throw new RangeError(`${value} is not a uint32`);
      view.setUint32(0, value);
      break;
    case "float32":
      if (!Number.isFinite(value)) throw new RangeError(`${value} is not a finite number`);
      view.setFloat32(0, value);
      break;
  }
  const words = [view.getUint16(0), view.getUint16(2)];
  return order === "big" ? words : words.reverse();
}

// ---------------------------------------------------------------------------------------
// Client

export interface TcpConnection {
  kind: "tcp";
  host: string;
  port: number;
  unitId: number;
}

export interface RtuConnection {
  kind: "rtu";
  path: string;
  baudRate: number;
  parity: "none" | "even" | "odd";
  unitId: number;
}

export type MeterConnection = TcpConnection | RtuConnection;

export interface BackoffOptions {
  /** Delay before the first reconnect attempt. */
  initialMs: number;
  /** Ceiling of the delay, however long the meter stays away. */
  maxMs: number;
  factor: number;
}

export interface ModbusMeterOptions {
  connection: MeterConnection;
  map: RegisterMap;
  /** Shown in logs and errors; defaults to the connection address. */
  name?: string;
  logger?: Logger;
  /**
   * Where `at` and log timestamps come from (a Date or ms since the epoch, so both
   * agents/clock.ts clocks and the simulator's clocks fit); defaults to the system clock.
   */
  clock?: { now(): Date | number };
  requestTimeoutMs?: number;
  connectTimeoutMs?: number;
  backoff?: Partial<BackoffOptions>;
  /** Longest one read() or writeSetpoint() may spend retrying before it gives up. */
  maxWaitMs?: number;
}

export interface MeterReading {
  importWh: bigint;
  exportWh: bigint;
  at: Date;
}

const DEFAULT_BACKOFF: BackoffOptions = { initialMs: 500, maxMs: 30_000, factor: 2 };
const STANDARD_BAUD_RATES = [1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200];

// modbus-serial is CommonJS: its class is `module.exports`, reached from ESM as `.default`.
const ModbusRTU = modbusSerial.default;
type ModbusRTU = InstanceType<typeof ModbusRTU>;

class TransportError extends Error {}

function positiveMs(value: number | undefined, fallback: number, field: string): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value <= 0) throw new ConfigError(field, `must be a positive number of milliseconds, got ${value}`);
  return value;
}

function validateConnection(c: MeterConnection): void {
  const unitMax = c.kind === "tcp" ? 255 : 247; // RTU reserves 0 for broadcast and 248-255
  const unitMin = c.kind === "tcp" ? 0 : 1;
  if (!Number.isInteger(c.unitId) || c.unitId < unitMin || c.unitId > unitMax) {
    throw new ConfigError("meter.connection.unitId", `must be an integer from ${unitMin} to ${unitMax}, got ${c.unitId}`);
  }
  if (c.kind === "tcp") {
    if (typeof c.host !== "string" || c.host === "") throw new ConfigError("meter.connection.host", "must be a host name or IP address");
    if (!Number.isInteger(c.port) || c.port < 1 || c.port > 65535) {
      throw new ConfigError("meter.connection.port", `must be a TCP port from 1 to 65535, got ${c.port}`);
    }
  } else {
    if (typeof c.path !== "string" || c.path === "") throw new ConfigError("meter.connection.path", "must be a serial device path such as /dev/ttyUSB0");
    if (!STANDARD_BAUD_RATES.includes(c.baudRate)) {
      throw new ConfigError("meter.connection.baudRate", `must be one of ${STANDARD_BAUD_RATES.join(", ")}, got ${c.baudRate}`);
    }
    if (!["none", "even", "odd"].includes(c.parity)) {
      throw new ConfigError("meter.connection.parity", `must be "none", "even" or "odd", got ${JSON.stringify(c.parity)}`);
    }
  }
}

/**
 * A Modbus energy meter (TCP or RTU). Operations are serialised, because an RTU bus
 * carries one request at a time. When the meter drops out, the client reconnects with
 * capped exponential backoff; the backoff state outlives a single read(), so polling
 * often does not hammer a meter that is away.
 */
export class ModbusMeter {
  readonly name: string;
  private readonly connection: MeterConnection;
  private readonly map: RegisterMap;
  private readonly scale: Rational;
  private readonly logger: Logger;
  private readonly clock: { now(): Date | number };
  private readonly requestTimeoutMs: number;
  private readonly connectTimeoutMs: number;
  private readonly backoff: BackoffOptions;
  private readonly maxWaitMs: number;

  private client: ModbusRTU | undefined;
  private failures = 0;
  private nextAttemptAt = 0; // real time (ms), not the injected clock: backoff is about the wire
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;
  private readonly abort = new AbortController();

  constructor(options: ModbusMeterOptions) {
    validateConnection(options.connection);
    this.connection = { ...options.connection };
    this.map = options.map;
    this.scale = toRational(options.map.scaleWh, "meter.registerMap.scaleWh");
    const c = options.connection;
    this.name = options.name ?? (c.kind === "tcp" ? `tcp://${c.host}:${c.port}/${c.unitId}` : `rtu://${c.path}/${c.unitId}`);
    this.logger = options.logger ?? silentLogger;
    this.clock = options.clock ?? { now: () => Date.now() };
    this.requestTimeoutMs = positiveMs(options.requestTimeoutMs, 2_000, "meter.requestTimeoutMs");
    this.connectTimeoutMs = positiveMs(options.connectTimeoutMs, 3_000, "meter.connectTimeoutMs");
    this.maxWaitMs = positiveMs(options.maxWaitMs, 10_000, "meter.maxWaitMs");
    this.backoff = {
      initialMs: positiveMs(options.backoff?.initialMs, DEFAULT_BACKOFF.initialMs, "meter.backoff.initialMs"),
      maxMs: positiveMs(options.backoff?.maxMs, DEFAULT_BACKOFF.maxMs, "meter.backoff.maxMs"),
      factor: options.backoff?.factor ?? DEFAULT_BACKOFF.factor,
    };
    if (!(this.backoff.factor >= 1)) throw new ConfigError("meter.backoff.factor", `must be at least 1, got ${this.backoff.factor}`);
  }

  /** Cumulative import and export energy, as integer Wh rounded down. */
  read(): Promise<MeterReading> {
    return this.exclusive(async () => {
      const { importAddress, exportAddress, dataType } = this.map;
      const words = WORDS_PER_TYPE[dataType];
      const first = Math.min(importAddress, exportAddress);
      const span = Math.max(importAddress, exportAddress) + words - first;
      let importWords: number[];
      let exportWords: number[];
      if (span <= MAX_REGISTERS_PER_READ) {
        // One request, so import and export come from the same instant.
        const block = await this.withRetry("read energy registers", (client) => this.readBlock(client, first, span));
        importWords = block.slice(importAddress - first, importAddress - first + words);
        exportWords = block.slice(exportAddress - first, exportAddress - first + words);
      } else {
        importWords = await this.withRetry("read import register", (client) => this.readBlock(client, importAddress, words));
        exportWords = await this.withRetry("read export register", (client) => this.readBlock(client, exportAddress, words));
      }
      const at = new Date(this.clock.now());
      return {
        importWh: this.decode(importWords, "import"),
        exportWh: this.decode(exportWords, "export"),
        at,
      };
    });
  }

  /** Instantaneous active power in W (positive: drawn from the grid), if the map has a power register. */
  readPowerW(): Promise<number> {
    const power = this.map.power;
    if (power === undefined) {
      return Promise.reject(new ConfigError("meter.registerMap.power", `map ${this.map.name} has no power register`));
    }
    return this.exclusive(async () => {
      const words = await this.withRetry("read power register", (client) =>
        this.readBlock(client, power.address, WORDS_PER_TYPE[this.map.dataType]),
      );
      return decodePowerW(words, this.map.dataType, this.map.wordOrder, power.scaleW);
    });
  }

  /**
   * Writes a set-point to a holding register (battery inverter power, EV charger current,
   * ...). 16-bit types use FC6, 32-bit types FC16 in the map's word order. Retrying a
   * write is safe: writing the same value twice has the same effect as once.
   */
  writeSetpoint(register: number, value: number, type: SetpointType = "int16", unitId?: number): Promise<void> {
    const words = encodeSetpoint(value, type, this.map.wordOrder);
    if (!Number.isInteger(register) || register < 0 || register + words.length - 1 > 0xffff) {
      return Promise.reject(new RangeError(`register ${register} is not a holding register address for a ${type}`));
    }
    return this.exclusive(async () => {
      await this.withRetry(`write set-point ${register}`, (client) =>
        this.asUnit(client, unitId, async () => {
          if (words.length === 1) await client.writeRegister(register, words[0] ?? 0);
          else await client.writeRegisters(register, words);
        }),
      );
      this.log("info", "set-point written", { register, value, type, ...(unitId === undefined ? {} : { unitId }) });
    });
  }

  /**
   * Raw 16-bit input registers, e.g. the state of a battery inverter or EV charger behind the
   * same link, through the same queue, retries and backoff as read(). `unitId` addresses
   * another device on the link (an RS-485 bus, a TCP gateway); by default the meter's.
   */
  readInputRegisters(address: number, length: number, unitId?: number): Promise<number[]> {
    if (!Number.isInteger(address) || !Number.isInteger(length) || address < 0 || length < 1 || length > MAX_REGISTERS_PER_READ || address + length - 1 > 0xffff) {
      return Promise.reject(new RangeError(`cannot read ${length} input registers from ${address}`));
    }
    return this.exclusive(() =>
      this.withRetry(`read input registers ${address} to ${address + length - 1}`, (client) =>
        this.asUnit(client, unitId, async () => {
          const result = await client.readInputRegisters(address, length);
          if (result.data.length !== length) throw new TransportError(`asked for ${length} registers, got ${result.data.length}`);
          return result.data;
        }),
      ),
    );
  }

  /** Closes the connection; pending backoff waits end at once. */
  async close(): Promise<void> {
    this.closed = true;
    this.abort.abort();
    await this.queue.catch(() => {});
    await this.disconnect();
  }

  // -------------------------------------------------------------------------------------

  private decode(words: number[], which: "import" | "export"): bigint {
    try {
      return decodeEnergyWh(words, this.map.dataType, this.map.wordOrder, this.scale);
    } catch (error) {
      throw new MeterReadError(this.name, `${which} register: ${describe(error)}; is the register map (${this.map.name}) right for this meter?`, error);
    }
  }

  private async readBlock(client: ModbusRTU, address: number, length: number): Promise<number[]> {
    const result =
      this.map.registerType === "input"
        ? await client.readInputRegisters(address, length)
        : await client.readHoldingRegisters(address, length);
    if (result.data.length !== length) throw new TransportError(`asked for ${length} registers, got ${result.data.length}`);
    return result.data;
  }

  /** Runs `operation` addressed to `unitId` (if given), then addresses the meter again. */
  private async asUnit<T>(client: ModbusRTU, unitId: number | undefined, operation: () => Promise<T>): Promise<T> {
    if (unitId === undefined || unitId === this.connection.unitId) return operation();
    client.setID(unitId);
    try {
      return await operation();
    } finally {
      client.setID(this.connection.unitId);
    }
  }

  private exclusive<T>(operation: () => Promise<T>): Promise<T> {
    const run = this.queue.then(() => {
      if (this.closed) throw new MarketError("METER_CLOSED", `meter ${this.name}: client is closed`);
      return operation();
    });
    this.queue = run.catch(() => {});
    return run;
  }

  private backoffDelay(): number {
    return Math.min(this.backoff.initialMs * this.backoff.factor ** (this.failures - 1), this.backoff.maxMs);
  }

  private async withRetry<T>(what: string, operation: (client: ModbusRTU) => Promise<T>): Promise<T> {
    const deadline = Date.now() + this.maxWaitMs;
    let attempts = 0;
    let lastError: unknown = new Error("no attempt made");
    for (;;) {
      if (this.closed) throw new MarketError("METER_CLOSED", `meter ${this.name}: client is closed`, { cause: lastError });
      const wait = this.nextAttemptAt - Date.now();
      if (wait > 0) {
        if (Date.now() + wait > deadline) {
          throw new MeterOfflineError(this.name, attempts, new Date(this.nextAttemptAt), lastError);
        }
        await this.sleep(wait);
      }
      attempts += 1;
      try {
        const client = this.client ?? (await this.connect());
        const result = await operation(client);
        if (this.failures > 0) this.log("info", "meter reachable again", { after: this.failures, what });
        this.failures = 0;
        this.nextAttemptAt = 0;
        return result;
      } catch (error) {
        if (isModbusException(error)) {
          // The meter answered: the link is fine, retrying will not change its answer.
          throw new MeterReadError(this.name, `${what}: ${describe(error)}`, error);
        }
        if (this.closed) throw new MarketError("METER_CLOSED", `meter ${this.name}: client is closed`, { cause: error });
        lastError = error;
        this.failures += 1;
        const delayMs = this.backoffDelay();
        this.nextAttemptAt = Date.now() + delayMs;
        this.log("warn", "meter unreachable, will reconnect", { what, attempt: attempts, failures: this.failures, delayMs, error: describe(error) });
        await this.disconnect();
      }
    }
  }

  private async connect(): Promise<ModbusRTU> {
    const client = new ModbusRTU();
    // Without a listener, a port error would be thrown as an uncaught 'error' event.
    client.on("error", (error: unknown) => this.log("warn", "meter port error", { error: describe(error) }));
    client.on("close", () => {
      if (this.client === client) {
        this.client = undefined;
        this.log("warn", "meter connection closed by peer", {});
      }
    });
    const c = this.connection;
    const opening =
      c.kind === "tcp"
        ? client.connectTCP(c.host, { port: c.port })
        : client.connectRTUBuffered(c.path, { baudRate: c.baudRate, parity: c.parity, dataBits: 8, stopBits: 1 });
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        opening,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new TransportError(`connect timed out after ${this.connectTimeoutMs} ms`)), this.connectTimeoutMs);
        }),
      ]);
    } catch (error) {
      // A serial port that opens after the timeout must still be released.
      opening.then(() => release(client, c.kind), () => {});
      await release(client, c.kind);
      throw error;
    } finally {
      clearTimeout(timer);
    }
    client.setID(c.unitId);
    client.setTimeout(this.requestTimeoutMs);
    this.client = client;
    this.log("info", "meter connected", {});
    return client;
  }

  private async disconnect(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    if (client !== undefined) await release(client, this.connection.kind);
  }

  private sleep(ms: number): Promise<void> {
    const signal = this.abort.signal;
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener("abort", done);
    });
  }

  private log(level: LogLevel, msg: string, fields: Record<string, unknown>): void {
    this.logger({ ts: new Date(this.clock.now()).toISOString(), level, msg, meter: this.name, ...fields });
  }
}

function isModbusException(error: unknown): boolean {
  return typeof error === "object" && error !== null && typeof (error as { modbusCode?: unknown }).modbusCode === "number";
}

function release(client: ModbusRTU, kind: MeterConnection["kind"]): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, 1_000); // never let a stuck port block a reconnect
    const done = () => {
      clearTimeout(timer);
      resolve();
    };
    try {
      // A TCP close() waits for the peer, which may be gone, so TCP ports are destroyed.
      // Serial ports have no destroy(), and ModbusRTU.destroy() would silently leave them
      // open (and locked), so they are closed.
      if (kind === "tcp") client.destroy(done);
      else client.close(done);
    } catch {
      done();
    }
  });
}
