import type { HardhatEthersSigner } from "@nomicfoundation/hardhat-ethers/types";
import { expect } from "chai";
import type { ContractTransactionResponse, LogDescription } from "ethers";
import { Kind, ONE, type Market, type Participant } from "./market.js";
import { ModelRevert, SettlementModel, type ModelEvent } from "./model.js";
import { Rng } from "./random.js";
import type { SignedReading } from "./readings.js";

/**
 * One random market scenario, driven step by step against the chain and the reference model.
 *
 * Random participants (consumers and prosumers) with random deposits, meters that run every slot
 * whether or not a reading is sent (missed readings), readings in random batches from random
 * relayers with identical resubmissions and refused ones mixed in, deposits, withdrawals and
 * price changes, and settle calls for random slots and accounts in random order. After every step:
 * the escrow identity, the token supply, registers that never go down, and every account, slot,
 * total, balance and event equal to the model's. After every closed slot: energy conservation
 * (demand = supply + slack supplied - slack absorbed, from the meters themselves) and token
 * conservation (what buyers paid minus what sellers got is the slack unit's residual). At the end,
 * every slot with readings is closed and every participant was billed exactly the energy its
 * meter counted after its baseline.
 */

export interface ScenarioStats {
  steps: number;
  readings: number;
  refused: number;
  closedSlots: number;
  debts: number;
  badDebt: boolean;
}

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
]);

interface Meter {
  p: Participant;
  importWh: bigint;
  exportWh: bigint;
  /** Registers of the baseline reading (the first one accepted). */
  baseline?: [bigint, bigint];
  /** Registers of the last accepted reading. */
  last?: [bigint, bigint];
}

function canonical(events: ModelEvent[]): string[] {
  return events
    .map((e) => JSON.stringify([e.name, ...e.args.map((x) => (typeof x === "bigint" ? x.toString() : x))]))
    .sort();
}

export async function runScenario(market: Market, seed: number): Promise<ScenarioStats> {
  const rng = new Rng(seed);
  const { settlement, token } = market;
  const all = [...market.participants.values()];
  const slack = all.find((p) => p.kind === Kind.SlackUnit);
  if (slack === undefined) throw new Error("the scenario market needs a slack unit");
  const pool = all.filter((p) => p !== slack);
  const chosen = rng.shuffle(pool).slice(0, 2 + rng.int(pool.length - 1));
  const meters = chosen.map<Meter>((p) => ({
    p,
    importWh: rng.big(0n, 1_000_000n),
    exportWh: p.kind === Kind.Prosumer ? rng.big(0n, 100_000n) : 0n,
  }));
  const stats: ScenarioStats = { steps: 0, readings: 0, refused: 0, closedSlots: 0, debts: 0, badDebt: false };

  // Everyone who can hold tokens: the supply must always be in these wallets and the escrow.
  const watched = [market.settlementAddress, market.admin.address, market.relayer.address, market.outsider.address, ...all.map((p) => p.address)];
  let model = new SettlementModel(
    market.settlementAddress,
    slack.address,
    new Set(all.map((p) => p.address)),
    market.slotSeconds,
    market.readingWindow,
    await settlement.feedInPrice(),
    await settlement.retailPrice(),
  );
  for (const address of watched) model.balances.set(address, await token.balanceOf(address));
  for (const p of all) {
    const s = await settlement.accountState(p.address);
    expect(s.deposit, "scenario starts without deposits").to.equal(0n);
  }

  let now = BigInt(await market.helpers.time.latest());
  const observedRegisters = new Map<string, [bigint, bigint]>();
  /** Energy per slot as the test's own meters attribute it: sum of positive and of negative nets. */
  const meterEnergy = new Map<bigint, { demand: bigint; supply: bigint; readings: bigint }>();
  const billedPerSlot = new Map<bigint, { amount: bigint; shortfall: bigint; count: bigint }>();
  const billedNet = new Map<string, bigint>();

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
    for (const log of receipt.logs) {
      if (log.address !== market.settlementAddress) continue;
      const parsed = settlement.interface.parseLog(log);
      if (parsed !== null) events.push(parsed);
    }
    const chainEvents = events.filter((e) => MODEL_EVENTS.has(e.name)).map((e) => ({ name: e.name, args: [...e.args] as ModelEvent["args"] }));
    expect(canonical(chainEvents), `${where}: events`).to.deep.equal(canonical(next.events));
    model = next;
    for (const e of events) onEvent(e, where);
    await checkState(where);
    return true;
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
        const energy = meterEnergy.get(slot) ?? { demand: 0n, supply: 0n, readings: 0n };
        const net = importDelta - exportDelta;
        if (net > 0n) energy.demand += net;
        else energy.supply -= net;
        energy.readings += 1n;
        meterEnergy.set(slot, energy);
      }
      meter.last = [importWh, exportWh];
    } else if (e.name === "Billed") {
      const [account, slot, netWh, amount, shortfall] = e.args as unknown as [string, bigint, bigint, bigint, bigint];
      const b = billedPerSlot.get(slot) ?? { amount: 0n, shortfall: 0n, count: 0n };
      b.amount += amount;
      b.shortfall += shortfall;
      b.count += 1n;
      billedPerSlot.set(slot, b);
      billedNet.set(account, (billedNet.get(account) ?? 0n) + netWh);
    } else if (e.name === "ParticipantInDebt") {
      stats.debts += 1;
      if (e.args[0] === slack?.address) stats.badDebt = true;
    } else if (e.name === "SlotClosed") {
      stats.closedSlots += 1;
      const [slot, localWh, supplied, absorbed, slackAmount] = e.args as unknown as [bigint, bigint, bigint, bigint, bigint];
      const energy = meterEnergy.get(slot);
      if (energy === undefined) throw new Error(`${where}: slot ${slot} closed without readings`);
      // Energy conservation, against what the meters counted.
      expect(energy.demand, `${where}: demand = supply + slack supplied - slack absorbed in slot ${slot}`).to.equal(
        energy.supply + supplied - absorbed,
      );
      expect(localWh <= energy.demand && localWh <= energy.supply, `${where}: local energy within D and U`).to.equal(true);
      // Token conservation: buyers' payments minus sellers' revenues is the slack unit's residual.
      const b = billedPerSlot.get(slot);
      if (b === undefined) throw new Error(`${where}: slot ${slot} closed without bills`);
      expect(b.amount - b.shortfall - slackAmount, `${where}: sum of bills - shortfalls - slack residual in slot ${slot}`).to.equal(0n);
      expect(b.count, `${where}: every reading of slot ${slot} billed once`).to.equal(energy.readings);
    }
  }

  async function checkState(where: string): Promise<void> {
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
        [s.lastSlot, s.billed, s.importWh, s.exportWh, s.slotImportWh, s.slotExportWh, s.deposit, s.debt],
        `${where}: account ${p.name}`,
      ).to.deep.equal([m.lastSlot, m.billed, m.importWh, m.exportWh, m.slotImportWh, m.slotExportWh, m.deposit, m.debt]);
      const before = observedRegisters.get(p.address);
      if (before !== undefined) {
        expect(s.importWh >= before[0] && s.exportWh >= before[1], `${where}: registers of ${p.name} never decrease`).to.equal(true);
      }
      observedRegisters.set(p.address, [s.importWh, s.exportWh]);
    }
    for (const [slot, m] of model.slots) {
      const s = await settlement.slotState(slot);
      expect(
        [s.demandWh, s.supplyWh, s.localWh, s.readings, s.billed, s.priced, s.closed, s.price, s.feedInPrice, s.retailPrice, s.pool],
        `${where}: slot ${slot}`,
      ).to.deep.equal([m.demandWh, m.supplyWh, m.localWh, m.readings, m.billed, m.priced, m.closed, m.price, m.feedInPrice, m.retailPrice, m.pool]);
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
    } else if (r < 0.9) {
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

  // ---------------------------------------------------------------- slots

  const firstSlot = now / market.slotSeconds + 1n;
  const slotCount = 4 + rng.int(4);
  const slotsSoFar: bigint[] = [];
  for (let k = 0; k < slotCount; ++k) {
    const slot = firstSlot + BigInt(k);
    // Delivery: every meter runs, read or not.
    for (const meter of meters) {
      meter.importWh += rng.chance(0.15) ? 0n : rng.big(0n, meter.p.kind === Kind.Prosumer ? 2_000n : 3_000n);
      if (meter.p.kind === Kind.Prosumer && rng.chance(0.6)) meter.exportWh += rng.big(0n, 5_000n);
    }
    // The reading window of the slot.
    now = now > market.opens(slot) ? now : market.opens(slot);
    const readers = meters.filter(() => rng.chance(0.75));
    const signed: SignedReading[] = [];
    for (const meter of readers) signed.push(await market.sign(meter.p, slot, meter.importWh, meter.exportWh));
    const sent: SignedReading[] = [];
    for (const batch of rng.batches(rng.shuffle(signed), 4)) {
      const relayer = rng.pick(relayers);
      const ok = await step(
        `readings of slot ${slot} (${batch.length})`,
        () => market.submitBatch(batch, relayer),
        (m) => {
          for (const s of batch) m.record(s.reading.account, slot, s.reading.importWh, s.reading.exportWh, now + 1n);
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
  expect(await settlement.openPool(), `seed ${seed}: no open pool once every slot is closed`).to.equal(0n);
  // No energy lost from billing: each participant was billed exactly what its meter counted since its baseline.
  for (const meter of meters) {
    if (meter.baseline === undefined || meter.last === undefined) continue;
    const counted = meter.last[0] - meter.baseline[0] - (meter.last[1] - meter.baseline[1]);
    expect(billedNet.get(meter.p.address) ?? 0n, `seed ${seed}: energy billed to ${meter.p.name}`).to.equal(counted);
  }
  return stats;
}
