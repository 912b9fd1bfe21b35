/**
 * Gas of metering and billing per participant per slot, for 10, 100 and 1,000 participants,
 * with readings relayed in batches (submitReadings) and with each meter sending its own
 * (submitReading); the largest transaction of the 1,000-participant batched run; the wall
 * time of the master's explicit settlement of 100 participants; and the resident memory of a
 * real meter agent process. Gas comes from receipts' gasUsed on real local nodes.
 *
 * Method, per node (one per size): N "batched" and N "single" participants (about 60% buyers,
 * 40% sellers, random energies) and the slack unit are registered, minted tokens and given a
 * deposit. Each group then reads three slots: a baseline (bills nothing), slot A (counts
 * energy) and slot B, whose readings bill slot A on the way in. The steady state per
 * participant and slot is the gas of slot B's reading transactions over N, since each slot-B
 * reading records that slot and bills the previous one. The batched group's slot B is then
 * billed by the master's explicit settle (nobody has a next reading), which also gives the
 * explicit path: (slot A readings + settle of B) over N.
 *
 * Figures (gas from receipts' gasUsed; "per participant" = total over N):
 * - metering.perParticipantSlot.{batched,single}.nN.gas: slot B's reading transactions, the
 *   steady state of recording a slot and billing the one before (lazy billing);
 * - metering.perParticipantSlot.explicit.nN.gas: slot A's readings (record only) plus the
 *   master's settle transactions for slot B, the path when nobody reads again;
 * - metering.reading.{batched,single}.nN.gas: slot A's readings alone (record, nothing billed);
 * - metering.maxTxGas.n1000: the largest transaction of the batched n=1000 run, reading
 *   batches and settle batches (the node refuses more than 2^24 per transaction, EIP-7825);
 * - master.settleSlot.n100.ms: MasterAgent.settleSlot for 100 unbilled readings, wall time;
 * - agent.meter.rssMB, agent.meter.treeRssMB: see meterAgentRss.
 * Nobody places day-ahead orders here, so readings find no schedule: a slot with schedules
 * costs more per reading (the schedule's storage read, and deviations around it).
 *
 * Chain time: every block of a `hardhat node` is at least one second after the last one, so a
 * thousand transactions mined one per block would run a thousand seconds past the 300-second
 * reading window. Transactions are therefore sent with automining off and mined explicitly,
 * many to a block, at a block time set inside the slot's window. Gas does not depend on
 * that: warm and cold access and refunds are per transaction.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { availableParallelism, tmpdir } from "node:os";
import path from "node:path";
import { Worker } from "node:worker_threads";
import {
  computeAddress,
  dataSlice,
  encodeBytes32String,
  getAddress,
  id,
  keccak256,
  MaxUint256,
  Signature,
  Transaction,
  TypedDataEncoder,
  type JsonRpcProvider,
} from "ethers";
import { slotAt } from "../../clock.js";
import { PROJECT_ROOT } from "../../chain/localNode.js";
import { kindValue, type ParticipantKind } from "../../chain/participants.js";
import { readingDomain, type Reading, type SignedReading } from "../../chain/readings.js";
import { EnergyToken__factory, ParticipantRegistry__factory, Settlement__factory, type Settlement } from "../../chain/types/index.js";
import { silentLogger } from "../../log.js";
import { MasterAgent, type MasterState } from "../../master/masterAgent.js";
import { ReadingInbox } from "../../master/readingInbox.js";
import { JsonStore } from "../../meter-agent/store.js";
import { MeterServer, systemClock as simulatorSystemClock } from "../../simulator/meterServer.js";
import { householdSpec, mulberry32 } from "../../simulator/profiles.js";
import type { BenchContext, BenchFigures, BenchMarket, BenchSection } from "./types.js";

const SIZES = [10, 100, 1000] as const;
/**
 * Readings per relay transaction: the largest batch this measures (MasterOptions.readingBatchSize
 * was 400 when this was written). Each batch is sent with the 2^24 cap as its gas limit, so one
 * that needs more fails here instead of passing unnoticed.
 */
const READING_BATCH = 250; // the master's default batch (agents/master/masterAgent.ts)
/** Accounts per settle transaction: the master's default (MasterOptions.settleBatchSize). */
const SETTLE_BATCH = 500;
/** EIP-7825's per-transaction gas cap, which the node enforces. */
const TX_GAS_CAP = 2 ** 24;
/** Meter keys of the single group start here, so no size reuses a batched key on its node. */
const SINGLE_KEY_OFFSET = 1000;
const TOKEN = 10n ** 6n;
const WALLET_TOKENS = 100n * TOKEN;
const DEPOSIT = 100n * TOKEN;
const SLACK_DEPOSIT = 100_000n * TOKEN;
const GWEI = 10n ** 9n;
const MAX_FEE = 100n * GWEI;
const PRIORITY_FEE = GWEI;
const SINGLE_TX_GAS = 500_000n;
/** The meter agent's memory counts from this long after it is ready (its first log line)... */
const AGENT_SETTLED_MS = 10_000;
/** ...until this long, or later if it has not submitted a reading yet (but never past AGENT_MAX_WAIT_MS). */
const AGENT_RUN_MS = 15_000;
const AGENT_MAX_WAIT_MS = 40_000;
const READING_TYPEHASH = id("Reading(address account,uint32 slot,uint64 importWh,uint64 exportWh)");

export const meteringSection: BenchSection = {
  name: "metering",
  async run(ctx: BenchContext): Promise<BenchFigures> {
    const figures: BenchFigures = {};
    const pool = new SigningPool(Math.max(1, Math.min(4, availableParallelism())));
    try {
      for (const n of SIZES) {
        const bench = await ctx.freshMarket();
        const chain = await Chain.open(bench);
        const batched = await makeGroup(pool, `b${n}`, 0, n, 1000 + n);
        const single = await makeGroup(pool, `s${n}`, SINGLE_KEY_OFFSET, n, 2000 + n);
        const agentKey = n === SIZES[0] ? keyOf("agent") : undefined;
        const agentAccount = hashAddress("agent/account");
        ctx.log(`  n=${n}: registering, minting and depositing for ${2 * n} participants and the slack unit`);
        await chain.setUp([batched, single], agentKey === undefined ? [] : [{ account: agentAccount, meterKey: computeAddress(agentKey) }]);
        await chain.fundMeterKeys(single.members.map((m) => m.meterAddress));

        if (agentKey !== undefined) {
          // Before the metering runs move the chain's clock away from the wall clock.
          const rss = await meterAgentRss(ctx, chain, agentKey, agentAccount);
          figures["agent.meter.rssMB"] = rss.largestMB;
          figures["agent.meter.treeRssMB"] = rss.treeMB;
        }

        // Batched: the master relays readings in batches of READING_BATCH.
        const b = await runGroup(ctx, chain, pool, batched, "batched");
        figures[`metering.perParticipantSlot.batched.n${n}.gas`] = Math.round(sum(b.slotB) / n);
        figures[`metering.reading.batched.n${n}.gas`] = Math.round(sum(b.slotA) / n);

        // Nobody reads again: the master bills slot B with explicit settle transactions.
        const settled = await masterSettle(ctx, chain, b.lastSlot, n);
        if (n === 100) figures["master.settleSlot.n100.ms"] = settled.ms;
        figures[`metering.perParticipantSlot.explicit.n${n}.gas`] = Math.round((sum(b.slotA) + sum(settled.gas)) / n);
        if (n === 1000) {
          const all = [...b.baseline, ...b.slotA, ...b.slotB, ...settled.gas];
          figures["metering.maxTxGas.n1000"] = Math.max(...all);
        }

        // Single: each meter agent submits its own reading, signed and paid by its meter key.
        const s = await runGroup(ctx, chain, pool, single, "single");
        figures[`metering.perParticipantSlot.single.n${n}.gas`] = Math.round(sum(s.slotB) / n);
        figures[`metering.reading.single.n${n}.gas`] = Math.round(sum(s.slotA) / n);
      }
    } finally {
      await pool.close();
    }
    return sortFigures(figures);
  },
};

// ------------------------------------------------------------------------------------- groups

interface Member {
  account: string;
  meterKey: string;
  meterAddress: string;
  kind: ParticipantKind;
  seller: boolean;
  importWh: bigint;
  exportWh: bigint;
  /** Next nonce of the meter key (single group). */
  nonce: number;
}

interface Group {
  label: string;
  members: Member[];
  rnd: () => number;
}

function keyOf(label: string): string {
  return id(`metering-bench/meterKey/${label}`);
}

function hashAddress(label: string): string {
  return getAddress(dataSlice(id(`metering-bench/${label}`), 12));
}

const addressCache = new Map<string, string>();

/** `n` participants, ~60% buyers and ~40% sellers, with meter keys `offset`..`offset + n - 1`. */
async function makeGroup(pool: SigningPool, label: string, offset: number, n: number, seed: number): Promise<Group> {
  const rnd = mulberry32(seed);
  const keys = Array.from({ length: n }, (_, i) => keyOf(String(offset + i)));
  const missing = keys.filter((k) => !addressCache.has(k));
  const derived = await pool.addresses(missing);
  missing.forEach((k, i) => addressCache.set(k, derived[i]!));
  const members = keys.map((meterKey, i): Member => {
    const seller = rnd() < 0.4;
    return {
      account: hashAddress(`${label}/account/${i}`),
      meterKey,
      meterAddress: addressCache.get(meterKey)!,
      kind: seller ? "prosumer" : "consumer",
      seller,
      importWh: BigInt(Math.floor(rnd() * 5_000_000)),
      exportWh: BigInt(Math.floor(rnd() * 5_000_000)),
      nonce: 0,
    };
  });
  return { label, members, rnd };
}

/** Advances every register by one slot's energy: buyers import 0.1-1.5 kWh, sellers export 0.2-3 kWh. */
function advanceRegisters(g: Group): void {
  const between = (lo: number, hi: number): bigint => BigInt(Math.floor(lo + (hi - lo) * g.rnd()));
  for (const m of g.members) {
    if (m.seller) {
      m.importWh += between(0, 300);
      m.exportWh += between(200, 3000);
    } else {
      m.importWh += between(100, 1500);
      m.exportWh += g.rnd() < 0.5 ? 0n : between(0, 50);
    }
  }
}

interface GroupRun {
  baseline: number[];
  slotA: number[];
  slotB: number[];
  lastSlot: number;
}

/** Baseline, slot A and slot B readings of `g`, each inside its slot's reading window. */
async function runGroup(ctx: BenchContext, chain: Chain, pool: SigningPool, g: Group, mode: "batched" | "single"): Promise<GroupRun> {
  const n = g.members.length;
  const first = (await chain.slotNow()) + 1;
  const gas: number[][] = [];
  for (let k = 0; k < 3; k++) {
    const slot = first + k;
    if (k > 0) advanceRegisters(g);
    const readings: Reading[] = g.members.map((m) => ({ account: m.account, slot, importWh: m.importWh, exportWh: m.exportWh }));
    const signed = await chain.signReadings(pool, readings, g.members.map((m) => m.meterKey));
    const at = chain.windowOpens(slot) + 1;
    const started = Date.now();
    let used: number[];
    if (mode === "batched") {
      const txs = chunk(signed, READING_BATCH).map((batch) => ({ to: chain.settlementAddress, data: chain.iface.encodeFunctionData("submitReadings", [batch]), gas: BigInt(TX_GAS_CAP) }));
      used = await chain.transactFromAdmin(txs, at);
    } else {
      used = await chain.transactRaw(await chain.signSingleReadings(pool, signed, g.members), at);
    }
    const name = ["baseline", "slot A", "slot B"][k];
    const total = sum(used);
    ctx.log(`    ${mode} n=${n} ${name} (slot ${slot}): ${used.length} tx, ${total.toLocaleString("en-US")} gas, ${Math.round(total / n).toLocaleString("en-US")}/participant, max tx ${Math.max(...used).toLocaleString("en-US")} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
    gas.push(used);
  }
  // Slot A must have been billed completely by slot B's readings, and closed.
  const a = await chain.settlement.slotState(first + 1);
  if (Number(a.readings) !== n || Number(a.billed) !== n || !a.closed) {
    throw new Error(`${mode} n=${n}: slot A (${first + 1}) has ${a.readings} readings, ${a.billed} billed, closed=${a.closed}; expected ${n}, ${n}, true`);
  }
  return { baseline: gas[0]!, slotA: gas[1]!, slotB: gas[2]!, lastSlot: first + 2 };
}

/** MasterAgent.settleSlot of `slot` after its deadline, timed; returns the settle transactions' gas. */
async function masterSettle(ctx: BenchContext, chain: Chain, slot: number, n: number): Promise<{ ms: number; gas: number[] }> {
  await chain.setTimeAndMine(chain.deadline(slot) + 1);
  await chain.setAutomine(true);
  const stateDir = mkdtempSync(path.join(tmpdir(), "bench-master-"));
  try {
    const master = new MasterAgent({
      settlement: chain.settlement,
      registry: chain.registry,
      inbox: new ReadingInbox(silentLogger),
      store: new JsonStore<MasterState>(path.join(stateDir, "master.json")),
      clock: { now: () => (chain.deadline(slot) + 1) * 1000 },
      logger: silentLogger,
      collectTimeoutMs: 1_000,
      settleBatchSize: SETTLE_BATCH,
    });
    await master.init();
    const fromBlock = await chain.provider.getBlockNumber();
    const started = performance.now();
    const report = await master.settleSlot(slot);
    const ms = Math.round(performance.now() - started);
    if (!report.closed || report.bills.length !== n) {
      throw new Error(`settleSlot(${slot}) left the slot closed=${report.closed} with ${report.bills.length} bills; expected closed with ${n}`);
    }
    const gas = await chain.gasOfBlocks(fromBlock + 1);
    ctx.log(`    master.settleSlot n=${n} (slot ${slot}): ${ms} ms, ${gas.length} settle tx, ${sum(gas).toLocaleString("en-US")} gas, max tx ${Math.max(...gas).toLocaleString("en-US")}`);
    return { ms, gas };
  } finally {
    await chain.setAutomine(false);
    rmSync(stateDir, { recursive: true, force: true });
  }
}

// ------------------------------------------------------------------------------------- chain

interface AdminTx {
  to: string;
  data: string;
  gas: bigint;
}

/** A local node with automining off, and the few calls this section makes on it. */
class Chain {
  readonly iface = Settlement__factory.createInterface();
  private separator = "";
  private digestChecked = false;

  private constructor(
    readonly bench: BenchMarket,
    readonly provider: JsonRpcProvider,
    readonly settlement: Settlement,
    readonly settlementAddress: string,
    readonly admin: string,
    readonly slotSeconds: number,
    readonly readingWindow: number,
  ) {}

  static async open(bench: BenchMarket): Promise<Chain> {
    const { market } = bench;
    if (market.signer === undefined) throw new Error("the bench market has no signer");
    const settlementAddress = market.addresses.settlement;
    const settlement = market.settlement;
    const admin = await market.signer.getAddress();
    const [slotSeconds, window] = await Promise.all([settlement.slotSeconds(), settlement.readingWindow()]);
    const chain = new Chain(bench, market.provider, settlement, settlementAddress, admin, Number(slotSeconds), Number(window));
    chain.separator = TypedDataEncoder.hashDomain(readingDomain(market.chainId, settlementAddress));
    // Enough ether for any number of pending transactions at MAX_FEE.
    await chain.provider.send("hardhat_setBalance", [admin, "0x" + (10n ** 30n).toString(16)]);
    await chain.setAutomine(false);
    return chain;
  }

  get registry() {
    return this.bench.market.participantRegistry;
  }

  windowOpens(slot: number): number {
    return (slot + 1) * this.slotSeconds;
  }

  deadline(slot: number): number {
    return (slot + 1) * this.slotSeconds + this.readingWindow;
  }

  async latestTimestamp(): Promise<number> {
    const block = await this.provider.send("eth_getBlockByNumber", ["latest", false]);
    return Number(block.timestamp);
  }

  async slotNow(): Promise<number> {
    return slotAt((await this.latestTimestamp()) * 1000, this.slotSeconds);
  }

  setAutomine(on: boolean): Promise<unknown> {
    return this.provider.send("evm_setAutomine", [on]);
  }

  /**
   * Every block is at least a second after the one before, so a burst of blocks (the deployment,
   * the setup) leaves the node's clock ahead of the wall clock, and it stays ahead: later blocks
   * keep the offset. An agent on the system clock would then land its readings after its
   * window. This waits until the wall clock has passed the latest block and pins the next block
   * to the wall clock; blocks after it follow the wall clock.
   */
  async alignClockWithWall(): Promise<void> {
    const aheadMs = (await this.latestTimestamp()) * 1000 - Date.now();
    if (aheadMs > -1000) await sleep(aheadMs + 1000);
    await this.setTimeAndMine(Math.ceil(Date.now() / 1000));
  }

  async setTimeAndMine(t: number): Promise<void> {
    if (t > (await this.latestTimestamp())) await this.provider.send("evm_setNextBlockTimestamp", [t]);
    await this.provider.send("evm_mine", []);
  }

  /** Registers the groups, the slack unit and `extra` participants; mints to every wallet; deposits for each. */
  async setUp(groups: Group[], extra: { account: string; meterKey: string }[]): Promise<void> {
    const registry = ParticipantRegistry__factory.createInterface();
    const token = EnergyToken__factory.createInterface();
    const tokenAddress = this.bench.market.addresses.energyToken;
    const registryAddress = this.bench.market.addresses.participantRegistry;
    const members = groups.flatMap((g) => g.members);
    const slack = { account: hashAddress("slack/account"), meterId: encodeBytes32String("MB-slack"), meterKey: hashAddress("slack/meterKey"), kind: kindValue("slackUnit") };
    const registrations = [
      slack,
      ...extra.map((e, i) => ({ account: e.account, meterId: encodeBytes32String(`MB-extra-${i}`), meterKey: e.meterKey, kind: kindValue("consumer") })),
      ...groups.flatMap((g) => g.members.map((m, i) => ({ account: m.account, meterId: encodeBytes32String(`MB-${g.label}-${i}`), meterKey: m.meterAddress, kind: kindValue(m.kind) }))),
    ];
    const txs: AdminTx[] = chunk(registrations, 100).map((batch) => ({ to: registryAddress, data: registry.encodeFunctionData("registerBatch", [batch]), gas: 15_000_000n }));
    const wallets = [...extra.map((e) => e.account), ...members.map((m) => m.account)];
    chunk(wallets, 100).forEach((batch, i) =>
      txs.push({ to: tokenAddress, data: token.encodeFunctionData("mintBatch", [id(`metering-bench/mint/${i}`), batch, batch.map(() => WALLET_TOKENS)]), gas: 8_000_000n }),
    );
    const deposits = [...extra.map((e) => e.account), ...members.map((m) => m.account)];
    // Extra participants get a deposit here and one more in a Settlement of their own (the meter agent's).
    const total = DEPOSIT * BigInt(deposits.length + extra.length) + SLACK_DEPOSIT;
    txs.push({ to: tokenAddress, data: token.encodeFunctionData("mint", [this.admin, total]), gas: 200_000n });
    txs.push({ to: tokenAddress, data: token.encodeFunctionData("approve", [this.settlementAddress, MaxUint256]), gas: 200_000n });
    txs.push({ to: this.settlementAddress, data: this.iface.encodeFunctionData("depositFor", [slack.account, SLACK_DEPOSIT]), gas: 300_000n });
    for (const account of deposits) txs.push({ to: this.settlementAddress, data: this.iface.encodeFunctionData("depositFor", [account, DEPOSIT]), gas: 300_000n });
    await this.transactFromAdmin(txs);
  }

  /** Gives each meter key ether for its own transactions. */
  async fundMeterKeys(addresses: string[]): Promise<void> {
    await Promise.all(addresses.map((a) => this.provider.send("hardhat_setBalance", [a, "0x" + (10n ** 21n).toString(16)])));
  }

  /** EIP-712 digests as the contract computes them, checked against its readingDigest once. */
  private async digests(readings: Reading[]): Promise<string[]> {
    const word = (v: bigint | number): string => BigInt(v).toString(16).padStart(64, "0");
    const out = readings.map((r) => {
      const struct = keccak256(`0x${READING_TYPEHASH.slice(2)}${r.account.slice(2).toLowerCase().padStart(64, "0")}${word(r.slot)}${word(r.importWh)}${word(r.exportWh)}`);
      return keccak256(`0x1901${this.separator.slice(2)}${struct.slice(2)}`);
    });
    if (!this.digestChecked && readings.length > 0) {
      const onChain = await this.settlement.readingDigest(readings[0]!);
      if (onChain !== out[0]) throw new Error(`reading digest ${out[0]} differs from the contract's ${onChain}`);
      this.digestChecked = true;
    }
    return out;
  }

  /** Signs each reading with its meter key, in the worker pool. */
  async signReadings(pool: SigningPool, readings: Reading[], keys: string[]): Promise<SignedReading[]> {
    const digests = await this.digests(readings);
    const sigs = await pool.sign(digests.map((d, i) => [keys[i]!, d]));
    return readings.map((reading, i) => {
      const sig = sigs[i]!;
      return { reading, r: sig.r, vs: sig.yParityAndS };
    });
  }

  /** One submitReading transaction per reading, signed by the member's meter key. */
  async signSingleReadings(pool: SigningPool, signed: SignedReading[], members: Member[]): Promise<string[]> {
    const chainId = this.bench.market.chainId;
    const txs = signed.map((s, i) =>
      Transaction.from({
        type: 2,
        chainId,
        nonce: members[i]!.nonce++,
        to: this.settlementAddress,
        data: this.iface.encodeFunctionData("submitReading", [s.reading, s.r, s.vs]),
        gasLimit: SINGLE_TX_GAS,
        maxFeePerGas: MAX_FEE,
        maxPriorityFeePerGas: PRIORITY_FEE,
      }),
    );
    const sigs = await pool.sign(txs.map((tx, i) => [members[i]!.meterKey, tx.unsignedHash]));
    return txs.map((tx, i) => {
      tx.signature = sigs[i]!;
      return tx.serialized;
    });
  }

  /** Sends `txs` from the admin (an unlocked account of the node), mines them, returns each one's gasUsed. */
  async transactFromAdmin(txs: AdminTx[], at?: number): Promise<number[]> {
    let nonce = Number(await this.provider.send("eth_getTransactionCount", [this.admin, "pending"]));
    const hashes = await Promise.all(
      txs.map((tx) =>
        this.provider.send("eth_sendTransaction", [
          { from: this.admin, to: tx.to, data: tx.data, gas: hex(tx.gas), nonce: hex(nonce++), maxFeePerGas: hex(MAX_FEE), maxPriorityFeePerGas: hex(PRIORITY_FEE) },
        ]) as Promise<string>,
      ),
    );
    return this.mineAndMeasure(hashes, at);
  }

  /** Sends signed raw transactions, mines them, returns each one's gasUsed. */
  async transactRaw(raws: string[], at?: number): Promise<number[]> {
    const hashes = await Promise.all(raws.map((raw) => this.provider.send("eth_sendRawTransaction", [raw]) as Promise<string>));
    return this.mineAndMeasure(hashes, at);
  }

  /** Mines until every one of `hashes` is in a block (the first block at `at`); all must succeed. */
  private async mineAndMeasure(hashes: string[], at?: number): Promise<number[]> {
    if (at !== undefined) {
      const latest = await this.latestTimestamp();
      if (at <= latest) throw new Error(`cannot mine at ${at}: the latest block is at ${latest}`);
      await this.provider.send("evm_setNextBlockTimestamp", [at]);
    }
    let mined = 0;
    while (mined < hashes.length) {
      await this.provider.send("evm_mine", []);
      const block = await this.provider.send("eth_getBlockByNumber", ["latest", false]);
      const count = (block.transactions as string[]).length;
      if (count === 0) throw new Error(`evm_mine included none of the ${hashes.length - mined} transactions still pending`);
      mined += count;
    }
    const receipts = await Promise.all(hashes.map((h) => this.provider.send("eth_getTransactionReceipt", [h]) as Promise<RpcReceipt | null>));
    return receipts.map((r, i) => {
      if (r === null) throw new Error(`transaction ${hashes[i]} was not mined`);
      if (r.status !== "0x1") throw new Error(`transaction ${hashes[i]} reverted after ${Number(r.gasUsed)} gas (a batch that reaches the 2^24 cap runs out of gas)`);
      return Number(r.gasUsed);
    });
  }

  /** gasUsed of every transaction in blocks `from`..latest. */
  async gasOfBlocks(from: number): Promise<number[]> {
    const latest = await this.provider.getBlockNumber();
    const out: number[] = [];
    for (let n = from; n <= latest; n++) {
      const block = await this.provider.send("eth_getBlockByNumber", [hex(BigInt(n)), false]);
      for (const h of block.transactions as string[]) {
        const r = (await this.provider.send("eth_getTransactionReceipt", [h])) as RpcReceipt;
        if (r.status !== "0x1") throw new Error(`transaction ${h} reverted`);
        out.push(Number(r.gasUsed));
      }
    }
    return out;
  }

  /** Deploys a Settlement on this node's token and registry; returns its address. */
  async deploySettlement(slotSeconds: number, readingWindow: number): Promise<string> {
    const factory = new Settlement__factory();
    const { energyToken, participantRegistry } = this.bench.market.addresses;
    const [feedIn, retail] = await Promise.all([this.settlement.feedInPrice(), this.settlement.retailPrice()]);
    const deploy = await factory.getDeployTransaction(energyToken, participantRegistry, this.admin, slotSeconds, readingWindow, feedIn, retail);
    const nonce = await this.provider.send("eth_getTransactionCount", [this.admin, "pending"]);
    const hash = (await this.provider.send("eth_sendTransaction", [
      { from: this.admin, data: deploy.data, gas: hex(10_000_000n), nonce, maxFeePerGas: hex(MAX_FEE), maxPriorityFeePerGas: hex(PRIORITY_FEE) },
    ])) as string;
    await this.mineAndMeasure([hash]);
    const receipt = (await this.provider.send("eth_getTransactionReceipt", [hash])) as RpcReceipt;
    if (receipt.contractAddress == null) throw new Error("the Settlement deployment created no contract");
    return getAddress(receipt.contractAddress);
  }
}

interface RpcReceipt {
  status: string;
  gasUsed: string;
  contractAddress?: string | null;
}

// ------------------------------------------------------------------------------------- meter agent

/**
 * Runs the real meter agent (`tsx agents/meter-agent/main.ts`) against a Modbus TCP meter
 * server and samples VmRSS of every process in its tree (tsx starts node as a child) once a
 * second. It returns the largest process's peak over the samples from AGENT_SETTLED_MS to
 * AGENT_RUN_MS after the agent is ready (longer if it has not submitted a reading by then),
 * in MB, and the peak of the whole tree's sum: tsx's own node process stays resident beside
 * the agent's.
 *
 * So that the agent does a whole cycle in seconds (read the meter at a slot's end, sign,
 * submit, see it on chain), it works on a Settlement deployed for it with 10-second slots and
 * a 5-second window, on this node's token and registry, under the system clock.
 */
async function meterAgentRss(ctx: BenchContext, chain: Chain, key: string, account: string): Promise<{ largestMB: number; treeMB: number }> {
  const dir = mkdtempSync(path.join(tmpdir(), "bench-meter-agent-"));
  const cleanups: Array<() => Promise<void> | void> = [() => rmSync(dir, { recursive: true, force: true })];
  try {
    const settlement = await chain.deploySettlement(10, 5);
    const token = EnergyToken__factory.createInterface();
    await chain.transactFromAdmin([
      { to: chain.bench.market.addresses.energyToken, data: token.encodeFunctionData("approve", [settlement, MaxUint256]), gas: 200_000n },
      { to: settlement, data: chain.iface.encodeFunctionData("depositFor", [account, DEPOSIT]), gas: 300_000n },
    ]);
    await chain.fundMeterKeys([computeAddress(key)]);
    await chain.alignClockWithWall();
    await chain.setAutomine(true);
    cleanups.push(() => chain.setAutomine(false).then(() => {}));

    const weatherSeed = 7;
    const server = await MeterServer.start({ household: householdSpec("consumer", 11, weatherSeed), clock: simulatorSystemClock });
    cleanups.push(() => server.close());
    const config = path.join(dir, "meter-agent.json");
    writeFileSync(
      config,
      JSON.stringify({
        account,
        rpcUrl: chain.bench.node.url,
        settlement,
        meter: { transport: "tcp", host: "127.0.0.1", port: server.port, unitId: 1, model: "sdm630" },
        stateFile: path.join(dir, "state.json"),
        pollIntervalMs: 1000,
        // This chain's settlement has 10-second slots and no markets: the agent meters only.
        dayAhead: false,
        intraday: false,
      }),
    );
    const tsx = path.join(PROJECT_ROOT, "node_modules", ".bin", "tsx");
    const child = spawn(tsx, ["agents/meter-agent/main.ts", "--config", config], {
      cwd: PROJECT_ROOT,
      env: { ...process.env, METER_AGENT_PRIVATE_KEY: key },
      stdio: ["ignore", "pipe", "pipe"],
    });
    cleanups.push(() => stopTree(child));
    const output: string[] = [];
    let submitted = 0;
    let readyAt: number | undefined;
    const onLine = (line: string): void => {
      output.push(line);
      if (output.length > 40) output.shift();
      if (line.includes('"reading submitted by agent"')) submitted++;
      if (line.includes('"meter agent ready"')) readyAt ??= Date.now();
    };
    lines(child, onLine);
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    let exitCode: number | null | undefined;
    void exited.then((c) => (exitCode = c));

    const spawned = Date.now();
    ctx.log(`  meter agent (pid ${child.pid}) polling a Modbus TCP meter on port ${server.port}, 10-second slots`);
    while (readyAt === undefined) {
      if (exitCode !== undefined) throw new Error(`the meter agent exited with code ${exitCode}:\n${output.join("\n")}`);
      if (Date.now() - spawned > AGENT_MAX_WAIT_MS) throw new Error(`the meter agent was not ready after ${AGENT_MAX_WAIT_MS / 1000} s:\n${output.join("\n")}`);
      await sleep(100);
    }
    const started = readyAt;
    ctx.log(`  meter agent ready after ${((started - spawned) / 1000).toFixed(1)} s`);
    // One sample a second from when it is ready; those from AGENT_SETTLED_MS on count.
    const samples: { atMs: number; largestKb: number; totalKb: number; tree: string }[] = [];
    while (Date.now() - started < AGENT_RUN_MS || (submitted === 0 && Date.now() - started < AGENT_MAX_WAIT_MS)) {
      if (exitCode !== undefined) throw new Error(`the meter agent exited with code ${exitCode}:\n${output.join("\n")}`);
      await sleep(1000);
      const rss = processTree(child.pid!).map((pid) => ({ pid, kB: vmRssKb(pid), name: commOf(pid) }));
      samples.push({
        atMs: Date.now() - started,
        largestKb: Math.max(...rss.map((p) => p.kB)),
        totalKb: sum(rss.map((p) => p.kB)),
        tree: rss.map((p) => `${p.name}[${p.pid}] ${(p.kB / 1024).toFixed(1)} MB`).join(", "),
      });
    }
    if (submitted === 0) throw new Error(`the meter agent submitted no reading in ${AGENT_MAX_WAIT_MS / 1000} s:\n${output.join("\n")}`);
    const steady = samples.filter((x) => x.atMs >= AGENT_SETTLED_MS);
    const peak = steady.reduce((a, b) => (b.largestKb > a.largestKb ? b : a));
    const mb = (kB: number): string => (kB / 1024).toFixed(1);
    ctx.log(`  meter agent, ${submitted} reading(s) submitted; largest process each second: ${samples.map((x) => mb(x.largestKb)).join(" ")} MB`);
    ctx.log(`  meter agent at its peak, ${(peak.atMs / 1000).toFixed(0)} s after ready: ${peak.tree}`);
    const treePeak = Math.max(...steady.map((x) => x.totalKb));
    return { largestMB: Math.round((peak.largestKb / 1024) * 10) / 10, treeMB: Math.round((treePeak / 1024) * 10) / 10 };
  } finally {
    for (const cleanup of cleanups.reverse()) {
      try {
        await cleanup();
      } catch {
        // Shutting down: the next cleanup still runs.
      }
    }
  }
}

function lines(child: ChildProcess, onLine: (line: string) => void): void {
  for (const stream of [child.stdout, child.stderr]) {
    let rest = "";
    stream?.on("data", (chunk: Buffer) => {
      const parts = (rest + chunk.toString("utf8")).split("\n");
      rest = parts.pop() ?? "";
      for (const p of parts) if (p !== "") onLine(p);
    });
  }
}

/** `pid` and its descendants, from /proc. */
function processTree(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      // The command name may hold spaces and parentheses: the fields after the last ")" are fixed.
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      const list = children.get(ppid) ?? [];
      list.push(Number(entry));
      children.set(ppid, list);
    } catch {
      // The process exited meanwhile.
    }
  }
  const out: number[] = [];
  const todo = [pid];
  while (todo.length > 0) {
    const p = todo.pop()!;
    out.push(p);
    todo.push(...(children.get(p) ?? []));
  }
  return out;
}

function vmRssKb(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m === null ? 0 : Number(m[1]);
  } catch {
    return 0;
  }
}

function commOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, "utf8").trim();
  } catch {
    return "?";
  }
}

/** SIGTERM to the agent (tsx passes it on), then SIGKILL to whatever of its tree is left after 5 s. */
async function stopTree(child: ChildProcess): Promise<void> {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const tree = processTree(child.pid);
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGTERM");
  const timedOut = await Promise.race([exited.then(() => false), sleep(5_000).then(() => true)]);
  for (const pid of tree) {
    if (!timedOut && pid === child.pid) continue;
    try {
      if (vmRssKb(pid) > 0) process.kill(pid, "SIGKILL");
    } catch {
      // Gone already.
    }
  }
}

// ------------------------------------------------------------------------------------- signing

/**
 * secp256k1 signing in worker threads: about a millisecond a signature in JavaScript, and a
 * run signs some 12,000 readings and transactions. Workers get private keys and 32-byte
 * digests and return signatures; everything else stays in this thread.
 */
class SigningPool {
  private readonly workers: Worker[] = [];
  private readonly pending = new Map<number, { resolve: (out: unknown[]) => void; reject: (e: unknown) => void }>();
  private nextId = 0;

  constructor(private readonly size: number) {}

  private start(): void {
    if (this.workers.length > 0) return;
    const ethers = createRequire(import.meta.url).resolve("ethers");
    for (let i = 0; i < this.size; i++) {
      const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { ethers } });
      worker.on("message", ({ id: jobId, out, error }: { id: number; out?: unknown[]; error?: string }) => {
        const p = this.pending.get(jobId);
        this.pending.delete(jobId);
        if (error !== undefined) p?.reject(new Error(error));
        else p?.resolve(out ?? []);
      });
      worker.on("error", (e) => {
        for (const p of this.pending.values()) p.reject(e);
        this.pending.clear();
      });
      this.workers.push(worker);
    }
  }

  private async run(op: "address" | "sign", items: unknown[]): Promise<unknown[]> {
    if (items.length === 0) return [];
    this.start();
    const parts = chunk(items, Math.ceil(items.length / this.workers.length));
    const results = await Promise.all(
      parts.map(
        (part, i) =>
          new Promise<unknown[]>((resolve, reject) => {
            const jobId = this.nextId++;
            this.pending.set(jobId, { resolve, reject });
            this.workers[i]!.postMessage({ id: jobId, op, items: part });
          }),
      ),
    );
    return results.flat();
  }

  /** The address of each private key. */
  async addresses(keys: string[]): Promise<string[]> {
    return (await this.run("address", keys)) as string[];
  }

  /** A signature of each digest by its key. */
  async sign(jobs: [key: string, digest: string][]): Promise<Signature[]> {
    const out = (await this.run("sign", jobs)) as [string, string, number][];
    return out.map(([r, s, v]) => Signature.from({ r, s, v }));
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
    this.workers.length = 0;
  }
}

const WORKER_SOURCE = `
const { parentPort, workerData } = require("node:worker_threads");
const { SigningKey, computeAddress } = require(workerData.ethers);
const keys = new Map();
const keyOf = (k) => {
  let key = keys.get(k);
  if (key === undefined) keys.set(k, (key = new SigningKey(k)));
  return key;
};
parentPort.on("message", ({ id, op, items }) => {
  try {
    const out = op === "address"
      ? items.map((k) => computeAddress(keyOf(k).publicKey))
      : items.map(([k, digest]) => { const s = keyOf(k).sign(digest); return [s.r, s.s, s.v]; });
    parentPort.postMessage({ id, out });
  } catch (e) {
    parentPort.postMessage({ id, error: String(e && e.stack || e) });
  }
});
`;

// ------------------------------------------------------------------------------------- small helpers

function chunk<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

function sum(xs: readonly number[]): number {
  return xs.reduce((a, b) => a + b, 0);
}

function hex(v: bigint | number): string {
  return `0x${BigInt(v).toString(16)}`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The figures in a stable, readable order: metering by mode and size, then the agents. */
function sortFigures(f: BenchFigures): BenchFigures {
  const order = (k: string): string => (k.startsWith("metering.") ? `0${k}` : `1${k}`);
  return Object.fromEntries(Object.entries(f).sort(([a], [b]) => order(a).localeCompare(order(b), "en", { numeric: true })));
}
