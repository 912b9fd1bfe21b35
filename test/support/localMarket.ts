/**
 * A market on a real `hardhat node` for the agent tests: the node started on a free port, the
 * Market module deployed with Ignition's CLI (optionally with a parameters file, e.g. short
 * real-time slots), participants registered, funded and with deposits in escrow, and helpers
 * to move the chain's clock and read the settlement's events.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { expect } from "chai";
import { encodeBytes32String, HDNodeWallet, parseEther, parseUnits, Wallet, type JsonRpcProvider } from "ethers";
import { readDeployedAddresses } from "../../agents/chain/deployment.js";
import { distribute } from "../../agents/chain/distribution.js";
import { deployMarket, localNodeAccount, startLocalNode, type LocalDeployment, type LocalNode } from "../../agents/chain/localNode.js";
import { connectMarket, openProvider, type MarketContracts } from "../../agents/chain/market.js";
import type { ParticipantKind } from "../../agents/chain/participants.js";
import { readingDomain } from "../../agents/chain/readings.js";
import { Settlement__factory, type EnergyToken, type ParticipantRegistry, type Settlement } from "../../agents/chain/types/index.js";
import { setChainTime } from "../../agents/simulator/marketRun.js";

export { setChainTime };

/** Tokens in base units (6 decimals). */
export const TOKENS = (amount: string): bigint => parseUnits(amount, 6);

export interface TestParticipant {
  name: string;
  kind: ParticipantKind;
  account: string;
  /** The participant's wallet (a funded dev account of the node). */
  wallet: Wallet;
  /** The meter agent's key, funded with ether so that the agent can submit on its own. */
  meterKey: HDNodeWallet;
}

export interface ParticipantOptions {
  name: string;
  kind: ParticipantKind;
  /** Index of the node's dev account used as the participant's wallet (1..19; 0 is the admin). */
  accountIndex: number;
  /** Tokens minted to the wallet and deposited into escrow (default 100 and 50). */
  mint?: string;
  deposit?: string;
}

export interface TestMarket {
  node: LocalNode;
  deployment: LocalDeployment;
  /** Provider of the test itself (fast polling). */
  provider: JsonRpcProvider;
  /** Account 0: deployer, DEFAULT_ADMIN, REGULATOR and MASTER. */
  admin: Wallet;
  market: MarketContracts;
  token: EnergyToken;
  registry: ParticipantRegistry;
  /** Settlement connected with the admin. */
  settlement: Settlement;
  settlementAddress: string;
  chainId: bigint;
  slotSeconds: number;
  readingWindow: number;
  /** Registers, funds and deposits for each participant, one distribution for all. */
  addParticipants(options: ParticipantOptions[]): Promise<TestParticipant[]>;
  domain(): ReturnType<typeof readingDomain>;
  /** The latest block's timestamp in ms. */
  chainTimeMs(): Promise<number>;
  /** Stops everything; safe to call after a failed start. */
  stop(): Promise<void>;
}

/**
 * Starts a node and deploys the Market module. `parameters` (Ignition module parameters, e.g.
 * `{ SettlementModule: { slotSeconds: 10, readingWindow: 5 } }`) go through a parameters file
 * in a temporary folder, exactly as an operator would pass them.
 */
export async function startTestMarket(options: { parameters?: Record<string, Record<string, unknown>> } = {}): Promise<TestMarket> {
  const cleanups: Array<() => Promise<void> | void> = [];
  const stop = async (): Promise<void> => {
    for (const cleanup of cleanups.reverse()) {
      try {
        await cleanup();
      } catch {
        // keep cleaning up
      }
    }
    cleanups.length = 0;
  };
  try {
    const node = await startLocalNode();
    cleanups.push(() => node.stop());
    let parametersFile: string | undefined;
    if (options.parameters !== undefined) {
      const dir = mkdtempSync(path.join(tmpdir(), "agent-test-params-"));
      cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
      parametersFile = path.join(dir, "parameters.json");
      writeFileSync(parametersFile, JSON.stringify({ EnergyTokenModule: { name: "Test Energy Token", symbol: "kWhT" }, ...options.parameters }, null, 2));
    }
    const deployment = await deployMarket(node.url, { deploymentId: `agents-test-${node.port}`, parametersFile });
    cleanups.push(() => deployment.remove());
    const provider = await openProvider(node.url, { pollingIntervalMs: 50 });
    cleanups.push(() => provider.destroy());
    const admin = new Wallet(localNodeAccount(0).privateKey, provider);
    const market = await connectMarket({ rpcUrl: node.url, addresses: deployment.addresses, signer: admin, provider });
    const settlementAddress = readDeployedAddresses(deployment.deploymentDir)["SettlementModule#Settlement"]!;
    const settlement = Settlement__factory.connect(settlementAddress, admin);
    const [slotSeconds, readingWindow] = (await Promise.all([settlement.slotSeconds(), settlement.readingWindow()])).map(Number) as [number, number];

    const addParticipants = async (list: ParticipantOptions[]): Promise<TestParticipant[]> => {
      const participants = list.map((o): TestParticipant => {
        const wallet = new Wallet(localNodeAccount(o.accountIndex).privateKey, provider);
        const meterKey = HDNodeWallet.fromPhrase(
          "test test test test test test test test test test test junk",
          undefined,
          `m/44'/60'/7'/0/${o.accountIndex}`,
        ).connect(provider);
        return { name: o.name, kind: o.kind, account: wallet.address, wallet, meterKey };
      });
      await distribute(
        market,
        participants.map((p, i) => ({
          account: p.account,
          meterId: encodeBytes32String(p.name.slice(0, 31)),
          meterKey: p.meterKey.address,
          kind: p.kind,
          amount: TOKENS(list[i]!.mint ?? "100"),
        })),
      );
      for (const [i, p] of participants.entries()) {
        await (await admin.sendTransaction({ to: p.meterKey.address, value: parseEther("1") })).wait();
        const deposit = TOKENS(list[i]!.deposit ?? "50");
        if (deposit > 0n) {
          await (await market.energyToken.connect(p.wallet).approve(settlementAddress, deposit)).wait();
          await (await settlement.connect(p.wallet).deposit(deposit)).wait();
        }
      }
      return participants;
    };

    return {
      node,
      deployment,
      provider,
      admin,
      market,
      token: market.energyToken,
      registry: market.participantRegistry,
      settlement,
      settlementAddress,
      chainId: market.chainId,
      slotSeconds,
      readingWindow,
      addParticipants,
      domain: () => readingDomain(market.chainId, settlementAddress),
      chainTimeMs: async () => Number((await provider.getBlock("latest"))!.timestamp) * 1000,
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}

/**
 * Brings the node's clock back in step with the wall clock, for tests whose agents run on the
 * system clock. Each block needs a later timestamp than the one before, so a burst of
 * transactions (a deployment, registrations) pushes the node's clock ahead of the wall clock,
 * and `hardhat node` keeps that lead for every later block (seconds, after a deployment).
 * This waits until the wall clock has passed the latest block, then pins the next block to
 * the coming second; later blocks follow the wall clock within a second or two.
 */
export async function alignChainClockWithWall(provider: JsonRpcProvider): Promise<void> {
  const latestMs = Number((await provider.getBlock("latest"))!.timestamp) * 1000;
  const ahead = latestMs - Date.now();
  if (ahead > -1_000) await new Promise((resolve) => setTimeout(resolve, ahead + 1_000));
  await provider.send("evm_setNextBlockTimestamp", [Math.ceil(Date.now() / 1000)]);
  await provider.send("evm_mine", []);
}

/** A reading as the ReadingRecorded event has it. */
export interface RecordedReading {
  account: string;
  slot: number;
  importWh: bigint;
  exportWh: bigint;
  importDeltaWh: bigint;
  exportDeltaWh: bigint;
  txHash: string;
}

/** Every ReadingRecorded event of `account` (or of everyone), oldest first. */
export async function recordedReadings(settlement: Settlement, account?: string): Promise<RecordedReading[]> {
  const logs = await settlement.queryFilter(settlement.filters.ReadingRecorded(account), 0, "latest");
  return logs.map((l) => ({
    account: l.args.account,
    slot: Number(l.args.slot),
    importWh: l.args.importWh,
    exportWh: l.args.exportWh,
    importDeltaWh: l.args.importDeltaWh,
    exportDeltaWh: l.args.exportDeltaWh,
    txHash: l.transactionHash,
  }));
}

export interface BilledEvent {
  account: string;
  slot: number;
  /** The bill's deviation: without markets (as in these tests) it is the metered net energy. */
  netWh: bigint;
  amount: bigint;
  shortfall: bigint;
  txHash: string;
}

/** Every Billed event of `account` (or of everyone), oldest first. */
export async function billedEvents(settlement: Settlement, account?: string): Promise<BilledEvent[]> {
  const logs = await settlement.queryFilter(settlement.filters.Billed(account), 0, "latest");
  return logs.map((l) => ({
    account: l.args.account,
    slot: Number(l.args.slot),
    netWh: l.args.deviationWh,
    amount: l.args.amount,
    shortfall: l.args.shortfall,
    txHash: l.transactionHash,
  }));
}

/** token.balanceOf(settlement) + badDebt == totalDeposits + openPool. */
export async function expectEscrowIdentity(token: EnergyToken, settlement: Settlement): Promise<void> {
  const address = await settlement.getAddress();
  const [balance, badDebt, totalDeposits, openPool] = await Promise.all([
    token.balanceOf(address),
    settlement.badDebt(),
    settlement.totalDeposits(),
    settlement.openPool(),
  ]);
  expect(balance + badDebt, "balanceOf(settlement) + badDebt == totalDeposits + openPool").to.equal(totalDeposits + openPool);
}
