/**
 * End to end, agent level: a household's forecast error covered by a neighbour's battery.
 * Everything is real: a `hardhat node` with the Market module deployed by Ignition, one Modbus
 * TCP meter server per household, meter agents with their intra-day traders and the battery's
 * FlexibilityController, the master with its HTTP inbox and both clearers. A SimClock drives
 * meters and agents; the chain's clock is moved with it, a slot at a time.
 *
 * The story, on midsummer evening at 18:00 UTC (slot S):
 *  - day-ahead, "Short" (a consumer) bought only 100 Wh of S from "Seller";
 *  - an hour ahead, Short's agent forecasts S from its own metered week: several times that;
 *  - "Battery"'s agent offers upward flexibility for S once the forecasts are in the book;
 *  - at S's gate the master clears the balancing book: Battery's offer is activated;
 *  - at S's start Battery's agent writes the inverter's set-points over Modbus; the battery
 *    discharges beyond its own house's load, and S's reading shows it;
 *  - settlement: Battery is paid for the flexibility at the balancing price, Short pays its
 *    deviation at least at that price, and escrow balances.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { expect } from "chai";
import type { Wallet } from "ethers";
import { SimClock, slotAt, slotStartMs } from "../../agents/clock.js";
import { Settlement__factory, type Settlement } from "../../agents/chain/types/index.js";
import { BalancingClearer } from "../../agents/master/balancingClearer.js";
import { DayAheadClearer } from "../../agents/master/dayAheadClearer.js";
import { MasterAgent, type MasterState, type SlotReport } from "../../agents/master/masterAgent.js";
import { ReadingInbox } from "../../agents/master/readingInbox.js";
import { upPaymentOf } from "../../agents/markets/balancingClearing.js";
import { assetsOfSimulatedHousehold, FlexibilityController, ModbusDeviceIo } from "../../agents/meter-agent/flexibility.js";
import { DEFAULT_FLEX_PRICING, IntradayTrader } from "../../agents/meter-agent/intradayTrader.js";
import { MeterAgent, type MeterAgentState } from "../../agents/meter-agent/meterAgent.js";
import { JsonStore } from "../../agents/meter-agent/store.js";
import { ModbusMeter } from "../../agents/meters/modbusMeter.js";
import { SDM630 } from "../../agents/meters/registerMaps.js";
import { nextMidsummer } from "../../agents/simulator/marketRun.js";
import { MeterServer } from "../../agents/simulator/meterServer.js";
import { HouseholdSimulator, type HouseholdSpec } from "../../agents/simulator/profiles.js";
import { setChainTime, startTestMarket, TOKENS, type TestMarket, type TestParticipant } from "../support/localMarket.js";
import { LogCollector } from "../support/logs.js";

const HOUR = 3_600_000;
const MINUTE = 60_000;
const UTC_OFFSET = 60;
const SCHEDULED_WH = 100n;

// The households. Loads follow their seeds; none has PV but the seller, so that at 18:00 UTC
// Short's and Battery's energy do not hang on the weather.
const SHORT: HouseholdSpec = { kind: "consumer", utcOffsetMinutes: UTC_OFFSET, load: { annualKwh: 8_000, seed: 21, noise: 0.15 } };
const BATTERY: HouseholdSpec = {
  kind: "batteryProsumer",
  utcOffsetMinutes: UTC_OFFSET,
  load: { annualKwh: 3_500, seed: 22, noise: 0.15 },
  battery: { capacityKwh: 10, maxPowerKw: 4, socMin: 0.1, socMax: 0.95, initialSoc: 0.8, efficiency: 0.95 },
};
const SELLER: HouseholdSpec = {
  kind: "producer",
  utcOffsetMinutes: UTC_OFFSET,
  load: { annualKwh: 1_000, seed: 23, noise: 0.15 },
  pv: { peakKw: 30, weatherSeed: 5, latitudeDeg: 50.1, longitudeDeg: 8.7, performanceRatio: 0.85 },
};

interface Household {
  p: TestParticipant;
  spec: HouseholdSpec;
  server: MeterServer;
  meter: ModbusMeter;
  agent: MeterAgent;
  logs: LogCollector;
}

describe("e2e: a forecast error covered by a neighbour's battery (node, Modbus meters and inverter, meter agents, master)", function () {
  this.timeout(180_000);

  let m: TestMarket;
  let dir: string;
  const cleanups: Array<() => Promise<void> | void> = [];

  // What the run leaves for the assertions.
  let slot: number;
  let short: Household;
  let battery: Household;
  let seller: Household;
  let dayAheadPrice: bigint;
  let offer: { placed: boolean; isUp: boolean; qtyWh: bigint; price: bigint };
  let imbalanceWh: bigint;
  let activation: { wh: bigint; price: bigint };
  let setpointInSlot: ReturnType<HouseholdSimulator["batteryState"]>;
  let automaticBatteryNetWh: number;
  let pendingBills: Map<string, Awaited<ReturnType<Settlement["accountState"]>>>;
  let holdingsBefore: Map<string, bigint>;
  let holdingsAfter: Map<string, bigint>;
  let report: SlotReport;
  let slotView: Awaited<ReturnType<Settlement["slotState"]>>;
  let supplyBefore: bigint;
  let supplyAfter: bigint;
  let escrow: { balance: bigint; badDebt: bigint; totalDeposits: bigint; openPool: bigint };

  before(async function () {
    dir = mkdtempSync(path.join(tmpdir(), "e2e-balancing-"));
    m = await startTestMarket();
    const [shortP, batteryP, sellerP] = await m.addParticipants([
      { name: "Short", kind: "consumer", accountIndex: 1 },
      { name: "Battery", kind: "storage", accountIndex: 2 },
      { name: "Seller", kind: "producer", accountIndex: 3 },
      { name: "slack", kind: "slackUnit", accountIndex: 19, mint: "1000", deposit: "500" },
    ]);
    const dayAheadAddress = await m.market.dayAheadMarket.getAddress();
    const intradayAddress = await m.market.intradayMarket.getAddress();
    for (const p of [shortP!, batteryP!, sellerP!]) {
      for (const spender of [dayAheadAddress, intradayAddress]) await (await m.token.connect(p.wallet).approve(spender, TOKENS("20"))).wait();
    }

    const day = nextMidsummer(await m.chainTimeMs()).getTime();
    slot = slotAt(day + 18 * HOUR, m.slotSeconds);
    const H = slotStartMs(slot, m.slotSeconds);
    const clock = new SimClock(day - 13 * HOUR);
    await setChainTime(m.provider, clock.now());

    // Day-ahead, before the gate (12:00 the day before): Short buys 100 Wh of S, Seller sells them.
    const dayAhead = m.market.dayAheadMarket;
    const [floor, cap] = await Promise.all([dayAhead.priceFloor(), dayAhead.priceCap()]);
    const at = (f: bigint) => floor + ((cap - floor) * f) / 100n;
    await (await dayAhead.connect(shortP!.meterKey).placeOrdersFor(shortP!.account, [{ slot, isSell: false, qtyWh: SCHEDULED_WH, price: at(60n) }])).wait();
    await (await dayAhead.connect(sellerP!.meterKey).placeOrdersFor(sellerP!.account, [{ slot, isSell: true, qtyWh: SCHEDULED_WH, price: at(30n) }])).wait();
    const quiet = () => {};
    const dayAheadClearer = new DayAheadClearer({ market: dayAhead.connect(m.admin), logger: quiet });
    await dayAheadClearer.init();
    clock.set(day - 12 * HOUR);
    await setChainTime(m.provider, clock.now());
    const cleared = await dayAheadClearer.clearSlot(slot);
    expect(cleared?.volumeWh, "day-ahead award").to.equal(SCHEDULED_WH);
    dayAheadPrice = cleared!.price;

    // 75 minutes before S: meters, agents and the master start.
    clock.set(H - 75 * MINUTE);
    await setChainTime(m.provider, clock.now());
    const inbox = new ReadingInbox(quiet);
    const inboxUrl = await inbox.listen();
    cleanups.push(() => inbox.close());
    const household = async (p: TestParticipant, spec: HouseholdSpec): Promise<Household> => {
      const server = await MeterServer.start({ household: spec, clock });
      cleanups.push(() => server.close());
      const meter = new ModbusMeter({ connection: { kind: "tcp", host: server.host, port: server.port, unitId: 1 }, map: SDM630, clock });
      cleanups.push(() => meter.close());
      const logs = new LogCollector();
      const agent = new MeterAgent({
        account: p.account,
        meterKey: p.meterKey as unknown as Wallet,
        settlement: Settlement__factory.connect(m.settlementAddress, p.meterKey),
        meter,
        store: new JsonStore<MeterAgentState>(path.join(dir, `${p.name}.json`)),
        clock,
        logger: logs.logger,
        masterUrl: inboxUrl,
        selfSubmitAfterMs: 240_000,
        captureLagMs: 60_000,
      });
      await agent.init();
      return { p, spec, server, meter, agent, logs };
    };
    short = await household(shortP!, SHORT);
    battery = await household(batteryP!, BATTERY);
    seller = await household(sellerP!, SELLER);

    // Each agent's own metered week. Short's: its house, simulated (its load, not the
    // schedule it bought, is what it forecasts). Battery's: its battery covered the house
    // every evening, so the meter showed nothing.
    const firstKnown = slotAt(day - 7 * 24 * HOUR, m.slotSeconds);
    const lastKnown = slotAt(clock.now(), m.slotSeconds) - 1;
    const twin = new HouseholdSimulator(SHORT, new Date(slotStartMs(firstKnown, m.slotSeconds)));
    for (let s = firstKnown; s <= lastKnown; s++) {
      const before = twin.registers;
      twin.advanceTo(new Date(slotStartMs(s + 1, m.slotSeconds)));
      short.agent.recordHistory(s, Math.round(twin.registers.importWh - before.importWh - (twin.registers.exportWh - before.exportWh)));
      battery.agent.recordHistory(s, 0);
    }
    const trader = (h: Household, flexibility?: FlexibilityController) =>
      new IntradayTrader({ account: h.p.account, market: m.market.intradayMarket.connect(h.p.meterKey), flexibility, pricing: DEFAULT_FLEX_PRICING, logger: h.logs.logger });
    await short.agent.enableIntraday(trader(short));
    const batteryAssets = assetsOfSimulatedHousehold(BATTERY)!;
    const flexibility = new FlexibilityController({
      assets: batteryAssets,
      io: new ModbusDeviceIo(battery.meter),
      slotSeconds: m.slotSeconds,
      clock,
      logger: battery.logs.logger,
    });
    // Seller takes no part in balancing: it only delivers (or not) its day-ahead sale.

    const balancing = new BalancingClearer({ market: m.market.intradayMarket.connect(m.admin), logger: quiet });
    await balancing.init();
    const master = new MasterAgent({
      dayAhead: { market: dayAhead, clearer: dayAheadClearer },
      intraday: { market: m.market.intradayMarket, clearer: balancing },
      settlement: m.settlement,
      registry: m.registry,
      inbox,
      store: new JsonStore<MasterState>(path.join(dir, "master.json")),
      clock,
      logger: quiet,
      collectTimeoutMs: 5_000,
    });
    await master.init();

    // The agents poll on their own (fast, as the demo's do), paused while the clocks jump.
    const agents = [short.agent, battery.agent, seller.agent];
    let paused = false;
    const timer = setInterval(() => {
      if (!paused) agents.forEach((a) => void a.tick());
    }, 40);
    cleanups.push(() => clearInterval(timer));
    const jump = async (ms: number): Promise<void> => {
      paused = true;
      await Promise.all(agents.map((a) => a.idle()));
      clock.set(ms);
      await setChainTime(m.provider, ms);
    };
    const holdings = async (): Promise<Map<string, bigint>> => {
      const out = new Map<string, bigint>();
      for (const h of [short, battery, seller]) {
        const [wallet, state] = await Promise.all([m.token.balanceOf(h.p.account), m.settlement.accountState(h.p.account)]);
        out.set(h.p.account, wallet + state.deposit);
      }
      return out;
    };
    supplyBefore = await m.token.totalSupply();
    await Promise.all(agents.map((a) => a.tick())); // baselines

    for (let t = H - 60 * MINUTE; t <= H + 30 * MINUTE; t += m.slotSeconds * 1000) {
      await jump(t);
      // Battery joins the balancing market for S's hour, when its offer for S is due: it
      // sends its forecasts and offers in one step, after Short's forecasts are in the book.
      if (t === H - 30 * MINUTE) await battery.agent.enableIntraday(trader(battery, flexibility));
      await Promise.all(agents.map((a) => a.tick()));
      if (t === H - 15 * MINUTE) {
        offer = await m.market.intradayMarket.offerOf(slot, battery.p.account);
        imbalanceWh = (await m.market.intradayMarket.book(slot)).imbalanceWh;
      }
      if (t === H) {
        setpointInSlot = battery.server.household.batteryState();
        const [wh, price] = await m.market.intradayMarket.activationOf(slot, battery.p.account);
        activation = { wh, price };
      }
      paused = false;
      if (t === H + 30 * MINUTE) holdingsBefore = await holdings(); // S's bills come with S+1's readings
      const ended = slotAt(t, m.slotSeconds) - 1;
      const r = await master.handleSlotEnd(ended);
      if (t === H) {
        // The agent's polls through the slot keep the held battery following the house (track()).
        paused = true;
        await Promise.all(agents.map((a) => a.idle()));
        for (let minute = 1; minute < 15; minute++) {
          clock.set(t + minute * MINUTE);
          await battery.agent.tick();
        }
      }
      if (t === H + 15 * MINUTE) {
        // S's readings are on chain and their bills pending: what settlement will charge or pay.
        pendingBills = new Map();
        for (const h of [short, battery]) pendingBills.set(h.p.account, await m.settlement.accountState(h.p.account));
      }
      if (t === H + 30 * MINUTE) {
        report = r!;
        holdingsAfter = await holdings();
      }
    }
    clearInterval(timer);
    slotView = await m.settlement.slotState(slot);
    supplyAfter = await m.token.totalSupply();
    const [escrowBalance, badDebt, totalDeposits, openPool] = await Promise.all([
      m.token.balanceOf(m.settlementAddress),
      m.settlement.badDebt(),
      m.settlement.totalDeposits(),
      m.settlement.openPool(),
    ]);
    escrow = { balance: escrowBalance, badDebt, totalDeposits, openPool };

    // What Battery's house would have metered in S with its battery left automatic.
    const auto = new HouseholdSimulator(BATTERY, new Date(H - 75 * MINUTE));
    auto.advanceTo(new Date(H));
    const start = auto.registers;
    auto.advanceTo(new Date(H + 15 * MINUTE));
    automaticBatteryNetWh = auto.registers.importWh - start.importWh - (auto.registers.exportWh - start.exportWh);
  });

  after(async () => {
    for (const cleanup of cleanups.reverse()) {
      try {
        await cleanup();
      } catch {
        // keep cleaning up
      }
    }
    await m?.stop();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  const bill = (h: Household) => report.bills.find((b) => b.account === h.p.account)!;

  it("the hour-ahead forecast reveals Short's shortfall against its day-ahead schedule, and Battery offers upward into it", () => {
    const forecasts = short.logs.find("balancing forecasts sent").find((r) => (r.slots as number[]).includes(slot));
    expect(forecasts, short.logs.dump()).to.not.equal(undefined);
    const forecastWh = BigInt((forecasts!.forecastsWh as number[])[(forecasts!.slots as number[]).indexOf(slot)]!);
    expect(forecastWh, "Short expects to use far more than it bought").to.be.above(3n * SCHEDULED_WH);
    // Battery's own forecast is 0 (its battery covers its house), so the book's imbalance is Short's.
    expect(imbalanceWh).to.equal(forecastWh - SCHEDULED_WH);
    expect(offer.placed && offer.isUp, battery.logs.dump()).to.equal(true);
    expect(offer.qtyWh, "more than the shortfall: the battery can take it all").to.be.above(imbalanceWh);
  });

  it("the master's clearing activates Battery's offer for the whole expected imbalance, at its price", async () => {
    const [floor, cap] = await Promise.all([m.market.intradayMarket.priceFloor(), m.market.intradayMarket.priceCap()]);
    const upPrice = floor + (BigInt(Math.round(DEFAULT_FLEX_PRICING.upAt * 1e6)) * (cap - floor)) / 1_000_000n;
    expect(offer.price).to.equal(upPrice);
    expect(activation).to.deep.equal({ wh: -imbalanceWh, price: upPrice });
    expect(report.expectedImbalanceWh).to.equal(imbalanceWh);
    expect(report.activatedWh, "upward").to.equal(imbalanceWh);
    expect(report.balancingPrice).to.equal(upPrice);
    expect(slotView.upWh).to.equal(imbalanceWh);
    expect(slotView.upPrice).to.equal(upPrice);
    expect(slotView.downWh).to.equal(0n);
  });

  it("the set-point reaches the simulated inverter over Modbus and S's reading shows the battery delivered the activation", () => {
    expect(setpointInSlot?.setpoint.mode, "held by the agent's set-point during S").to.equal("fixed");
    const held = setpointInSlot?.setpoint.mode === "fixed" ? setpointInSlot.setpoint.dischargeW : 0;
    expect(held, "discharging beyond the house's load").to.be.above(Number(imbalanceWh) * 4);
    expect(battery.logs.find("flexibility released", { slot }), "released at S's end").to.not.be.empty;
    const delivered = automaticBatteryNetWh - Number(bill(battery).netWh);
    expect(Math.abs(delivered - Number(imbalanceWh)), `delivered ${delivered} Wh of ${imbalanceWh}`).to.be.at.most(15);
  });

  it("settlement pays Battery for the flexibility it delivered and charges Short its deviation at least at the upward price", () => {
    expect(report.closed, "S closed").to.equal(true);
    const upPrice = activation.price;
    // Battery: its activation is a sale at the balancing price; delivered, it deviates by almost nothing.
    const b = bill(battery);
    expect(pendingBills.get(battery.p.account)!.earned).to.equal(upPaymentOf(imbalanceWh, upPrice));
    expect(b.earned).to.equal(upPaymentOf(imbalanceWh, upPrice));
    expect(Number(b.deviationWh < 0n ? -b.deviationWh : b.deviationWh)).to.be.at.most(15);
    expect(holdingsAfter.get(battery.p.account)! - holdingsBefore.get(battery.p.account)!, "Battery's wallet and deposit").to.equal(b.earned - b.amount);
    expect(b.earned - b.amount).to.be.above(0n);

    // Short: metered minus the 100 Wh it bought day-ahead, paid at no less than the upward price.
    const s = bill(short);
    expect(pendingBills.get(short.p.account)!.deviationWh).to.equal(s.deviationWh);
    expect(s.deviationWh).to.equal(s.netWh - SCHEDULED_WH);
    expect(s.deviationWh).to.be.above(2n * SCHEDULED_WH);
    expect(s.amount, "at least the upward price").to.be.at.least((s.deviationWh * upPrice + 999n) / 1000n);
    expect(s.amount * 1000n, "above the day-ahead price it traded at").to.be.above(s.deviationWh * dayAheadPrice);
    expect(s.shortfall).to.equal(0n);
    expect(holdingsAfter.get(short.p.account)! - holdingsBefore.get(short.p.account)!, "Short's wallet and deposit").to.equal(-s.amount);
  });

  it("conserves energy and tokens: the slack unit covers the rest, and escrow balances", () => {
    // Deviations plus the system's flexibility trades: what the slack unit supplied minus what it absorbed.
    expect(report.demandWh - report.supplyWh - report.activatedWh).to.equal(report.slackSuppliedWh - report.slackAbsorbedWh);
    // Day-ahead awards balance (Short's 100 Wh are Seller's), so the metered total is that too.
    expect(report.bills.reduce((a, b) => a + b.netWh, 0n)).to.equal(report.demandWh - report.supplyWh - report.activatedWh);
    expect(supplyAfter, "no token made or destroyed").to.equal(supplyBefore);
    expect(escrow.balance + escrow.badDebt, "balanceOf(settlement) + badDebt == totalDeposits + openPool").to.equal(escrow.totalDeposits + escrow.openPool);
    expect(escrow.badDebt).to.equal(0n);
    expect(slotView.closed).to.equal(true);
  });
});
