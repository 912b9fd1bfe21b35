/**
 * End to end on a real `hardhat node`: deploy the Market module with Ignition, distribute a
 * participants file with the CLI, check balances and registry records, then deploy and
 * distribute again and check that nothing changed and nothing was sent.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "chai";
import { formatUnits, id, Wallet } from "ethers";
import {
  distribute,
  DistributionConflictError,
  executeDistribution,
  MINT_BATCH_SIZE,
  planDistribution,
} from "../../agents/chain/distribution.js";
import { deployMarket, localNodeAccount, PROJECT_ROOT, startLocalNode, type LocalDeployment, type LocalNode } from "../../agents/chain/localNode.js";
import { ChainConnectionError, connectMarket, probeChainId, type MarketContracts } from "../../agents/chain/market.js";
import { kindValue, type ParticipantSpec } from "../../agents/chain/participants.js";
import { formatParticipantsCsv } from "../../agents/cli/participantsFile.js";
import { syntheticParticipants } from "../../agents/cli/syntheticParticipants.js";

const DEPLOYER = localNodeAccount(0);
const TSX_CLI = join(PROJECT_ROOT, "node_modules", "tsx", "dist", "cli.mjs");

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs one of agents/cli/*.ts as `npm run` would (tsx under this Node), with the deployer's key. */
function runCli(script: string, args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [TSX_CLI, join("agents", "cli", script), ...args], {
      cwd: PROJECT_ROOT,
      env: { ...process.env, MARKET_PRIVATE_KEY: DEPLOYER.privateKey, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.once("error", reject);
    child.once("exit", (code) => resolve({ code, stdout, stderr }));
  });
}

/** What the chain says about the participants: balances, records, count and slack unit. */
async function snapshot(market: MarketContracts, participants: readonly ParticipantSpec[]) {
  const registry = market.participantRegistry;
  return {
    count: await registry.participantCount(),
    slackUnit: await registry.slackUnit(),
    totalSupply: await market.energyToken.totalSupply(),
    balances: await Promise.all(participants.map((p) => market.energyToken.balanceOf(p.account))),
    records: await Promise.all(
      participants.map(async (p) => {
        const r = await registry.participant(p.account);
        return { meterKey: r.meterKey, kind: r.kind, status: r.status, index: r.index, meterId: r.meterId };
      }),
    ),
    deployerNonce: await market.provider.getTransactionCount(DEPLOYER.address),
    blockNumber: await market.provider.getBlockNumber(),
  };
}

describe("deploy and distribute on a real hardhat node (e2e)", function () {
  // A first deployment may have to compile; everything after it takes seconds.
  this.timeout(300_000);

  let node: LocalNode;
  let deployment: LocalDeployment;
  let market: MarketContracts;
  let dir: string;
  let file: string;
  // 150 participants: two registration transactions and two mint batches, slack unit last.
  const participants = syntheticParticipants(150, "e2e", { slackUnit: true });

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "e2e-distribution-"));
    file = join(dir, "participants.csv");
    writeFileSync(file, formatParticipantsCsv(participants));
    node = await startLocalNode();
    // The default id, local-<port>, is git-ignored, should a crashed run leave the folder behind.
    deployment = await deployMarket(node.url);
    market = await connectMarket({
      rpcUrl: node.url,
      addresses: deployment.addresses,
      signer: new Wallet(DEPLOYER.privateKey),
      pollingIntervalMs: 100,
    });
  });

  after(async () => {
    market?.provider.destroy();
    deployment?.remove();
    await node?.stop();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  it("distributes the file with the CLI: balances and registry records match it", async () => {
    const cliArgs = ["--file", file, "--rpc", node.url, "--deployment", deployment.deploymentDir];
    const run = await runCli("distribute.ts", cliArgs);
    expect(run.code, run.stderr).to.equal(0);
    expect(run.stdout).to.include("participants: 150 (0 registered already, 150 to register)");
    expect(run.stdout).to.include("done: registered 150, minted 2 batches");
    expect(run.stderr).to.include("registered batch 2/2").and.include("minted batch 2/2");

    const s = await snapshot(market, participants);
    expect(s.count).to.equal(150n);
    expect(s.slackUnit).to.equal(participants[149]?.account);
    expect(s.balances).to.deep.equal(participants.map((p) => p.amount));
    expect(s.totalSupply).to.equal(participants.reduce((sum, p) => sum + p.amount, 0n));
    expect(s.records).to.deep.equal(
      participants.map((p, i) => ({ meterKey: p.meterKey, kind: BigInt(kindValue(p.kind)), status: 1n, index: BigInt(i), meterId: p.meterId })),
    );
    for (let i = 0; i < 150; i += 37) expect(await market.participantRegistry.participantAt(i)).to.equal(participants[i]?.account);
  });

  it("deploying and distributing again changes nothing and sends no transaction", async () => {
    const before = await snapshot(market, participants);

    const again = await deployMarket(node.url, { deploymentId: deployment.deploymentId });
    expect(again.addresses).to.deep.equal(deployment.addresses);

    const run = await runCli("distribute.ts", ["--file", file, "--rpc", node.url, "--deployment", deployment.deploymentDir]);
    expect(run.code, run.stderr).to.equal(0);
    expect(run.stdout).to.include("nothing to do");

    const { plan, result } = await distribute(market, participants);
    expect(plan.alreadyRegistered).to.equal(150);
    expect(plan.mintBatches.every((b) => b.minted)).to.equal(true);
    expect(result.transactions).to.deep.equal([]);

    expect(await snapshot(market, participants)).to.deep.equal(before);
  });

  it("resumes an interrupted distribution without minting anything twice", async () => {
    const more = syntheticParticipants(2 * MINT_BATCH_SIZE + 10, "resume");
    const plan = await planDistribution(market, more, { registerBatchSize: 50 });
    expect(plan.registerBatches).to.have.length(5);
    expect(plan.mintBatches).to.have.length(3);
    // A run that stopped after two registrations and the second mint batch.
    await executeDistribution(market, { ...plan, registerBatches: plan.registerBatches.slice(0, 2), mintBatches: plan.mintBatches.slice(1, 2) });

    const { plan: resumed, result } = await distribute(market, more, { registerBatchSize: 50 });
    expect(resumed.alreadyRegistered).to.equal(100);
    expect(resumed.mintBatches.map((b) => b.minted)).to.deep.equal([false, true, false]);
    expect(result.registered).to.equal(110);
    expect(result.mintBatchesSent).to.equal(2);
    expect(await Promise.all(more.map((p) => market.energyToken.balanceOf(p.account)))).to.deep.equal(more.map((p) => p.amount));
    expect(await market.participantRegistry.participantCount()).to.equal(150n + 210n);
  });

  it("refuses, before sending anything, a participant registered with other data and a second slack unit", async () => {
    const nonce = await market.provider.getTransactionCount(DEPLOYER.address);
    const [first] = participants;
    if (first === undefined) throw new Error("no participants");
    const changed = { ...first, meterKey: Wallet.createRandom().address };
    const newSlack = syntheticParticipants(1, "other-slack", { slackUnit: true });
    const fresh = syntheticParticipants(3, "fresh");
    try {
      await distribute(market, [...fresh, changed, ...newSlack]);
      expect.fail("the distribution went ahead");
    } catch (e) {
      expect(e).to.be.instanceOf(DistributionConflictError);
      const problems = (e as DistributionConflictError).problems;
      expect(problems).to.have.length(2);
      expect(problems[0]).to.include(first.account).and.include("registered (active) with different data").and.include(`meterKey ${first.meterKey} on chain`);
      expect(problems[1]).to.include(`the market's slack unit is already ${participants[149]?.account}`);
    }
    expect(await market.provider.getTransactionCount(DEPLOYER.address)).to.equal(nonce);
    expect((await market.participantRegistry.participant(fresh[0]?.account ?? "")).status).to.equal(0n);
  });

  it("refuses a bad file with every problem listed, sending nothing", async () => {
    const nonce = await market.provider.getTransactionCount(DEPLOYER.address);
    const bad = join(dir, "bad.csv");
    const lines = formatParticipantsCsv(syntheticParticipants(3, "bad")).trim().split("\n");
    writeFileSync(bad, [...lines, lines[1]?.replace(/,[\d.]+$/, ",-1")].join("\n"));
    const run = await runCli("distribute.ts", ["--file", bad, "--rpc", node.url, "--deployment", deployment.deploymentDir]);
    expect(run.code).to.equal(1);
    expect(run.stderr).to.include("line 5: duplicate account").and.include("line 5: amount -1 is negative").and.include("nothing was sent");
    expect(await market.provider.getTransactionCount(DEPLOYER.address)).to.equal(nonce);
  });

  it("balance CLI prints one account and every participant with symbol and decimals", async () => {
    const symbol = await market.energyToken.symbol();
    const p = participants[1];
    if (p === undefined) throw new Error("no participant");
    const one = await runCli("balance.ts", [p.account, "--rpc", node.url, "--deployment", deployment.deploymentDir]);
    expect(one.code, one.stderr).to.equal(0);
    const row = one.stdout.split("\n").find((l) => l.includes(p.account));
    // wallet, deposit, withdrawable, debt
    expect(row).to.match(new RegExp(`^\\s*1\\s+${p.account}\\s+prosumer\\s+active\\s+${formatUnits(p.amount, 6).replace(".", "\\.")} ${symbol}\\s+0\\.0 ${symbol}\\s+0\\.0 ${symbol}\\s+0\\.0 ${symbol}$`));

    const all = await runCli("balance.ts", ["--all", "--rpc", node.url, "--token", deployment.addresses.energyToken, "--registry", deployment.addresses.participantRegistry, "--settlement", deployment.addresses.settlement, "--day-ahead", deployment.addresses.dayAheadMarket, "--intraday", deployment.addresses.intradayMarket]);
    expect(all.code, all.stderr).to.equal(0);
    const count = Number(await market.participantRegistry.participantCount());
    expect(all.stdout).to.include(`${count} participants`);
    const rows = all.stdout.split("\n").filter((l) => /^\s*\d+\s+0x/.test(l));
    expect(rows).to.have.length(count);
    const last = participants[149];
    expect(rows[149]).to.include(last?.account).and.include("slackUnit").and.include(`${formatUnits(last?.amount ?? 0n, 6)} ${symbol}`);

    const unknown = await runCli("balance.ts", ["--all", "--rpc", "http://127.0.0.1:1", "--deployment", deployment.deploymentDir]);
    expect(unknown.code).to.equal(1);
    expect(unknown.stderr).to.match(/^error: http:\/\/127\.0\.0\.1:1: no JSON-RPC answer/);
  });

  it("withdraw CLI moves free deposit to the participant's wallet, and refuses more than is free before sending", async () => {
    const symbol = await market.energyToken.symbol();
    // A participant of its own, with a key: registered, and 30 tokens deposited for it.
    const holder = Wallet.createRandom();
    const m = market; // bound to the deployer: admin of the registry, minter of the token
    await (await m.participantRegistry.register({ account: holder.address, meterId: id("withdraw-e2e"), meterKey: Wallet.createRandom().address, kind: kindValue("consumer") })).wait();
    await (await m.energyToken.mint(DEPLOYER.address, 30_000_000n)).wait();
    await (await m.energyToken.approve(await m.settlement.getAddress(), 30_000_000n)).wait();
    await (await m.settlement.depositFor(holder.address, 30_000_000n)).wait();
    await (await new Wallet(DEPLOYER.privateKey, m.provider).sendTransaction({ to: holder.address, value: 10n ** 18n })).wait();
    const args = ["--rpc", node.url, "--deployment", deployment.deploymentDir];
    const env = { MARKET_PRIVATE_KEY: holder.privateKey };

    const part = await runCli("withdraw.ts", ["12.5", ...args], env);
    expect(part.code, part.stderr).to.equal(0);
    expect(part.stdout).to.include(`withdrew 12.5 ${symbol}`).and.include(`wallet 12.5 ${symbol}, deposit 17.5 ${symbol}`);
    expect(await market.energyToken.balanceOf(holder.address)).to.equal(12_500_000n);

    const nonce = await market.provider.getTransactionCount(holder.address);
    const tooMuch = await runCli("withdraw.ts", ["17.6", ...args], env);
    expect(tooMuch.code).to.equal(1);
    expect(tooMuch.stderr).to.include(`error: 17.6 ${symbol} asked, but only 17.5 ${symbol} is free to withdraw`);
    const bad = await runCli("withdraw.ts", ["12,5", ...args], env);
    expect(bad.code).to.equal(1);
    expect(bad.stderr).to.include(`amount: "12,5" is not an amount of ${symbol}`);
    expect(await market.provider.getTransactionCount(holder.address)).to.equal(nonce);

    const rest = await runCli("withdraw.ts", ["--all", ...args], env);
    expect(rest.code, rest.stderr).to.equal(0);
    expect(rest.stdout).to.include(`withdrew 17.5 ${symbol}`).and.include(`wallet 30.0 ${symbol}, deposit 0.0 ${symbol}`);
    expect((await market.settlement.accountState(holder.address)).deposit).to.equal(0n);
  });

  it("stops a node: the process is gone and the port no longer answers", async () => {
    const other = await startLocalNode();
    expect(await probeChainId(other.url, 2_000)).to.equal(31337n);
    await other.stop();
    await other.stop();
    expect(() => process.kill(other.pid, 0)).to.throw(/ESRCH/);
    try {
      await probeChainId(other.url, 2_000);
      expect.fail("the node still answers");
    } catch (e) {
      expect(e).to.be.instanceOf(ChainConnectionError);
    }
  });
});
