/**
 * Gas of the foundation: deploying the token and the registry, registering and minting one
 * participant, and a whole distribution per participant for 100 and 1,000 participants. All
 * from receipts' gasUsed on a real local node.
 */
import type { JsonRpcProvider } from "ethers";
import { distribute } from "../../chain/distribution.js";
import { kindValue } from "../../chain/participants.js";
import { syntheticParticipants } from "../syntheticParticipants.js";
import type { BenchContext, BenchFigures, BenchSection } from "./types.js";

export const foundationSection: BenchSection = {
  name: "foundation",
  async run(ctx: BenchContext): Promise<BenchFigures> {
    const figures: BenchFigures = {};
    const first = await ctx.freshMarket();
    const { market } = first;

    ctx.log("  deployment gas from the deployment transactions' receipts");
    figures["deploy.EnergyToken.gas"] = await deploymentGas(market.provider, market.addresses.energyToken);
    figures["deploy.ParticipantRegistry.gas"] = await deploymentGas(market.provider, market.addresses.participantRegistry);

    ctx.log("  one registration and one mint");
    const [single] = syntheticParticipants(1, "bench-single");
    if (single === undefined) throw new Error("syntheticParticipants(1) returned nothing");
    const registerTx = await market.participantRegistry.register({
      account: single.account,
      meterId: single.meterId,
      meterKey: single.meterKey,
      kind: kindValue(single.kind),
    });
    figures["registry.register.gas"] = await gasOf(registerTx.wait());
    // Minting to an account that holds nothing yet, as in a first distribution.
    figures["token.mint.gas"] = await gasOf((await market.energyToken.mint(single.account, single.amount)).wait());

    for (const n of [100, 1000]) {
      const { market: target } = n === 100 ? first : await ctx.freshMarket();
      ctx.log(`  distributing to ${n} participants`);
      const { result } = await distribute(target, syntheticParticipants(n, `bench-${n}`, { slackUnit: true }), {
        onProgress: (p) => {
          if (p.phase === "register" || p.phase === "mint") ctx.log(`    ${p.phase} batch ${p.batch}/${p.batches}: ${p.gasUsed} gas`);
        },
      });
      if (result.registered !== n) throw new Error(`distribution of ${n} registered ${result.registered}`);
      figures[`distribute.perParticipant.n${n}.gas`] = Math.round(Number(result.gasUsed) / n);
    }
    return figures;
  },
};

async function gasOf(receipt: Promise<{ gasUsed: bigint } | null>): Promise<number> {
  const r = await receipt;
  if (r === null) throw new Error("no receipt");
  return Number(r.gasUsed);
}

/**
 * The gas of the transaction that created `address`. A fresh node holds only the deployment,
 * so scanning its few blocks is quick, and it needs nothing from Ignition's journal format.
 */
async function deploymentGas(provider: JsonRpcProvider, address: string): Promise<number> {
  const latest = await provider.getBlockNumber();
  for (let n = 0; n <= latest; n++) {
    const block = await provider.getBlock(n);
    for (const hash of block?.transactions ?? []) {
      const receipt = await provider.getTransactionReceipt(hash);
      if (receipt?.contractAddress === address) return Number(receipt.gasUsed);
    }
  }
  throw new Error(`no deployment transaction for ${address} in blocks 0..${latest}`);
}
