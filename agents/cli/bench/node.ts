/**
 * What the day-ahead and intra-day sections share: a local node driven with automining off
 * (transactions from unlocked or impersonated accounts, many to a block), Hardhat's in-process
 * EDR network without the per-transaction cap, and small helpers.
 */
import path from "node:path";
import { BrowserProvider, getAddress, type JsonRpcApiProvider } from "ethers";
import { PROJECT_ROOT } from "../../chain/localNode.js";

/** EIP-7825's per-transaction gas cap, which the node enforces. */
export const TX_GAS_CAP = 2 ** 24;
/** A gas limit for transactions above the cap, where there is none (below the block gas limit). */
export const UNCAPPED_GAS = 50_000_000n;
const GWEI = 10n ** 9n;
const MAX_FEE = 100n * GWEI;
const PRIORITY_FEE = GWEI;
/** Transactions sent before mining them: the node slows down with thousands pending. */
const MEMPOOL = 250;

export interface Tx {
  from: string;
  to: string;
  data: string;
  gas: bigint;
}

/** A local node with automining off: sends from unlocked or impersonated accounts, mines, measures. */
export class Node {
  private readonly nonces = new Map<string, number>();
  private automine = true;

  constructor(readonly provider: JsonRpcApiProvider) {}

  async latestTimestamp(): Promise<number> {
    const block = await this.provider.send("eth_getBlockByNumber", ["latest", false]);
    return Number(block.timestamp);
  }

  async setTimeAndMine(t: number): Promise<void> {
    await this.setNextBlockTimestamp(t);
    await this.provider.send("evm_mine", []);
  }

  async impersonate(address: string): Promise<void> {
    await this.provider.send("hardhat_impersonateAccount", [address]);
    await this.provider.send("hardhat_setBalance", [address, hex(10n ** 21n)]);
  }

  /**
   * A gas limit for `tx`: the cap if it runs within it, a block's worth where there is no cap,
   * undefined if the node's cap is too small for it (or it fails).
   */
  async gasLimitFor(tx: { from: string; to: string; data: string }): Promise<bigint | undefined> {
    for (const gas of [BigInt(TX_GAS_CAP), UNCAPPED_GAS]) {
      try {
        await this.provider.send("eth_call", [{ ...tx, gas: hex(gas) }, "latest"]);
        return gas;
      } catch {
        // Try the next limit.
      }
    }
    return undefined;
  }

  /**
   * Sends `txs` (nonces assigned here) and mines them, the first block at `at` if given; returns
   * each one's gasUsed, in order; all must succeed. At most MEMPOOL wait at a time.
   */
  async transact(txs: Tx[], at?: number): Promise<number[]> {
    if (this.automine) {
      await this.provider.send("evm_setAutomine", [false]);
      this.automine = false;
    }
    const out: number[] = [];
    let first = true;
    for (const batch of chunk(txs, MEMPOOL)) {
      const unknown = [...new Set(batch.map((tx) => tx.from))].filter((x) => !this.nonces.has(x));
      const counts = await Promise.all(unknown.map((x) => this.provider.send("eth_getTransactionCount", [x, "pending"]) as Promise<string>));
      unknown.forEach((x, i) => this.nonces.set(x, Number(counts[i])));
      const hashes = await Promise.all(
        batch.map(
          (tx) =>
            this.provider.send("eth_sendTransaction", [
              { from: tx.from, to: tx.to, data: tx.data, gas: hex(tx.gas), nonce: hex(this.nextNonce(tx.from)), maxFeePerGas: hex(MAX_FEE), maxPriorityFeePerGas: hex(PRIORITY_FEE) },
            ]) as Promise<string>,
        ),
      );
      if (first && at !== undefined) await this.setNextBlockTimestamp(at);
      first = false;
      let mined = 0;
      while (mined < hashes.length) {
        await this.provider.send("evm_mine", []);
        const block = await this.provider.send("eth_getBlockByNumber", ["latest", false]);
        const count = (block.transactions as string[]).length;
        if (count === 0) throw new Error(`evm_mine included none of the ${hashes.length - mined} pending transactions`);
        mined += count;
      }
      const receipts = (await Promise.all(hashes.map((h) => this.provider.send("eth_getTransactionReceipt", [h])))) as ({ status: string; gasUsed: string } | null)[];
      receipts.forEach((r, i) => {
        if (r === null) throw new Error(`transaction ${hashes[i]} was not mined`);
        if (r.status !== "0x1") throw new Error(`transaction ${hashes[i]} reverted (gasUsed ${Number(r.gasUsed)})`);
        out.push(Number(r.gasUsed));
      });
    }
    return out;
  }

  private async setNextBlockTimestamp(t: number): Promise<void> {
    const latest = await this.latestTimestamp();
    if (t <= latest) throw new Error(`cannot mine at ${t}: the latest block is at ${latest}`);
    await this.provider.send("evm_setNextBlockTimestamp", [t]);
  }

  private nextNonce(address: string): number {
    const n = this.nonces.get(address);
    if (n === undefined) throw new Error(`no nonce known for ${address}`);
    this.nonces.set(address, n + 1);
    return n;
  }
}

/** The Market module on Hardhat's in-process EDR network, as inProcessWithoutCap deploys it. */
export interface InProcessMarket {
  provider: BrowserProvider;
  /** The network's first account, holder of every admin role. */
  admin: string;
  chainId: bigint;
  addresses: { energyToken: string; participantRegistry: string; settlement: string; dayAheadMarket: string; intradayMarket: string };
  close(): Promise<void>;
}

/**
 * Hardhat's in-process EDR network under Prague rules (no per-transaction cap), with the
 * Market module deployed by Ignition's library. Loads Hardhat only when needed.
 */
export async function inProcessWithoutCap(log: (m: string) => void): Promise<InProcessMarket> {
  const { network } = await import("hardhat");
  const connection = await network.connect({ override: { hardfork: "prague" } });
  const { default: MarketModule } = await import("../../../ignition/modules/Market.js");
  log("  in-process EDR network (Prague: no transaction cap): deploying the Market module with Ignition");
  const deployed = await connection.ignition.deploy(MarketModule, {
    parameters: path.join(PROJECT_ROOT, "ignition", "parameters", "localhost.json"),
    displayUi: false,
  });
  // No cache: ethers would otherwise answer eth_blockNumber from a 250 ms cache, and readBook
  // and readOffers would look for events up to a block before the latest transactions.
  const provider = new BrowserProvider(connection.provider, undefined, { cacheTimeout: -1 });
  const addresses = {
    energyToken: await deployed.energyToken.getAddress(),
    participantRegistry: await deployed.participantRegistry.getAddress(),
    settlement: await deployed.settlement.getAddress(),
    dayAheadMarket: await deployed.dayAheadMarket.getAddress(),
    intradayMarket: await deployed.intradayMarket.getAddress(),
  };
  const [admin] = (await provider.send("eth_accounts", [])) as string[];
  if (admin === undefined) throw new Error("the in-process network has no accounts");
  const { chainId } = await provider.getNetwork();
  return { provider, admin: getAddress(admin), chainId, addresses, close: () => connection.close() };
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) throw new Error("median of nothing");
  const s = [...xs].sort((x, y) => x - y);
  return s[Math.floor(s.length / 2)]!;
}

export function sum(xs: readonly number[]): number {
  return xs.reduce((x, y) => x + y, 0);
}

export function chunk<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

export function hex(v: bigint | number): string {
  return `0x${BigInt(v).toString(16)}`;
}
