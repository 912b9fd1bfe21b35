import net from "node:net";
import { expect } from "chai";
import { expectClose } from "../support/approx.js";
import modbusSerial from "modbus-serial";
import {
  ManualClock,
  MeterServer,
  SDM630_INPUTS,
  SETPOINT_REGISTERS,
  acceleratedClock,
} from "../../agents/simulator/meterServer.js";
import { defaultNeighbourhood, startMeterServers } from "../../agents/simulator/neighbourhood.js";
import {
  DEFAULT_SITE,
  HOUSEHOLD_KINDS,
  HouseholdSimulator,
  clearness,
  householdLoadW,
  householdSpec,
  mulberry32,
  pvPowerW,
  sunElevationSin,
  sunriseSunset,
  type HouseholdKind,
  type HouseholdSpec,
  type PvSpec,
} from "../../agents/simulator/profiles.js";

const MINUTE = 60_000;
const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const { latitudeDeg, longitudeDeg, utcOffsetMinutes } = DEFAULT_SITE;

/** Local clock time `h` on 2025-06-10 (a Tuesday) or any other UTC date, in the site's zone. */
function local(year: number, month: number, day: number, hours: number): Date {
  return new Date(Date.UTC(year, month, day) + hours * HOUR - utcOffsetMinutes * MINUTE);
}

function simulate(spec: HouseholdSpec, start: Date, ms: number): HouseholdSimulator {
  const sim = new HouseholdSimulator(spec, start);
  sim.advanceTo(new Date(start.getTime() + ms));
  return sim;
}

describe("simulator: load and PV profiles", function () {
  this.timeout(10_000);

  it("household load has a morning and a larger evening peak, and sums to its yearly consumption", function () {
    const load = { annualKwh: 3600, seed: 9, noise: 0.15 };
    // Average several weekdays so the 5-minute noise does not decide the comparison.
    const hourly = (weekendDay: number, hours: number) => {
      let sum = 0;
      for (let week = 0; week < 8; week += 1) sum += householdLoadW(load, local(2025, 2, weekendDay + 7 * week, hours), utcOffsetMinutes);
      return sum / 8;
    };
    const tuesday = 4; // 2025-03-04
    expect(hourly(tuesday, 7)).to.be.greaterThan(1.5 * hourly(tuesday, 3.5));
    expect(hourly(tuesday, 19)).to.be.greaterThan(hourly(tuesday, 7));
    expect(hourly(tuesday, 19)).to.be.greaterThan(2 * hourly(tuesday, 11));
    const saturday = 8; // 2025-03-08: people sleep in
    expect(hourly(saturday, 9.5)).to.be.greaterThan(hourly(saturday, 7));
    expect(hourly(tuesday, 7)).to.be.greaterThan(hourly(saturday, 7));

    let wh = 0;
    for (let t = Date.UTC(2025, 0, 1); t < Date.UTC(2026, 0, 1); t += 15 * MINUTE) wh += householdLoadW(load, new Date(t), utcOffsetMinutes) / 4;
    expectClose(wh / 1000, 3600, 3600 * 0.02);
  });

  it("PV follows sunrise and sunset at 50°N and yields about 1 000 kWh per kWp a year", function () {
    const midsummer = sunriseSunset(172, latitudeDeg);
    const midwinter = sunriseSunset(355, latitudeDeg);
    expectClose(midsummer.sunset - midsummer.sunrise, 16.2, 0.3);
    expectClose(midwinter.sunset - midwinter.sunrise, 8.0, 0.3);

    const pv: PvSpec = { peakKw: 1, weatherSeed: 5, latitudeDeg, longitudeDeg, performanceRatio: 0.85 };
    const solarNoonUtc = 12 - longitudeDeg / 15;
    for (const [day, { sunrise, sunset }] of [[172, midsummer], [355, midwinter]] as const) {
      const date = Date.UTC(2025, 0, day); // day-of-year `day`
      const at = (solarHours: number) => new Date(date + (solarHours - 12 + solarNoonUtc) * HOUR);
      expect(pvPowerW(pv, at(sunrise - 0.2)), `day ${day} before sunrise`).to.equal(0);
      expect(pvPowerW(pv, at(sunset + 0.2)), `day ${day} after sunset`).to.equal(0);
      expect(sunElevationSin(at(12), latitudeDeg, longitudeDeg)).to.be.greaterThan(sunElevationSin(at(9), latitudeDeg, longitudeDeg));
    }

    let yearWh = 0;
    let juneWh = 0;
    let decemberWh = 0;
    for (let t = Date.UTC(2025, 0, 1); t < Date.UTC(2026, 0, 1); t += 10 * MINUTE) {
      const wh = pvPowerW(pv, new Date(t)) / 6;
      yearWh += wh;
      const month = new Date(t).getUTCMonth();
      if (month === 5) juneWh += wh;
      if (month === 11) decemberWh += wh;
    }
    expect(yearWh / 1000).to.be.within(850, 1150);
    expect(juneWh).to.be.greaterThan(4 * decemberWh);
  });

  it("houses with the same weather seed see the same clouds", function () {
    const a: PvSpec = { peakKw: 4, weatherSeed: 77, latitudeDeg, longitudeDeg, performanceRatio: 0.85 };
    const b: PvSpec = { ...a, peakKw: 8 };
    const c: PvSpec = { ...a, weatherSeed: 78 };
    let differs = false;
    for (let t = Date.UTC(2025, 4, 1, 6); t < Date.UTC(2025, 4, 8, 18); t += 37 * MINUTE) {
      const at = new Date(t);
      expectClose(pvPowerW(b, at), 2 * pvPowerW(a, at), 1e-9);
      const k = clearness(77, at);
      expect(k).to.be.within(0.05, 1);
      if (Math.abs(clearness(78, at) - k) > 0.05) differs = true;
      if (pvPowerW(c, at) !== pvPowerW(a, at)) differs = true;
    }
    expect(differs, "another weather seed gives other clouds").to.equal(true);
  });
});

describe("simulator: households", function () {
  this.timeout(10_000);

  it("is deterministic in its seed and independent of how it is stepped", function () {
    const start = new Date(Date.UTC(2025, 6, 1));
    for (const kind of HOUSEHOLD_KINDS) {
      const spec = householdSpec(kind, 31, 7);
      expect(householdSpec(kind, 31, 7)).to.deep.equal(spec);
      const once = simulate(spec, start, DAY);
      const stepped = new HouseholdSimulator(spec, start);
      const rnd = mulberry32(5);
      while (stepped.time.getTime() < start.getTime() + DAY) {
        stepped.advanceTo(new Date(Math.min(start.getTime() + DAY, stepped.time.getTime() + Math.floor(rnd() * 7 * MINUTE))));
      }
      const a = once.registers;
      const b = stepped.registers;
      expectClose(b.importWh, a.importWh, 1e-6 * (1 + a.importWh), `${kind} import`);
      expectClose(b.exportWh, a.exportWh, 1e-6 * (1 + a.exportWh), `${kind} export`);
    }
    const other = simulate(householdSpec("consumer", 32, 7), start, DAY).registers;
    expect(other.importWh).to.not.equal(simulate(householdSpec("consumer", 31, 7), start, DAY).registers.importWh);
  });

  it("over a day, for many seeds: registers never decrease, energy balances, devices stay in their limits", function () {
    for (let seed = 1; seed <= 60; seed += 1) {
      const kind = HOUSEHOLD_KINDS[seed % HOUSEHOLD_KINDS.length] ?? "consumer";
      const spec = householdSpec(kind, seed, seed * 3);
      const rnd = mulberry32(seed);
      const start = new Date(Date.UTC(2025, 0, 1) + Math.floor(rnd() * 365) * DAY);
      const sim = new HouseholdSimulator(spec, start);
      const storedAtStart = sim.batteryState()?.storedWh ?? 0;
      let previous = sim.registers;
      for (let t = start.getTime(); t < start.getTime() + DAY; ) {
        t += 1 + Math.floor(rnd() * 20 * MINUTE);
        if (spec.battery !== undefined && rnd() < 0.05) {
          sim.setBatterySetpoint(rnd() < 0.3 ? { mode: "auto" } : { mode: "fixed", dischargeW: (rnd() * 2 - 1) * 8000 });
        }
        if (spec.ev !== undefined && rnd() < 0.05) {
          sim.setEvSetpoint([{ mode: "auto" as const }, { mode: "paused" as const }, { mode: "power" as const, powerW: rnd() * 15000 }][Math.floor(rnd() * 3)] ?? { mode: "auto" });
        }
        sim.advanceTo(new Date(t));
        const now = sim.registers;
        expect(now.importWh, `seed ${seed} import`).to.be.at.least(previous.importWh);
        expect(now.exportWh, `seed ${seed} export`).to.be.at.least(previous.exportWh);
        previous = now;

        const battery = sim.batteryState();
        if (battery !== undefined && spec.battery !== undefined) {
          expect(battery.soc).to.be.within(spec.battery.socMin - 1e-9, spec.battery.socMax + 1e-9);
        }
        const ev = sim.evState();
        if (ev !== undefined) expect(ev.remainingWh).to.be.at.least(0);
      }
      // What the meter saw is what the devices behind it did.
      const f = sim.flows;
      const net = f.loadWh + f.evWh + f.batteryChargeWh - f.pvWh - f.batteryDischargeWh;
      const { importWh, exportWh } = sim.registers;
      expectClose(importWh - exportWh, net, 1e-6 * (1 + importWh + exportWh), `seed ${seed} (${kind}) balance`);
      if (spec.battery !== undefined) {
        const eff = spec.battery.efficiency;
        const stored = (sim.batteryState()?.storedWh ?? 0) - storedAtStart;
        expectClose(stored, f.batteryChargeWh * eff - f.batteryDischargeWh / eff, 1e-6 * (1 + f.batteryChargeWh + f.batteryDischargeWh), `seed ${seed} battery`);
      }
      if (kind === "slackUnit") expect(importWh + exportWh).to.equal(0);
      else expect(importWh + exportWh, `seed ${seed} (${kind}) moved energy`).to.be.greaterThan(0);
    }
  });

  it("a home battery in self-consumption mode cuts both import and export on a sunny day", function () {
    const start = local(2025, 5, 10, 0);
    for (let seed = 1; seed <= 10; seed += 1) {
      const withBattery = householdSpec("batteryProsumer", seed, 1);
      const { battery: _dropped, ...withoutBattery } = withBattery;
      const a = simulate(withBattery, start, DAY);
      const b = simulate(withoutBattery, start, DAY);
      expect(a.registers.importWh, `seed ${seed}`).to.be.lessThan(b.registers.importWh);
      expect(a.registers.exportWh, `seed ${seed}`).to.be.lessThan(b.registers.exportWh);
      expect(a.flows.batteryChargeWh, `seed ${seed} charged from PV`).to.be.greaterThan(1000);
    }
  });

  it("an EV charges only while plugged in, delivers what the session needs, and obeys pause", function () {
    const spec = householdSpec("evOwner", 12, 1);
    const ev = spec.ev;
    if (ev === undefined) throw new Error("an evOwner has an EV");
    const noon = local(2025, 5, 10, 12);
    const sim = new HouseholdSimulator(spec, noon);
    sim.advanceTo(local(2025, 5, 10, ev.arriveHour - 0.1));
    expect(sim.flows.evWh, "nothing while the car is away").to.equal(0);
    expect(sim.evState()?.pluggedIn).to.equal(false);

    sim.advanceTo(local(2025, 5, 10, ev.arriveHour + 0.05));
    const session = sim.evState();
    expect(session?.pluggedIn).to.equal(true);
    const need = (session?.deliveredWh ?? 0) + (session?.remainingWh ?? 0);
    expect(need).to.be.within(ev.needKwh * 500, ev.needKwh * 1500);

    sim.setEvSetpoint({ mode: "paused" });
    const paused = sim.flows.evWh;
    sim.advanceTo(local(2025, 5, 10, ev.arriveHour + 1.05));
    expect(sim.flows.evWh, "paused: no charging").to.equal(paused);

    sim.setEvSetpoint({ mode: "auto" });
    sim.advanceTo(local(2025, 5, 11, ev.departHour - 0.1));
    expectClose(sim.flows.evWh, need, 1e-6, "delivers exactly what the session needs");
    expect(sim.evState()?.remainingWh).to.equal(0);
    sim.advanceTo(local(2025, 5, 11, ev.departHour + 3));
    expect(sim.evState()?.pluggedIn).to.equal(false);
    expectClose(sim.flows.evWh, need, 1e-6);
  });

  it("refuses to run backwards and set-points for devices a house does not have", function () {
    const sim = new HouseholdSimulator(householdSpec("consumer", 1, 1), new Date(Date.UTC(2025, 0, 1, 12)));
    expect(() => sim.advanceTo(new Date(Date.UTC(2025, 0, 1, 11)))).to.throw(RangeError, /back in time/);
    expect(() => sim.setBatterySetpoint({ mode: "auto" })).to.throw(RangeError, /no battery/);
    expect(() => sim.setEvSetpoint({ mode: "paused" })).to.throw(RangeError, /no EV/);
  });
});

describe("simulator: neighbourhood", function () {
  this.timeout(10_000);

  it("has nine metered households and the slack unit, stable names and ids, deterministic in the seed", function () {
    const members = defaultNeighbourhood(42);
    expect(members.map((m) => m.id)).to.deep.equal([
      "meter-01", "meter-02", "meter-03", "meter-04", "meter-05", "meter-06", "meter-07", "meter-08", "meter-09", "slack",
    ]);
    const count = (kind: HouseholdKind) => members.filter((m) => m.kind === kind).length;
    expect([count("consumer"), count("pvProsumer"), count("batteryProsumer"), count("evOwner"), count("slackUnit")]).to.deep.equal([4, 3, 1, 1, 1]);
    expect(new Set(members.map((m) => m.name)).size).to.equal(10);
    expect(members.filter((m) => !m.metered).map((m) => m.id)).to.deep.equal(["slack"]);
    expect(defaultNeighbourhood(42)).to.deep.equal(members);
    expect(defaultNeighbourhood(43).map((m) => m.spec)).to.not.deep.equal(members.map((m) => m.spec));
    expect(defaultNeighbourhood(43).map((m) => [m.id, m.name, m.kind])).to.deep.equal(members.map((m) => [m.id, m.name, m.kind]));
    // One sky over the street.
    const weather = new Set(members.flatMap((m) => (m.spec.pv === undefined ? [] : [m.spec.pv.weatherSeed])));
    expect(weather.size).to.equal(1);
  });

  it("starts a Modbus TCP meter per metered house on free ports, driven by an accelerated clock", async function () {
    const clock = acceleratedClock(new Date(Date.UTC(2025, 5, 10, 17)), 3_600); // an hour per second
    const running = await startMeterServers(defaultNeighbourhood(7), clock);
    const client = new modbusSerial.default();
    try {
      expect(running.map((r) => r.member.id)).to.deep.equal(defaultNeighbourhood(7).filter((m) => m.metered).map((m) => m.id));
      expect(new Set(running.map((r) => r.server.port)).size).to.equal(9);
      const first = running[0];
      if (first === undefined) throw new Error("no meter started");
      await client.connectTCP(first.server.host, { port: first.server.port });
      client.setID(first.server.unitId);
      client.setTimeout(1_000);
      const kwh = async () => (await client.readInputRegisters(SDM630_INPUTS.importKwh, 2)).buffer.readFloatBE(0);
      const before = await kwh();
      await new Promise((resolve) => setTimeout(resolve, 300)); // about 18 simulated minutes
      const after = await kwh();
      expect(after).to.be.greaterThan(before);
      expect(first.server.household.time.getTime()).to.be.greaterThan(Date.UTC(2025, 5, 10, 17, 10));
    } finally {
      client.close(() => {});
      await Promise.all(running.map((r) => r.server.close()));
    }
  });
});

describe("simulator: meter server", function () {
  this.timeout(10_000);

  function connect(port: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: "127.0.0.1", port }, () => {
        socket.destroy();
        resolve();
      });
      socket.once("error", reject);
    });
  }

  it("reports the port it bound, serves set-point registers, and refuses bad values", async function () {
    const clock = new ManualClock(new Date(Date.UTC(2025, 5, 10, 20)));
    const server = await MeterServer.start({ household: householdSpec("batteryProsumer", 2, 2), clock, unitId: 3 });
    const client = new modbusSerial.default();
    try {
      expect(server.port).to.be.a("number").and.not.equal(0).and.not.equal(502);
      await client.connectTCP(server.host, { port: server.port });
      client.setID(3);
      client.setTimeout(1_000);
      const voltage = (await client.readInputRegisters(SDM630_INPUTS.phase1VoltageV, 2)).buffer.readFloatBE(0);
      expect(voltage).to.equal(230);

      await client.writeRegister(SETPOINT_REGISTERS.batteryPowerW, -1500 & 0xffff);
      const holding = await client.readHoldingRegisters(SETPOINT_REGISTERS.batteryMode, 2);
      expect(holding.data).to.deep.equal([1, -1500 & 0xffff]);
      expect(server.household.batteryState()?.setpoint).to.deep.equal({ mode: "fixed", dischargeW: -1500 });

      let refused: unknown;
      try {
        await client.writeRegister(SETPOINT_REGISTERS.batteryMode, 9);
      } catch (error) {
        refused = error;
      }
      expect((refused as { modbusCode?: number }).modbusCode).to.equal(3); // illegal data value
      expect(server.household.batteryState()?.setpoint).to.deep.equal({ mode: "fixed", dischargeW: -1500 });
    } finally {
      client.close(() => {});
      await server.close();
    }
  });

  it("goes offline and comes back on the same port, and frees it on close", async function () {
    const clock = new ManualClock(new Date(Date.UTC(2025, 5, 10, 12)));
    const server = await MeterServer.start({ household: householdSpec("consumer", 2, 2), clock });
    const port = server.port;
    await connect(port);
    await server.goOffline("refuse");
    expect(server.online).to.equal(false);
    let error: NodeJS.ErrnoException | undefined;
    await connect(port).catch((e: NodeJS.ErrnoException) => (error = e));
    expect(error?.code).to.equal("ECONNREFUSED");
    await server.comeOnline();
    expect(server.online).to.equal(true);
    await connect(port);
    await server.close();

    const again = await MeterServer.start({ household: householdSpec("consumer", 2, 2), clock, port });
    expect(again.port).to.equal(port);
    await again.close();
  });
});
