/**
 * The master agent against a real `hardhat node` (Market module deployed by Ignition), its
 * real HTTP inbox and JSON state files. Readings are signed with the registered meter keys
 * and posted to the inbox over HTTP, as meter agents post them; "self-submitted" readings go
 * on chain with the meter key, as an agent that the master did not reach submits them.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { expect } from "chai";
import { HDNodeWallet, Wallet, type JsonRpcProvider } from "ethers";
import { SimClock, slotAt, slotStartMs } from "../../agents/clock.js";
import { openProvider } from "../../agents/chain/market.js";
import { signReading, toJson, type SignedReading } from "../../agents/chain/readings.js";
import { ParticipantRegistry__factory, Settlement__factory } from "../../agents/chain/types/index.js";
import { MasterAgent, type MasterState, type SlotReport } from "../../agents/master/masterAgent.js";
import { ReadingInbox } from "../../agents/master/readingInbox.js";
import type { Logger } from "../../agents/log.js";
import { JsonStore } from "../../agents/meter-agent/store.js";
import {
  billedEvents,
  expectEscrowIdentity,
  recordedReadings,
  setChainTime,
  startTestMarket,
  type TestMarket,
  type TestParticipant,
} from "../support/localMarket.js";
import { LogCollector } from "../support/logs.js";
import { TcpProxy } from "../support/tcpProxy.js";

describe("master agent (real node, HTTP inbox, state file)", function () {
  this.timeout(120_000);

  let m: TestMarket;
  let p: TestParticipant[];
  let dir: string;
  const cleanups: Array<() => Promise<void> | void> = [];
  /** Cumulative registers each participant's meter has shown so far. */
  const registers = new Map<string, { importWh: bigint; exportWh: bigint }>();

  before(async function () {
    this.timeout(300_000);
    dir = mkdtempSync(path.join(tmpdir(), "master-test-"));
    m = await startTestMarket();
    p = await m.addParticipants([
      { name: "A", kind: "consumer", accountIndex: 1 },
      { name: "B", kind: "prosumer", accountIndex: 2 },
      { name: "C", kind: "consumer", accountIndex: 3 },
      { name: "D", kind: "consumer", accountIndex: 4 },
      { name: "E", kind: "prosumer", accountIndex: 5 },
      { name: "F", kind: "consumer", accountIndex: 6 },
      { name: "G", kind: "consumer", accountIndex: 7 },
      { name: "H", kind: "prosumer", accountIndex: 8 },
      { name: "I", kind: "consumer", accountIndex: 9 },
      { name: "J", kind: "consumer", accountIndex: 10 },
      { name: "K", kind: "prosumer", accountIndex: 11 },
      { name: "slack", kind: "slackUnit", accountIndex: 19, mint: "1000", deposit: "500" },
    ]);
  });

  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) {
      try {
        await cleanup();
      } catch {
        // keep cleaning up
      }
    }
  });

  after(async () => {
    await m?.stop();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  const who = (name: string): TestParticipant => p.find((x) => x.name === name)!;
  const endMs = (slot: number) => slotStartMs(slot + 1, m.slotSeconds);

  async function freshStart(): Promise<{ first: number; clock: SimClock }> {
    const first = slotAt(await m.chainTimeMs(), m.slotSeconds) + 2;
    const clock = new SimClock(slotStartMs(first, m.slotSeconds) + 60_000);
    await setChainTime(m.provider, clock.now());
    return { first, clock };
  }

  async function moveTo(clock: SimClock, ms: number): Promise<void> {
    clock.set(ms);
    await setChainTime(m.provider, ms);
  }

  /** The meter of `name` moves on by a slot (consumers import, prosumers export more than they import) and signs. */
  async function nextReading(name: string, slot: number): Promise<SignedReading> {
    const x = who(name);
    const before = registers.get(x.account) ?? { importWh: 10_000n, exportWh: 5_000n };
    const step = BigInt(100 + 37 * (x.name.charCodeAt(0) % 7) + (slot % 11));
    const now = x.kind === "prosumer" ? { importWh: before.importWh + 20n, exportWh: before.exportWh + 2n * step } : { importWh: before.importWh + step, exportWh: before.exportWh };
    registers.set(x.account, now);
    return signReading(x.meterKey as unknown as Wallet, m.domain(), { account: x.account, slot, ...now });
  }

  async function post(inboxUrl: string, signed: SignedReading): Promise<void> {
    const res = await fetch(new URL("/readings", inboxUrl), { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(toJson(signed)) });
    expect(res.status, await res.text()).to.equal(202);
  }

  /** Readings of `names` for `slot`, posted to the inbox as meter agents post them. */
  async function agentsPost(inboxUrl: string, slot: number, names: string[]): Promise<void> {
    for (const name of names) await post(inboxUrl, await nextReading(name, slot));
  }

  /** Readings submitted by the agents themselves, with their meter keys (the master is away). */
  async function agentsSubmit(slot: number, names: string[]): Promise<void> {
    for (const name of names) {
      const s = await nextReading(name, slot);
      const own = Settlement__factory.connect(m.settlementAddress, who(name).meterKey);
      await (await own.submitReading(s.reading, s.r, s.vs)).wait();
    }
  }

  async function startInbox(logs?: LogCollector): Promise<{ inbox: ReadingInbox; url: string }> {
    const inbox = new ReadingInbox(logs?.logger ?? (() => {}));
    const url = await inbox.listen();
    cleanups.push(() => inbox.close());
    return { inbox, url };
  }

  function newMaster(
    inbox: ReadingInbox,
    clock: SimClock,
    store: JsonStore<MasterState>,
    options: { provider?: JsonRpcProvider; logger?: Logger; readingBatchSize?: number } = {},
  ): MasterAgent {
    const provider = options.provider ?? m.provider;
    const key = new Wallet(m.admin.privateKey, provider);
    return new MasterAgent({
      settlement: Settlement__factory.connect(m.settlementAddress, key),
      registry: ParticipantRegistry__factory.connect(m.market.addresses.participantRegistry, provider),
      inbox,
      store,
      clock,
      logger: options.logger ?? (() => {}),
      collectTimeoutMs: 300,
      readingBatchSize: options.readingBatchSize,
    });
  }

  /** Billed events per "account:slot" for `slots`. */
  async function billCounts(slots: number[]): Promise<Map<string, number>> {
    const counts = new Map<string, number>();
    for (const b of await billedEvents(m.settlement)) {
      if (!slots.includes(b.slot)) continue;
      const key = `${b.account}:${b.slot}`;
      counts.set(key, (counts.get(key) ?? 0) + 1);
    }
    return counts;
  }

  /** Energy and token conservation of a closed slot's report. */
  function expectBalanced(r: SlotReport): void {
    expect(r.closed, `slot ${r.slot} closed`).to.equal(true);
    expect(r.demandWh, "demand == supply + slack supplied - slack absorbed").to.equal(r.supplyWh + r.slackSuppliedWh - r.slackAbsorbedWh);
    const net = r.bills.reduce((s, b) => s + b.netWh, 0n);
    expect(net, "sum of billed net energy == demand - supply").to.equal(r.demandWh - r.supplyWh);
    const collected = r.bills.reduce((s, b) => s + b.amount - b.shortfall, 0n);
    expect(collected, "what buyers paid minus what sellers got == the slack unit's residual").to.equal(r.slackAmount);
  }

  it("handleSlotEnd relays the inbox's readings in batches and settles the previous slot", async () => {
    const { first: P, clock } = await freshStart();
    const { inbox, url } = await startInbox();
    const logs = new LogCollector();
    const master = newMaster(inbox, clock, new JsonStore(path.join(dir, "relay.json")), { logger: logs.logger, readingBatchSize: 2 });
    await master.init();
    const nonce0 = await m.provider.getTransactionCount(m.admin.address);

    await moveTo(clock, endMs(P) + 1_000);
    await agentsPost(url, P, ["A", "B", "C"]);
    const before = await master.handleSlotEnd(P);
    expect(before).to.include({ slot: P - 1, readings: 0 });
    const baselines = (await recordedReadings(m.settlement)).filter((r) => r.slot === P);
    expect(baselines.map((r) => r.account)).to.have.members(["A", "B", "C"].map((n) => who(n).account));
    const relayTxs = [...new Set(baselines.map((r) => r.txHash))];
    expect(relayTxs, "3 readings in batches of 2").to.have.length(2);
    for (const hash of relayTxs) expect((await m.provider.getTransaction(hash))!.from).to.equal(m.admin.address);
    const requested = await m.settlement.queryFilter(m.settlement.filters.ReadingsRequested(P));
    expect(requested).to.have.length(1);

    await moveTo(clock, endMs(P + 1) + 1_000);
    await agentsPost(url, P + 1, ["A", "B", "C"]);
    const baselineReport = await master.handleSlotEnd(P + 1);
    expect(baselineReport, "baselines bill nothing").to.include({ slot: P, readings: 0, closed: false });
    expect(baselineReport!.bills).to.deep.equal([]);

    // C's agent falls silent: its reading of P+1 is billed by settle(), A's and B's by their next readings.
    await moveTo(clock, endMs(P + 2) + 1_000);
    await agentsPost(url, P + 2, ["A", "B"]);
    const report = (await master.handleSlotEnd(P + 2))!;
    expect(report.slot).to.equal(P + 1);
    expect(report.readings).to.equal(3);
    expect(report.bills.map((b) => b.account)).to.have.members(["A", "B", "C"].map((n) => who(n).account));
    expectBalanced(report);
    expect(report.supplyWh > 0n && report.demandWh > 0n, "a prosumer sold locally").to.equal(true);
    // Buyers' local shares are rounded down, so local energy is min(demand, supply) less at most 1 Wh per buyer.
    const local = report.supplyWh < report.demandWh ? report.supplyWh : report.demandWh;
    const buyers = BigInt(report.bills.filter((b) => b.netWh > 0n).length);
    expect(report.localWh).to.be.at.most(local).and.at.least(local - buyers);

    const bills = (await billedEvents(m.settlement)).filter((b) => b.slot === P + 1);
    const byAccount = new Map(bills.map((b) => [b.account, b]));
    const viaSettle = await m.provider.getTransaction(byAccount.get(who("C").account)!.txHash);
    expect(m.settlement.interface.parseTransaction(viaSettle!)!.name, "C billed by settle()").to.equal("settle");
    const viaRelay = await m.provider.getTransaction(byAccount.get(who("A").account)!.txHash);
    expect(m.settlement.interface.parseTransaction(viaRelay!)!.name, "A billed by the relay of its next reading").to.equal("submitReadings");
    expect((await m.settlement.slotState(P + 1)).closed).to.equal(true);
    expect(master.lastHandledSlot).to.equal(P + 2);
    expect((await new JsonStore<MasterState>(path.join(dir, "relay.json")).load())!.lastHandledSlot).to.equal(P + 2);

    // Handling a slot again sends nothing.
    const nonce = await m.provider.getTransactionCount(m.admin.address);
    expect(await master.handleSlotEnd(P + 2)).to.equal(undefined);
    expect(await m.provider.getTransactionCount(m.admin.address)).to.equal(nonce);
    expect(nonce - nonce0, "3 requests, 2+2+1 relays, 1 settle").to.equal(3 + 5 + 1);
    await expectEscrowIdentity(m.token, m.settlement);
  });

  it("a restarted master catches up on skipped slots: settles the missed ones, nothing twice", async () => {
    const { first: Q, clock } = await freshStart();
    const { inbox, url } = await startInbox();
    const file = path.join(dir, "catch-up.json");
    const master1 = newMaster(inbox, clock, new JsonStore(file));
    await master1.init();
    await moveTo(clock, endMs(Q) + 1_000);
    await agentsPost(url, Q, ["D", "E", "F"]);
    await master1.handleSlotEnd(Q);
    await moveTo(clock, endMs(Q + 1) + 1_000);
    await agentsPost(url, Q + 1, ["D", "E", "F"]);
    await master1.handleSlotEnd(Q + 1);
    // master1 is gone from here on. The agents submit on their own; F's stops after Q+2.
    await moveTo(clock, endMs(Q + 2) + 150_000);
    await agentsSubmit(Q + 2, ["D", "E", "F"]);
    await moveTo(clock, endMs(Q + 3) + 150_000);
    await agentsSubmit(Q + 3, ["D", "E"]);
    await moveTo(clock, endMs(Q + 4) + 150_000);
    await agentsSubmit(Q + 4, ["D", "E"]);
    expect((await m.settlement.slotState(Q + 2)).closed, "F's reading of Q+2 waits to be billed").to.equal(false);
    expect((await m.settlement.slotState(Q + 4)).closed).to.equal(false);

    // The master comes back early in Q+6: Q+5's window is open, its readings are in the inbox.
    await moveTo(clock, endMs(Q + 5) + 1_000);
    await agentsPost(url, Q + 5, ["D", "E"]);
    const master2 = newMaster(inbox, clock, new JsonStore(file));
    await master2.init();
    expect(master2.lastHandledSlot, "from the state file").to.equal(Q + 1);
    const reports = await master2.catchUp();
    expect(reports.map((r) => r.slot)).to.deep.equal([Q + 1, Q + 2, Q + 3, Q + 4]);
    for (const r of reports) expectBalanced(r);
    const fBill = (await billedEvents(m.settlement, who("F").account)).find((b) => b.slot === Q + 2)!;
    expect(m.settlement.interface.parseTransaction((await m.provider.getTransaction(fBill.txHash))!)!.name).to.equal("settle");
    expect((await recordedReadings(m.settlement)).filter((r) => r.slot === Q + 5), "Q+5 relayed").to.have.length(2);

    const expected = new Map<string, number>();
    for (const [slot, names] of [[Q + 1, "DEF"], [Q + 2, "DEF"], [Q + 3, "DE"], [Q + 4, "DE"]] as const) {
      for (const n of names) expected.set(`${who(n).account}:${slot}`, 1);
    }
    expect(await billCounts([Q, Q + 1, Q + 2, Q + 3, Q + 4]), "every reading billed exactly once").to.deep.equal(expected);
    for (const slot of [Q + 1, Q + 2, Q + 3, Q + 4]) expect((await m.settlement.slotState(slot)).closed, `slot ${slot}`).to.equal(true);

    // Again, and from a third instance: nothing is sent and nothing billed twice.
    const nonce = await m.provider.getTransactionCount(m.admin.address);
    expect(await master2.catchUp()).to.deep.equal([]);
    const master3 = newMaster(inbox, clock, new JsonStore(file));
    await master3.init();
    expect(await master3.catchUp()).to.deep.equal([]);
    expect(await master3.handleSlotEnd(Q + 3)).to.equal(undefined);
    for (const slot of [Q + 1, Q + 2, Q + 3, Q + 4]) expect((await master3.settleSlot(slot)).closed).to.equal(true);
    expect(await m.provider.getTransactionCount(m.admin.address)).to.equal(nonce);
    expect(await billCounts([Q, Q + 1, Q + 2, Q + 3, Q + 4])).to.deep.equal(expected);
    await expectEscrowIdentity(m.token, m.settlement);
  });

  it("relays the valid readings of a batch that holds one with a bad signature", async () => {
    const { first: S, clock } = await freshStart();
    const logs = new LogCollector();
    const { inbox, url } = await startInbox(logs);
    const master = newMaster(inbox, clock, new JsonStore(path.join(dir, "bad-signature.json")), { logger: logs.logger });
    await master.init();
    await moveTo(clock, endMs(S) + 1_000);

    // The inbox takes only well-formed readings.
    expect((await fetch(new URL("/health", url))).status).to.equal(200);
    const malformed = await fetch(new URL("/readings", url), { method: "POST", body: JSON.stringify({ reading: { account: "0x12", slot: S } }) });
    expect(malformed.status).to.equal(400);

    await agentsPost(url, S, ["G", "H"]);
    const forger = HDNodeWallet.createRandom();
    const i = who("I");
    const forged = await signReading(forger as unknown as Wallet, m.domain(), { account: i.account, slot: S, importWh: 1_000n, exportWh: 0n });
    await post(url, forged);
    expect(inbox.count(S)).to.equal(3);

    await master.handleSlotEnd(S);
    const recorded = (await recordedReadings(m.settlement)).filter((r) => r.slot === S);
    expect(recorded.map((r) => r.account)).to.have.members([who("G").account, who("H").account]);
    expect(new Set(recorded.map((r) => r.txHash)).size, "one relay transaction").to.equal(1);
    expect((await m.settlement.lastReading(i.account))[0], "the forged reading is not on chain").to.equal(0n);
    const refused = logs.find("reading refused", { account: i.account, slot: S });
    expect(refused, logs.dump()).to.have.length(1);
    expect(refused[0]!.error).to.match(/^ReadingBadSignature\(/).and.include(forger.address);
    expect(logs.find("relay failed; agents will submit alone")).to.have.length(0);
  });

  it("a master whose node goes away between relaying and settling settles that slot once restarted", async () => {
    const { first: X, clock } = await freshStart();
    const { inbox, url } = await startInbox();
    const file = path.join(dir, "crash.json");
    const proxy = await TcpProxy.start({ port: m.node.port });
    cleanups.push(() => proxy.down());
    const provider = await openProvider(proxy.url, { pollingIntervalMs: 50 });
    cleanups.push(() => provider.destroy());
    // The node becomes unreachable for the master right after it relayed the readings of X+2.
    const logs = new LogCollector();
    const logger: Logger = (r) => {
      logs.logger(r);
      if (r.msg === "readings relayed" && r.slot === X + 2) void proxy.down();
    };
    const master1 = newMaster(inbox, clock, new JsonStore(file), { provider, logger });
    await master1.init();

    await moveTo(clock, endMs(X) + 1_000);
    await agentsPost(url, X, ["J", "K"]);
    await master1.handleSlotEnd(X);
    await moveTo(clock, endMs(X + 1) + 1_000);
    await agentsPost(url, X + 1, ["J", "K"]);
    await master1.handleSlotEnd(X + 1);
    // K's agent dies for good: only settle() can bill its reading of X+1.
    await moveTo(clock, endMs(X + 2) + 1_000);
    await agentsPost(url, X + 2, ["J"]);
    let failed: unknown;
    await master1.handleSlotEnd(X + 2).catch((e: unknown) => (failed = e));
    expect(failed, "the cycle failed with the node away").to.not.equal(undefined);
    expect(logs.find("readings relayed", { slot: X + 2 }), "it failed after relaying").to.have.length(1);
    expect((await m.settlement.slotState(X + 1)).closed).to.equal(false);

    // Restarted with the node back, in the next slot.
    await proxy.up();
    await moveTo(clock, endMs(X + 3) + 1_000);
    await agentsPost(url, X + 3, ["J"]);
    const master2 = newMaster(inbox, clock, new JsonStore(file), { provider });
    await master2.init();
    await master2.catchUp();
    const state = await m.settlement.accountState(who("K").account);
    expect({ lastSlot: Number(state.lastSlot), billed: state.billed }, "K's last reading billed").to.deep.equal({ lastSlot: X + 1, billed: true });
    expect((await m.settlement.slotState(X + 1)).closed, "slot X+1 settled after the restart").to.equal(true);
    expect((await m.settlement.slotState(X + 2)).closed).to.equal(true);
    const expected = new Map([
      [`${who("J").account}:${X + 1}`, 1],
      [`${who("K").account}:${X + 1}`, 1],
      [`${who("J").account}:${X + 2}`, 1],
    ]);
    expect(await billCounts([X, X + 1, X + 2])).to.deep.equal(expected);
    await expectEscrowIdentity(m.token, m.settlement);
  });
});
