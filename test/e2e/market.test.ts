/**
 * End to end: the simulated neighbourhood (agents/simulator/marketRun.ts) for a few slots
 * around midday, with everything real: a `hardhat node`, the Market module deployed with
 * Ignition, nine Modbus TCP meters, nine meter agents and the master. Checked per closed
 * slot and over the run: energy and token conservation, every metered household billed
 * every slot, registers fully billed, and the escrow's accounting identity.
 *
 * This is the real-time metering and billing path: the day-ahead round is off (marketRun
 * runs it before a day that starts at midnight, and at night there is no PV to trade), so
 * every position is 0 and each bill is for the whole metered energy.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { expect } from "chai";
import { parseUnits } from "ethers";
import { slotAt } from "../../agents/clock.js";
import { nextMidsummer, withSimulatedMarket, type SimulatedMarketResult } from "../../agents/simulator/marketRun.js";
import { billedEvents, expectEscrowIdentity, recordedReadings } from "../support/localMarket.js";

const TOKENS = (amount: string): bigint => parseUnits(amount, 6);
const SLOTS = 3;

describe("e2e: the simulated market for a few slots (node, Ignition, Modbus meters, meter agents, master)", function () {
  this.timeout(300_000);

  let dir: string;
  let result: SimulatedMarketResult;
  /** Chain checks run while the market is still up, then the results are asserted below. */
  let checks: {
    supply: bigint;
    holdings: Map<string, bigint>;
    bills: Awaited<ReturnType<typeof billedEvents>>;
    readings: Awaited<ReturnType<typeof recordedReadings>>;
    escrow: { openPool: bigint; badDebt: bigint };
  };
  // Eleven o'clock UTC on midsummer day: PV households sell, others buy.
  const start = new Date(nextMidsummer(Date.now()).getTime() + 11 * 3_600_000);
  const firstSlot = slotAt(start.getTime(), 900);

  before(async function () {
    dir = mkdtempSync(path.join(tmpdir(), "e2e-market-"));
    const options = { slots: SLOTS, day: start, dayAhead: false, intraday: false, stateDir: path.join(dir, "state"), mintTokens: "100", depositTokens: "60" };
    await withSimulatedMarket(options, async (run) => {
      result = await run();
      const { market, settlement, households } = result;
      const holdings = new Map<string, bigint>();
      for (const h of households) {
        const [wallet, state] = await Promise.all([market.energyToken.balanceOf(h.account), settlement.accountState(h.account)]);
        holdings.set(h.account, wallet + state.deposit);
      }
      await expectEscrowIdentity(market.energyToken, settlement);
      checks = {
        supply: await market.energyToken.totalSupply(),
        holdings,
        bills: await billedEvents(settlement),
        readings: await recordedReadings(settlement),
        escrow: { openPool: await settlement.openPool(), badDebt: await settlement.badDebt() },
      };
    });
  });

  after(() => {
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  const metered = () => result.households.filter((h) => h.member.metered);
  const slack = () => result.households.find((h) => !h.member.metered)!;

  it("settles and closes every slot with a reading and a bill for every metered household", () => {
    expect(result.reports.map((r) => r.slot)).to.deep.equal(Array.from({ length: SLOTS }, (_, i) => firstSlot + i));
    const accounts = metered().map((h) => h.account);
    expect(accounts).to.have.length(9);
    for (const r of result.reports) {
      expect(r.closed, `slot ${r.slot} closed`).to.equal(true);
      expect(r.readings, `slot ${r.slot} readings`).to.equal(9);
      expect(r.bills.map((b) => b.account), `slot ${r.slot} billed once each`).to.have.members(accounts);
      expect(r.bills.every((b) => b.earned === 0n && b.deviationWh === b.netWh), "no day-ahead positions").to.equal(true);
      const onChain = checks.bills.filter((b) => b.slot === r.slot);
      expect(onChain.map((b) => b.account).sort()).to.deep.equal([...accounts].sort());
    }
    expect(checks.bills.filter((b) => b.account === slack().account), "the slack unit is never billed").to.deep.equal([]);
  });

  it("conserves energy per slot: demand == supply + slack supplied - slack absorbed", () => {
    for (const r of result.reports) {
      expect(r.demandWh, `slot ${r.slot}`).to.equal(r.supplyWh + r.slackSuppliedWh - r.slackAbsorbedWh);
      expect(r.bills.reduce((s, b) => s + b.netWh, 0n), `slot ${r.slot}: billed net energy`).to.equal(r.demandWh - r.supplyWh);
      const positive = r.bills.filter((b) => b.netWh > 0n).reduce((s, b) => s + b.netWh, 0n);
      expect(positive, "demand is the sum of the buyers' net imports").to.equal(r.demandWh);
    }
    const local = result.reports.reduce((s, r) => s + r.localWh, 0n);
    expect(local > 0n, "around midday some energy is traded locally").to.equal(true);
  });

  it("conserves tokens per slot: what buyers paid, less what sellers got, is what the slack unit took", () => {
    for (const r of result.reports) {
      // Billed amount > 0 is paid by the participant, < 0 paid to it; SlotClosed slackAmount > 0 goes to the slack unit.
      const shortfall = r.bills.reduce((s, b) => s + b.shortfall, 0n);
      expect(shortfall, "deposits cover every bill").to.equal(0n);
      expect(r.bills.reduce((s, b) => s + b.amount, 0n), `slot ${r.slot}`).to.equal(r.slackAmount);
      for (const b of r.bills) expect(b.amount === 0n || (b.amount > 0n) === (b.netWh > 0n), "buyers pay, sellers are paid").to.equal(true);
    }
    // Over the run each household holds what it started with minus its bills, and the slack unit the residuals.
    const billsOf = (account: string) => result.reports.flatMap((r) => r.bills).filter((b) => b.account === account).reduce((s, b) => s + b.amount, 0n);
    for (const h of metered()) expect(checks.holdings.get(h.account), h.member.name).to.equal(TOKENS("100") - billsOf(h.account));
    const residuals = result.reports.reduce((s, r) => s + r.slackAmount, 0n);
    expect(checks.holdings.get(slack().account)).to.equal(TOKENS("10000") + residuals);
    expect(checks.supply, "no token made or destroyed").to.equal(9n * TOKENS("100") + TOKENS("10000"));
  });

  it("keeps the escrow identity, with no open pool or bad debt left, and bills every Wh the registers counted", () => {
    expect(checks.escrow).to.deep.equal({ openPool: 0n, badDebt: 0n });
    for (const h of metered()) {
      const readings = checks.readings.filter((r) => r.account === h.account);
      expect(readings.map((r) => r.slot), h.member.name).to.deep.equal(Array.from({ length: SLOTS + 1 }, (_, i) => firstSlot - 1 + i));
      const first = readings[0]!;
      const last = readings[readings.length - 1]!;
      const billed = checks.bills.filter((b) => b.account === h.account).reduce((s, b) => s + b.netWh, 0n);
      expect(billed, `${h.member.name}: billed net energy == register difference`).to.equal(last.importWh - last.exportWh - (first.importWh - first.exportWh));
    }
  });
});
