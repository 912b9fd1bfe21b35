import type { HardhatEthersSigner } from "@nomicfoundation/hardhat-ethers/types";
import { expect } from "chai";
import type { ContractTransactionResponse, LogDescription } from "ethers";
import { ceilDiv, Kind, ONE, type Market, type Participant } from "./market.js";
import { MAX_SCHEDULE_GAP, ModelRevert, SettlementModel, type ModelEvent } from "./model.js";
import { Rng } from "./random.js";
import type { SignedReading } from "./readings.js";

/**
 * One random market scenario, driven step by step against the chain and the reference model.
 *
 * Random participants (consumers and prosumers) with random deposits, meters that run every slot
 * whether or not a reading is sent (missed readings, and slots nobody reads), random day-ahead
 * schedules (buyers and sellers awarded at one price per slot through the test schedule source,
 * buyers' costs prepaid into the slot's pool, sometimes in two payments or late, sometimes into a
 * closed slot, which must be refused), readings in random batches from random relayers with
 * identical resubmissions and refused ones mixed in, deposits, withdrawals and price changes, and
 * settle calls for random slots and accounts in random order.
 *
 * A reading covers the schedules of its own slot and of the slots its meter missed since its last
 * reading (at most MAX_SCHEDULE_GAP of them): its deviation is its metered net energy minus all of
 * them, and it earns what all their sales earn.
 *
 * After every step: the escrow identity (balance + badDebt == totalDeposits + openPool), the token
 * supply in the watched wallets, registers that never go down, and every account, slot, total,
 * balance and event equal to the model's. Independently of the model, from the events and token
 * transfers: each bill carries the deviation and the scheduled earnings the test's own meters and
 * its record of the awards give, no (account, slot) is billed twice, no award is covered twice,
 * settlement transfers a participant only what it withdraws (earnings are paid into deposits),
 * and each participant's deposit moves by exactly what the transaction's events say: its deposits,
 * less its withdrawals and the debt it repaid, plus for each bill its scheduled earnings
 * (floor(|q| * P / 1000) per sale) less what its deviation cost (revenue counting as a negative
 * cost), except what it could not pay (the shortfall, which becomes debt). The slack unit's
 * deposit likewise moves by its deposits, less its withdrawals and the debt it repaid, plus the
 * debts others repaid to it and every closed slot's residual (a positive one goes into its
 * deposit since 475652a), except the part of a negative one it could not pay (its new debt); and
 * settlement transfers it only what it withdraws, plus what its 48-bit deposit cannot hold, which
 * leaves that deposit full.
 * After every closed slot: energy conservation on deviations (demand = supply + slack supplied -
 * slack absorbed, from the test's meters and awards) and token conservation (schedule payments +
 * buyers' payments - scheduled and deviation revenue = the slack unit's residual). At the end,
 * every slot with readings or a schedule payment is closed, every scheduled sale covered by a
 * counted reading was paid exactly once (each seller's scheduled earnings add up to its covered
 * sales), and every participant was billed exactly the energy its meter counted after its
 * baseline (deviations plus covered schedules).
 */

export interface ScenarioStats {
  steps: number;
  readings: number;
  refused: number;
  closedSlots: number;
  debts: number;
  badDebt: boolean;
  /** Slots with day-ahead awards. */
  scheduledSlots: number;
  /** Bills of scheduled sellers (paid their scheduled revenue). */
  scheduledSellerBills: number;
  /** Bills of scheduled sellers whose upward deviation was paid from their scheduled revenue. */
  nettedSellerBills: number;
  /** Slots closed without any reading (a schedule payment nobody metered). */
  unreadClosedSlots: number;
  /** Payouts (earnings or revenue) of which a participant in debt repaid its debt first. */
  payoutRepayments: number;
  /** Transactions that transferred the slack unit residuals its full 48-bit deposit could not hold. */
  slackOverflows: number;
}

/** The largest deposit (a 48-bit field of the account word). */
const UINT48_MAX = 2n ** 48n - 1n;

/** The events the model predicts; all the settlement emits in these scenarios. */
const MODEL_EVENTS = new Set([
  "PricesSet",
  "Deposited",
  "DebtRepaid",
  "Withdrawn",
  "ReadingRecorded",
  "Billed",
  "ParticipantInDebt",
  "SlotPriced",
  "SlotClosed",
  "SchedulePaid",
]);

interface Meter {
  p: Participant;
  importWh: bigint;
  exportWh: bigint;
  /** Registers of the baseline reading (the first one accepted). */
  baseline?: [bigint, bigint];
  /** Registers of the last accepted reading. */
  last?: [bigint, bigint];
  /** Slot of the last accepted reading. */
  lastSlot?: bigint;
}

function canonical(events: ModelEvent[]): string[] {
  return events
    .map((e) => JSON.stringify([e.name, ...e.args.map((x) => (typeof x === "bigint" ? x.toString() : x))]))
    .sort();
}

export async function runScenario(market: Market, seed: number): Promise<ScenarioStats> {
  const rng = new Rng(seed);
  const { settlement, token } = market;
  const tokenAddress = await token.getAddress();
  const all = [...market.participants.values()];
  const slack = all.find((p) => p.kind === Kind.SlackUnit);
  if (slack === undefined) throw new Error("the scenario market needs a slack unit");
  const slackAddress = slack.address;
  const pool = all.filter((p) => p !== slack);
  const chosen = rng.shuffle(pool).slice(0, 2 + rng.int(pool.length - 1));
  const meters = chosen.map<Meter>((p) => ({
    p,
    importWh: rng.big(0n, 1_000_000n),
    exportWh: p.kind === Kind.Prosumer ? rng.big(0n, 100_000n) : 0n,
  }));
  const stats: ScenarioStats = {
    steps: 0,
    readings: 0,
    refused: 0,
    closedSlots: 0,
    debts: 0,
    badDebt: false,
    scheduledSlots: 0,
    scheduledSellerBills: 0,
    nettedSellerBills: 0,
    unreadClosedSlots: 0,
    payoutRepayments: 0,
    slackOverflows: 0,
  };
  const source = market.scheduleSource;
  const sourceAddress = await source.getAddress();
  if ((await settlement.dayAheadMarket()) !== sourceAddress) throw new Error("the scenario market needs the test schedule source set");

  // Everyone who can hold tokens: the supply must always be in these wallets and the escrow.
  const watched = [
    market.settlementAddress,
    sourceAddress,
    market.admin.address,
    market.relayer.address,
    market.outsider.address,
    ...all.map((p) => p.address),
  ];
  let model = new SettlementModel(
    market.settlementAddress,
    slack.address,
    new Set(all.map((p) => p.address)),
    market.slotSeconds,
    market.readingWindow,
    await settlement.feedInPrice(),
    await settlement.retailPrice(),
  );
  model.scheduleSource = sourceAddress;
  for (const address of watched) model.balances.set(address, await token.balanceOf(address));
  for (const p of all) {
    const s = await settlement.accountState(p.address);
    expect(s.deposit, "scenario starts without deposits").to.equal(0n);
  }

  let now = BigInt(await market.helpers.time.latest());
  const observedRegisters = new Map<string, [bigint, bigint]>();
  /**
   * Deviation energy per slot as the test's own meters and schedules attribute it: sums of positive
   * and of negative d = metered net - schedule, over the readings that counted (not baselines).
   */
  const meterEnergy = new Map<bigint, { demand: bigint; supply: bigint; readings: bigint }>();
  const billedPerSlot = new Map<bigint, { amount: bigint; shortfall: bigint; count: bigint; scheduledRevenue: bigint }>();
  const billedNet = new Map<string, bigint>();
  /** The test's record of the source's awards (`${slot}:${account}` -> Wh) and of each slot's price. */
  const awards = new Map<string, bigint>();
  const awardPrice = new Map<bigint, bigint>();
  /** What the source paid into each slot's pool. */
  const schedulePaid = new Map<bigint, bigint>();
  /**
   * Readings that counted (non-baseline), by `${slot}:${account}`: the metered net energy, and the
   * deviation and scheduled earnings expected from the awards they cover.
   */
  const counted = new Map<string, { netWh: bigint; deviationWh: bigint; earned: bigint }>();
  /** The counted reading (its slot) that covered each award, by `${slot}:${account}`. */
  const coveredBy = new Map<string, bigint>();
  /** Bills seen, by `${slot}:${account}`, with the scheduled earnings paid with each. */
  const billed = new Map<string, bigint>();
  const awardOf = (slot: bigint, account: string): bigint => awards.get(`${slot}:${account}`) ?? 0n;
  /** floor(|q| * P / 1000) for a scheduled sale, 0 for anything else. */
  const scheduledRevenue = (slot: bigint, account: string): bigint => {
    const q = awardOf(slot, account);
    return q < 0n ? (-q * (awardPrice.get(slot) ?? 0n)) / 1000n : 0n;
  };

  /** Each participant's deposit as the chain had it after the last step (none at the start). */
  const seenDeposits = new Map<string, bigint>();

  const relayers: HardhatEthersSigner[] = [market.relayer, market.outsider, market.admin, ...chosen.map((p) => p.signer)];

  /** Runs one transaction at the next second, checking it against the model. */
  async function step(
    label: string,
    send: () => Promise<ContractTransactionResponse>,
    predict: (m: SettlementModel) => void,
  ): Promise<boolean> {
    const next = model.clone();
    next.events = [];
    let expected: ModelRevert | undefined;
    try {
      predict(next);
    } catch (e) {
      if (!(e instanceof ModelRevert)) throw e;
      expected = e;
    }
    now += 1n;
    await market.at(now);
    stats.steps += 1;
    const where = `seed ${seed}, step ${stats.steps} (${label})`;
    if (expected !== undefined) {
      const contract = expected.error.startsWith("ERC20") ? token : settlement;
      await expect(send(), where)
        .to.be.revertedWithCustomError(contract, expected.error)
        .withArgs(...expected.args);
      stats.refused += 1;
      await checkState(where);
      return false;
    }
    const receipt = await (await send()).wait();
    if (receipt === null) throw new Error(`${where}: no receipt`);
    const events: LogDescription[] = [];
    /** What settlement transferred to each wallet in this transaction. */
    const paidOut = new Map<string, bigint>();
    for (const log of receipt.logs) {
      if (log.address === tokenAddress) {
        const parsed = token.interface.parseLog(log);
        if (parsed?.name === "Transfer" && parsed.args[0] === market.settlementAddress) {
          const to = parsed.args[1] as string;
          paidOut.set(to, (paidOut.get(to) ?? 0n) + (parsed.args[2] as bigint));
        }
        continue;
      }
      if (log.address !== market.settlementAddress) continue;
      const parsed = settlement.interface.parseLog(log);
      if (parsed !== null) events.push(parsed);
    }
    const chainEvents = events.filter((e) => MODEL_EVENTS.has(e.name)).map((e) => ({ name: e.name, args: [...e.args] as ModelEvent["args"] }));
    expect(canonical(chainEvents), `${where}: events`).to.deep.equal(canonical(next.events));
    model = next;
    for (const e of events) onEvent(e, where);
    const { changes, slackOverflow } = depositChanges(events, paidOut, where);
    await checkState(where, changes);
    // Settlement transfers the slack unit a residual only when its deposit cannot hold it.
    if (slackOverflow > 0n) {
      stats.slackOverflows += 1;
      expect(
        (await settlement.accountState(slackAddress)).deposit,
        `${where}: residual transferred to the slack unit while its deposit had room`,
      ).to.equal(UINT48_MAX);
    }
    return true;
  }

  /**
   * Independently of the model, from one transaction's events and transfers: settlement sent each
   * participant exactly what it withdrew (earnings and revenue are paid into deposits, not
   * wallets); returns how each participant's deposit must have moved: + its deposits - its
   * withdrawals - the debt it repaid (out of a deposit or a payout) + for each bill its scheduled
   * earnings less the bill's amount (a revenue when negative), except the shortfall it could not pay.
   * The slack unit's deposit moves by + its deposits - its withdrawals - the debt it repaid + the
   * debts others repaid (credited to it) + each closed slot's residual + the part of a negative
   * residual it could not pay (its ParticipantInDebt shortfall) - what settlement transferred it
   * beyond its withdrawals (what a 48-bit deposit cannot hold), which is returned as well.
   */
  function depositChanges(
    events: LogDescription[],
    paidOut: Map<string, bigint>,
    where: string,
  ): { changes: Map<string, bigint>; slackOverflow: bigint } {
    const change = new Map<string, bigint>();
    const add = (account: string, amount: bigint) => change.set(account, (change.get(account) ?? 0n) + amount);
    const withdrawn = new Map<string, bigint>();
    const seen = new Set<string>();
    for (const e of events) {
      if (e.name === "Deposited") {
        add(e.args[0] as string, e.args[2] as bigint);
      } else if (e.name === "Withdrawn") {
        const [account, amount] = e.args as unknown as [string, bigint];
        add(account, -amount);
        withdrawn.set(account, (withdrawn.get(account) ?? 0n) + amount);
      } else if (e.name === "DebtRepaid") {
        add(e.args[0] as string, -(e.args[1] as bigint));
        // A participant's repayment is credited to the slack unit, which had covered the debt.
        if (e.args[0] !== slackAddress) add(slackAddress, e.args[1] as bigint);
      } else if (e.name === "SlotClosed") {
        add(slackAddress, e.args[4] as bigint);
      } else if (e.name === "ParticipantInDebt") {
        // The slack unit's debt is the part of a slot's negative residual its deposit could not pay.
        if (e.args[0] === slackAddress) add(slackAddress, e.args[2] as bigint);
      } else if (e.name === "Billed") {
        const [account, slot, , sched, amount, shortfall] = e.args as unknown as [string, bigint, bigint, bigint, bigint, bigint];
        expect(seen.has(account), `${where}: ${account} billed twice in one transaction`).to.equal(false);
        seen.add(account);
        expect(shortfall === 0n || amount > 0n, `${where}: a shortfall on a bill of ${account} that asked for nothing`).to.equal(true);
        add(account, sched - amount + shortfall);
        if (amount > 0n) {
          const paid = amount - shortfall;
          const netted = paid < sched ? paid : sched;
          if (sched > 0n && netted > 0n) stats.nettedSellerBills += 1;
        }
        billed.set(`${slot}:${account}`, sched);
        if (sched > 0n) stats.scheduledSellerBills += 1;
      }
    }
    // A participant's debt repaid without a deposit of its own was repaid out of a payout.
    const depositors = new Set(events.filter((e) => e.name === "Deposited").map((e) => e.args[0] as string));
    for (const e of events) {
      if (e.name === "DebtRepaid" && e.args[0] !== slack?.address && !depositors.has(e.args[0] as string)) {
        expect(seen.has(e.args[0] as string), `${where}: ${e.args[0]} repaid debt without a deposit or a bill`).to.equal(true);
        stats.payoutRepayments += 1;
      }
    }
    for (const p of chosen) {
      expect(paidOut.get(p.address) ?? 0n, `${where}: tokens settlement sent ${p.name} (its withdrawals only)`).to.equal(
        withdrawn.get(p.address) ?? 0n,
      );
    }
    // The slack unit: its withdrawals, and beyond them only residuals its deposit cannot hold.
    const slackWithdrawn = withdrawn.get(slackAddress) ?? 0n;
    const slackOverflow = (paidOut.get(slackAddress) ?? 0n) - slackWithdrawn;
    expect(slackOverflow >= 0n, `${where}: tokens settlement sent the slack unit (at least its withdrawals)`).to.equal(true);
    add(slackAddress, -slackOverflow);
    return { changes: change, slackOverflow };
  }

  function onEvent(e: LogDescription, where: string): void {
    if (e.name === "ReadingRecorded") {
      stats.readings += 1;
      const [account, slot, importWh, exportWh, importDelta, exportDelta] = e.args as unknown as [
        string,
        bigint,
        bigint,
        bigint,
        bigint,
        bigint,
      ];
      const meter = meters.find((m) => m.p.address === account);
      if (meter === undefined) throw new Error(`${where}: reading of an unknown meter`);
      if (meter.last === undefined) {
        meter.baseline = [importWh, exportWh];
        expect([importDelta, exportDelta], `${where}: a baseline carries no energy`).to.deep.equal([0n, 0n]);
      } else {
        // The energy attributed to the slot is the whole register difference since the last reading.
        expect([importDelta, exportDelta], `${where}: deltas`).to.deep.equal([importWh - meter.last[0], exportWh - meter.last[1]]);
        // It is netted against the awards of its slot and of the slots missed since the last reading.
        const lastSlot = meter.lastSlot as bigint;
        const from = slot - lastSlot > MAX_SCHEDULE_GAP ? slot + 1n - MAX_SCHEDULE_GAP : lastSlot + 1n;
        let scheduled = 0n;
        let earned = 0n;
        for (let k = from; k <= slot; ++k) {
          scheduled += awardOf(k, account);
          earned += scheduledRevenue(k, account);
          if (awards.has(`${k}:${account}`)) {
            expect(coveredBy.has(`${k}:${account}`), `${where}: the award of ${account} in slot ${k} covered twice`).to.equal(false);
            coveredBy.set(`${k}:${account}`, slot);
          }
        }
        const netWh = importDelta - exportDelta;
        const deviation = netWh - scheduled;
        const energy = meterEnergy.get(slot) ?? { demand: 0n, supply: 0n, readings: 0n };
        if (deviation > 0n) energy.demand += deviation;
        else energy.supply -= deviation;
        energy.readings += 1n;
        meterEnergy.set(slot, energy);
        counted.set(`${slot}:${account}`, { netWh, deviationWh: deviation, earned });
      }
      meter.last = [importWh, exportWh];
      meter.lastSlot = slot;
    } else if (e.name === "Billed") {
      const [account, slot, deviationWh, earned, amount, shortfall] = e.args as unknown as [string, bigint, bigint, bigint, bigint, bigint];
      // Nothing is billed twice; each bill is of a reading that counted, with the deviation and
      // the scheduled earnings the meters and the awards it covers give.
      expect(billed.has(`${slot}:${account}`), `${where}: ${account} billed twice for slot ${slot}`).to.equal(false);
      const reading = counted.get(`${slot}:${account}`);
      if (reading === undefined) throw new Error(`${where}: ${account} billed for slot ${slot} without a reading of it`);
      expect([deviationWh, earned], `${where}: deviation and scheduled earnings billed to ${account} in slot ${slot}`).to.deep.equal([
        reading.deviationWh,
        reading.earned,
      ]);
      const b = billedPerSlot.get(slot) ?? { amount: 0n, shortfall: 0n, count: 0n, scheduledRevenue: 0n };
      b.amount += amount;
      b.shortfall += shortfall;
      b.count += 1n;
      b.scheduledRevenue += earned;
      billedPerSlot.set(slot, b);
      billedNet.set(account, (billedNet.get(account) ?? 0n) + reading.netWh);
    } else if (e.name === "ParticipantInDebt") {
      stats.debts += 1;
      if (e.args[0] === slack?.address) stats.badDebt = true;
    } else if (e.name === "SlotClosed") {
      stats.closedSlots += 1;
      const [slot, localWh, supplied, absorbed, slackAmount] = e.args as unknown as [bigint, bigint, bigint, bigint, bigint];
      const energy = meterEnergy.get(slot) ?? { demand: 0n, supply: 0n, readings: 0n };
      const paid = schedulePaid.get(slot) ?? 0n;
      if (energy.readings === 0n) {
        // Only a schedule payment nobody metered closes a slot without readings; it all goes to the slack unit.
        expect(paid, `${where}: slot ${slot} closed without readings or schedule payments`).to.be.greaterThan(0n);
        stats.unreadClosedSlots += 1;
      }
      // Energy conservation on deviations, against what the meters counted and the schedules said.
      expect(energy.demand, `${where}: demand = supply + slack supplied - slack absorbed in slot ${slot}`).to.equal(
        energy.supply + supplied - absorbed,
      );
      expect(localWh <= energy.demand && localWh <= energy.supply, `${where}: local energy within D and U`).to.equal(true);
      // Token conservation: schedule payments + buyers' payments - sellers' scheduled and deviation
      // revenue is the slack unit's residual.
      const b = billedPerSlot.get(slot) ?? { amount: 0n, shortfall: 0n, count: 0n, scheduledRevenue: 0n };
      expect(
        paid + b.amount - b.shortfall - b.scheduledRevenue - slackAmount,
        `${where}: schedule payments + bills - shortfalls - scheduled revenue - slack residual in slot ${slot}`,
      ).to.equal(0n);
      expect(b.count, `${where}: every reading of slot ${slot} billed once`).to.equal(energy.readings);
    } else if (e.name === "SchedulePaid") {
      const [slot, payer, amount] = e.args as unknown as [bigint, string, bigint];
      expect(payer, `${where}: schedule paid by the source`).to.equal(sourceAddress);
      schedulePaid.set(slot, (schedulePaid.get(slot) ?? 0n) + amount);
    }
  }

  /**
   * Checks the chain against the model and the identities; `changes` are the deposit changes this
   * step's events explain (none for a refused step), checked against the deposits seen last time.
   */
  async function checkState(where: string, changes = new Map<string, bigint>()): Promise<void> {
    const [balance, badDebt, totalDeposits, openPool, supply] = await Promise.all([
      token.balanceOf(market.settlementAddress),
      settlement.badDebt(),
      settlement.totalDeposits(),
      settlement.openPool(),
      token.totalSupply(),
    ]);
    expect(balance + badDebt, `${where}: balanceOf(settlement) + badDebt == totalDeposits + openPool`).to.equal(totalDeposits + openPool);
    expect([totalDeposits, openPool, badDebt], `${where}: totals`).to.deep.equal([model.totalDeposits, model.openPool, model.badDebt]);
    const balances = await Promise.all(watched.map((w) => token.balanceOf(w)));
    expect(balances.reduce((x, y) => x + y, 0n), `${where}: sum of balances == total supply`).to.equal(supply);
    expect(balances, `${where}: balances`).to.deep.equal(watched.map((w) => model.balance(w)));
    for (const p of [...chosen, slack as Participant]) {
      const s = await settlement.accountState(p.address);
      const m = model.account(p.address);
      expect(
        [s.lastSlot, s.billed, s.importWh, s.exportWh, s.deviationWh, s.earned, s.deposit, s.debt],
        `${where}: account ${p.name}`,
      ).to.deep.equal([m.lastSlot, m.billed, m.importWh, m.exportWh, m.deviationWh, m.earned, m.deposit, m.debt]);
      expect(s.deposit - (seenDeposits.get(p.address) ?? 0n), `${where}: ${p.name}'s deposit moved as the events say`).to.equal(
        changes.get(p.address) ?? 0n,
      );
      seenDeposits.set(p.address, s.deposit);
      const before = observedRegisters.get(p.address);
      if (before !== undefined) {
        expect(s.importWh >= before[0] && s.exportWh >= before[1], `${where}: registers of ${p.name} never decrease`).to.equal(true);
      }
      observedRegisters.set(p.address, [s.importWh, s.exportWh]);
    }
    for (const [slot, m] of model.slots) {
      const s = await settlement.slotState(slot);
      expect(
        [
          s.demandWh,
          s.supplyWh,
          s.localWh,
          s.readings,
          s.billed,
          s.priced,
          s.closed,
          s.price,
          s.feedInPrice,
          s.retailPrice,
          s.pool,
          s.upWh,
          s.downWh,
        ],
        `${where}: slot ${slot}`,
      ).to.deep.equal([
        m.demandWh,
        m.supplyWh,
        m.localWh,
        m.readings,
        m.billed,
        m.priced,
        m.closed,
        m.price,
        m.feedInPrice,
        m.retailPrice,
        m.pool,
        0n, // no intra-day market: no activated flexibility
        0n,
      ]);
    }
  }

  // ---------------------------------------------------------------- funding

  const depositOf = (): bigint => {
    const r = rng.next();
    if (r < 0.1) return 0n;
    if (r < 0.35) return rng.big(10_000n, ONE); // 0.01 to 1 token: debts are likely
    return rng.big(5n * ONE, 60n * ONE);
  };
  for (const p of rng.shuffle([...chosen, slack])) {
    const amount = p === slack ? rng.pick([0n, 2n * ONE, 200n * ONE]) : depositOf();
    if (amount === 0n) continue;
    await step(`deposit ${p.name}`, () => settlement.connect(p.signer).deposit(amount), (m) => m.deposit(p.address, p.address, amount));
  }

  // ---------------------------------------------------------------- random side operations

  async function sideOperation(): Promise<void> {
    const r = rng.next();
    const p = rng.pick(chosen);
    if (r < 0.35) {
      const amount = rng.big(1n, 20n * ONE);
      if (rng.chance(0.5)) {
        await step(`deposit ${p.name}`, () => settlement.connect(p.signer).deposit(amount), (m) => m.deposit(p.address, p.address, amount));
      } else {
        const payer = rng.pick(chosen);
        await step(
          `depositFor ${p.name} by ${payer.name}`,
          () => settlement.connect(payer.signer).depositFor(p.address, amount),
          (m) => m.deposit(p.address, payer.address, amount),
        );
      }
    } else if (r < 0.8) {
      // Anyone may withdraw, the slack unit and accounts without a reading included.
      const w = rng.chance(0.15) ? (slack as Participant) : p;
      const free = model.free(w.address);
      const choice = rng.next();
      const amount = choice < 0.5 ? rng.big(1n, free > 1n ? free : 1n) : choice < 0.75 ? free : free + rng.big(1n, 1_000n);
      await step(`withdraw ${w.name}`, () => settlement.connect(w.signer).withdraw(amount), (m) => m.withdraw(w.address, amount, now + 1n));
    } else if (r < 0.85) {
      // The market pays into an earlier slot: accepted while it is open (a late clearing payment, or a
      // slot nobody read), refused once it is closed (SettlementSlotClosed).
      const slot = rng.pick(slotsSoFar.length > 0 ? slotsSoFar : [firstSlot]);
      const amount = rng.big(1n, ONE / 10n);
      await step(`${p.name} pays the source`, () => token.connect(p.signer).transfer(sourceAddress, amount), (m) =>
        m.tokenTransfer(p.address, sourceAddress, amount),
      );
      await step(`late schedule payment into slot ${slot}`, () => source.pay(slot, amount), (m) => m.paySchedule(slot, amount));
    } else if (r < 0.92) {
      const feedIn = rng.big(10_000n, 100_000n);
      const retail = feedIn + rng.big(0n, 400_000n);
      await step("setPrices", () => settlement.connect(market.admin).setPrices(feedIn, retail), (m) => m.setPrices(feedIn, retail));
    } else {
      // Settle a random, possibly not yet final, slot.
      const slot = rng.pick(slotsSoFar.length > 0 ? slotsSoFar : [firstSlot]);
      const accounts = rng.subset(chosen.map((c) => c.address), 0.6);
      await step(`early settle ${slot}`, () => settlement.connect(rng.pick(relayers)).settle(slot, accounts), (m) => m.settle(slot, accounts, now + 1n));
    }
  }

  // ---------------------------------------------------------------- day-ahead schedules

  /** Splits `total` into `n` positive parts at random. */
  function split(total: bigint, n: number): bigint[] {
    const parts: bigint[] = [];
    let left = total;
    for (let i = n - 1; i > 0; --i) {
      const part = rng.big(1n, left - BigInt(i));
      parts.push(part);
      left -= part;
    }
    parts.push(left);
    return rng.shuffle(parts);
  }

  /**
   * A day-ahead clearing of `slot`, as the market would record it: random buyers and sellers among
   * the participants (any kind may trade; deviations settle what they do not deliver), equal
   * volumes on both sides at one price between the current feed-in and retail prices, and each
   * buyer's cost ceil(award * price / 1000) escrowed with the source (a token transfer) and paid
   * into the slot's pool, in one payment or two.
   */
  async function dayAhead(slot: bigint): Promise<void> {
    const traders = rng.shuffle(chosen);
    const nb = 1 + rng.int(Math.min(3, traders.length - 1));
    const ns = 1 + rng.int(Math.min(3, traders.length - nb));
    const buyers = traders.slice(0, nb);
    const sellers = traders.slice(nb, nb + ns);
    const volume = rng.big(BigInt(Math.max(nb, ns)), rng.chance(0.3) ? 500n : 8_000n);
    const price = rng.big(model.feedInPrice, model.retailPrice);
    const buys = split(volume, nb);
    const sells = split(volume, ns).map((q) => -q);
    const accounts = [...buyers, ...sellers].map((p) => p.address);
    const netWh = [...buys, ...sells];
    await step(`day-ahead schedule of slot ${slot}`, () => source.setSchedules(slot, accounts, netWh, price), (m) => {
      accounts.forEach((account, i) => m.setSchedule(slot, account, netWh[i] as bigint, price));
    });
    accounts.forEach((account, i) => awards.set(`${slot}:${account}`, netWh[i] as bigint));
    awardPrice.set(slot, price);
    stats.scheduledSlots += 1;
    let cost = 0n;
    for (const [i, buyer] of buyers.entries()) {
      const c = ceilDiv((buys[i] as bigint) * price, 1000n);
      cost += c;
      await step(`${buyer.name} escrows its day-ahead cost`, () => token.connect(buyer.signer).transfer(sourceAddress, c), (m) =>
        m.tokenTransfer(buyer.address, sourceAddress, c),
      );
    }
    const first = rng.chance(0.25) ? rng.big(0n, cost) : cost;
    for (const amount of [first, cost - first]) {
      if (amount === 0n && cost !== 0n) continue;
      await step(`schedule payment of slot ${slot}`, () => source.pay(slot, amount), (m) => m.paySchedule(slot, amount));
    }
  }

  // ---------------------------------------------------------------- slots

  const firstSlot = now / market.slotSeconds + 1n;
  const slotCount = 4 + rng.int(4);
  const slotsSoFar: bigint[] = [];
  for (let k = 0; k < slotCount; ++k) {
    const slot = firstSlot + BigInt(k);
    if (rng.chance(0.75)) await dayAhead(slot);
    // Delivery: every meter runs, read or not.
    for (const meter of meters) {
      meter.importWh += rng.chance(0.15) ? 0n : rng.big(0n, meter.p.kind === Kind.Prosumer ? 2_000n : 3_000n);
      if (meter.p.kind === Kind.Prosumer && rng.chance(0.6)) meter.exportWh += rng.big(0n, 5_000n);
    }
    // The reading window of the slot.
    now = now > market.opens(slot) ? now : market.opens(slot);
    // Sometimes nobody reads a slot: a schedule paid into it closes it without readings.
    const readers = rng.chance(0.08) ? [] : meters.filter(() => rng.chance(0.75));
    const signed: SignedReading[] = [];
    for (const meter of readers) signed.push(await market.sign(meter.p, slot, meter.importWh, meter.exportWh));
    const sent: SignedReading[] = [];
    for (const batch of rng.batches(rng.shuffle(signed), 4)) {
      const relayer = rng.pick(relayers);
      const ok = await step(
        `readings of slot ${slot} (${batch.length})`,
        () => market.submitBatch(batch, relayer),
        (m) => {
          m.submitReadings(
            batch.map((s) => s.reading),
            now + 1n,
          );
        },
      );
      if (ok) sent.push(...batch);
      if (rng.chance(0.25) && sent.length > 0) {
        const again = rng.pick(sent);
        await step(`identical resubmission`, () => market.submit(again, rng.pick(relayers)), (m) => {
          const result = m.record(again.reading.account, slot, again.reading.importWh, again.reading.exportWh, now + 1n);
          if (result !== "noop") throw new Error("a resubmission must be a no-op");
        });
      }
      if (rng.chance(0.15)) {
        // A reading the ledger must refuse: a register below the last one, or a conflicting one.
        const meter = rng.pick(meters);
        const last = model.account(meter.p.address);
        if (last.lastSlot !== 0n && last.importWh > 0n) {
          const bad = await market.sign(meter.p, slot, last.importWh - 1n, last.exportWh);
          await step(`refused reading`, () => market.submit(bad), (m) => {
            m.record(meter.p.address, slot, last.importWh - 1n, last.exportWh, now + 1n);
          });
        }
      }
      if (rng.chance(0.3)) await sideOperation();
    }
    slotsSoFar.push(slot);
    // After the deadline: settle random slots for random accounts, in random order.
    const settleFrom = market.deadline(slot) + BigInt(rng.int(60));
    now = now > settleFrom ? now : settleFrom;
    const settles = rng.int(4);
    for (let i = 0; i < settles; ++i) {
      const target = rng.chance(0.6) ? slot : rng.pick(slotsSoFar);
      const accounts = rng.subset([...chosen.map((c) => c.address), slack.address, market.outsider.address], 0.6);
      await step(`settle ${target} (${accounts.length})`, () => settlement.connect(rng.pick(relayers)).settle(target, accounts), (m) =>
        m.settle(target, accounts, now + 1n),
      );
    }
    if (rng.chance(0.5)) await sideOperation();
  }

  // ---------------------------------------------------------------- settle everything left
  const last = slotsSoFar[slotsSoFar.length - 1] as bigint;
  now = now > market.deadline(last) ? now : market.deadline(last);
  for (const slot of rng.shuffle(slotsSoFar)) {
    const accounts = rng.shuffle(chosen.map((c) => c.address));
    await step(`final settle ${slot}`, () => settlement.settle(slot, accounts), (m) => m.settle(slot, accounts, now + 1n));
  }
  for (const [slot, energy] of meterEnergy) {
    expect((await settlement.slotState(slot)).closed, `seed ${seed}: slot ${slot} with ${energy.readings} readings closed`).to.equal(true);
  }
  for (const [slot, paid] of schedulePaid) {
    if (paid > 0n) expect((await settlement.slotState(slot)).closed, `seed ${seed}: slot ${slot} with schedule payments closed`).to.equal(true);
  }
  expect(await settlement.openPool(), `seed ${seed}: no open pool once every slot is closed`).to.equal(0n);
  // Every scheduled sale covered by a counted reading was paid exactly once, with that reading's
  // bill (no award is covered twice, no reading billed twice: checked on the way); so each seller's
  // scheduled earnings add up to exactly its covered sales.
  const coveredSales = new Map<string, bigint>();
  for (const [key, q] of awards) {
    if (q >= 0n) continue;
    const [slotText, account] = key.split(":") as [string, string];
    const by = coveredBy.get(key);
    if (by === undefined) continue;
    expect(billed.has(`${by}:${account}`), `seed ${seed}: the reading of slot ${by} covering ${account}'s sale in slot ${slotText} billed`).to.equal(true);
    coveredSales.set(account, (coveredSales.get(account) ?? 0n) + scheduledRevenue(BigInt(slotText), account));
  }
  const paidSales = new Map<string, bigint>();
  for (const [key, earned] of billed) {
    const account = key.split(":")[1] as string;
    paidSales.set(account, (paidSales.get(account) ?? 0n) + earned);
  }
  for (const meter of meters) {
    const account = meter.p.address;
    expect(paidSales.get(account) ?? 0n, `seed ${seed}: scheduled earnings paid to ${meter.p.name}`).to.equal(coveredSales.get(account) ?? 0n);
  }
  // No energy lost from billing: each participant was billed exactly what its meter counted since its baseline.
  for (const meter of meters) {
    if (meter.baseline === undefined || meter.last === undefined) continue;
    const counted = meter.last[0] - meter.baseline[0] - (meter.last[1] - meter.baseline[1]);
    expect(billedNet.get(meter.p.address) ?? 0n, `seed ${seed}: energy billed to ${meter.p.name}`).to.equal(counted);
  }
  return stats;
}
