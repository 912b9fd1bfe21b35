/**
 * The meter agent in-process against real parts: a `hardhat node` with the Market module
 * deployed by Ignition, a Modbus TCP meter server per household, the master's HTTP inbox and
 * JSON state files on disk. A SimClock drives the agent and the meter; the chain's clock is
 * moved with it.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { expect } from "chai";
import { HDNodeWallet, Signature, TypedDataEncoder, recoverAddress, verifyTypedData, type JsonRpcProvider, type Wallet } from "ethers";
import { SimClock, slotAt, slotStartMs } from "../../agents/clock.js";
import { findFreePort } from "../../agents/chain/localNode.js";
import { openProvider } from "../../agents/chain/market.js";
import { READING_TYPES, fromJson, signReading, toJson } from "../../agents/chain/readings.js";
import { Settlement__factory } from "../../agents/chain/types/index.js";
import { MasterAgent, type MasterState } from "../../agents/master/masterAgent.js";
import { ReadingInbox } from "../../agents/master/readingInbox.js";
import { MeterAgent, type MeterAgentState } from "../../agents/meter-agent/meterAgent.js";
import { JsonStore } from "../../agents/meter-agent/store.js";
import { ModbusMeter } from "../../agents/meters/modbusMeter.js";
import { SDM630 } from "../../agents/meters/registerMaps.js";
import { MeterServer } from "../../agents/simulator/meterServer.js";
import { householdSpec } from "../../agents/simulator/profiles.js";
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

const SELF_SUBMIT_AFTER_MS = 120_000;
const CAPTURE_LAG_MS = 60_000;

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface AgentRig {
  agent: MeterAgent;
  server: MeterServer;
  meter: ModbusMeter;
  store: JsonStore<MeterAgentState>;
  logs: LogCollector;
  /** Registers the meter shows now, read by a second Modbus client. */
  registersNow(): Promise<{ importWh: bigint; exportWh: bigint }>;
}

describe("meter agent (in-process, real node, Modbus TCP meter, files)", function () {
  this.timeout(120_000);

  let m: TestMarket;
  let participants: TestParticipant[];
  let dir: string;
  const cleanups: Array<() => Promise<void> | void> = [];

  before(async function () {
    this.timeout(300_000);
    dir = mkdtempSync(path.join(tmpdir(), "meter-agent-test-"));
    m = await startTestMarket();
    participants = await m.addParticipants([
      ...Array.from({ length: 8 }, (_, i) => ({ name: `house-${i + 1}`, kind: "consumer" as const, accountIndex: i + 1 })),
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

  const S = () => m.slotSeconds;
  const endMs = (slot: number) => slotStartMs(slot + 1, S());
  const deadlineMs = (slot: number) => endMs(slot) + m.readingWindow * 1000;

  /** A slot that starts after the chain's clock, and a SimClock a minute into it. */
  async function freshStart(): Promise<{ first: number; clock: SimClock }> {
    const first = slotAt(await m.chainTimeMs(), S()) + 2;
    const clock = new SimClock(slotStartMs(first, S()) + 60_000);
    await setChainTime(m.provider, clock.now());
    return { first, clock };
  }

  async function moveTo(clock: SimClock, ms: number): Promise<void> {
    clock.set(ms);
    await setChainTime(m.provider, ms);
  }

  async function rig(
    p: TestParticipant,
    clock: SimClock,
    options: { masterUrl?: string; provider?: JsonRpcProvider; seed?: number } = {},
  ): Promise<AgentRig> {
    const server = await MeterServer.start({ household: householdSpec("consumer", options.seed ?? 11, 3), clock });
    cleanups.push(() => server.close());
    const connection = { kind: "tcp" as const, host: server.host, port: server.port, unitId: 1 };
    const fast = { requestTimeoutMs: 500, connectTimeoutMs: 500, maxWaitMs: 1_500, backoff: { initialMs: 50, maxMs: 200 } };
    const meter = new ModbusMeter({ connection, map: SDM630, clock, ...fast });
    cleanups.push(() => meter.close());
    const probe = new ModbusMeter({ connection, map: SDM630, clock, ...fast });
    cleanups.push(() => probe.close());
    const provider = options.provider ?? m.provider;
    const key = p.meterKey.connect(provider);
    const store = new JsonStore<MeterAgentState>(path.join(dir, `${p.name}-${Date.now()}.json`));
    const logs = new LogCollector();
    const agent = new MeterAgent({
      account: p.account,
      meterKey: key as unknown as Wallet,
      settlement: Settlement__factory.connect(m.settlementAddress, key),
      meter,
      store,
      clock,
      logger: logs.logger,
      masterUrl: options.masterUrl,
      selfSubmitAfterMs: SELF_SUBMIT_AFTER_MS,
      captureLagMs: CAPTURE_LAG_MS,
    });
    await agent.init();
    const registersNow = async () => {
      const r = await probe.read();
      return { importWh: r.importWh, exportWh: r.exportWh };
    };
    return { agent, server, meter, store, logs, registersNow };
  }

  async function lastOnChain(account: string): Promise<{ slot: number; importWh: bigint; exportWh: bigint }> {
    const [slot, importWh, exportWh] = await m.settlement.lastReading(account);
    return { slot: Number(slot), importWh, exportWh };
  }

  /**
   * Settles the account's last slot after its deadline, then checks that nothing was lost:
   * the net energy billed over the slots equals the register difference since the baseline,
   * and each slot after the baseline is billed exactly once.
   */
  async function expectEnergyConserved(clock: SimClock, account: string, expectedSlots: number[]): Promise<void> {
    const last = await lastOnChain(account);
    await moveTo(clock, deadlineMs(last.slot) + 2_000);
    await (await m.settlement.settle(last.slot, [account])).wait();
    const readings = await recordedReadings(m.settlement, account);
    expect(readings.map((r) => r.slot)).to.deep.equal(expectedSlots);
    const bills = await billedEvents(m.settlement, account);
    expect(bills.map((b) => b.slot), "each slot after the baseline billed once").to.deep.equal(expectedSlots.slice(1));
    const first = readings[0]!;
    const final = readings[readings.length - 1]!;
    const billedNet = bills.reduce((sum, b) => sum + b.netWh, 0n);
    expect(billedNet, "billed net energy == register difference").to.equal(final.importWh - final.exportWh - (first.importWh - first.exportWh));
    for (let i = 1; i < readings.length; i++) {
      expect(readings[i]!.importDeltaWh).to.equal(readings[i]!.importWh - readings[i - 1]!.importWh);
    }
    await expectEscrowIdentity(m.token, m.settlement);
  }

  it("reads and signs the slot's closing reading (recovering to the meter key) and hands it to the master, who relays it", async () => {
    const p = participants[0]!;
    const { first, clock } = await freshStart();
    const inbox = new ReadingInbox(() => {});
    const inboxUrl = await inbox.listen();
    cleanups.push(() => inbox.close());
    const r = await rig(p, clock, { masterUrl: inboxUrl });
    const master = new MasterAgent({
      settlement: m.settlement,
      registry: m.registry,
      inbox,
      store: new JsonStore<MasterState>(path.join(dir, "master-relay.json")),
      clock,
      logger: () => {},
      collectTimeoutMs: 1_500,
    });
    await master.init();

    await r.agent.tick();
    expect(r.agent.pendingSlots(), "nothing to sign before the slot ends").to.deep.equal([]);

    await moveTo(clock, endMs(first) + 2_000);
    await r.agent.tick();
    expect(r.agent.pendingSlots()).to.deep.equal([first]);
    const saved = await r.store.load();
    const pending = fromJson(saved!.pending[String(first)]!.signed);
    const shown = await r.registersNow();
    expect(pending.reading).to.deep.equal({ account: p.account, slot: first, ...shown });
    expect(shown.importWh > 0n, "the household consumed something").to.equal(true);

    // The signature recovers to the registered meter key, off chain and with the contract's digest.
    const signature = Signature.from({ r: pending.r, yParityAndS: pending.vs });
    expect(verifyTypedData(m.domain(), READING_TYPES, pending.reading, signature)).to.equal(p.meterKey.address);
    const digest = await m.settlement.readingDigest(pending.reading);
    expect(digest).to.equal(TypedDataEncoder.hash(m.domain(), READING_TYPES, pending.reading));
    expect(recoverAddress(digest, signature)).to.equal(p.meterKey.address);
    expect((await m.registry.signerOf(p.account))[0]).to.equal(p.meterKey.address);
    expect(await lastOnChain(p.account)).to.deep.equal({ slot: 0, importWh: 0n, exportWh: 0n });

    // The master asks (ReadingsRequested), the agent posts to the inbox, the master relays.
    let cycling = true;
    const ticking = (async () => {
      while (cycling) {
        await r.agent.tick();
        await delay(30);
      }
    })();
    await master.handleSlotEnd(first);
    cycling = false;
    await ticking;
    expect(r.logs.find("reading handed to master", { slot: first }), r.logs.dump()).to.have.length(1);
    expect(r.logs.find("reading submitted by agent"), "the agent did not submit it itself").to.have.length(0);

    const [recorded] = await recordedReadings(m.settlement, p.account);
    expect(recorded).to.include({ slot: first, importWh: shown.importWh, exportWh: shown.exportWh });
    const tx = await m.provider.getTransaction(recorded!.txHash);
    expect(tx!.from, "relayed by the master's key").to.equal(m.admin.address);

    await r.agent.tick();
    expect(r.agent.pendingSlots(), "seen on chain: no longer pending").to.deep.equal([]);
    expect((await r.store.load())!.pending).to.deep.equal({});
  });

  it("gets its reading relayed, unchanged, when someone posts a forged one beside it in the master's inbox", async () => {
    const p = participants[7]!;
    const { first, clock } = await freshStart();
    const inbox = new ReadingInbox(() => {});
    const inboxUrl = await inbox.listen();
    cleanups.push(() => inbox.close());
    const r = await rig(p, clock, { masterUrl: inboxUrl, seed: 18 });
    const masterLogs = new LogCollector();
    const master = new MasterAgent({
      settlement: m.settlement,
      registry: m.registry,
      inbox,
      store: new JsonStore<MasterState>(path.join(dir, "master-forgery.json")),
      clock,
      logger: masterLogs.logger,
      collectTimeoutMs: 1_500,
    });
    await master.init();

    await moveTo(clock, endMs(first) + 2_000);
    await r.agent.tick();
    const shown = await r.registersNow();
    const cycle = master.handleSlotEnd(first);
    while (inbox.count(first) === 0) {
      await r.agent.tick();
      await delay(20);
    }
    // Anyone can reach the inbox: a forged reading of the same account and slot lands beside the genuine one.
    const forger = HDNodeWallet.createRandom();
    const forged = await signReading(forger as unknown as Wallet, m.domain(), { account: p.account, slot: first, importWh: 1n, exportWh: 0n });
    const res = await fetch(new URL("/readings", inboxUrl), { method: "POST", body: JSON.stringify(toJson(forged)) });
    expect(res.status).to.equal(202);
    await cycle;
    expect(masterLogs.find("reading refused", { account: p.account, slot: first }), masterLogs.dump()).to.have.length(1);
    // The master refused the forgery and relayed the genuine candidate: no self-submission needed.
    expect(await lastOnChain(p.account)).to.deep.equal({ slot: first, ...shown });
  });

  it("submits alone when the master stays silent past selfSubmitAfterMs, and not before", async () => {
    const p = participants[1]!;
    const { first, clock } = await freshStart();
    const inbox = new ReadingInbox(() => {});
    const inboxUrl = await inbox.listen();
    cleanups.push(() => inbox.close());
    const r = await rig(p, clock, { masterUrl: inboxUrl, seed: 12 });

    await moveTo(clock, endMs(first) + 1_000);
    await r.agent.tick();
    const shown = await r.registersNow();
    await moveTo(clock, endMs(first) + SELF_SUBMIT_AFTER_MS - 1_000);
    await r.agent.tick();
    expect(r.agent.pendingSlots(), "still waiting for the master").to.deep.equal([first]);
    expect((await lastOnChain(p.account)).slot).to.equal(0);

    await moveTo(clock, endMs(first) + SELF_SUBMIT_AFTER_MS);
    await r.agent.tick();
    expect(r.agent.pendingSlots()).to.deep.equal([]);
    expect(await lastOnChain(p.account)).to.deep.equal({ slot: first, ...shown });
    expect(inbox.count(first), "never asked, so never sent to the master").to.equal(0);
    const [recorded] = await recordedReadings(m.settlement, p.account);
    expect((await m.provider.getTransaction(recorded!.txHash))!.from, "submitted with the meter key").to.equal(p.meterKey.address);
    expect(r.logs.find("reading submitted by agent", { slot: first })).to.have.length(1);
  });

  it("submits alone, still inside the window, when the master asks but its inbox is unreachable", async () => {
    const p = participants[2]!;
    const { first, clock } = await freshStart();
    const deadUrl = `http://127.0.0.1:${await findFreePort()}`;
    const r = await rig(p, clock, { masterUrl: deadUrl, seed: 13 });

    await moveTo(clock, endMs(first) + 1_000);
    await (await m.settlement.requestReadings(first)).wait();
    await r.agent.tick();
    expect(r.logs.find("master unreachable; will submit alone if it stays silent"), r.logs.dump()).to.not.have.length(0);
    expect(r.agent.pendingSlots()).to.deep.equal([first]);
    expect((await r.store.load())!.pending[String(first)]!.sentToMaster).to.equal(false);

    await moveTo(clock, endMs(first) + SELF_SUBMIT_AFTER_MS + 5_000);
    await r.agent.tick();
    expect(r.agent.pendingSlots()).to.deep.equal([]);
    expect((await lastOnChain(p.account)).slot).to.equal(first);
    expect(Number((await m.provider.getBlock("latest"))!.timestamp) * 1000).to.be.at.most(deadlineMs(first));
  });

  it("absorbs a missed slot end (capture lag passed) into the next reading: no energy is lost", async () => {
    const p = participants[3]!;
    const { first, clock } = await freshStart();
    const r = await rig(p, clock, { seed: 14 }); // no master: submits at once

    await moveTo(clock, endMs(first) + 1_000);
    await r.agent.tick();
    const baseline = await r.registersNow();
    expect(await lastOnChain(p.account)).to.deep.equal({ slot: first, ...baseline });

    // The agent next runs well after the end of first+1: too late to stand for it.
    await moveTo(clock, endMs(first + 1) + CAPTURE_LAG_MS + 5_000);
    await r.agent.tick();
    expect(r.logs.find("slot end missed; the next reading absorbs it", { slot: first + 1 })).to.have.length(1);
    expect(r.agent.pendingSlots()).to.deep.equal([]);
    expect((await lastOnChain(p.account)).slot, "no reading for the missed slot").to.equal(first);
    expect((await r.store.load())!.lastClosedSlot).to.equal(first + 1);

    await moveTo(clock, endMs(first + 2) + 1_000);
    await r.agent.tick();
    const absorbing = await r.registersNow();
    expect(await lastOnChain(p.account)).to.deep.equal({ slot: first + 2, ...absorbing });
    const [, next] = await recordedReadings(m.settlement, p.account);
    expect(next!.importDeltaWh, "two slots' energy in one reading").to.equal(absorbing.importWh - baseline.importWh);

    await moveTo(clock, endMs(first + 3) + 1_000);
    await r.agent.tick();
    await expectEnergyConserved(clock, p.account, [first, first + 2, first + 3]);
  });

  it("invents no reading while the meter is offline, and the first reading after it absorbs the gap", async () => {
    const p = participants[4]!;
    const { first, clock } = await freshStart();
    const r = await rig(p, clock, { seed: 15 });

    await moveTo(clock, endMs(first) + 1_000);
    await r.agent.tick();
    const baseline = await r.registersNow();
    expect((await lastOnChain(p.account)).slot).to.equal(first);

    await r.server.goOffline("refuse");
    for (const after of [1_000, 20_000, 45_000]) {
      await moveTo(clock, endMs(first + 1) + after);
      await r.agent.tick();
      expect(r.agent.pendingSlots(), "nothing signed without a meter").to.deep.equal([]);
    }
    expect(r.logs.find("meter read failed").length).to.be.at.least(3);
    expect((await r.store.load())!.lastClosedSlot, "the slot stays open while the meter is away").to.equal(first);
    expect((await lastOnChain(p.account)).slot).to.equal(first);

    // Back, but past the capture lag: that slot end is gone, the next reading takes it all.
    await r.server.comeOnline();
    await moveTo(clock, endMs(first + 1) + CAPTURE_LAG_MS + 30_000);
    await r.agent.tick();
    expect(r.logs.find("slot end missed; the next reading absorbs it", { slot: first + 1 })).to.have.length(1);
    expect((await lastOnChain(p.account)).slot).to.equal(first);

    await moveTo(clock, endMs(first + 2) + 1_000);
    await r.agent.tick();
    const after = await r.registersNow();
    expect(await lastOnChain(p.account)).to.deep.equal({ slot: first + 2, ...after });
    expect(after.importWh - baseline.importWh, "the outage's energy is in the register").to.be.greaterThan(0n);

    await moveTo(clock, endMs(first + 3) + 1_000);
    await r.agent.tick();
    await expectEnergyConserved(clock, p.account, [first, first + 2, first + 3]);
  });

  it("keeps its reading on disk while the node is unreachable and submits it when the node is back, inside the window", async () => {
    const p = participants[5]!;
    const { first, clock } = await freshStart();
    const proxy = await TcpProxy.start({ port: m.node.port });
    cleanups.push(() => proxy.down());
    const provider = await openProvider(proxy.url, { pollingIntervalMs: 50 });
    cleanups.push(() => provider.destroy());
    const r = await rig(p, clock, { provider, seed: 16 });

    await moveTo(clock, endMs(first) + 1_000);
    await r.agent.tick();
    expect((await lastOnChain(p.account)).slot).to.equal(first);

    await proxy.down();
    await moveTo(clock, endMs(first + 1) + 1_000);
    await r.agent.tick();
    const shown = await r.registersNow();
    expect(r.agent.pendingSlots()).to.deep.equal([first + 1]);
    expect(r.logs.find("node unreachable; will retry").length, r.logs.dump()).to.be.at.least(1);
    // On disk, signed, before anything reached the chain.
    const onDisk = await new JsonStore<MeterAgentState>(r.store.file).load();
    expect(fromJson(onDisk!.pending[String(first + 1)]!.signed).reading).to.deep.equal({ account: p.account, slot: first + 1, ...shown });
    expect((await lastOnChain(p.account)).slot).to.equal(first);

    await moveTo(clock, endMs(first + 1) + 120_000);
    await r.agent.tick();
    expect(r.agent.pendingSlots(), "kept while the node is away").to.deep.equal([first + 1]);

    await proxy.up();
    await moveTo(clock, endMs(first + 1) + 180_000);
    await r.agent.tick();
    expect(r.agent.pendingSlots()).to.deep.equal([]);
    expect(await lastOnChain(p.account)).to.deep.equal({ slot: first + 1, ...shown });
    const recorded = await recordedReadings(m.settlement, p.account);
    const block = await m.provider.getBlock((await m.provider.getTransactionReceipt(recorded[1]!.txHash))!.blockNumber);
    expect(Number(block!.timestamp) * 1000, "inside the reading window").to.be.at.most(deadlineMs(first + 1));
    expect((await r.store.load())!.pending).to.deep.equal({});
  });

  it("drops a reading whose window passed while the node was away, and the next reading absorbs it", async () => {
    const p = participants[6]!;
    const { first, clock } = await freshStart();
    const proxy = await TcpProxy.start({ port: m.node.port });
    cleanups.push(() => proxy.down());
    const provider = await openProvider(proxy.url, { pollingIntervalMs: 50 });
    cleanups.push(() => provider.destroy());
    const r = await rig(p, clock, { provider, seed: 17 });

    await moveTo(clock, endMs(first) + 1_000);
    await r.agent.tick();
    expect((await lastOnChain(p.account)).slot).to.equal(first);

    await proxy.down();
    await moveTo(clock, endMs(first + 1) + 1_000);
    await r.agent.tick();
    expect(r.agent.pendingSlots()).to.deep.equal([first + 1]);

    await moveTo(clock, deadlineMs(first + 1) + 10_000);
    await proxy.up();
    await r.agent.tick();
    expect(r.logs.find("reading window passed; the next reading absorbs it", { slot: first + 1 })).to.have.length(1);
    expect(r.agent.pendingSlots()).to.deep.equal([]);
    expect((await lastOnChain(p.account)).slot).to.equal(first);

    await moveTo(clock, endMs(first + 2) + 1_000);
    await r.agent.tick();
    expect((await lastOnChain(p.account)).slot).to.equal(first + 2);
    await moveTo(clock, endMs(first + 3) + 1_000);
    await r.agent.tick();
    await expectEnergyConserved(clock, p.account, [first, first + 2, first + 3]);
  });
});
