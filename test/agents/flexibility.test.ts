import { expect } from "chai";
import type { IntradayMarket } from "../../agents/chain/types/index.js";
import { ConfigError, MarketError } from "../../agents/errors.js";
import { silentLogger } from "../../agents/log.js";
import { parseMeterAgentConfig } from "../../agents/meter-agent/config.js";
import {
  FlexibilityController,
  assetsOfSimulatedHousehold,
  ModbusDeviceIo,
  parseAssets,
  type FlexibilityOffer,
} from "../../agents/meter-agent/flexibility.js";
import { IntradayTrader } from "../../agents/meter-agent/intradayTrader.js";
import { ModbusMeter, type TcpConnection } from "../../agents/meters/modbusMeter.js";
import { SDM630 } from "../../agents/meters/registerMaps.js";
import { DEVICE_INPUTS, ManualClock, MeterServer, SETPOINT_REGISTERS } from "../../agents/simulator/meterServer.js";
import { HouseholdSimulator, householdSpec, type HouseholdSpec } from "../../agents/simulator/profiles.js";
import { expectClose } from "../support/approx.js";

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const SLOT_SECONDS = 900;
const SLOT_MS = SLOT_SECONDS * 1000;
const UTC_OFFSET = 60; // the simulated households' local time is UTC+1

/** Local time `hours` on 2025-06-10 (a Tuesday) in the households' zone. */
function local(hours: number): Date {
  return new Date(Date.UTC(2025, 5, 10) + hours * HOUR - UTC_OFFSET * MINUTE);
}

const slotOf = (t: Date) => Math.floor(t.getTime() / SLOT_MS);
const slotStart = (slot: number) => new Date(slot * SLOT_MS);

// A house with a 10 kWh / 4 kW battery, a 7.4 kW EV charger (car home 18:00 to 07:00,
// 15 to 45 kWh a session) and a 2 kW flexible load, each added as a test needs it.
const BATTERY = { capacityKwh: 10, maxPowerKw: 4, socMin: 0.1, socMax: 0.95, initialSoc: 0.5, efficiency: 0.95 };
const EV = { maxPowerKw: 7.4, arriveHour: 18, departHour: 7, needKwh: 30, seed: 5 };
const LOAD = { annualKwh: 3500, seed: 5, noise: 0.15 };

const batteryConfig = (extra: Record<string, unknown> = {}) => ({
  kind: "battery",
  capacityWh: 10_000,
  maxPowerW: 4_000,
  minSocPct: 10,
  maxSocPct: 95,
  efficiency: 0.95,
  offerShare: 1, // the whole projected capacity, to check it against the limits
  ...extra,
});
const evConfig = (extra: Record<string, unknown> = {}) => ({
  kind: "ev",
  availableFrom: "18:00",
  departure: "07:00",
  energyNeededWh: 40_000,
  maxPowerW: 7_400,
  ...extra,
});
const flexConfig = (extra: Record<string, unknown> = {}) => ({ kind: "flexibleLoad", name: "heat pump", powerW: 2_000, maxDelayMinutes: 10, ...extra });

function house(parts: Partial<HouseholdSpec>): HouseholdSpec {
  return { kind: "consumer", utcOffsetMinutes: UTC_OFFSET, load: LOAD, ...parts };
}

interface Rig {
  clock: ManualClock;
  server: MeterServer;
  meter: ModbusMeter;
  controller: FlexibilityController;
  /** The same house left in automatic mode throughout: what the activations are measured against. */
  twin: HouseholdSimulator;
  /** Net energy (import − export) the meter shows now, and the twin's at the same time. */
  net(): Promise<{ meterWh: number; twinWh: number }>;
  close(): Promise<void>;
}

async function rig(spec: HouseholdSpec, start: Date, devices: unknown[], extra: Record<string, unknown> = {}): Promise<Rig> {
  const clock = new ManualClock(start);
  const server = await MeterServer.start({ household: spec, clock });
  const connection: TcpConnection = { kind: "tcp", host: server.host, port: server.port, unitId: 1 };
  const meter = new ModbusMeter({ connection, map: SDM630, clock, requestTimeoutMs: 1_000, maxWaitMs: 3_000 });
  const io = new ModbusDeviceIo(meter);
  const assets = parseAssets({ utcOffsetMinutes: UTC_OFFSET, devices, ...extra });
  const controller = new FlexibilityController({ assets, io, slotSeconds: SLOT_SECONDS, clock });
  const twin = new HouseholdSimulator(spec, start);
  return {
    clock,
    server,
    meter,
    controller,
    twin,
    async net() {
      const r = await meter.read();
      twin.advanceTo(clock.now());
      return { meterWh: Number(r.importWh - r.exportWh), twinWh: twin.registers.importWh - twin.registers.exportWh };
    },
    async close() {
      await meter.close();
      await server.close();
    },
  };
}

/** Another controller of the rig's house, with only `device` (and `extra` assets settings). */
function controllerOf(r: Rig, device: unknown, extra: Record<string, unknown> = {}): FlexibilityController {
  const assets = parseAssets({ utcOffsetMinutes: UTC_OFFSET, devices: [device], ...extra });
  return new FlexibilityController({ assets, io: new ModbusDeviceIo(r.meter), slotSeconds: SLOT_SECONDS, clock: r.clock });
}

/** The offers another controller, with only `device`, makes for `slot` from the rig's house now. */
async function offersOf(r: Rig, device: unknown, slot: number, extra: Record<string, unknown> = {}): Promise<FlexibilityOffer[]> {
  const controller = controllerOf(r, device, extra);
  await controller.readState();
  return controller.offersFor(slot);
}

function up(offers: FlexibilityOffer[]): number {
  return Number(offers.find((o) => o.isUp)?.qtyWh ?? 0n);
}
function down(offers: FlexibilityOffer[]): number {
  return Number(offers.find((o) => !o.isUp)?.qtyWh ?? 0n);
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
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error("expected the promise to reject");
}

describe("flexibility: configuration", function () {
  it("fills in the simulator's registers and defaults, and rides in the meter agent's config", function () {
    const assets = parseAssets({ devices: [batteryConfig({ efficiency: undefined, offerShare: undefined }), evConfig(), flexConfig()] });
    expect(assets.utcOffsetMinutes).to.equal(0); // HH:MM times are UTC unless told otherwise
    expect(assets.preference).to.equal("both");
    expect(assets.minOfferWh).to.equal(10);
    const [battery, ev, flex] = assets.devices;
    expect(battery).to.deep.include({ kind: "battery", efficiency: 0.95, offerShare: 0.9 });
    expect(battery?.registers).to.deep.equal({
      mode: SETPOINT_REGISTERS.batteryMode,
      powerW: SETPOINT_REGISTERS.batteryPowerW,
      socPct: DEVICE_INPUTS.batterySocPct,
      powerReadingW: DEVICE_INPUTS.batteryPowerW,
    });
    expect(ev?.registers).to.deep.include({ mode: SETPOINT_REGISTERS.evMode, remainingWh: DEVICE_INPUTS.evRemainingWh });
    expect(flex?.registers).to.deep.include({ shedSeconds: SETPOINT_REGISTERS.flexibleLoadShedSeconds });
    const custom = parseAssets({ devices: [evConfig({ registers: { remainingWh: null, mode: 40 } })] });
    expect(custom.devices[0]?.registers).to.deep.include({ remainingWh: null, mode: 40, powerW: SETPOINT_REGISTERS.evPowerW });

    const config = parseMeterAgentConfig({
      account: "0x0000000000000000000000000000000000000001",
      rpcUrl: "http://127.0.0.1:8545",
      settlement: "0x0000000000000000000000000000000000000002",
      meter: { transport: "tcp", host: "127.0.0.1" },
      stateFile: "/tmp/state.json",
      assets: { utcOffsetMinutes: 60, preference: "upOnly", devices: [flexConfig()] },
    });
    expect(config.assets?.preference).to.equal("upOnly");
    expect(config.assets?.devices[0]?.kind).to.equal("flexibleLoad");
  });

  it("configures a simulated household's assets as its meter agent would", function () {
    expect(assetsOfSimulatedHousehold(householdSpec("consumer", 1, 1))).to.equal(undefined);
    const battery = assetsOfSimulatedHousehold(householdSpec("batteryProsumer", 1, 1));
    expect(battery?.devices.map((d) => d.kind)).to.deep.equal(["battery"]);
    expect(battery?.utcOffsetMinutes).to.equal(60);
    const spec = householdSpec("evOwner", 1, 1);
    const ev = assetsOfSimulatedHousehold({ ...spec, ev: { ...spec.ev!, arriveHour: 17.6, departHour: 6.3 } })?.devices[0];
    expect(ev).to.deep.include({ kind: "ev", availableFrom: "17:36", departure: "06:18" });
  });

  it("names the field of every invalid setting", function () {
    const cases: Array<[unknown, string]> = [
      [[batteryConfig()], "assets"],
      [{ devices: [] }, "assets.devices"],
      [{ devices: [batteryConfig()], timezone: "CET" }, "assets.timezone"],
      [{ devices: [batteryConfig()], utcOffsetMinutes: 30.5 }, "assets.utcOffsetMinutes"],
      [{ devices: [batteryConfig()], preference: "sideways" }, "assets.preference"],
      [{ devices: [batteryConfig()], minOfferWh: 0 }, "assets.minOfferWh"],
      [{ devices: [{ kind: "heatPump" }] }, "assets.devices[0].kind"],
      [{ devices: [batteryConfig({ capacityWh: 0 })] }, "assets.devices[0].capacityWh"],
      [{ devices: [batteryConfig({ maxPowerW: 40_000 })] }, "assets.devices[0].maxPowerW"], // beyond an int16 set-point
      [{ devices: [batteryConfig({ minSocPct: -1 })] }, "assets.devices[0].minSocPct"],
      [{ devices: [batteryConfig({ maxSocPct: 5 })] }, "assets.devices[0].maxSocPct"],
      [{ devices: [batteryConfig({ efficiency: 1.2 })] }, "assets.devices[0].efficiency"],
      [{ devices: [batteryConfig({ offerShare: 0 })] }, "assets.devices[0].offerShare"],
      [{ devices: [batteryConfig({ capacityKwh: 10 })] }, "assets.devices[0].capacityKwh"],
      [{ devices: [batteryConfig({ registers: { socPct: 0x1_0000 } })] }, "assets.devices[0].registers.socPct"],
      [{ devices: [batteryConfig({ registers: { powerReadingW: null } })] }, "assets.devices[0].registers.powerReadingW"],
      [{ devices: [batteryConfig({ registers: { soc: 5 } })] }, "assets.devices[0].registers.soc"],
      [{ devices: [evConfig(), evConfig({ availableFrom: "7:00" })] }, "assets.devices[1].availableFrom"],
      [{ devices: [evConfig({ departure: "24:00" })] }, "assets.devices[0].departure"],
      [{ devices: [evConfig({ departure: "18:00" })] }, "assets.devices[0].departure"],
      [{ devices: [evConfig({ energyNeededWh: -1 })] }, "assets.devices[0].energyNeededWh"],
      [{ devices: [evConfig({ maxPowerW: "7.4 kW" })] }, "assets.devices[0].maxPowerW"],
      [{ devices: [flexConfig({ powerW: 0 })] }, "assets.devices[0].powerW"],
      [{ devices: [flexConfig({ maxDelayMinutes: 0 })] }, "assets.devices[0].maxDelayMinutes"],
      [{ devices: [flexConfig({ name: "" })] }, "assets.devices[0].name"],
      [{ devices: [batteryConfig(), batteryConfig()] }, "assets.devices[1]"],
      // Two flexible loads on the simulator's one set of registers.
      [{ devices: [flexConfig(), flexConfig()] }, "assets.devices[1].registers.shedSeconds"],
    ];
    for (const [raw, field] of cases) expectConfigError(() => parseAssets(raw), field);
    expect(() =>
      parseAssets({ devices: [flexConfig(), flexConfig({ registers: { shedSeconds: 0x2000, powerReadingW: null, shedSecondsReading: null } })] }),
    ).to.not.throw();
    expectConfigError(
      () =>
        parseMeterAgentConfig({
          account: "0x0000000000000000000000000000000000000001",
          rpcUrl: "http://127.0.0.1:8545",
          settlement: "0x0000000000000000000000000000000000000002",
          meter: { transport: "tcp", host: "127.0.0.1" },
          stateFile: "/tmp/state.json",
          assets: { devices: [evConfig({ maxPowerW: 0 })] },
        }),
      "assets.devices[0].maxPowerW",
    );
  });

  it("refuses the preferences that chose between an upward and a downward offer, which the trader never applied", function () {
    for (const preference of ["larger", "up", "down"]) {
      let thrown: unknown;
      try {
        parseAssets({ devices: [batteryConfig()], preference });
      } catch (error) {
        thrown = error;
      }
      expect(thrown, preference).to.be.instanceOf(ConfigError);
      expect((thrown as ConfigError).field).to.equal("assets.preference");
      expect((thrown as Error).message).to.contain("direction the neighbourhood's imbalance needs").and.contain('"upOnly" or "downOnly"');
    }
    for (const preference of ["both", "upOnly", "downOnly"]) expect(parseAssets({ devices: [batteryConfig()], preference }).preference).to.equal(preference);
  });
});

describe("flexibility: device state over Modbus", function () {
  this.timeout(20_000);

  it("reads battery SoC, the EV session and the flexible load from the simulator's input registers", async function () {
    const spec = house({ battery: BATTERY, ev: EV, flexibleLoad: { powerW: 2_000 } });
    const r = await rig(spec, local(18.5), [batteryConfig(), evConfig(), flexConfig()]);
    try {
      r.clock.advance(7 * MINUTE);
      const state = await r.controller.readState();
      const battery = r.server.household.batteryState()!;
      const ev = r.server.household.evState()!;
      const powers = r.server.household.powers();
      expect(state.at.getTime()).to.equal(local(18.5).getTime() + 7 * MINUTE);
      const [b, e, f] = state.devices;
      expect(b?.kind).to.equal("battery");
      if (b?.kind !== "battery" || e?.kind !== "ev" || f?.kind !== "flexibleLoad") throw new Error("device order");
      expectClose(b.socPct, battery.soc * 100, 1e-4);
      expectClose(b.storedWh, battery.storedWh, 0.01);
      expectClose(b.powerW, powers.batteryW, 1e-3);
      expect(e.pluggedIn).to.equal(true);
      expectClose(e.sessionWh, ev.deliveredWh, 0.01);
      expectClose(e.remainingWh ?? NaN, ev.remainingWh, 0.01);
      expectClose(e.powerW, 7_400, 1e-3);
      expect(f).to.deep.equal({ kind: "flexibleLoad", powerW: 2_000, shedSeconds: 0 });
      expectClose(state.meterPowerW ?? NaN, powers.netW, 0.01);
    } finally {
      await r.close();
    }
  });

  it("refuses to read a device the house does not have, naming the configured device", async function () {
    const r = await rig(house({}), local(12), [flexConfig(), batteryConfig()]);
    try {
      const error = await rejection(r.controller.readState());
      expect(error).to.be.instanceOf(MarketError);
      expect((error as MarketError).code).to.equal("FLEX_DEVICE");
      expect((error as Error).message).to.contain("assets.devices[0]");
      expect(() => r.controller.offersFor(slotOf(local(13)))).to.throw(MarketError, /readState/);
    } finally {
      await r.close();
    }
  });
});

describe("flexibility: battery", function () {
  this.timeout(20_000);

  it("offers what fits the power and SoC limits: both ways mid-range, no upward offer near minimum SoC", async function () {
    // 21:00 local: after sunset, the battery covers the house's evening load by itself.
    const now = local(21);
    const slot = slotOf(now) + 2;
    const fullSlotWh = (4_000 * SLOT_SECONDS) / 3600; // 1 000 Wh at 4 kW

    const mid = await rig(house({ battery: BATTERY }), now, [batteryConfig()]);
    try {
      await mid.controller.readState();
      const offers = mid.controller.offersFor(slot, SLOT_SECONDS, now);
      // Discharging harder and charging instead of discharging: what self-consumption would
      // have discharged is counted once each way, so both add up to full power both ways.
      expectClose(up(offers) + down(offers), 2 * fullSlotWh, 2);
      expect(up(offers)).to.be.below(fullSlotWh).and.above(fullSlotWh / 2);
      expect(offers.every((o) => o.slot === slot)).to.equal(true);
      expect(mid.controller.offersFor(slotOf(now) - 1, SLOT_SECONDS, now), "a slot under way gets none").to.deep.equal([]);
      // By default 90 % of it is offered: the battery's baseline moves with load and PV.
      const sharedOffers = await offersOf(mid, batteryConfig({ offerShare: undefined }), slot);
      expectClose(up(sharedOffers), 0.9 * up(offers), 1);
      expectClose(down(sharedOffers), 0.9 * down(offers), 1);
    } finally {
      await mid.close();
    }

    // 30 Wh above the minimum: self-consumption empties that before the slot starts.
    const low = await rig(house({ battery: { ...BATTERY, initialSoc: 0.103 } }), now, [batteryConfig()]);
    try {
      await low.controller.readState();
      const offers = low.controller.offersFor(slot, SLOT_SECONDS, now);
      expect(up(offers), "no upward offer near minimum SoC").to.equal(0);
      expectClose(down(offers), fullSlotWh, 1);
      const next = low.controller.offersFor(slotOf(now) + 1, SLOT_SECONDS, now);
      expect(up(next)).to.equal(0);
    } finally {
      await low.close();
    }

    // Nearly full at noon with PV to spare: no downward offer, and upward it can discharge
    // at full power besides no longer charging.
    const high = await rig(house({ battery: { ...BATTERY, initialSoc: 0.948 }, pv: { peakKw: 8, weatherSeed: 3, latitudeDeg: 50.1, longitudeDeg: 8.7, performanceRatio: 0.85 } }), local(12), [
      batteryConfig(),
    ]);
    try {
      await high.controller.readState();
      const offers = high.controller.offersFor(slotOf(local(12)) + 1, SLOT_SECONDS, local(12));
      expect(down(offers), "no downward offer when full").to.equal(0);
      expectClose(up(offers), fullSlotWh, 2);
    } finally {
      await high.close();
    }
  });

  it("an activated set-point reaches the inverter over Modbus and moves the next readings by the activated energy; release restores self-consumption", async function () {
    const s0 = slotOf(local(21));
    const r = await rig(house({ battery: BATTERY }), slotStart(s0 - 1), [batteryConfig()]);
    try {
      await r.controller.readState();
      const offers = r.controller.offersFor(s0, SLOT_SECONDS, r.clock.now());
      expect(up(offers)).to.be.above(500);
      expect(down(offers)).to.be.above(600);

      // Slot s0: sell 500 Wh.
      r.clock.set(slotStart(s0));
      const before = await r.net();
      const upward = await r.controller.activate(s0, -500n);
      expect(upward.plannedWh).to.equal(-500);
      expect(upward.shortfallWh).to.equal(0);
      const setpoint = r.server.household.batteryState()?.setpoint;
      expect(setpoint?.mode).to.equal("fixed");
      const dischargeW = setpoint?.mode === "fixed" ? setpoint.dischargeW : NaN;
      expect(upward.commands[0]).to.deep.equal({ kind: "battery", mode: "fixed", dischargeW });
      // Self-consumption was covering the house's load; now 2 kW more on top of it.
      expectClose(dischargeW - r.server.household.powers().loadW, 2_000, 1);
      r.clock.set(slotStart(s0 + 1));
      const afterUp = await r.net();
      const soldWh = before.meterWh - afterUp.meterWh - (before.twinWh - afterUp.twinWh);
      expectClose(soldWh, 500, 30, "upward: net energy drops by the activation");

      // Slot s0 + 1: buy 600 Wh, straight after (the new set-points replace the old).
      const downward = await r.controller.activate(s0 + 1, 600n);
      expect(downward.plannedWh).to.equal(600);
      r.clock.set(slotStart(s0 + 2));
      const afterDown = await r.net();
      const boughtWh = afterDown.meterWh - afterUp.meterWh - (afterDown.twinWh - afterUp.twinWh);
      expectClose(boughtWh, 600, 30, "downward: net energy rises by the activation");

      // Slot s0 + 2: released, the battery follows the load again, as the twin's does.
      await r.controller.release();
      expect(r.server.household.batteryState()?.setpoint).to.deep.equal({ mode: "auto" });
      r.clock.set(slotStart(s0 + 3));
      const released = await r.net();
      expectClose(released.meterWh - afterDown.meterWh, released.twinWh - afterDown.twinWh, 3, "automatic again");
      expectClose(released.meterWh - afterDown.meterWh, 0, 3, "self-consumption covers the evening load");
      await r.controller.release(); // harmless to repeat
    } finally {
      await r.close();
    }
  });

  it("allows for activations it knows of when offering later slots, and reports what it could not deliver", async function () {
    // 1 kWh above the minimum (0.95 kWh at the AC side), at 21:00.
    const s0 = slotOf(local(21));
    const r = await rig(house({ battery: { ...BATTERY, initialSoc: 0.2 } }), slotStart(s0 - 1), [batteryConfig()]);
    try {
      await r.controller.readState();
      const before = up(r.controller.offersFor(s0 + 1));
      r.controller.noteActivation(s0, -400n);
      const after = up(r.controller.offersFor(s0 + 1));
      expectClose(before - after, 400, 2);

      r.clock.set(slotStart(s0));
      const result = await r.controller.activate(s0, -5_000n);
      expect(result.shortfallWh).to.be.above(3_000);
      expect(result.plannedWh).to.be.below(0).and.above(-1_000);
      expect(await rejection(r.controller.activate(s0 + 2, -100n))).to.be.instanceOf(MarketError);
    } finally {
      await r.close();
    }
  });
  it("allows for its offers not cleared yet, each in its own direction, until their clearing is known", async function () {
    // 1 kWh above the minimum at 21:00: what s0 may still take is what s0 + 1 cannot offer.
    const s0 = slotOf(local(21));
    const r = await rig(house({ battery: { ...BATTERY, initialSoc: 0.2 } }), slotStart(s0 - 1), [batteryConfig()]);
    try {
      await r.controller.readState();
      const before = r.controller.offersFor(s0 + 1);
      r.controller.noteOffer(s0, { slot: s0, isUp: true, qtyWh: 400n });
      const pending = r.controller.offersFor(s0 + 1);
      expectClose(up(before) - up(pending), 400, 2);
      // An upward offer not taken up leaves the battery fuller: the downward room stays as without it.
      expect(down(pending)).to.equal(down(before));

      r.controller.noteActivation(s0, 0n); // cleared, not activated
      expect(r.controller.offersFor(s0 + 1)).to.deep.equal(before);
    } finally {
      await r.close();
    }

    // Half a kWh below the maximum: a pending downward offer takes from the next slot's room.
    const high = await rig(house({ battery: { ...BATTERY, initialSoc: 0.9 } }), slotStart(s0 - 1), [batteryConfig()]);
    try {
      await high.controller.readState();
      const before = high.controller.offersFor(s0 + 1);
      high.controller.noteOffer(s0, { slot: s0, isUp: false, qtyWh: 300n });
      const pending = high.controller.offersFor(s0 + 1);
      expectClose(down(before) - down(pending), 300, 20);
      expect(up(pending), "the upward offer stays as without it").to.equal(up(before));
      high.controller.noteOffer(s0, undefined); // withdrawn
      expect(high.controller.offersFor(s0 + 1)).to.deep.equal(before);
    } finally {
      await high.close();
    }
  });
});

describe("flexibility: battery tracking", function () {
  this.timeout(20_000);

  it("track() keeps the held battery following the house's load and PV, so the slot delivers the activation to the watt-hour", async function () {
    // Early afternoon under passing clouds: PV moves within the slot.
    const pv = { peakKw: 8, weatherSeed: 2, latitudeDeg: 50.1, longitudeDeg: 8.7, performanceRatio: 0.85 };
    const s0 = slotOf(local(16));
    const r = await rig(house({ battery: BATTERY, pv }), slotStart(s0), [batteryConfig()]);
    try {
      const drift: number[] = [];
      for (const [slot, activation, tracked] of [
        [s0, -600, false],
        [s0 + 1, -600, true],
        [s0 + 2, 600, true],
      ] as const) {
        r.clock.set(slotStart(slot));
        const before = await r.net();
        const result = await r.controller.activate(slot, BigInt(activation));
        expect(result.shortfallWh).to.equal(0);
        for (let minute = 0; minute < 15; minute += 1) {
          r.clock.advance(MINUTE);
          if (tracked) await r.controller.track();
        }
        const after = await r.net();
        const deliveredWh = after.meterWh - before.meterWh - (after.twinWh - before.twinWh);
        drift.push(Math.abs(deliveredWh - activation));
        if (tracked) expectClose(deliveredWh, activation, 3, `slot ${slot} tracked`);
      }
      expect(drift[0], "held at one power, PV's moves show").to.be.above(50);
      await r.controller.release();
      await r.controller.track(); // nothing held: does nothing
      expect(r.server.household.batteryState()?.setpoint).to.deep.equal({ mode: "auto" });
    } finally {
      await r.close();
    }
  });
});

describe("flexibility: EV charger", function () {
  this.timeout(20_000);

  it("offers a pause only if the need still fits before departure, and nothing while the car is away", async function () {
    // 18:01 local: the car arrived at 18:00 and charges at 7.4 kW (it asks for 15 to 45 kWh).
    const now = local(18 + 1 / 60);
    const slot = slotOf(local(18.25));
    const fullSlotWh = (7_400 * SLOT_SECONDS) / 3600; // 1 850 Wh
    const spec = house({ ev: EV });

    const offersWith = async (config: Record<string, unknown>, at: Date = now, forSlot: number = slot): Promise<FlexibilityOffer[]> => {
      const r = await rig(spec, at, [evConfig(config)]);
      try {
        await r.controller.readState();
        return r.controller.offersFor(forSlot, SLOT_SECONDS, at);
      } finally {
        await r.close();
      }
    };
    // Leaving at 07:00: the whole slot's charge can wait. Downward nothing: automatic
    // charging runs at full power already.
    expect(await offersWith({})).to.deep.equal([{ slot, isUp: true, qtyWh: BigInt(fullSlotWh) }]);
    // Leaving at 19:30 with more to charge than 1 h 15 min at full power gives: no pause.
    expect(await offersWith({ departure: "19:30" })).to.deep.equal([]);
    // Leaving at 20:00 and asking 600 Wh less than the time at full power allows after the
    // slot plus the slot itself: those 600 Wh can wait, not more.
    const r = await rig(spec, now, [evConfig()]);
    let sessionAtSlotWh: number;
    let carNeedsWh: number;
    try {
      const state = await r.controller.readState();
      const ev = state.devices[0];
      if (ev?.kind !== "ev") throw new Error("ev");
      sessionAtSlotWh = ev.sessionWh + (7_400 * (local(18.25).getTime() - now.getTime())) / HOUR;
      carNeedsWh = (ev.remainingWh ?? 0) + ev.sessionWh;
    } finally {
      await r.close();
    }
    const planWh = Math.round(sessionAtSlotWh + 7_400 * 1.5 + fullSlotWh - 600);
    expect(carNeedsWh, "the car asks for more than the plan").to.be.above(planWh);
    expectClose(up(await offersWith({ departure: "20:00", energyNeededWh: planWh })), 600, 1);
    // Its charging may be shifted only from availableFrom on.
    expect(await offersWith({ availableFrom: "18:30" })).to.deep.equal([]);
    // At noon the car is away: nothing.
    expect(await offersWith({}, local(12), slotOf(local(12)) + 1)).to.deep.equal([]);
  });

  it("an activated pause stops the charging over Modbus and import drops by what it would have drawn; release resumes it", async function () {
    const s0 = slotOf(local(18.25));
    const r = await rig(house({ ev: EV }), local(18 + 1 / 60), [evConfig()]);
    try {
      await r.controller.readState();
      expect(r.controller.offersFor(s0)).to.deep.equal([{ slot: s0, isUp: true, qtyWh: 1850n }]);

      r.clock.set(slotStart(s0));
      const before = await r.net();
      const result = await r.controller.activate(s0, -1_850n);
      expect(result.commands).to.deep.equal([{ kind: "ev", mode: "paused" }]);
      expect(r.server.household.evState()?.setpoint).to.deep.equal({ mode: "paused" });
      r.clock.set(slotStart(s0 + 1));
      const paused = await r.net();
      expectClose(before.meterWh - paused.meterWh - (before.twinWh - paused.twinWh), 1_850, 3);

      // Half of it in the next slot: the charger holds half power.
      const half = await r.controller.activate(s0 + 1, -925n);
      expect(half.commands).to.deep.equal([{ kind: "ev", mode: "power", powerW: 3_700 }]);
      r.clock.set(slotStart(s0 + 2));
      const halved = await r.net();
      expectClose(paused.meterWh - halved.meterWh - (paused.twinWh - halved.twinWh), 925, 3);

      await r.controller.release();
      expect(r.server.household.evState()?.setpoint).to.deep.equal({ mode: "auto" });
      r.clock.set(slotStart(s0 + 3));
      const resumed = await r.net();
      expectClose(resumed.meterWh - halved.meterWh, resumed.twinWh - halved.twinWh, 3, "charging at full power again");
    } finally {
      await r.close();
    }
  });

  it("does not offer again what an activation held back: pauses follow the session left alone", async function () {
    // A short session (the car asks for 1 to 3 kWh at 7.4 kW: under two slots), from 18:00.
    const spec = house({ ev: { ...EV, needKwh: 2 } });
    const s0 = slotOf(local(18));
    const fullSlotWh = (7_400 * SLOT_SECONDS) / 3600; // 1 850 Wh
    const r = await rig(spec, slotStart(s0), [evConfig()]);
    try {
      const state = await r.controller.readState();
      const ev = state.devices[0];
      if (ev?.kind !== "ev" || ev.remainingWh === undefined) throw new Error("ev");
      const needWh = ev.remainingWh;
      expect(up(r.controller.offersFor(s0))).to.equal(Math.floor(Math.min(fullSlotWh, needWh)));

      // s0 paused whole: the car still needs it all, but left alone it would have had up to a slot's worth.
      await r.controller.activate(s0, -BigInt(Math.floor(Math.min(fullSlotWh, needWh))));
      r.clock.set(slotStart(s0 + 1));
      await r.controller.release();
      await r.controller.readState();
      const again = up(r.controller.offersFor(s0 + 1));
      expectClose(again, Math.max(0, needWh - fullSlotWh), 2, "only what the untouched session would still draw");
      // A controller that never saw the pause would hold back the same energy once more.
      expectClose(up(await offersOf(r, evConfig(), s0 + 1)), Math.min(fullSlotWh, needWh), 2);
      expect(again).to.be.below(Math.min(fullSlotWh, needWh));
    } finally {
      await r.close();
    }
  });

  it("does nothing for an activation while the car is away", async function () {
    const s0 = slotOf(local(12));
    const r = await rig(house({ ev: EV }), slotStart(s0), [evConfig()]);
    try {
      const result = await r.controller.activate(s0, -1_000n);
      expect(result.plannedWh).to.equal(0);
      expect(result.shortfallWh).to.equal(1_000);
      expect(result.commands).to.deep.equal([{ kind: "ev", mode: "auto" }]);
    } finally {
      await r.close();
    }
  });
});

describe("flexibility: flexible load", function () {
  this.timeout(20_000);

  it("is shed for at most maxDelay, resumes by itself, and must run as long again before the next shed", async function () {
    const s0 = slotOf(local(10));
    const r = await rig(house({ flexibleLoad: { powerW: 2_000 } }), slotStart(s0 - 1), [flexConfig()]);
    try {
      await r.controller.readState();
      const tenMinutesWh = Math.floor((2_000 * 600) / 3600); // 333 Wh
      expect(r.controller.offersFor(s0)).to.deep.equal([{ slot: s0, isUp: true, qtyWh: BigInt(tenMinutesWh) }]);

      r.clock.set(slotStart(s0));
      const before = await r.net();
      const result = await r.controller.activate(s0, -BigInt(tenMinutesWh));
      expect(result.commands).to.deep.equal([{ kind: "flexibleLoad", mode: "shed", seconds: 599 }]);
      expectClose(r.server.household.flexibleLoadState()?.shedSeconds ?? 0, 599, 0);
      r.clock.advance(10 * MINUTE);
      r.server.household.advanceTo(r.clock.now());
      expect(r.server.household.flexibleLoadState(), "runs again by itself").to.deep.equal({ powerW: 2_000, shedSeconds: 0 });
      r.clock.set(slotStart(s0 + 1));
      const after = await r.net();
      expectClose(before.meterWh - after.meterWh - (before.twinWh - after.twinWh), tenMinutesWh, 3);
      await r.controller.release();

      // It was held off for 10 minutes, so it runs 10 minutes before the next shed: not in s0 + 1.
      await r.controller.readState();
      expect(r.controller.offersFor(s0 + 1, SLOT_SECONDS, r.clock.now())).to.deep.equal([]);
      expect(up(r.controller.offersFor(s0 + 2, SLOT_SECONDS, r.clock.now()))).to.equal(tenMinutesWh);
    } finally {
      await r.close();
    }
  });

  it("a longer delay spans slots: the rest of it continues the shed, then it must recover", async function () {
    const s0 = slotOf(local(10));
    const r = await rig(house({ flexibleLoad: { powerW: 2_000 } }), slotStart(s0 - 1), [flexConfig({ maxDelayMinutes: 20 })]);
    try {
      await r.controller.readState();
      const fullSlotWh = 500;
      expect(up(r.controller.offersFor(s0))).to.equal(fullSlotWh);
      r.controller.noteActivation(s0, -500n);
      // After 15 minutes off, 5 more may follow straight on; then 20 minutes of running.
      expect(up(r.controller.offersFor(s0 + 1))).to.equal(Math.floor((2_000 * 300) / 3600));
      r.controller.noteActivation(s0 + 1, -166n);
      // Off from 0 to 20 min, so it runs until 40 min: nothing in s0 + 2, all of s0 + 3.
      expect(r.controller.offersFor(s0 + 2)).to.deep.equal([]);
      expect(up(r.controller.offersFor(s0 + 3))).to.equal(fullSlotWh);
    } finally {
      await r.close();
    }
  });
});

describe("flexibility: several assets", function () {
  this.timeout(20_000);

  it("nets the assets into one offer each way, and splits an activation in configuration order", async function () {
    const spec = house({ battery: BATTERY, ev: EV, flexibleLoad: { powerW: 2_000 } });
    const now = local(19);
    const s0 = slotOf(now) + 1;
    const r = await rig(spec, now, [batteryConfig(), evConfig(), flexConfig()]);
    try {
      await r.controller.readState();
      const offers = r.controller.offersFor(s0);
      expect(offers.map((o) => o.isUp)).to.deep.equal([true, false]);
      // Each device alone, read from the same house at the same time.
      const battery = await offersOf(r, batteryConfig(), s0);
      const ev = await offersOf(r, evConfig(), s0);
      const flex = await offersOf(r, flexConfig(), s0);
      expectClose(up(offers), up(battery) + up(ev) + up(flex), 2);
      expectClose(down(offers), down(battery) + down(ev) + down(flex), 2);
      expect(up(battery)).to.equal(0);
      expect(up(ev)).to.equal(1_850);
      expect(up(flex)).to.equal(333);

      // The EV's 7.4 kW keep the battery at full discharge already: it has nothing upward,
      // so the EV gives it all, and the battery is held where it is so that
      // self-consumption does not undo the EV's share.
      r.clock.set(slotStart(s0));
      const before = await r.net();
      const wanted = up(battery) + 1_000;
      const result = await r.controller.activate(s0, -BigInt(wanted));
      expect(result.shortfallWh).to.equal(0);
      expect(result.commands[0]).to.deep.equal({ kind: "battery", mode: "fixed", dischargeW: 4_000 });
      expect(result.commands[1]).to.deep.equal({ kind: "ev", mode: "power", powerW: 3_400 });
      expect(result.commands[2]).to.deep.equal({ kind: "flexibleLoad", mode: "run" });
      r.clock.set(slotStart(s0 + 1));
      const after = await r.net();
      expectClose(before.meterWh - after.meterWh - (before.twinWh - after.twinWh), wanted, 50);
      await r.controller.release();
      expect(r.server.household.batteryState()?.setpoint).to.deep.equal({ mode: "auto" });
      expect(r.server.household.evState()?.setpoint).to.deep.equal({ mode: "auto" });
    } finally {
      await r.close();
    }
  });
});

describe("flexibility: preference", function () {
  this.timeout(20_000);

  /** An IntradayMarket whose book expects `imbalanceWh` in every slot (+ short), with the offers placed on it. */
  function stubMarket(imbalanceWh: bigint): { market: IntradayMarket; placed: FlexibilityOffer[] } {
    const placed: FlexibilityOffer[] = [];
    const market = {
      slotSeconds: async () => BigInt(SLOT_SECONDS),
      openLeadSeconds: async () => 3600n,
      gateLeadSeconds: async () => BigInt(SLOT_SECONDS),
      priceFloor: async () => 80_000n,
      priceCap: async () => 320_000n,
      // Forecasts sent and no offers before: the trader only offers.
      forecastOf: async () => ({ set: true, deviationWh: 0n }),
      offerOf: async () => ({ placed: false, isUp: false, qtyWh: 0n, price: 0n }),
      activationOf: async () => [0n, 0n],
      book: async () => ({ imbalanceWh, cleared: false }),
      placeOffers: async (_account: string, offers: Array<FlexibilityOffer & { price: bigint }>) => {
        placed.push(...offers.map(({ slot, isUp, qtyWh }) => ({ slot, isUp, qtyWh })));
        return { wait: async () => null };
      },
    };
    return { market: market as unknown as IntradayMarket, placed };
  }

  it("offers only the directions assets.preference allows", async function () {
    // 21:00 local, the battery mid-range: it could go either way.
    const now = local(21);
    const slot = slotOf(now) + 2;
    const r = await rig(house({ battery: BATTERY }), now, [batteryConfig()]);
    try {
      const both = await offersOf(r, batteryConfig(), slot);
      expect(both.map((o) => o.isUp)).to.deep.equal([true, false]);
      expect(await offersOf(r, batteryConfig(), slot, { preference: "both" })).to.deep.equal(both);
      expect(await offersOf(r, batteryConfig(), slot, { preference: "upOnly" })).to.deep.equal([both[0]]);
      expect(await offersOf(r, batteryConfig(), slot, { preference: "downOnly" })).to.deep.equal([both[1]]);
    } finally {
      await r.close();
    }
  });

  it("the intra-day trader never offers the excluded direction, and nothing for a slot that needs only it", async function () {
    const now = local(21);
    // A slot before its gate, one slot ahead of it: the trader offers for it in this step.
    const slot = slotOf(now) + 2;
    const r = await rig(house({ battery: BATTERY }), now, [batteryConfig()]);
    try {
      const [upOffer, downOffer] = await offersOf(r, batteryConfig(), slot);
      expect([upOffer?.isUp, downOffer?.isUp]).to.deep.equal([true, false]);
      const cases: Array<[string, bigint, FlexibilityOffer | undefined]> = [
        ["both", 500n, upOffer],
        ["both", -500n, downOffer],
        ["upOnly", 500n, upOffer],
        ["upOnly", -500n, undefined], // long: it needs downward offers only
        ["downOnly", -500n, downOffer],
        ["downOnly", 500n, undefined], // short: it needs upward offers only
      ];
      for (const [preference, imbalanceWh, expected] of cases) {
        const { market, placed } = stubMarket(imbalanceWh);
        const trader = new IntradayTrader({
          account: "0x0000000000000000000000000000000000000001",
          market,
          flexibility: controllerOf(r, batteryConfig(), { preference }),
          pricing: { upAt: 0.55, downAt: 0.35 },
          logger: silentLogger,
        });
        await trader.init();
        await trader.step(now.getTime(), {});
        expect(placed, `${preference}, imbalance ${imbalanceWh} Wh`).to.deep.equal(expected === undefined ? [] : [expected]);
        expect(trader.offerSlots(now.getTime()), "the slot is done with").to.deep.equal([]);
      }
    } finally {
      await r.close();
    }
  });
});
