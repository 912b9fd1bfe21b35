import { mkdirSync, rmSync } from "node:fs";
import path from "node:path";
import { encodeBytes32String, HDNodeWallet, Signature, Wallet, parseEther, parseUnits, type JsonRpcProvider } from "ethers";
import { SimClock, slotAt, slotStartMs } from "../clock.js";
import { distribute } from "../chain/distribution.js";
import { deployMarket, localNodeAccount, startLocalNode, type LocalNode } from "../chain/localNode.js";
import { connectMarket, openProvider, type MarketContracts } from "../chain/market.js";
import type { ParticipantKind, ParticipantSpec } from "../chain/participants.js";
import { Settlement__factory, type Settlement } from "../chain/types/index.js";
import { silentLogger, type Logger } from "../log.js";
import { BalancingClearer } from "../master/balancingClearer.js";
import { DayAheadClearer, type DayAheadSlotResult } from "../master/dayAheadClearer.js";
import { MasterAgent, type MasterState, type SlotReport } from "../master/masterAgent.js";
import { ReadingInbox } from "../master/readingInbox.js";
import { DayAheadTrader, DEFAULT_STRATEGY, type PriceStrategy } from "../meter-agent/dayAheadTrader.js";
import { assetsOfSimulatedHousehold, FlexibilityController, ModbusDeviceIo } from "../meter-agent/flexibility.js";
import { DEFAULT_FLEX_PRICING, IntradayTrader } from "../meter-agent/intradayTrader.js";
import { MeterAgent, type MeterAgentState } from "../meter-agent/meterAgent.js";
import { JsonStore } from "../meter-agent/store.js";
import { ModbusMeter } from "../meters/modbusMeter.js";
import { SDM630 } from "../meters/registerMaps.js";
import { HouseholdSimulator, type HouseholdKind } from "./profiles.js";
import { defaultNeighbourhood, startMeterServers, type NeighbourhoodMember, type RunningMeter } from "./neighbourhood.js";

const TOKEN = (tokens: string): bigint => parseUnits(tokens, 6);

/** How each simulated household kind is registered. */
const REGISTRY_KIND: Record<HouseholdKind, ParticipantKind> = {
  consumer: "consumer",
  pvProsumer: "prosumer",
  batteryProsumer: "storage",
  evOwner: "flexibleLoad",
  producer: "producer",
  slackUnit: "slackUnit",
};

export interface Household {
  member: NeighbourhoodMember;
  account: string;
  wallet: Wallet;
  meterKey: HDNodeWallet;
}

export interface SimulatedMarketOptions {
  /** Midnight UTC of the simulated day; it must lie after the node's clock (default: next 21 June). */
  day?: Date;
  /** Slots to run from midnight (96 = a day). */
  slots?: number;
  seed?: number;
  /** Where agents keep their state (default .demo/state, wiped first). */
  stateDir?: string;
  /** Agents' structured logs (default: dropped). */
  logger?: Logger;
  /** Called with each settled slot's report. */
  onSlot?: (report: SlotReport) => void;
  /** Called with the day-ahead results once the day's slots are cleared. */
  onDayAhead?: (results: DayAheadSlotResult[]) => void;
  /** Run the day-ahead round before the day (default true). */
  dayAhead?: boolean;
  /** Run the balancing market during the day (default true). */
  intraday?: boolean;
  onProgress?: (message: string) => void;
  /** Tokens minted to each household and deposited into escrow. */
  mintTokens?: string;
  depositTokens?: string;
}

export interface SimulatedMarketResult {
  households: Household[];
  reports: SlotReport[];
  /**
   * Per reported slot, the neighbourhood's net energy (Wh, + import) had no flexibility been
   * activated: each house simulated a second time from the same start with its devices left
   * automatic. A figure only a simulation has (what the slack unit would have covered
   * without the balancing market, later effects of activations included); agents never see it.
   */
  automaticNetWh: Map<number, bigint>;
  dayAhead: DayAheadSlotResult[];
  market: MarketContracts;
  settlement: Settlement;
}

/**
 * Runs the market on a local chain with simulated meters: a `hardhat node`, the Market
 * module deployed with Ignition, the default neighbourhood registered and funded, one Modbus
 * TCP meter server and one meter agent per household, and the master. A SimClock drives the
 * meters and agents, and the chain's clock is moved with it, so a day takes about a minute.
 * `use` runs while everything is up; it all shuts down afterwards, whatever happens.
 */
export async function withSimulatedMarket<T>(
  options: SimulatedMarketOptions,
  use: (run: () => Promise<SimulatedMarketResult>) => Promise<T>,
): Promise<T> {
  const progress = options.onProgress ?? (() => {});
  const logger = options.logger ?? silentLogger;
  const cleanups: Array<() => Promise<void> | void> = [];
  try {
    progress("starting a local hardhat node");
    const node: LocalNode = await startLocalNode();
    cleanups.push(() => node.stop());
    progress(`node at ${node.url}; deploying the Market module with Ignition`);
    const deployment = await deployMarket(node.url);
    cleanups.push(() => deployment.remove());
    const provider: JsonRpcProvider = await openProvider(node.url, { pollingIntervalMs: 50 });
    cleanups.push(() => provider.destroy());
    const admin = new Wallet(localNodeAccount(0).privateKey, provider);
    const market = await connectMarket({ rpcUrl: node.url, addresses: deployment.addresses, signer: admin, provider });
    const settlement = market.settlement;
    const settlementAddress = deployment.addresses.settlement;

    const members = defaultNeighbourhood(options.seed ?? 1);
    const households: Household[] = members.map((member, i) => ({
      member,
      account: localNodeAccount(i + 1).address,
      wallet: new Wallet(localNodeAccount(i + 1).privateKey, provider),
      meterKey: HDNodeWallet.fromPhrase("test test test test test test test test test test test junk", undefined, `m/44'/60'/1'/0/${i}`).connect(provider),
    }));
    progress(`registering and funding ${households.length} participants`);
    await distribute(market, households.map((h) => spec(h, options.mintTokens ?? "100")));
    for (const h of households) await (await admin.sendTransaction({ to: h.meterKey.address, value: parseEther("1") })).wait();
    await depositAll(settlement, market, households, options.depositTokens ?? "60");
    await approveMarkets(market, households);

    const run = async (): Promise<SimulatedMarketResult> => {
      const slotSeconds = Number(await settlement.slotSeconds());
      const firstDay = options.day ?? nextMidsummer(await chainTimeMs(provider));
      const daySlot = slotAt(firstDay.getTime(), slotSeconds);
      const withDayAhead = options.dayAhead ?? true;
      const dayMs = 86_400_000;
      const gateLeadMs = Number(await market.dayAheadMarket.gateLeadSeconds()) * 1000;
      // With the day-ahead round, start an hour before gate closure on the day before.
      const startMs = withDayAhead ? firstDay.getTime() - gateLeadMs - 3_600_000 : slotStartMs(daySlot - 1, slotSeconds);
      const clock = new SimClock(startMs);
      await setChainTime(provider, clock.now());

      const stateDir = options.stateDir ?? path.join(".demo", "state");
      rmSync(stateDir, { recursive: true, force: true });
      mkdirSync(stateDir, { recursive: true });
      const meters: RunningMeter[] = await startMeterServers(members, clock);
      const twins = meters.map((m) => new HouseholdSimulator(m.member.spec, new Date(clock.now())));
      const automaticNetWh = new Map<number, bigint>();
      /** The twins' net energy in `slot` (slots come in order). */
      const automaticNet = (slot: number): bigint => {
        const net = (t: HouseholdSimulator, ms: number) => {
          t.advanceTo(new Date(ms));
          return t.registers.importWh - t.registers.exportWh;
        };
        const wh = twins.reduce((a, t) => a - net(t, slotStartMs(slot, slotSeconds)) + net(t, slotStartMs(slot + 1, slotSeconds)), 0);
        return BigInt(Math.round(wh));
      };
      cleanups.push(() => Promise.all(meters.map((m) => m.server.close())).then(() => {}));
      const inbox = new ReadingInbox(logger);
      const inboxUrl = await inbox.listen();
      cleanups.push(() => inbox.close());

      const agents: MeterAgent[] = [];
      const intradayTraders: Array<[MeterAgent, IntradayTrader]> = [];
      for (const m of meters) {
        const h = households.find((x) => x.member.id === m.member.id)!;
        const meter = new ModbusMeter({ connection: { kind: "tcp", host: "127.0.0.1", port: m.server.port, unitId: 1 }, map: SDM630, clock, logger });
        cleanups.push(() => meter.close());
        const agent = new MeterAgent({
          account: h.account,
          meterKey: h.meterKey as unknown as Wallet,
          settlement: Settlement__factory.connect(settlementAddress, h.meterKey),
          meter,
          store: new JsonStore<MeterAgentState>(path.join(stateDir, `${m.member.id}.json`)),
          clock,
          logger: (r) => logger({ ...r, agent: m.member.id }),
          masterUrl: inboxUrl,
          selfSubmitAfterMs: 240_000,
          captureLagMs: 60_000,
          dayAhead: withDayAhead
            ? new DayAheadTrader({
                account: h.account,
                market: market.dayAheadMarket.connect(h.meterKey),
                strategy: strategyOf(agents.length),
                tradeLeadMs: 2 * 3_600_000,
                logger: (r) => logger({ ...r, agent: m.member.id }),
              })
            : undefined,
        });
        await agent.init();
        // The agent forecasts from its own metered history; it starts with the week before the
        // demo's day, simulated, as if it had been running since then.
        for (const [slot, wh] of previousDays(m.member, daySlot, slotSeconds)) agent.recordHistory(slot, wh);
        agents.push(agent);
        if (options.intraday ?? true) {
          const assets = assetsOfSimulatedHousehold(m.member.spec);
          const flexibility = assets
            ? new FlexibilityController({
                assets,
                io: new ModbusDeviceIo(meter),
                slotSeconds,
                clock,
                logger: (r) => logger({ ...r, agent: m.member.id }),
              })
            : undefined;
          intradayTraders.push([
            agent,
            new IntradayTrader({
              account: h.account,
              market: market.intradayMarket.connect(h.meterKey),
              flexibility,
              pricing: DEFAULT_FLEX_PRICING,
              logger: (r) => logger({ ...r, agent: m.member.id }),
            }),
          ]);
        }
      }
      // The agents run on their own, as on a Pi, only with a fast poll; paused while the
      // simulated clock jumps, since on a Pi time does not jump under a step in flight.
      let paused = false;
      const timer = setInterval(() => {
        if (!paused) agents.forEach((a) => void a.tick());
      }, 40);
      cleanups.push(() => clearInterval(timer));

      const clearer = new DayAheadClearer({ market: market.dayAheadMarket.connect(admin), logger: (r) => logger({ ...r, agent: "master" }) });
      await clearer.init();
      const balancing = new BalancingClearer({ market: market.intradayMarket.connect(admin), logger: (r) => logger({ ...r, agent: "master" }) });
      await balancing.init();
      const master = new MasterAgent({
        dayAhead: { market: market.dayAheadMarket, clearer },
        intraday: { market: market.intradayMarket, clearer: balancing },
        settlement,
        registry: market.participantRegistry,
        inbox,
        store: new JsonStore<MasterState>(path.join(stateDir, "master.json")),
        clock,
        logger: (r) => logger({ ...r, agent: "master" }),
        collectTimeoutMs: 5_000,
      });
      await master.init();

      /** Moves the simulated and the chain clock together, with the agents' timer paused. */
      const jump = async (ms: number): Promise<void> => {
        paused = true;
        await Promise.all(agents.map((a) => a.idle()));
        clock.set(ms);
        await setChainTime(provider, clock.now());
      };

      let dayAhead: DayAheadSlotResult[] = [];
      if (withDayAhead) {
        // The agents trade during the hour before gate closure; then the master clears the day.
        const deadline = Date.now() + 30_000;
        while (agents.some((a) => a.dayAheadFirstSlot !== daySlot) && Date.now() < deadline) await sleep(50);
        await jump(firstDay.getTime() - gateLeadMs);
        dayAhead = await clearer.clearDue(clock.now());
        options.onDayAhead?.(dayAhead);
        await jump(slotStartMs(daySlot - 1, slotSeconds));
        paused = false;
      }

      // The balancing market runs from the day on (agents would otherwise offer for the day before).
      for (const [agent, trader] of intradayTraders) await agent.enableIntraday(trader);

      const reports: SlotReport[] = [];
      const record = (r: SlotReport | undefined): void => {
        if (r === undefined || r.slot < daySlot) return; // the slot before the day only sets baselines
        reports.push(r);
        automaticNetWh.set(r.slot, automaticNet(r.slot));
        options.onSlot?.(r);
      };
      const slots = options.slots ?? 96;
      const lastSlot = daySlot + slots - 1;
      for (let slot = daySlot - 1; slot <= lastSlot; slot++) {
        await jump(slotStartMs(slot + 1, slotSeconds));
        // Each agent completes a step at this moment: the slot's reading, its balancing
        // forecasts and offers, its activations.
        await Promise.all(agents.map((a) => a.tick()));
        paused = false;
        record(await master.handleSlotEnd(slot));
      }
      // The last slot has no next reading to bill it: settle it once its window has passed.
      await jump(slotStartMs(lastSlot + 1, slotSeconds) + Number(await settlement.readingWindow()) * 1000 + 1000);
      record(await master.settleSlot(lastSlot));
      clearInterval(timer);
      return { households, reports, automaticNetWh, dayAhead, market, settlement };
    };
    return await use(run);
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

function spec(h: Household, tokens: string): ParticipantSpec {
  const slack = h.member.kind === "slackUnit";
  return {
    account: h.account,
    meterId: encodeBytes32String(h.member.id),
    meterKey: h.meterKey.address,
    kind: REGISTRY_KIND[h.member.kind],
    amount: TOKEN(slack ? "10000" : tokens),
  };
}

/** Households' price strategies differ a little, so that the auction has something to sort. */
function strategyOf(i: number): PriceStrategy {
  return { ...DEFAULT_STRATEGY, buyAt: 0.5 + 0.05 * (i % 5), sellAt: 0.2 + 0.05 * (i % 4) };
}

/**
 * Net energy per slot of `member`'s household on the `days` days before `daySlot`, from the
 * simulator. A week, so that the forecasts average over days of both kinds (the demo's
 * midsummer day may follow a Sunday) and over more than one day's weather. The simulation
 * starts a day earlier, so that the battery and the EV are in their daily rhythm: started
 * at midnight, a fresh simulator would charge the car from scratch overnight.
 */
function previousDays(member: NeighbourhoodMember, daySlot: number, slotSeconds: number, days = 7): Array<[number, number]> {
  const slotsPerDay = 86_400 / slotSeconds;
  const first = daySlot - days * slotsPerDay;
  const sim = new HouseholdSimulator(member.spec, new Date(slotStartMs(first - slotsPerDay, slotSeconds)));
  sim.advanceTo(new Date(slotStartMs(first, slotSeconds)));
  const out: Array<[number, number]> = [];
  let { importWh, exportWh } = sim.registers;
  for (let slot = first; slot < daySlot; slot++) {
    sim.advanceTo(new Date(slotStartMs(slot + 1, slotSeconds)));
    const r = sim.registers;
    out.push([slot, Math.round(r.importWh - importWh - (r.exportWh - exportWh))]);
    ({ importWh, exportWh } = r);
  }
  return out;
}

/** Households let the markets take escrow from their wallets (EIP-2612 permits, sent by the regulator). */
async function approveMarkets(market: MarketContracts, households: Household[]): Promise<void> {
  for (const spender of [await market.dayAheadMarket.getAddress(), await market.intradayMarket.getAddress()]) {
    await approve(market, households, spender);
  }
}

async function approve(market: MarketContracts, households: Household[], spender: string): Promise<void> {
  const value = TOKEN("1000");
  for (const h of households.filter((x) => x.member.kind !== "slackUnit")) {
    const { deadline, v, r, s } = await signPermit(market, h, spender, value);
    await (await market.energyToken.permit(h.account, spender, value, deadline, v, r, s)).wait();
  }
}

/** `h`'s EIP-2612 permit for `spender` to take `value` of its tokens, valid for ten years. */
async function signPermit(market: MarketContracts, h: Household, spender: string, value: bigint): Promise<{ deadline: bigint; v: number; r: string; s: string }> {
  const token = market.energyToken;
  const [name, tokenAddress, nonce] = await Promise.all([token.name(), token.getAddress(), token.nonces(h.account)]);
  const deadline = BigInt(Math.floor(Date.now() / 1000) + 10 * 365 * 86400);
  const domain = { name, version: "1", chainId: market.chainId, verifyingContract: tokenAddress };
  const { v, r, s } = Signature.from(await h.wallet.signTypedData(domain, PERMIT_TYPES, { owner: h.account, spender, value, nonce, deadline }));
  return { deadline, v, r, s };
}

const PERMIT_TYPES = {
  Permit: [
    { name: "owner", type: "address" },
    { name: "spender", type: "address" },
    { name: "value", type: "uint256" },
    { name: "nonce", type: "uint256" },
    { name: "deadline", type: "uint256" },
  ],
};

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Every household deposits into escrow with an EIP-2612 permit: one transaction, no approve. */
async function depositAll(settlement: Settlement, market: MarketContracts, households: Household[], tokens: string): Promise<void> {
  const spender = await settlement.getAddress();
  for (const h of households) {
    const value = TOKEN(h.member.kind === "slackUnit" ? "5000" : tokens);
    const { deadline, v, r, s } = await signPermit(market, h, spender, value);
    await (await settlement.connect(h.wallet).depositWithPermit(value, deadline, v, r, s)).wait();
  }
}

async function chainTimeMs(provider: JsonRpcProvider): Promise<number> {
  const block = await provider.getBlock("latest");
  return Number(block!.timestamp) * 1000;
}

/** Moves the chain's clock to `ms` (it only goes forward) and mines a block there. */
export async function setChainTime(provider: JsonRpcProvider, ms: number): Promise<void> {
  const target = Math.floor(ms / 1000);
  if (target * 1000 <= (await chainTimeMs(provider))) return;
  await provider.send("evm_setNextBlockTimestamp", [target]);
  await provider.send("evm_mine", []);
}

/** Midnight UTC of the next 21 June after `ms`: a long sunny day shows local trade best. */
export function nextMidsummer(ms: number): Date {
  const now = new Date(ms);
  let year = now.getUTCFullYear();
  if (ms >= Date.UTC(year, 5, 20)) year += 1;
  return new Date(Date.UTC(year, 5, 21));
}
