import net from "node:net";
import modbusSerial from "modbus-serial";
import type { IServiceVector } from "modbus-serial";
import { HouseholdSimulator, type HouseholdSpec } from "./profiles.js";

// ---------------------------------------------------------------------------------------
// Clocks: the simulator never reads the system time directly, so tests and demos can run
// a day in seconds.

/** Anything with `now()` as a Date or as ms since the epoch (agents/clock.ts's SimClock fits). */
export interface SimulatorClock {
  now(): Date | number;
}

export const systemClock: SimulatorClock = { now: () => new Date() };

function clockTime(clock: SimulatorClock): Date {
  return new Date(clock.now());
}

/** A clock that moves only when told to. */
export class ManualClock implements SimulatorClock {
  private ms: number;

  constructor(start: Date) {
    this.ms = start.getTime();
  }

  now(): Date {
    return new Date(this.ms);
  }

  set(t: Date): void {
    if (t.getTime() < this.ms) throw new RangeError(`clock cannot go back from ${this.now().toISOString()} to ${t.toISOString()}`);
    this.ms = t.getTime();
  }

  advance(ms: number): void {
    if (!(ms >= 0)) throw new RangeError(`cannot advance the clock by ${ms} ms`);
    this.ms += ms;
  }
}

/** Simulated time starting at `start` and running `speed` times faster than real time. */
export function acceleratedClock(start: Date, speed: number, realNow: () => number = Date.now): SimulatorClock {
  if (!(speed > 0)) throw new RangeError(`speed must be positive, got ${speed}`);
  const realStart = realNow();
  return { now: () => new Date(start.getTime() + (realNow() - realStart) * speed) };
}

// ---------------------------------------------------------------------------------------
// Register image

/**
 * Input registers served, as in an Eastron SDM630 (float32, big-endian word order).
 * Other addresses up to SDM_LAST_ADDRESS read as 0, like parameters a meter leaves unset.
 */
export const SDM630_INPUTS = {
  phase1VoltageV: 0x0000,
  phase2VoltageV: 0x0002,
  phase3VoltageV: 0x0004,
  totalPowerW: 0x0034,
  frequencyHz: 0x0046,
  importKwh: 0x0048,
  exportKwh: 0x004a,
  totalKwh: 0x0156,
} as const;
const SDM_LAST_ADDRESS = 0x017f;

/**
 * Input registers of the house's controllable devices (float32, big-endian word order, as
 * the SDM block), served like SETPOINT_REGISTERS under the meter's unit id. A device the
 * house does not have reads as NaN (SunSpec's "not implemented" for floats).
 */
export const DEVICE_INPUTS = {
  /** State of charge, 0 to 100 %. */
  batterySocPct: 0x1100,
  /** AC power, positive discharging. */
  batteryPowerW: 0x1102,
  /** 1 while the car is plugged in, else 0. */
  evPluggedIn: 0x1104,
  /** Energy delivered in the current plug-in session. */
  evSessionWh: 0x1106,
  /** Energy the car still asks for in this session (as ISO 15118 reports it). */
  evRemainingWh: 0x1108,
  evPowerW: 0x110a,
  flexibleLoadPowerW: 0x110c,
  /** Seconds the flexible load stays shed; 0 while it runs. */
  flexibleLoadShedSeconds: 0x110e,
} as const;
const DEVICE_FIRST_ADDRESS = 0x1100;
const DEVICE_LAST_ADDRESS = 0x110f;

/**
 * Holding registers of the house's controllable devices, which the simulator serves
 * under the meter's unit id (as a gateway would). Writing a power register engages it;
 * writing 0 to a mode register returns the device to its own behaviour.
 */
export const SETPOINT_REGISTERS = {
  /** 0 = self-consumption, 1 = hold the set-point below. */
  batteryMode: 0x1000,
  /** int16 W, positive discharges, negative charges. */
  batteryPowerW: 0x1001,
  /** 0 = charge at full power, 1 = paused, 2 = hold the power below. */
  evMode: 0x1002,
  /** uint16 W. */
  evPowerW: 0x1003,
  /** uint16 s: shed the flexible load for this long from now (it then runs again by itself); 0 = run now. */
  flexibleLoadShedSeconds: 0x1004,
} as const;

export const BATTERY_MODE = { auto: 0, fixed: 1 } as const;
export const EV_MODE = { auto: 0, paused: 1, power: 2 } as const;

/** A Modbus exception response; modbus-serial's server sends `modbusErrorCode` back to the client. */
class ModbusException extends Error {
  constructor(
    readonly modbusErrorCode: number,
    message: string,
  ) {
    super(message);
  }
}
const ILLEGAL_DATA_ADDRESS = 0x02;
const ILLEGAL_DATA_VALUE = 0x03;

function float32Words(value: number): [number, number] {
  const view = new DataView(new ArrayBuffer(4));
  view.setFloat32(0, value);
  return [view.getUint16(0), view.getUint16(2)];
}

export type OfflineMode = "silent" | "refuse";

/**
 * The meter's registers and the house's set-points, independent of the transport, so the
 * same device serves Modbus TCP (MeterServer) and Modbus RTU (modbus-serial's ServerSerial).
 * Every request first advances the household to the clock's time.
 */
export class SimulatedMeter {
  /** While true, requests are left unanswered, as by a meter that hangs. */
  silent = false;
  private batteryPowerW = 0;
  private evPowerW = 0;

  constructor(
    readonly household: HouseholdSimulator,
    readonly clock: SimulatorClock,
  ) {}

  /** The float32 kWh values the meter shows at the clock's time (what a client should read). */
  snapshot(): { importKwh: number; exportKwh: number; powerW: number } {
    this.household.advanceTo(clockTime(this.clock));
    const { importWh, exportWh } = this.household.registers;
    return { importKwh: Math.fround(importWh / 1000), exportKwh: Math.fround(exportWh / 1000), powerW: Math.fround(this.household.powers().netW) };
  }

  inputRegisters(address: number, length: number): number[] {
    const last = address + length - 1;
    const inDeviceBlock = address >= DEVICE_FIRST_ADDRESS && last <= DEVICE_LAST_ADDRESS;
    if (last > SDM_LAST_ADDRESS && !inDeviceBlock) {
      throw new ModbusException(
        ILLEGAL_DATA_ADDRESS,
        `input registers end at ${SDM_LAST_ADDRESS}; device registers span ${DEVICE_FIRST_ADDRESS} to ${DEVICE_LAST_ADDRESS}`,
      );
    }
    const image = new Map<number, number>();
    const put = (at: number, value: number) => {
      const [hi, lo] = float32Words(value);
      image.set(at, hi).set(at + 1, lo);
    };
    if (inDeviceBlock) {
      this.putDeviceState(put);
      return Array.from({ length }, (_, i) => image.get(address + i) ?? 0);
    }
    const s = this.snapshot(); // one snapshot per request: import and export from the same instant
    put(SDM630_INPUTS.phase1VoltageV, 230);
    put(SDM630_INPUTS.phase2VoltageV, 230);
    put(SDM630_INPUTS.phase3VoltageV, 230);
    put(SDM630_INPUTS.totalPowerW, s.powerW);
    put(SDM630_INPUTS.frequencyHz, 50);
    put(SDM630_INPUTS.importKwh, s.importKwh);
    put(SDM630_INPUTS.exportKwh, s.exportKwh);
    put(SDM630_INPUTS.totalKwh, Math.fround(s.importKwh + s.exportKwh));
    return Array.from({ length }, (_, i) => image.get(address + i) ?? 0);
  }

  /** The devices' state at the clock's time, into the DEVICE_INPUTS block. */
  private putDeviceState(put: (at: number, value: number) => void): void {
    this.household.advanceTo(clockTime(this.clock));
    const powers = this.household.powers();
    const battery = this.household.batteryState();
    const ev = this.household.evState();
    const flex = this.household.flexibleLoadState();
    put(DEVICE_INPUTS.batterySocPct, battery === undefined ? NaN : battery.soc * 100);
    put(DEVICE_INPUTS.batteryPowerW, battery === undefined ? NaN : powers.batteryW);
    put(DEVICE_INPUTS.evPluggedIn, ev === undefined ? NaN : ev.pluggedIn ? 1 : 0);
    put(DEVICE_INPUTS.evSessionWh, ev === undefined ? NaN : ev.deliveredWh);
    put(DEVICE_INPUTS.evRemainingWh, ev === undefined ? NaN : ev.remainingWh);
    put(DEVICE_INPUTS.evPowerW, ev === undefined ? NaN : powers.evW);
    put(DEVICE_INPUTS.flexibleLoadPowerW, flex === undefined ? NaN : flex.powerW);
    put(DEVICE_INPUTS.flexibleLoadShedSeconds, flex === undefined ? NaN : flex.shedSeconds);
  }

  holdingRegister(address: number): number {
    this.household.advanceTo(clockTime(this.clock));
    const battery = this.household.batteryState();
    const ev = this.household.evState();
    switch (address) {
      case SETPOINT_REGISTERS.batteryMode:
        return battery?.setpoint.mode === "fixed" ? BATTERY_MODE.fixed : BATTERY_MODE.auto;
      case SETPOINT_REGISTERS.batteryPowerW:
        return this.batteryPowerW & 0xffff;
      case SETPOINT_REGISTERS.evMode:
        return ev === undefined ? 0 : EV_MODE[ev.setpoint.mode === "power" ? "power" : ev.setpoint.mode];
      case SETPOINT_REGISTERS.evPowerW:
        return this.evPowerW;
      case SETPOINT_REGISTERS.flexibleLoadShedSeconds:
        return Math.min(0xffff, Math.ceil(this.household.flexibleLoadState()?.shedSeconds ?? 0));
      default:
        throw new ModbusException(ILLEGAL_DATA_ADDRESS, `no holding register at ${address}`);
    }
  }

  writeHoldingRegister(address: number, value: number): void {
    // Set-points act from now on: the energy until now accrued under the old ones.
    this.household.advanceTo(clockTime(this.clock));
    const needBattery = () => {
      if (!this.household.hasBattery) throw new ModbusException(ILLEGAL_DATA_ADDRESS, "this house has no battery");
    };
    const needEv = () => {
      if (!this.household.hasEv) throw new ModbusException(ILLEGAL_DATA_ADDRESS, "this house has no EV charger");
    };
    switch (address) {
      case SETPOINT_REGISTERS.batteryMode:
        needBattery();
        if (value === BATTERY_MODE.auto) this.household.setBatterySetpoint({ mode: "auto" });
        else if (value === BATTERY_MODE.fixed) this.household.setBatterySetpoint({ mode: "fixed", dischargeW: this.batteryPowerW });
        else throw new ModbusException(ILLEGAL_DATA_VALUE, `battery mode ${value}`);
        return;
      case SETPOINT_REGISTERS.batteryPowerW:
        needBattery();
        this.batteryPowerW = value >= 0x8000 ? value - 0x10000 : value; // int16
        this.household.setBatterySetpoint({ mode: "fixed", dischargeW: this.batteryPowerW });
        return;
      case SETPOINT_REGISTERS.evMode:
        needEv();
        if (value === EV_MODE.auto) this.household.setEvSetpoint({ mode: "auto" });
        else if (value === EV_MODE.paused) this.household.setEvSetpoint({ mode: "paused" });
        else if (value === EV_MODE.power) this.household.setEvSetpoint({ mode: "power", powerW: this.evPowerW });
        else throw new ModbusException(ILLEGAL_DATA_VALUE, `EV mode ${value}`);
        return;
      case SETPOINT_REGISTERS.evPowerW:
        needEv();
        this.evPowerW = value;
        this.household.setEvSetpoint({ mode: "power", powerW: value });
        return;
      case SETPOINT_REGISTERS.flexibleLoadShedSeconds:
        if (!this.household.hasFlexibleLoad) throw new ModbusException(ILLEGAL_DATA_ADDRESS, "this house has no flexible load");
        this.household.shedFlexibleLoad(value);
        return;
      default:
        throw new ModbusException(ILLEGAL_DATA_ADDRESS, `no holding register at ${address}`);
    }
  }

  /** Handlers for modbus-serial's ServerTCP and ServerSerial. */
  vector(): IServiceVector {
    // While silent, hand back promises that never settle: the server then never replies.
    const hang = () => new Promise<number>(() => {});
    // Parameter counts matter: modbus-serial calls a handler with a callback when it
    // declares one more parameter, so these declare none.
    return {
      getInputRegister: (addr: number) => (this.silent ? hang() : (this.inputRegisters(addr, 1)[0] ?? 0)),
      getMultipleInputRegisters: (addr: number, length: number) =>
        this.silent ? Array.from({ length }, hang) : this.inputRegisters(addr, length),
      getHoldingRegister: (addr: number) => (this.silent ? hang() : this.holdingRegister(addr)),
      getMultipleHoldingRegisters: (addr: number, length: number) =>
        this.silent ? Array.from({ length }, hang) : Array.from({ length }, (_, i) => this.holdingRegister(addr + i)),
      setRegister: (addr: number, value: number) => (this.silent ? hang().then(() => {}) : this.writeHoldingRegister(addr, value)),
      setRegisterArray: (addr: number, values: number[]) => {
        if (this.silent) return hang().then(() => {});
        values.forEach((value, i) => this.writeHoldingRegister(addr + i, value));
      },
    };
  }
}

// ---------------------------------------------------------------------------------------
// TCP server

const { ServerTCP } = modbusSerial;
type ServerTCP = InstanceType<typeof ServerTCP>;

export interface MeterServerOptions {
  household: HouseholdSimulator | HouseholdSpec;
  clock: SimulatorClock;
  /** 0 or absent: any free port (see `port` after start). */
  port?: number;
  host?: string;
  /** The unit id the meter answers to (1 to 247). */
  unitId?: number;
}

function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once("error", reject);
    probe.listen({ port: 0, host }, () => {
      const address = probe.address();
      probe.close(() => (typeof address === "object" && address !== null ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

function listen(vector: IServiceVector, host: string, port: number, unitId: number): Promise<ServerTCP> {
  return new Promise((resolve, reject) => {
    const server = new ServerTCP(vector, { host, port, unitID: unitId });
    // Without listeners, an 'error' emitted by the server would crash the process.
    server.on("error", () => {});
    server.on("socketError", () => {});
    server.once("serverError", (error) => reject(error));
    server.once("initialized", () => resolve(server));
  });
}

function close(server: ServerTCP): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

/**
 * A real Modbus TCP server for one simulated meter.
 *
 * modbus-serial's ServerTCP treats port 0 as "default 502", so a free port is found by
 * binding a probe socket first; a race for it with another process is retried.
 */
export class MeterServer {
  private server: ServerTCP | undefined;

  private constructor(
    readonly meter: SimulatedMeter,
    readonly host: string,
    readonly port: number,
    readonly unitId: number,
    server: ServerTCP,
  ) {
    this.server = server;
  }

  static async start(options: MeterServerOptions): Promise<MeterServer> {
    const host = options.host ?? "127.0.0.1";
    const unitId = options.unitId ?? 1;
    if (!Number.isInteger(unitId) || unitId < 1 || unitId > 247) throw new RangeError(`unitId must be 1 to 247, got ${unitId}`);
    const household =
      options.household instanceof HouseholdSimulator ? options.household : new HouseholdSimulator(options.household, clockTime(options.clock));
    const meter = new SimulatedMeter(household, options.clock);
    const vector = meter.vector();
    const fixedPort = options.port !== undefined && options.port !== 0;
    for (let attempt = 1; ; attempt += 1) {
      const port = fixedPort ? (options.port as number) : await freePort(host);
      try {
        return new MeterServer(meter, host, port, unitId, await listen(vector, host, port, unitId));
      } catch (error) {
        const inUse = (error as NodeJS.ErrnoException).code === "EADDRINUSE";
        if (fixedPort || !inUse || attempt >= 5) throw error;
      }
    }
  }

  get household(): HouseholdSimulator {
    return this.meter.household;
  }

  get online(): boolean {
    return this.server !== undefined && !this.meter.silent;
  }

  /**
   * Simulates an outage. "silent": connections stay open but requests go unanswered
   * (a hung meter or a broken RS-485 gateway). "refuse": the server closes every
   * connection and stops listening (a powered-off meter).
   */
  async goOffline(mode: OfflineMode): Promise<void> {
    if (mode === "silent") {
      this.meter.silent = true;
      return;
    }
    const server = this.server;
    this.server = undefined;
    if (server !== undefined) await close(server);
  }

  /** Ends an outage; the meter listens on the same port again. */
  async comeOnline(): Promise<void> {
    this.meter.silent = false;
    if (this.server === undefined) this.server = await listen(this.meter.vector(), this.host, this.port, this.unitId);
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (server !== undefined) await close(server);
  }
}
