/**
 * Development tooling: a real `hardhat node` on a free loopback port, and the Market module
 * deployed to it with Ignition's CLI. The demo, the end-to-end tests and the benchmarks use
 * this; agents on a Pi never import it (it needs Hardhat installed).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { HDNodeWallet } from "ethers";
import { MarketError } from "../errors.js";
import { deploymentDirOf, marketAddressesFromDeployment, type MarketAddresses } from "./deployment.js";
import { probeChainId } from "./market.js";

export const PROJECT_ROOT = fileURLToPath(new URL("../../", import.meta.url));

/** The chain id of `hardhat node` (and of Hardhat's simulated networks). */
export const LOCAL_CHAIN_ID = 31337n;

/** `hardhat node` could not be started, did not answer, or a deployment to it failed. */
export class LocalNodeError extends MarketError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("LOCAL_NODE", message, options);
  }
}

/**
 * The well-known development accounts of `hardhat node` (from the "test test ... junk"
 * mnemonic), funded with 10,000 ETH each on every fresh node. Account 0 deploys and so holds
 * the admin roles. Never use these keys anywhere but a local node.
 */
export function localNodeAccount(index: number): { address: string; privateKey: string } {
  const wallet = HDNodeWallet.fromPhrase(
    "test test test test test test test test test test test junk",
    undefined,
    `m/44'/60'/0'/0/${index}`,
  );
  return { address: wallet.address, privateKey: wallet.privateKey };
}

export interface LocalNode {
  /** http://127.0.0.1:<port> */
  url: string;
  port: number;
  pid: number;
  /** The node's recent output, for error messages. */
  output(): string;
  /** SIGTERM, then SIGKILL if the node has not exited after `stopTimeoutMs`. Safe to call twice. */
  stop(): Promise<void>;
}

export interface StartLocalNodeOptions {
  projectRoot?: string;
  /** How long to wait for JSON-RPC to answer (default 60 s: a first run may compile). */
  startTimeoutMs?: number;
  /** How long `stop` waits after SIGTERM before SIGKILL (default 5 s). */
  stopTimeoutMs?: number;
  /** Receives the node's output lines (default: kept quietly for error messages). */
  onOutput?: (line: string) => void;
}

/**
 * Starts `hardhat node` on a free loopback port and waits until it answers JSON-RPC.
 *
 * The port comes from binding port 0 and releasing it, so another process can grab it in
 * between; if the node then fails to listen it exits, and this retries on a new port.
 */
export async function startLocalNode(options: StartLocalNodeOptions = {}): Promise<LocalNode> {
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await findFreePort();
    try {
      return await startOn(port, options);
    } catch (e) {
      lastError = e;
      // Only a lost race for the port is worth another try; anything else would fail again.
      if (!(e instanceof NodeExitedEarly && /EADDRINUSE|address already in use/i.test(e.message))) throw e;
    }
  }
  throw lastError;
}

/** A TCP port that was free on 127.0.0.1 a moment ago. */
export async function findFreePort(host = "127.0.0.1"): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once("error", reject);
    server.listen(0, host, () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new LocalNodeError("could not get a free port"))));
    });
  });
}

class NodeExitedEarly extends LocalNodeError {}

async function startOn(port: number, options: StartLocalNodeOptions): Promise<LocalNode> {
  const root = options.projectRoot ?? PROJECT_ROOT;
  const url = `http://127.0.0.1:${port}`;
  // --hostname: hardhat binds 0.0.0.0 inside containers otherwise; a dev node stays on loopback.
  const child = spawnHardhat(root, ["node", "--hostname", "127.0.0.1", "--port", String(port)], {});
  const out = captureOutput(child, options.onOutput);
  const exited = new Promise<number | null>((resolve) => {
    child.once("exit", (code) => resolve(code));
    child.once("error", (e) => {
      out.add(`spawn failed: ${e.message}`);
      resolve(null);
    });
  });
  // If this process dies without calling stop(), do not leave the node running.
  const killOnExit = (): void => {
    child.kill("SIGKILL");
  };
  process.once("exit", killOnExit);

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const timeout = options.stopTimeoutMs ?? 5_000;
        const killer = setTimeout(() => child.kill("SIGKILL"), timeout);
        await exited;
        clearTimeout(killer);
      }
      process.removeListener("exit", killOnExit);
    })();
    return stopping;
  };

  const deadline = Date.now() + (options.startTimeoutMs ?? 60_000);
  let earlyExit: number | null | undefined;
  void exited.then((code) => (earlyExit = code));
  for (;;) {
    if (earlyExit !== undefined) {
      process.removeListener("exit", killOnExit);
      throw new NodeExitedEarly(`hardhat node on port ${port} exited with code ${earlyExit} before answering:\n${out.text()}`);
    }
    try {
      const chainId = await probeChainId(url, 1_000);
      if (chainId !== LOCAL_CHAIN_ID) {
        await stop();
        throw new LocalNodeError(`${url} answered chain id ${chainId}, not ${LOCAL_CHAIN_ID}: another server took the port`);
      }
      break;
    } catch (e) {
      if (e instanceof LocalNodeError) throw e;
      if (Date.now() > deadline) {
        await stop();
        throw new LocalNodeError(`hardhat node on port ${port} did not answer within ${options.startTimeoutMs ?? 60_000} ms:\n${out.text()}`, { cause: e });
      }
      await delay(100);
    }
  }
  return { url, port, pid: child.pid ?? -1, output: out.text, stop };
}

export interface DeployMarketOptions {
  /** Ignition deployment id (default "local-<port>"); the folder is ignition/deployments/<id>. */
  deploymentId?: string;
  /** Module parameters (default ignition/parameters/localhost.json). */
  parametersFile?: string;
  /** The module to deploy (default ignition/modules/Market.ts). */
  modulePath?: string;
  projectRoot?: string;
  /** Default 180 s: the first deployment compiles the contracts. */
  timeoutMs?: number;
  onOutput?: (line: string) => void;
}

export interface LocalDeployment {
  deploymentId: string;
  /** The Ignition deployment folder; it is kept, so that deploying again changes nothing. */
  deploymentDir: string;
  addresses: MarketAddresses;
  /** Deletes the deployment folder (tests clean up with this). */
  remove(): void;
}

/**
 * Deploys the Market module to the local node at `rpcUrl` by running Ignition's own CLI,
 * `hardhat ignition deploy --network localhost`, with MARKET_RPC_URL pointing "localhost" at
 * the node (see hardhat.config.ts). Running the documented command rather than Ignition's
 * library keeps the deployment identical to a manual one (same build, parameter file
 * handling and journal), and Ignition's CLI also notices when the deployment folder belongs
 * to an earlier node on the same port and starts afresh. Deploying again to the same node
 * sends nothing.
 *
 * Only local nodes (chain 31337): Ignition asks for confirmation anywhere else.
 */
export async function deployMarket(rpcUrl: string, options: DeployMarketOptions = {}): Promise<LocalDeployment> {
  const root = options.projectRoot ?? PROJECT_ROOT;
  const chainId = await probeChainId(rpcUrl, 5_000);
  if (chainId !== LOCAL_CHAIN_ID) {
    throw new LocalNodeError(`${rpcUrl} is chain ${chainId}; deployMarket deploys to local nodes (chain ${LOCAL_CHAIN_ID}) only. Use the ignition CLI for other networks.`);
  }
  const deploymentId = options.deploymentId ?? `local-${new URL(rpcUrl).port || "8545"}`;
  const modulePath = options.modulePath ?? path.join("ignition", "modules", "Market.ts");
  const parametersFile = options.parametersFile ?? path.join("ignition", "parameters", "localhost.json");
  // --build-profile default: the deploy task builds first, with the production profile unless
  // told otherwise, and production builds are isolated, so alternating with `hardhat test`'s
  // default-profile build recompiles every contract each time (about a minute with solcjs).
  // Both profiles have the same compiler settings; a local node does not need isolated builds.
  const args = ["--build-profile", "default", "ignition", "deploy", modulePath, "--network", "localhost", "--deployment-id", deploymentId, "--parameters", parametersFile];

  const child = spawnHardhat(root, args, { MARKET_RPC_URL: rpcUrl });
  const out = captureOutput(child, options.onOutput);
  const timeoutMs = options.timeoutMs ?? 180_000;
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (c) => resolve(c));
  }).finally(() => clearTimeout(timer));
  if (code !== 0) {
    throw new LocalNodeError(`hardhat ${args.join(" ")} failed (exit ${code ?? `killed after ${timeoutMs} ms`}):\n${out.text()}`);
  }

  const deploymentDir = deploymentDirOf(deploymentId, root);
  return {
    deploymentId,
    deploymentDir,
    addresses: marketAddressesFromDeployment(deploymentDir),
    remove: () => rmSync(deploymentDir, { recursive: true, force: true }),
  };
}

/**
 * Runs the Hardhat CLI under a Node that Hardhat 3 accepts (22+): this process's own if it is
 * new enough, otherwise the one the `node` npm package installs, because `/usr/bin/env node`
 * may find the machine's Node 20.
 */
function spawnHardhat(root: string, args: string[], env: Record<string, string>): ChildProcess {
  const cli = path.join(root, "node_modules", "hardhat", "dist", "src", "cli.js");
  if (!existsSync(cli)) throw new LocalNodeError(`${cli} not found: run the install from the README in ${root}`);
  const major = Number(process.versions.node.split(".")[0]);
  const packagedNode = path.join(root, "node_modules", "node", "bin", "node");
  const nodeBin = major >= 22 || !existsSync(packagedNode) ? process.execPath : packagedNode;
  return spawn(nodeBin, [cli, ...args], {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
}

/** Keeps the last lines of a child's output for error messages, and forwards them if asked. */
function captureOutput(
  child: ChildProcess,
  onOutput?: (line: string) => void,
): { text: () => string; add: (line: string) => void } {
  const lines: string[] = [];
  const add = (line: string): void => {
    lines.push(line);
    if (lines.length > 60) lines.shift();
    onOutput?.(line);
  };
  const take = (chunk: Buffer): void => {
    for (const line of chunk.toString("utf8").split(/\r?\n/)) if (line !== "") add(line);
  };
  child.stdout?.on("data", take);
  child.stderr?.on("data", take);
  return { text: () => lines.join("\n"), add };
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
