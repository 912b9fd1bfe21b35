/**
 * The meter agent process (agents/meter-agent/main.ts) trading for a household with a battery,
 * as on a Pi: against a real `hardhat node` with the Market module deployed by Ignition with
 * 12-second slots (the day-ahead gate a few minutes ahead, balancing windows of an hour closing
 * a slot before each slot), a real Modbus TCP simulator of the meter and the battery inverter
 * on the system clock, and a state file that gives the agent a week of history; the household
 * has approved both markets with `npm run approve`. It must place
 * tomorrow's day-ahead orders, send its hour-ahead forecasts, offer its battery, drive the
 * battery over Modbus when the offer is activated, hand the battery back on SIGTERM, and after
 * a restart send no order, forecast or offer a second time.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { expect } from "chai";
import { PROJECT_ROOT } from "../../agents/chain/localNode.js";
import { silentLogger } from "../../agents/log.js";
import { BalancingClearer } from "../../agents/master/balancingClearer.js";
import type { MeterAgentState } from "../../agents/meter-agent/meterAgent.js";
import { JsonStore } from "../../agents/meter-agent/store.js";
import { MeterServer, systemClock } from "../../agents/simulator/meterServer.js";
import { HouseholdSimulator, type HouseholdSpec } from "../../agents/simulator/profiles.js";
import { AgentProcess, type LogLine } from "../support/agentProcess.js";
import { alignChainClockWithWall, recordedReadings, startTestMarket, TOKENS, type TestMarket, type TestParticipant } from "../support/localMarket.js";

const SLOT_SECONDS = 12;
const SLOT_MS = SLOT_SECONDS * 1000;
const DAY_MS = 86_400_000;
/** What the seeded history says the house drew in every slot: the forecasts follow it. */
const HISTORY_WH = 60;
/** How far ahead of the deployment tomorrow's day-ahead gate closes. */
const GATE_AHEAD_S = 240;
const FLOOR = 80_000n;
const CAP = 320_000n;

/** A house with a 10 kWh / 10 kW battery and no PV: the battery covers the load, and can discharge much more. */
const BATTERY_HOUSE: HouseholdSpec = {
  kind: "batteryProsumer",
  utcOffsetMinutes: 60,
  load: { annualKwh: 8_000, seed: 3, noise: 0.1 },
  battery: { capacityKwh: 10, maxPowerKw: 10, socMin: 0.1, socMax: 0.95, initialSoc: 0.6, efficiency: 0.95 },
};

const execFileAsync = promisify(execFile);
const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The offers an "balancing offers sent" line lists. */
const offersOf = (l: LogLine) => (l.offers as Array<{ slot: number; isUp: boolean; qtyWh: string }> | undefined) ?? [];

describe("meter agent process: trades day-ahead and intra-day and drives its battery", function () {
  this.timeout(180_000);

  let m: TestMarket;
  let house: TestParticipant;
  let dir: string;
  let server: MeterServer;
  const processes: AgentProcess[] = [];

  before(async function () {
    this.timeout(600_000);
    // Tomorrow's gate closes GATE_AHEAD_S after the deployment; so close to midnight there is
    // no room for that, and the test waits for the new day.
    const toMidnight = DAY_MS - (Date.now() % DAY_MS);
    if (toMidnight < (GATE_AHEAD_S + 60) * 1000) await delay(toMidnight + 2_000);
    const gateLeadSeconds = Math.floor((DAY_MS - (Date.now() % DAY_MS)) / 1000) - GATE_AHEAD_S;
    dir = mkdtempSync(path.join(tmpdir(), "agent-trading-test-"));
    m = await startTestMarket({
      parameters: {
        SettlementModule: { slotSeconds: SLOT_SECONDS, readingWindow: 10 },
        DayAheadMarketModule: { slotSeconds: SLOT_SECONDS, gateLeadSeconds, priceFloor: Number(FLOOR), priceCap: Number(CAP) },
        IntradayMarketModule: { slotSeconds: SLOT_SECONDS, openLeadSeconds: 3600, gateLeadSeconds: SLOT_SECONDS, priceFloor: Number(FLOOR), priceCap: Number(CAP) },
      },
    });
    const participants = await m.addParticipants([
      { name: "battery house", kind: "storage", accountIndex: 3, deposit: "20" },
      { name: "slack", kind: "slackUnit", accountIndex: 19, mint: "1000", deposit: "500" },
    ]);
    house = participants[0]!;
    // What the household does once, with its own key: let both markets take escrow from its wallet.
    const approved = await execFileAsync(process.execPath, ["--import", "tsx", path.join("agents", "cli", "approve.ts"), "50", "--rpc", m.node.url, "--deployment", m.deployment.deploymentDir], {
      cwd: PROJECT_ROOT,
      env: { ...process.env, MARKET_PRIVATE_KEY: house.wallet.privateKey },
    });
    expect(approved.stdout).to.match(/DayAheadMarket .* may take 50\.0 kWhT/).and.match(/IntradayMarket .* may take 50\.0 kWhT/);
    server = await MeterServer.start({ household: new HouseholdSimulator(BATTERY_HOUSE, new Date()), clock: systemClock });
  });

  after(async () => {
    for (const p of processes) p.kill("SIGKILL");
    await Promise.all(processes.map((p) => p.exited));
    await server?.close();
    await m?.stop();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  it("places tomorrow's orders from its history, forecasts and offers its battery, drives it when activated, and after a restart sends nothing twice", async () => {
    const { dayAheadMarket, intradayMarket } = m.market;
    const account = house.account;
    await alignChainClockWithWall(m.provider);

    // A week of history, as an agent that has run for a while has it in its state file: for
    // the slots the balancing forecasts look back on, and for those tomorrow's orders do.
    const current = Math.floor(Date.now() / SLOT_MS);
    const firstSlot = ((Math.floor(Date.now() / DAY_MS) + 1) * DAY_MS) / SLOT_MS;
    const history: Record<string, number> = {};
    for (let s = current - 680; s < current; s++) history[String(s)] = HISTORY_WH;
    for (let s = firstSlot - 7 * 96; s < firstSlot; s++) history[String(s)] = HISTORY_WH;
    const stateFile = path.join(dir, "state.json");
    await new JsonStore<MeterAgentState>(stateFile).save({ lastClosedSlot: current - 1, lastImportWh: "0", lastExportWh: "0", pending: {}, history });

    const configFile = path.join(dir, "meter-agent.json");
    writeFileSync(
      configFile,
      JSON.stringify({
        account,
        rpcUrl: m.node.url,
        deploymentDir: m.deployment.deploymentDir,
        meter: { transport: "tcp", host: server.host, port: server.port, unitId: 1, model: "sdm630" },
        stateFile,
        pollIntervalMs: 250,
        captureLagMs: 3_000,
        dayAhead: { buyAt: 0.75 },
        intraday: { upAt: 0.5 },
        assets: { utcOffsetMinutes: 60, devices: [{ kind: "battery", capacityWh: 10_000, maxPowerW: 10_000, minSocPct: 10, maxSocPct: 95 }] },
      }),
    );
    const run = (): AgentProcess => {
      const p = new AgentProcess(configFile, house.meterKey.privateKey);
      processes.push(p);
      return p;
    };

    // Day-ahead: 96 buys of the forecast 60 Wh at floor + 0.75 of the band, escrowed from the wallet.
    const a1 = run();
    await a1.waitFor((l) => l.msg === "meter agent ready", 15_000, "start-up");
    const placed = await a1.waitFor((l) => l.msg === "day-ahead orders placed", 20_000, "day-ahead orders");
    expect(placed).to.include({ firstSlot, buys: 96, sells: 0 });
    const buyPrice = FLOOR + ((CAP - FLOOR) * 3n) / 4n;
    const orders = await Promise.all(Array.from({ length: 96 }, (_, k) => dayAheadMarket.orderOf(firstSlot + k, account)));
    for (const o of orders) expect([o.placed, o.isSell, o.qtyWh, o.price]).to.deep.equal([true, false, BigInt(HISTORY_WH), buyPrice]);
    const escrow = 96n * ((BigInt(HISTORY_WH) * buyPrice) / 1000n);
    expect(await m.token.allowance(account, await dayAheadMarket.getAddress()), "escrow taken under the allowance").to.equal(TOKENS("50") - escrow);

    // Balancing: forecasts for the open slots, recorded against an empty schedule.
    const sent = await a1.waitFor((l) => l.msg === "balancing forecasts sent" && (l.forecastsWh as number[]).length > 0, 2 * SLOT_MS, "balancing forecasts");
    const forecastSlots = sent.slots as number[];
    for (const [k, slot] of forecastSlots.entries()) {
      const f = await intradayMarket.forecastOf(slot, account);
      expect([f.set, f.deviationWh], `forecast of slot ${slot}`).to.deep.equal([true, BigInt((sent.forecastsWh as number[])[k]!)]);
      expect(f.deviationWh > 0n, "the house is short: it draws more than it bought").to.equal(true);
    }

    // An upward offer of the battery, cleared by the master's clearer between its gate and its start.
    const clearer = new BalancingClearer({ market: intradayMarket, logger: silentLogger });
    await clearer.init();
    const tried = new Set<number>();
    let slot: number | undefined;
    let offered: { slot: number; isUp: boolean; qtyWh: string } | undefined;
    while (slot === undefined) {
      const line = await a1.waitFor((l) => l.msg === "balancing offers sent" && offersOf(l).some((o) => !tried.has(o.slot)), 3 * SLOT_MS, "a balancing offer");
      const offer = offersOf(line).find((o) => !tried.has(o.slot))!;
      tried.add(offer.slot);
      expect(tried.size, "an offer cleared in time within a few slots").to.be.below(4);
      await delay(offer.slot * SLOT_MS - SLOT_MS + 1_500 - Date.now()); // its gate, with the chain's clock past it
      if (Date.now() > offer.slot * SLOT_MS - 2_000) continue; // too late to clear before it starts
      const result = await clearer.clearSlot(offer.slot);
      if (result === undefined) continue;
      expect(result.up).to.equal(true);
      [slot, offered] = [offer.slot, offer];
    }
    expect(offered!.isUp).to.equal(true);
    const offer = await intradayMarket.offerOf(slot, account);
    expect([offer.placed, offer.isUp, offer.qtyWh, offer.price]).to.deep.equal([true, true, BigInt(offered!.qtyWh), (FLOOR + CAP) / 2n]);
    expect(offer.qtyWh >= 10n, "at least minOfferWh").to.equal(true);
    const [activatedWh] = await intradayMarket.activationOf(slot, account);
    expect(activatedWh < 0n, "activated upward").to.equal(true);

    // At the slot's start the agent holds the battery at a discharge above what it would do.
    await a1.waitFor((l) => l.msg === "flexibility activated" && l.slot === slot && l.commands !== undefined, 2 * SLOT_MS, `activation of slot ${slot}`);
    const held = server.household.batteryState()!.setpoint;
    expect(held.mode).to.equal("fixed");
    if (held.mode === "fixed") expect(held.dischargeW).to.be.above(0);

    // SIGTERM mid-activation: the agent finishes its step and hands the battery back.
    a1.kill("SIGTERM");
    expect((await a1.exited).code, a1.dump()).to.equal(0);
    expect(a1.lines.some((l) => l.msg === "devices returned to automatic")).to.equal(true);
    expect(server.household.batteryState()!.setpoint).to.deep.equal({ mode: "auto" });
    const ordersBefore = await dayAheadMarket.queryFilter(dayAheadMarket.filters.OrderPlaced(account), 0, "latest");
    expect(ordersBefore).to.have.length(96);

    // Restarted: it finds its forecasts and offers on chain, sends only new ones, and does
    // not trade tomorrow again.
    const a2 = run();
    await a2.waitFor((l) => l.msg === "meter agent ready", 15_000, "restart");
    const recovered = await a2.waitFor((l) => l.msg === "balancing forecasts and offers on chain from before a restart", 2 * SLOT_MS, "recovery");
    expect((recovered.forecasts as number[]).length).to.be.above(0);
    await a2.waitFor((l) => l.msg === "balancing forecasts sent" && (l.forecastsWh as number[]).length > 0, 3 * SLOT_MS, "a forecast after the restart");
    await a2.waitFor((l) => l.msg === "balancing offers sent" && offersOf(l).length > 0, 3 * SLOT_MS, "an offer after the restart");
    a2.kill("SIGTERM");
    expect((await a2.exited).code, a2.dump()).to.equal(0);
    expect(a2.lines.some((l) => l.msg === "day-ahead orders placed" || l.msg === "day-ahead orders failed; will retry")).to.equal(false);

    const once = async (name: string, events: Array<{ args: { slot: bigint } }>) => {
      const bySlot = new Map<number, number>();
      for (const e of events) bySlot.set(Number(e.args.slot), (bySlot.get(Number(e.args.slot)) ?? 0) + 1);
      const twice = [...bySlot].filter(([, n]) => n > 1).map(([s]) => s);
      expect(twice, `${name} sent twice for these slots`).to.deep.equal([]);
      return [...bySlot.keys()];
    };
    expect(await dayAheadMarket.queryFilter(dayAheadMarket.filters.OrderPlaced(account), 0, "latest")).to.have.length(96);
    const forecasted = await once("forecasts", await intradayMarket.queryFilter(intradayMarket.filters.ForecastSubmitted(account), 0, "latest"));
    const offeredSlots = await once("offers", await intradayMarket.queryFilter(intradayMarket.filters.OfferPlaced(account), 0, "latest"));
    expect(forecasted).to.include.members(recovered.forecasts as number[]);
    expect(offeredSlots).to.include.members([slot, ...(recovered.offers as number[])]);
    expect(Math.max(...forecasted), "forecasts went on after the restart").to.be.above(Math.max(...(recovered.forecasts as number[])));
    expect((await recordedReadings(m.settlement, account)).length, "readings went on chain meanwhile").to.be.above(2);
  });
});
