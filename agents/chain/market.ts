import { JsonRpcProvider, Network, type ContractRunner, type Signer } from "ethers";
import { MarketError } from "../errors.js";
import type { MarketAddresses, MarketContractName } from "./deployment.js";
import {
  DayAheadMarket__factory,
  EnergyToken__factory,
  IntradayMarket__factory,
  ParticipantRegistry__factory,
  Settlement__factory,
  type DayAheadMarket,
  type EnergyToken,
  type IntradayMarket,
  type ParticipantRegistry,
  type Settlement,
} from "./types/index.js";

/** The JSON-RPC endpoint does not answer, or answers something that is not Ethereum. */
export class ChainConnectionError extends MarketError {
  constructor(
    readonly rpcUrl: string,
    problem: string,
    options?: { cause?: unknown },
  ) {
    super("CHAIN_CONNECTION", `${rpcUrl}: ${problem}`, options);
  }
}

/** An address that should hold a market contract holds no code on this chain. */
export class ContractNotFoundError extends MarketError {
  constructor(
    readonly contract: string,
    readonly address: string,
    rpcUrl: string,
  ) {
    super(
      "CONTRACT_NOT_FOUND",
      `${contract}: no contract at ${address} on ${rpcUrl}. Is the deployment folder from another chain or an earlier run of a local node? Deploy again or pass the right addresses.`,
    );
  }
}

/** Typed handles on every market contract, all bound to one runner (signer or provider). */
export interface MarketContracts {
  rpcUrl: string;
  chainId: bigint;
  provider: JsonRpcProvider;
  /** The signer the contracts send with, if one was given. */
  signer: Signer | undefined;
  addresses: MarketAddresses;
  energyToken: EnergyToken;
  participantRegistry: ParticipantRegistry;
  settlement: Settlement;
  dayAheadMarket: DayAheadMarket;
  intradayMarket: IntradayMarket;
}

export interface ProviderOptions {
  /** How long to wait for the first answer (default 10 s). */
  timeoutMs?: number;
  /**
   * How often ethers polls for receipts and events. Its 4 s default suits public chains; a
   * loopback node mines instantly, so tools pass a few hundred ms there.
   */
  pollingIntervalMs?: number;
}

/**
 * A provider for `rpcUrl` whose chain id is checked once, up front. ethers' own detection
 * retries forever with a console warning when nothing listens; this fails at once with an
 * error naming the URL instead.
 */
export async function openProvider(rpcUrl: string, options: ProviderOptions = {}): Promise<JsonRpcProvider> {
  const chainId = await probeChainId(rpcUrl, options.timeoutMs ?? 10_000);
  const network = Network.from(chainId);
  // cacheTimeout -1: ethers otherwise answers a repeated call within 250 ms from its cache,
  // which hands a wallet the nonce of the transaction it has just sent ("nonce has already been
  // used") when transactions follow each other quickly, as on a local node.
  const provider = new JsonRpcProvider(rpcUrl, network, { staticNetwork: network, cacheTimeout: -1 });
  if (options.pollingIntervalMs !== undefined) provider.pollingInterval = options.pollingIntervalMs;
  return provider;
}

/** The chain id that `rpcUrl` reports, or ChainConnectionError. */
export async function probeChainId(rpcUrl: string, timeoutMs: number): Promise<bigint> {
  let response: Response;
  try {
    response = await fetch(rpcUrl, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "eth_chainId", params: [] }),
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (e) {
    const inner = (e as { cause?: { code?: string; message?: string } }).cause;
    const cause = inner?.code ?? inner?.message ?? (e as Error).message;
    throw new ChainConnectionError(rpcUrl, `no JSON-RPC answer (${cause}); is the node running?`, { cause: e });
  }
  let body: unknown;
  try {
    body = await response.json();
  } catch (e) {
    throw new ChainConnectionError(rpcUrl, `HTTP ${response.status} with a body that is not JSON-RPC`, { cause: e });
  }
  const result = (body as { result?: unknown }).result;
  if (typeof result !== "string" || !/^0x[0-9a-fA-F]+$/.test(result)) {
    throw new ChainConnectionError(rpcUrl, `eth_chainId answered ${JSON.stringify(body).slice(0, 200)}`);
  }
  return BigInt(result);
}

export interface ConnectOptions extends ProviderOptions {
  rpcUrl: string;
  addresses: MarketAddresses;
  /** Sends transactions when given (a wallet from signer.ts is connected to the provider). */
  signer?: Signer | undefined;
  /** Check that each address holds code, for a clear error instead of undecodable results (default true). */
  checkCode?: boolean;
  /** Reuse a provider (from openProvider) instead of opening one. */
  provider?: JsonRpcProvider;
}

/** Connects typed instances of the market contracts through the generated factories. */
export async function connectMarket(options: ConnectOptions): Promise<MarketContracts> {
  const provider = options.provider ?? (await openProvider(options.rpcUrl, options));
  const network = await provider.getNetwork();
  let signer = options.signer;
  if (signer !== undefined && signer.provider !== provider) signer = signer.connect(provider);
  const runner: ContractRunner = signer ?? provider;

  if (options.checkCode ?? true) {
    await Promise.all(
      (Object.entries(options.addresses) as [MarketContractName, string][]).map(async ([name, address]) => {
        if ((await provider.getCode(address)) === "0x") throw new ContractNotFoundError(name, address, options.rpcUrl);
      }),
    );
  }

  return {
    rpcUrl: options.rpcUrl,
    chainId: network.chainId,
    provider,
    signer,
    addresses: options.addresses,
    energyToken: EnergyToken__factory.connect(options.addresses.energyToken, runner),
    participantRegistry: ParticipantRegistry__factory.connect(options.addresses.participantRegistry, runner),
    settlement: Settlement__factory.connect(options.addresses.settlement, runner),
    dayAheadMarket: DayAheadMarket__factory.connect(options.addresses.dayAheadMarket, runner),
    intradayMarket: IntradayMarket__factory.connect(options.addresses.intradayMarket, runner),
  };
}
