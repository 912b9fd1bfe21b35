import type { BaseWallet } from "ethers";
import type { LocalDeployment, LocalNode } from "../../chain/localNode.js";
import type { MarketContracts } from "../../chain/market.js";

/** Flat figures: dotted keys (e.g. "token.mint.gas") to numbers. */
export type BenchFigures = Record<string, number>;

/**
 * One part of the benchmark. Each issue adds its own section to SECTIONS in sections.ts; a
 * section measures on real local nodes (ctx.freshMarket) and returns its figures, with keys
 * that start with its own prefix so that sections never collide.
 */
export interface BenchSection {
  /** Short name, used by --only and in progress lines. */
  name: string;
  run(ctx: BenchContext): Promise<BenchFigures>;
}

export interface BenchContext {
  /** Progress for people, on stderr. */
  log(message: string): void;
  /**
   * A new `hardhat node` with the Market module deployed by Ignition, connected with the
   * deployer (local account 0, holder of every admin role). The runner stops the node and
   * removes the deployment folder when the benchmark ends.
   */
  freshMarket(): Promise<BenchMarket>;
}

export interface BenchMarket {
  node: LocalNode;
  deployment: LocalDeployment;
  market: MarketContracts;
  deployer: BaseWallet;
}
