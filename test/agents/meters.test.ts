import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "chai";
import { expectClose } from "../support/approx.js";
import modbusSerial, { type IServiceVector } from "modbus-serial";
import { ConfigError } from "../../agents/errors.js";
import {
  MeterOfflineError,
  MeterReadError,
  ModbusMeter,
  decodeEnergyWh,
  encodeSetpoint,
  type ModbusMeterOptions,
} from "../../agents/meters/modbusMeter.js";
import type { LogRecord } from "../../agents/log.js";
import { SDM120, SDM630, parseRegisterMap, resolveRegisterMap, toRational } from "../../agents/meters/registerMaps.js";
import { ModbusDeviceIo } from "../../agents/meter-agent/flexibility.js";
import { BATTERY_MODE, DEVICE_INPUTS, EV_MODE, ManualClock, MeterServer, SETPOINT_REGISTERS, SimulatedMeter } from "../../agents/simulator/meterServer.js";
import { HOUSEHOLD_KINDS, HouseholdSimulator, householdSpec, mulberry32, type HouseholdKind } from "../../agents/simulator/profiles.js";

const HOUR = 3_600_000;
const JUNE_DAY = new Date(Date.UTC(2025, 5, 10)); // a Tuesday

/** Half a float32 step of `wh` (as kWh) in Wh, plus the 1 Wh that rounding down may drop. */
function float32ToleranceWh(wh: number): number {
  const kwh = wh / 1000;
  const ulpKwh = kwh < 2 ** -126 ? 2 ** -149 : 2 ** (Math.floor(Math.log2(kwh)) - 23);
  return (ulpKwh * 1000) / 2 + 1;
}

function float32Words(value: number): number[] {
  const view = new DataView(new ArrayBuffer(4));
  view.setFloat32(0, value);
  return [view.getUint16(0), view.getUint16(2)];
}

function expectConfigError(run: () => unknown, field: string): void {
  let thrown: unknown;
  try {
    run();
  } catch (error) {
    thrown = error;
  }
  expect(thrown, `expected a ConfigError for ${field}`).to.be.instanceOf(ConfigError);
  expect((thrown as ConfigError).field).to.equal(field);
  expect((thrown as ConfigError).message).to.contain(field);
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error("expected the promise to reject");
}

function tcpMeter(server: MeterServer, clock: ManualClock, extra: Partial<ModbusMeterOptions> = {}): ModbusMeter {
  return new ModbusMeter({
    connection: { kind: "tcp", host: server.host, port: server.port, unitId: server.unitId },
    map: SDM630,
    clock,
    requestTimeoutMs: 500,
    backoff: { initialMs: 20, maxMs: 100 },
    ...extra,
  });
}

describe("meters: register maps", function () {
  this.timeout(10_000);

  it("has the Eastron SDM120 and SDM630 energy registers", function () {
    for (const map of [SDM120, SDM630]) {
      expect(map).to.include({ registerType: "input", wordOrder: "big", dataType: "float32", scaleWh: 1000, importAddress: 0x48, exportAddress: 0x4a });
    }
    expect(SDM120.power?.address).to.equal(0x0c);
    expect(SDM630.power?.address).to.equal(0x34);
    expect(resolveRegisterMap("sdm630")).to.deep.equal({ ...SDM630, power: { ...SDM630.power } });
  });

  it("accepts a valid custom map", function () {
    const map = parseRegisterMap({
      name: "ABB B23",
      registerType: "holding",
      wordOrder: "big",
      dataType: "uint64",
      scaleWh: 10,
      importAddress: 0x5000,
      exportAddress: 0x5004,
      power: { address: 0x5b14, scaleW: 0.01 },
    });
    expect(map).to.deep.include({ dataType: "uint64", importAddress: 0x5000, exportAddress: 0x5004, power: { address: 0x5b14, scaleW: 0.01 } });
  });

  it("names the offending field of an invalid custom map", function () {
    const valid = { name: "x", registerType: "input", wordOrder: "little", dataType: "uint32", scaleWh: 0.1, importAddress: 0, exportAddress: 2 };
    const f = "meter.registerMap";
    expectConfigError(() => parseRegisterMap("nope"), f);
    expectConfigError(() => resolveRegisterMap("SDM999"), f);
    expectConfigError(() => parseRegisterMap({ ...valid, name: "" }), `${f}.name`);
    expectConfigError(() => parseRegisterMap({ ...valid, registerType: "coil" }), `${f}.registerType`);
    expectConfigError(() => parseRegisterMap({ ...valid, wordOrder: undefined }), `${f}.wordOrder`);
    expectConfigError(() => parseRegisterMap({ ...valid, dataType: "float64" }), `${f}.dataType`);
    expectConfigError(() => parseRegisterMap({ ...valid, scaleWh: -1 }), `${f}.scaleWh`);
    expectConfigError(() => parseRegisterMap({ ...valid, scaleWh: 1 / 3 }), `${f}.scaleWh`);
    expectConfigError(() => parseRegisterMap({ ...valid, importAddress: 1.5 }), `${f}.importAddress`);
    expectConfigError(() => parseRegisterMap({ ...valid, importAddress: 0xffff }), `${f}.importAddress`);
    expectConfigError(() => parseRegisterMap({ ...valid, dataType: "uint64", exportAddress: 0xfffd }), `${f}.exportAddress`);
    expectConfigError(() => parseRegisterMap({ ...valid, exportAddress: 1 }), `${f}.exportAddress`);
    expectConfigError(() => parseRegisterMap({ ...valid, importAdress: 0 }), `${f}.importAdress`);
    expectConfigError(() => parseRegisterMap({ ...valid, power: { address: 4, scaleW: 0 } }), `${f}.power.scaleW`);
    expectConfigError(() => parseRegisterMap({ ...valid, power: { address: -4, scaleW: 1 } }), `${f}.power.address`);
    // The caller's prefix leads, so the message points into its own configuration file.
    expectConfigError(() => parseRegisterMap({ ...valid, wordOrder: "middle" }, "meters[3].map"), "meters[3].map.wordOrder");
  });
});

describe("meters: decoding", function () {
  this.timeout(10_000);
  const kwh = toRational(1000, "scale");

  it("converts float32 kWh to Wh exactly, rounding down, in either word order", function () {
    const rnd = mulberry32(2024);
    for (let i = 0; i < 2000; i += 1) {
      // Spread over 10 orders of magnitude, up to beyond where float32 loses Wh resolution.
      const value = 10 ** (rnd() * 10 - 3);
      const words = float32Words(value);
      // float32 × 1000 is exact in float64 (24 + 10 bits), so this reference is exact too.
      const expected = BigInt(Math.floor(Math.fround(value) * 1000));
      expect(decodeEnergyWh(words, "float32", "big", kwh)).to.equal(expected);
      expect(decodeEnergyWh([...words].reverse(), "float32", "little", kwh)).to.equal(expected);
    }
    expect(decodeEnergyWh(float32Words(1.234), "float32", "big", kwh)).to.equal(1233n); // stored as 1.23399997
    expect(decodeEnergyWh(float32Words(-0), "float32", "big", kwh)).to.equal(0n);
    // Above 2^14 kWh a float32 step exceeds 1 Wh: at 100 000 kWh the register moves in
    // steps of 7.8125 Wh, so 3 Wh more reads the same and 4 Wh more reads 7 Wh more.
    expect(decodeEnergyWh(float32Words(100_000), "float32", "big", kwh)).to.equal(100_000_000n);
    expect(decodeEnergyWh(float32Words(100_000.003), "float32", "big", kwh)).to.equal(100_000_000n);
    expect(decodeEnergyWh(float32Words(100_000.004), "float32", "big", kwh)).to.equal(100_000_007n);
  });

  it("scales integer registers exactly and refuses values an energy register cannot hold", function () {
    expect(decodeEnergyWh([0, 12345], "uint32", "big", toRational(0.1, "s"))).to.equal(1234n);
    expect(decodeEnergyWh([12345, 0], "uint32", "little", toRational(10, "s"))).to.equal(123450n);
    expect(decodeEnergyWh([0xffff, 0xffff], "uint32", "big", toRational(1, "s"))).to.equal(0xffffffffn);
    expect(decodeEnergyWh([0x7fff, 0xffff], "int32", "big", toRational(1, "s"))).to.equal(0x7fffffffn);
    expect(decodeEnergyWh([1, 0, 0, 5], "uint64", "big", toRational(1, "s"))).to.equal((1n << 48n) + 5n);
    expect(decodeEnergyWh([5, 0, 0, 1], "uint64", "little", toRational(0.01, "s"))).to.equal(((1n << 48n) + 5n) / 100n);
    expect(() => decodeEnergyWh([0xffff, 0xfffe], "int32", "big", toRational(1, "s"))).to.throw(RangeError, /negative/);
    expect(() => decodeEnergyWh(float32Words(-1), "float32", "big", kwh)).to.throw(RangeError, /negative/);
    expect(() => decodeEnergyWh(float32Words(Number.NaN), "float32", "big", kwh)).to.throw(RangeError, /NaN/);
    expect(() => decodeEnergyWh(float32Words(Infinity), "float32", "big", kwh)).to.throw(RangeError, /infinity/);
  });

  it("encodes set-points as 16- and 32-bit register words", function () {
    expect(encodeSetpoint(-2000, "int16", "big")).to.deep.equal([0xf830]);
    expect(encodeSetpoint(65535, "uint16", "big")).to.deep.equal([0xffff]);
    expect(encodeSetpoint(-2, "int32", "big")).to.deep.equal([0xffff, 0xfffe]);
    expect(encodeSetpoint(70000, "uint32", "little")).to.deep.equal([70000 & 0xffff, 1]);
    expect(encodeSetpoint(1.5, "float32", "big")).to.deep.equal(float32Words(1.5));
    expect(() => encodeSetpoint(40000, "int16", "big")).to.throw(RangeError);
    expect(() => encodeSetpoint(1.5, "uint16", "big")).to.throw(RangeError);
  });
});

describe("meters: client against a simulated SDM630 (Modbus TCP)", function () {
  this.timeout(10_000);

  it("reads what the household profile accumulated, within float32 precision", async function () {
    for (const kind of ["pvProsumer", "batteryProsumer", "evOwner"] as const) {
      const spec = householdSpec(kind, 11, 5);
      const clock = new ManualClock(JUNE_DAY);
      const server = await MeterServer.start({ household: spec, clock });
      const meter = tcpMeter(server, clock);
      // An independent model, stepped in a different pattern than the server's reads.
      const model = new HouseholdSimulator(spec, JUNE_DAY);
      try {
        for (let step = 1; step <= 16; step += 1) {
          clock.advance(97 * 60_000);
          const reading = await meter.read();
          for (let t = model.time.getTime(); t < clock.now().getTime(); t += 7 * 60_000) model.advanceTo(new Date(t));
          model.advanceTo(clock.now());
          const { importWh, exportWh } = model.registers;
          expect(reading.at.getTime()).to.equal(clock.now().getTime());
          expect(Math.abs(Number(reading.importWh) - importWh), `${kind} import at step ${step}`).to.be.at.most(float32ToleranceWh(importWh));
          expect(Math.abs(Number(reading.exportWh) - exportWh), `${kind} export at step ${step}`).to.be.at.most(float32ToleranceWh(exportWh));
          const powerW = await meter.readPowerW();
          expectClose(powerW, model.powers().netW, Math.abs(model.powers().netW) * 1e-6 + 1e-3);
        }
        const { importWh, exportWh } = model.registers;
        expect(importWh + exportWh, `${kind} moved energy`).to.be.greaterThan(1000);
      } finally {
        await meter.close();
        await server.close();
      }
    }
  });

  it("registers never decrease over a simulated day, for many seeds, read patterns and set-points", async function () {
    const kinds = HOUSEHOLD_KINDS.filter((k): k is Exclude<HouseholdKind, "slackUnit"> => k !== "slackUnit");
    for (let seed = 1; seed <= 20; seed += 1) {
      const rnd = mulberry32(seed * 7919);
      const kind = kinds[seed % kinds.length] ?? "consumer";
      const start = new Date(Date.UTC(2025, 0, 1) + Math.floor(rnd() * 365) * 24 * HOUR + Math.floor(rnd() * 24) * HOUR);
      const clock = new ManualClock(start);
      const server = await MeterServer.start({ household: householdSpec(kind, seed, seed + 100), clock });
      const meter = tcpMeter(server, clock);
      try {
        let previous = await meter.read();
        let reads = 0;
        while (clock.now().getTime() < start.getTime() + 24 * HOUR) {
          clock.advance(Math.floor(rnd() * 45 * 60_000)); // 0 to 45 minutes, sometimes the same instant
          // Flexibility requests at random: the registers must stay monotonic whatever they say.
          if (kind === "batteryProsumer" && rnd() < 0.2) {
            await meter.writeSetpoint(SETPOINT_REGISTERS.batteryPowerW, Math.round((rnd() * 2 - 1) * 6000));
          }
          if (kind === "evOwner" && rnd() < 0.2) {
            await meter.writeSetpoint(SETPOINT_REGISTERS.evMode, [EV_MODE.auto, EV_MODE.paused, EV_MODE.power][Math.floor(rnd() * 3)] ?? 0);
          }
          const reading = await meter.read();
          reads += 1;
          expect(reading.importWh >= previous.importWh, `seed ${seed} (${kind}) import at ${clock.now().toISOString()}`).to.equal(true);
          expect(reading.exportWh >= previous.exportWh, `seed ${seed} (${kind}) export at ${clock.now().toISOString()}`).to.equal(true);
          previous = reading;
        }
        expect(reads).to.be.greaterThan(40);
        // The client's figure is exactly the served float32 rounded down to Wh.
        const shown = server.meter.snapshot();
        expect(previous.importWh).to.equal(BigInt(Math.floor(shown.importKwh * 1000)));
        expect(previous.exportWh).to.equal(BigInt(Math.floor(shown.exportKwh * 1000)));
        expect(previous.importWh + previous.exportWh, `seed ${seed} (${kind}) moved energy`).to.be.greaterThan(0n);
      } finally {
        await meter.close();
        await server.close();
      }
    }
  });

  it("reconnects with capped exponential backoff when the meter drops out, and loses no energy", async function () {
    const clock = new ManualClock(JUNE_DAY);
    const server = await MeterServer.start({ household: householdSpec("consumer", 4, 4), clock });
    const logs: LogRecord[] = [];
    const meter = tcpMeter(server, clock, {
      logger: (r) => logs.push(r),
      backoff: { initialMs: 40, maxMs: 160, factor: 2 },
      requestTimeoutMs: 300,
      maxWaitMs: 1_500,
    });
    try {
      const before = await meter.read();
      await server.goOffline("refuse");
      clock.advance(2 * HOUR); // the house keeps drawing power while the meter is unreachable

      const error = await rejection(meter.read());
      expect(error).to.be.instanceOf(MeterOfflineError);
      expect((error as MeterOfflineError).code).to.equal("METER_OFFLINE");
      expect((error as MeterOfflineError).attempts).to.be.at.least(4);
      const warnings = logs.filter((r) => r.msg === "meter unreachable, will reconnect");
      expect(warnings.map((r) => r.delayMs).slice(0, 4)).to.deep.equal([40, 80, 160, 160]);
      for (const w of warnings) {
        expect(w).to.include({ level: "warn", meter: meter.name, ts: clock.now().toISOString() });
        expect(w.delayMs).to.be.at.most(160);
      }

      await server.comeOnline();
      const after = await meter.read();
      expect(logs.some((r) => r.msg === "meter reachable again")).to.equal(true);
      const shown = server.meter.snapshot();
      expect(after.importWh).to.equal(BigInt(Math.floor(shown.importKwh * 1000)));
      // Two hours of a house's load, missed while offline, are in the next reading.
      expect(after.importWh - before.importWh > 200n).to.equal(true);

      // A hung meter (connection open, no answers) is an outage too; the backoff starts over.
      logs.length = 0;
      await server.goOffline("silent");
      const hung = await rejection(meter.read());
      expect(hung).to.be.instanceOf(MeterOfflineError);
      expect((hung as Error).message).to.contain("Timed out");
      expect(logs.find((r) => r.msg === "meter unreachable, will reconnect")?.delayMs).to.equal(40);
      await server.comeOnline();
      clock.advance(HOUR);
      const resumed = await meter.read();
      expect(resumed.importWh > after.importWh).to.equal(true);
    } finally {
      await meter.close();
      await server.close();
    }
  });

  it("reports a Modbus exception as MeterReadError without reconnecting", async function () {
    const clock = new ManualClock(JUNE_DAY);
    const server = await MeterServer.start({ household: householdSpec("consumer", 4, 4), clock });
    const logs: LogRecord[] = [];
    const wrongMap = parseRegisterMap({ ...SDM630, name: "wrong", importAddress: 0x0200, exportAddress: 0x0202, power: undefined });
    const meter = tcpMeter(server, clock, { map: wrongMap, logger: (r) => logs.push(r) });
    try {
      const error = await rejection(meter.read());
      expect(error).to.be.instanceOf(MeterReadError);
      expect((error as Error).message).to.match(/Illegal data address/);
      expect(logs.filter((r) => r.level === "warn")).to.deep.equal([]);
      // No battery in this house: the set-point register is refused the same way.
      const refused = await rejection(meter.writeSetpoint(SETPOINT_REGISTERS.batteryPowerW, 1000));
      expect(refused).to.be.instanceOf(MeterReadError);
    } finally {
      await meter.close();
      await server.close();
    }
  });

  it("a battery set-point written over Modbus changes the next readings", async function () {
    // 20:00 UTC in June is 21:00 local, after sunset at 50°N: no PV, evening load.
    const start = new Date(Date.UTC(2025, 5, 10, 20));
    const spec = householdSpec("batteryProsumer", 3, 3);
    const clock = new ManualClock(start);
    const server = await MeterServer.start({ household: spec, clock });
    const meter = tcpMeter(server, clock);
    const model = new HouseholdSimulator(spec, start); // the same requests applied directly
    const halfHour = 30 * 60_000;
    try {
      await meter.writeSetpoint(SETPOINT_REGISTERS.batteryPowerW, 0); // battery idle
      model.setBatterySetpoint({ mode: "fixed", dischargeW: 0 });
      const idle0 = await meter.read();
      clock.advance(halfHour);
      const idle1 = await meter.read();

      await meter.writeSetpoint(SETPOINT_REGISTERS.batteryPowerW, 3000); // discharge 3 kW
      model.advanceTo(clock.now());
      model.setBatterySetpoint({ mode: "fixed", dischargeW: 3000 });
      expect(await meter.readPowerW()).to.be.below(0); // the house now feeds the grid
      clock.advance(halfHour);
      const discharging = await meter.read();

      await meter.writeSetpoint(SETPOINT_REGISTERS.batteryPowerW, -2000); // charge 2 kW from the grid
      model.advanceTo(clock.now());
      model.setBatterySetpoint({ mode: "fixed", dischargeW: -2000 });
      clock.advance(halfHour);
      const charging = await meter.read();

      await meter.writeSetpoint(SETPOINT_REGISTERS.batteryMode, BATTERY_MODE.auto);
      model.advanceTo(clock.now());
      model.setBatterySetpoint({ mode: "auto" });
      clock.advance(halfHour);
      const auto = await meter.read();
      model.advanceTo(clock.now());

      const importIdle = idle1.importWh - idle0.importWh;
      const importDischarging = discharging.importWh - idle1.importWh;
      const importCharging = charging.importWh - discharging.importWh;
      expect(importIdle > 150n, `idle import ${importIdle} Wh`).to.equal(true);
      expect(importDischarging < importIdle, `discharging lowers import: ${importDischarging} < ${importIdle}`).to.equal(true);
      expect(discharging.exportWh - idle1.exportWh > 500n, "3 kW over a house's evening load is exported").to.equal(true);
      expect(importCharging - importIdle > 800n, "charging 2 kW for 30 min adds about 1 kWh of import").to.equal(true);
      expect(auto.exportWh).to.equal(charging.exportWh); // self-consumption never exports at night
      expect(server.household.batteryState()?.setpoint).to.deep.equal({ mode: "auto" });
      // And the meter shows exactly what the model says those set-points do.
      const { importWh, exportWh } = model.registers;
      expect(Math.abs(Number(auto.importWh) - importWh)).to.be.at.most(float32ToleranceWh(importWh));
      expect(Math.abs(Number(auto.exportWh) - exportWh)).to.be.at.most(float32ToleranceWh(exportWh));
    } finally {
      await meter.close();
      await server.close();
    }
  });

  it("an EV charger pause and power set-point change the next readings", async function () {
    // 18:30 UTC = 19:30 local: the car is plugged in and charging at full power.
    const start = new Date(Date.UTC(2025, 5, 10, 18, 30));
    const spec = householdSpec("evOwner", 8, 8);
    const clock = new ManualClock(start);
    const server = await MeterServer.start({ household: spec, clock });
    const meter = tcpMeter(server, clock);
    const quarter = 15 * 60_000;
    try {
      expect(server.household.evState()?.pluggedIn).to.equal(true);
      const r0 = await meter.read();
      clock.advance(quarter);
      const r1 = await meter.read();
      await meter.writeSetpoint(SETPOINT_REGISTERS.evMode, EV_MODE.paused);
      clock.advance(quarter);
      const r2 = await meter.read();
      await meter.writeSetpoint(SETPOINT_REGISTERS.evPowerW, 3000, "uint16");
      clock.advance(quarter);
      const r3 = await meter.read();

      const full = Number(r1.importWh - r0.importWh);
      const paused = Number(r2.importWh - r1.importWh);
      const reduced = Number(r3.importWh - r2.importWh);
      const evMaxWh = (spec.ev?.maxPowerKw ?? 0) * 1000 * 0.25;
      // The house's own load moves a little between quarters; the EV's share dominates.
      expectClose(full - paused, evMaxWh, 150);
      expectClose(reduced - paused, 750, 150);
      expect(server.household.evState()?.setpoint).to.deep.equal({ mode: "power", powerW: 3000 });
    } finally {
      await meter.close();
      await server.close();
    }
  });
});

describe("meters: client over Modbus RTU on a virtual serial pair (socat)", function () {
  this.timeout(10_000);
  let socat: ChildProcess | undefined;
  let dir = "";

  before(async function () {
    dir = mkdtempSync(join(tmpdir(), "modbus-rtu-"));
    const child = spawn("socat", ["-d", "-d", `pty,raw,echo=0,link=${dir}/meter`, `pty,raw,echo=0,link=${dir}/agent`], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    socat = child;
    let stderr = "";
    child.stderr?.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    await new Promise<void>((resolve, reject) => {
      child.once("error", (error) =>
        reject(new Error(`cannot run socat (${error.message}); this test needs it for a virtual serial pair: install it with "apt-get install socat"`)),
      );
      child.once("exit", (code) => reject(new Error(`socat exited with ${code} before creating the serial pair: ${stderr}`)));
      const deadline = Date.now() + 5_000;
      const poll = () => {
        if (existsSync(`${dir}/meter`) && existsSync(`${dir}/agent`)) resolve();
        else if (Date.now() > deadline) reject(new Error(`socat did not create ${dir}/meter and ${dir}/agent within 5 s: ${stderr}`));
        else setTimeout(poll, 20);
      };
      poll();
    });
  });

  after(function () {
    socat?.kill("SIGTERM");
    rmSync(dir, { recursive: true, force: true });
  });

  it("reads a simulated meter over RTU and writes a set-point through the same link", async function () {
    const start = new Date(Date.UTC(2025, 5, 10, 20));
    const clock = new ManualClock(start);
    const device = new SimulatedMeter(new HouseholdSimulator(householdSpec("batteryProsumer", 21, 21), start), clock);
    const slave = new modbusSerial.ServerSerial(device.vector(), { path: `${dir}/meter`, baudRate: 9600, unitID: 7 });
    await new Promise<void>((resolve, reject) => {
      slave.once("initialized", () => resolve());
      slave.once("error", reject);
    });
    const meter = new ModbusMeter({
      connection: { kind: "rtu", path: `${dir}/agent`, baudRate: 9600, parity: "none", unitId: 7 },
      map: SDM630,
      clock,
      requestTimeoutMs: 1_000,
    });
    try {
      clock.advance(2 * HOUR);
      const first = await meter.read();
      const shown = device.snapshot();
      expect(first.importWh).to.equal(BigInt(Math.floor(shown.importKwh * 1000)));
      expect(first.exportWh).to.equal(BigInt(Math.floor(shown.exportKwh * 1000)));

      await meter.writeSetpoint(SETPOINT_REGISTERS.batteryPowerW, 2500);
      expect(device.household.batteryState()?.setpoint).to.deep.equal({ mode: "fixed", dischargeW: 2500 });
      clock.advance(HOUR);
      const second = await meter.read();
      expect(second.exportWh > first.exportWh, "discharging 2.5 kW at night exports").to.equal(true);
      expect(second.importWh >= first.importWh).to.equal(true);
    } finally {
      await meter.close();
      await new Promise<void>((resolve) => slave.close(() => resolve()));
    }
  });

  it("reaches a battery inverter at its own unit id on the meter's bus, and the meter again after it", async function () {
    const start = new Date(Date.UTC(2025, 5, 10, 20));
    const clock = new ManualClock(start);
    // Unit 7 is the meter of a house without a battery, unit 8 the inverter of a battery.
    const meterDevice = new SimulatedMeter(new HouseholdSimulator(householdSpec("consumer", 22, 22), start), clock);
    const inverter = new SimulatedMeter(new HouseholdSimulator(householdSpec("batteryProsumer", 23, 23), start), clock);
    const slave = new modbusSerial.ServerSerial(byUnit({ 7: meterDevice.vector(), 8: inverter.vector() }), { path: `${dir}/meter`, baudRate: 9600, unitID: 255 });
    await new Promise<void>((resolve, reject) => {
      slave.once("initialized", () => resolve());
      slave.once("error", reject);
    });
    const meter = new ModbusMeter({
      connection: { kind: "rtu", path: `${dir}/agent`, baudRate: 9600, parity: "none", unitId: 7 },
      map: SDM630,
      clock,
      requestTimeoutMs: 1_000,
    });
    const io = new ModbusDeviceIo(meter, meter, 8);
    const float = ([w0, w1]: number[]) => new DataView(new Uint16Array([w1!, w0!]).buffer).getFloat32(0, true);
    try {
      clock.advance(HOUR);
      const soc = float(await io.readInputRegisters(DEVICE_INPUTS.batterySocPct, 2));
      expectClose(soc, inverter.household.batteryState()!.soc * 100, 1e-3);
      expect(float(await meter.readInputRegisters(DEVICE_INPUTS.batterySocPct, 2)), "the meter's house has no battery").to.be.NaN;
      await io.writeSetpoint(SETPOINT_REGISTERS.batteryPowerW, 2500, "int16");
      expect(inverter.household.batteryState()?.setpoint).to.deep.equal({ mode: "fixed", dischargeW: 2500 });
      const reading = await meter.read(); // unit 7 again
      expect(reading.importWh).to.equal(BigInt(Math.floor(meterDevice.snapshot().importKwh * 1000)));
    } finally {
      await meter.close();
      await new Promise<void>((resolve) => slave.close(() => resolve()));
    }
  });
});

/** A bus of several devices for one serial server (unit id 255: it answers every unit), each unit its own handlers. */
function byUnit(units: Record<number, IServiceVector>): IServiceVector {
  const of = (unit: number): Record<string, (...args: number[]) => unknown> => {
    const vector = units[unit];
    if (vector === undefined) throw Object.assign(new Error(`no unit ${unit} on this bus`), { modbusErrorCode: 0x0b });
    return vector as unknown as Record<string, (...args: number[]) => unknown>;
  };
  // Parameter counts matter to modbus-serial (one more means a callback), as in SimulatedMeter.vector().
  return {
    getInputRegister: (addr: number, unit: number) => of(unit).getInputRegister!(addr, unit),
    getMultipleInputRegisters: (addr: number, length: number, unit: number) => of(unit).getMultipleInputRegisters!(addr, length, unit),
    getHoldingRegister: (addr: number, unit: number) => of(unit).getHoldingRegister!(addr, unit),
    getMultipleHoldingRegisters: (addr: number, length: number, unit: number) => of(unit).getMultipleHoldingRegisters!(addr, length, unit),
    setRegister: (addr: number, value: number, unit: number) => of(unit).setRegister!(addr, value, unit),
  } as unknown as IServiceVector;
}
