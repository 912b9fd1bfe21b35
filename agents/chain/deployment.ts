import { readFileSync } from "node:fs";
import path from "node:path";
import { getAddress, isAddress } from "ethers";
import { ConfigError, MarketError } from "../errors.js";

/**
 * Where each market contract sits in Ignition's deployed_addresses.json: the key is the
 * future id "<ModuleId>#<ContractName>" of ignition/modules/*.ts. When a module is added to
 * MarketModule, add its contracts here and to MarketContracts in market.ts.
 */
export const MARKET_FUTURE_IDS = {
  energyToken: "EnergyTokenModule#EnergyToken",
  participantRegistry: "ParticipantRegistryModule#ParticipantRegistry",
  settlement: "SettlementModule#Settlement",
  dayAheadMarket: "DayAheadMarketModule#DayAheadMarket",
  intradayMarket: "IntradayMarketModule#IntradayMarket",
} as const;

const CONTRACT_NAMES = Object.keys(MARKET_FUTURE_IDS) as MarketContractName[];

export type MarketContractName = keyof typeof MARKET_FUTURE_IDS;
export type MarketAddresses = Record<MarketContractName, string>;

/** The file Ignition writes into each deployment folder once contracts are deployed. */
export const DEPLOYED_ADDRESSES_FILE = "deployed_addresses.json";

/** What `hardhat ignition deploy --network localhost` uses when no --deployment-id is given. */
export const DEFAULT_LOCAL_DEPLOYMENT_DIR = path.join("ignition", "deployments", "chain-31337");

/** A deployment folder is missing, unreadable or lacks a contract. */
export class DeploymentError extends MarketError {
  constructor(
    readonly deploymentDir: string,
    problem: string,
    options?: { cause?: unknown },
  ) {
    super("DEPLOYMENT", `deployment ${deploymentDir}: ${problem}`, options);
  }
}

/** The folder of deployment `deploymentId` under a project root (where Ignition's CLI writes it). */
export function deploymentDirOf(deploymentId: string, projectRoot: string): string {
  return path.join(projectRoot, "ignition", "deployments", deploymentId);
}

/**
 * Every address in the deployment folder's deployed_addresses.json, by future id, checksummed.
 * Throws DeploymentError naming the folder when the file is missing or malformed.
 */
export function readDeployedAddresses(deploymentDir: string): Record<string, string> {
  const file = path.join(deploymentDir, DEPLOYED_ADDRESSES_FILE);
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    const missing = (e as NodeJS.ErrnoException).code === "ENOENT";
    throw new DeploymentError(
      deploymentDir,
      missing
        ? `no ${DEPLOYED_ADDRESSES_FILE}: deploy first (npx hardhat ignition deploy ignition/modules/Market.ts ...) or pass the contract addresses`
        : `cannot read ${file}: ${(e as Error).message}`,
      { cause: e },
    );
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new DeploymentError(deploymentDir, `${DEPLOYED_ADDRESSES_FILE} is not valid JSON`, { cause: e });
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new DeploymentError(deploymentDir, `${DEPLOYED_ADDRESSES_FILE} is not a JSON object`);
  }
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(parsed)) {
    if (typeof value !== "string" || !isAddress(value)) {
      throw new DeploymentError(deploymentDir, `${DEPLOYED_ADDRESSES_FILE}: "${key}" is not an address`);
    }
    out[key] = getAddress(value);
  }
  return out;
}

/** The market's contract addresses from an Ignition deployment folder. */
export function marketAddressesFromDeployment(deploymentDir: string): MarketAddresses {
  const deployed = readDeployedAddresses(deploymentDir);
  const pick = (name: MarketContractName): string => {
    const id = MARKET_FUTURE_IDS[name];
    const address = deployed[id];
    if (address === undefined) {
      throw new DeploymentError(
        deploymentDir,
        `has no "${id}": was it deployed with ignition/modules/Market.ts? It holds ${Object.keys(deployed).join(", ") || "nothing"}`,
      );
    }
    return address;
  };
  return Object.fromEntries(CONTRACT_NAMES.map((name) => [name, pick(name)])) as MarketAddresses;
}

export interface AddressSources {
  /** An Ignition deployment folder, e.g. ignition/deployments/chain-31337. */
  deploymentDir?: string | undefined;
  /** Explicit addresses; each one wins over the deployment folder. */
  energyToken?: string | undefined;
  participantRegistry?: string | undefined;
  settlement?: string | undefined;
  dayAheadMarket?: string | undefined;
  intradayMarket?: string | undefined;
  /** How the caller calls each source, for error messages (a CLI passes its option names). */
  names?: Partial<Record<MarketContractName | "deploymentDir", string>>;
}

/**
 * The market's addresses from explicit addresses, a deployment folder, or both (explicit ones
 * win, so that one contract can be pointed elsewhere). Errors name the option to fix.
 */
export function resolveMarketAddresses(sources: AddressSources): MarketAddresses {
  const names: Record<MarketContractName | "deploymentDir", string> = {
    deploymentDir: "deploymentDir",
    energyToken: "energyToken",
    participantRegistry: "participantRegistry",
    settlement: "settlement",
    dayAheadMarket: "dayAheadMarket",
    intradayMarket: "intradayMarket",
    ...sources.names,
  };
  const explicit = (name: MarketContractName): string | undefined => {
    const value = sources[name];
    if (value === undefined) return undefined;
    if (!isAddress(value)) {
      const checksum = /^0x[0-9a-fA-F]{40}$/.test(value) ? " (its mixed-case checksum does not match; check it or write it in lower case)" : "";
      throw new ConfigError(names[name], `"${value}" is not an address${checksum}`);
    }
    return getAddress(value);
  };
  const given = Object.fromEntries(CONTRACT_NAMES.map((name) => [name, explicit(name)])) as Record<MarketContractName, string | undefined>;
  const missing = CONTRACT_NAMES.filter((name) => given[name] === undefined);
  if (missing.length === 0) return given as MarketAddresses;
  if (sources.deploymentDir === undefined) {
    const list = missing.map((n) => names[n]);
    const listed = list.length > 1 ? `${list.slice(0, -1).join(", ")} and ${list.at(-1)}` : list[0];
    throw new ConfigError(names.deploymentDir, `not given, so ${listed} must be given`);
  }
  const deployed = marketAddressesFromDeployment(sources.deploymentDir);
  return Object.fromEntries(CONTRACT_NAMES.map((name) => [name, given[name] ?? deployed[name]])) as MarketAddresses;
}
