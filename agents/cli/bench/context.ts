import { Wallet } from "ethers";
import { deployMarket, localNodeAccount, startLocalNode, type LocalDeployment, type LocalNode } from "../../chain/localNode.js";
import { connectMarket } from "../../chain/market.js";
import type { BenchContext, BenchMarket } from "./types.js";

/** A BenchContext whose markets are all torn down by `close`. */
export function createBenchContext(log: (message: string) => void): BenchContext & { close(): Promise<void> } {
  const nodes: LocalNode[] = [];
  const deployments: LocalDeployment[] = [];
  const markets: BenchMarket[] = [];
  return {
    log,
    async freshMarket(): Promise<BenchMarket> {
      const node = await startLocalNode();
      nodes.push(node);
      log(`  started hardhat node at ${node.url}; deploying the Market module with Ignition`);
      const deployment = await deployMarket(node.url);
      deployments.push(deployment);
      const deployer = new Wallet(localNodeAccount(0).privateKey);
      const market = await connectMarket({ rpcUrl: node.url, addresses: deployment.addresses, signer: deployer, pollingIntervalMs: 100 });
      const bench = { node, deployment, market, deployer };
      markets.push(bench);
      return bench;
    },
    async close(): Promise<void> {
      for (const m of markets) m.market.provider.destroy();
      for (const d of deployments) d.remove();
      await Promise.all(nodes.map((n) => n.stop()));
    },
  };
}
