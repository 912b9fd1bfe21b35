/**
 * Registering participants and minting their starting tokens, idempotently: a re-run, or a
 * run resumed after a crash, sends only what is still missing and mints nothing twice.
 *
 *   plan    = planDistribution(market, participants)   // reads only; refuses conflicts
 *   result  = executeDistribution(market, plan)         // sends the missing transactions
 *   or both: distribute(market, participants)
 *
 * Registrations are skipped when the registry already holds the same data. Mints go in
 * batches whose id is derived from the distribution's content and the batch index; the token
 * records minted batch ids and refuses one twice, and the plan skips those already minted.
 */
import { AbiCoder, decodeBytes32String, getAddress, keccak256, ZeroAddress, type ContractTransactionResponse } from "ethers";
import { MarketError } from "../errors.js";
import type { MarketContracts } from "./market.js";
import { kindName, kindValue, statusName, type ParticipantSpec } from "./participants.js";

/**
 * Recipients per mint batch. Fixed, not an option: batch ids are derived from the batch index,
 * so a different size would give different ids for the same distribution and mint it again.
 */
export const MINT_BATCH_SIZE = 100;

/** Default registrations per registerBatch transaction (about 130k gas each, so 100 stay well under the 16.7M per-transaction cap). */
export const DEFAULT_REGISTER_BATCH_SIZE = 100;

/** Reads sent at once while checking the chain. ethers batches them into JSON-RPC batches. */
const READ_CONCURRENCY = 100;

/** The distribution cannot go ahead; nothing was sent. `problems` lists every reason. */
export class DistributionConflictError extends MarketError {
  constructor(readonly problems: readonly string[]) {
    const shown = problems.slice(0, 50);
    const more = problems.length > shown.length ? `\n  ... and ${problems.length - shown.length} more` : "";
    super("DISTRIBUTION_CONFLICT", `the distribution conflicts with the chain, nothing was sent:\n  ${shown.join("\n  ")}${more}`);
  }
}

/** A transaction of the distribution failed; what was sent before it stays done. Re-run to resume. */
export class DistributionTransactionError extends MarketError {
  constructor(step: string, options: { cause: unknown }) {
    const reason = (options.cause as { shortMessage?: string; message?: string }).shortMessage ?? (options.cause as Error).message;
    super("DISTRIBUTION_TX", `${step} failed: ${reason}. What was sent before is done; running the distribution again resumes it.`, options);
  }
}

export interface MintBatch {
  index: number;
  batchId: string;
  recipients: string[];
  amounts: bigint[];
  total: bigint;
  /** Already minted on chain when the plan was made. */
  minted: boolean;
}

export interface DistributionPlan {
  /** Hash of the distribution's content (participants in order, and the label); batch ids derive from it. */
  distributionId: string;
  participants: number;
  /** Participants the registry already holds with the same data. */
  alreadyRegistered: number;
  /** Participants to register, in batches of the register batch size. */
  registerBatches: ParticipantSpec[][];
  mintBatches: MintBatch[];
  /** The signer's address, when one was given. */
  sender: string | undefined;
}

export type DistributionProgress =
  | { phase: "check"; done: number; total: number }
  | { phase: "register"; batch: number; batches: number; participants: number; txHash: string; gasUsed: bigint }
  | { phase: "mint"; batch: number; batches: number; recipients: number; txHash: string; gasUsed: bigint }
  | { phase: "mint-skip"; batch: number; batches: number };

export interface DistributionOptions {
  registerBatchSize?: number;
  /**
   * Part of the distribution id. The same participants with the same amounts are one
   * distribution, minted once; give a new label (e.g. "2025-07") to distribute them again.
   */
  label?: string;
  onProgress?: (progress: DistributionProgress) => void;
}

export interface SentTransaction {
  kind: "register" | "mint";
  hash: string;
  gasUsed: bigint;
  /** Participants registered or recipients minted by it. */
  count: number;
}

export interface DistributionResult {
  registered: number;
  mintBatchesSent: number;
  mintBatchesSkipped: number;
  minted: bigint;
  gasUsed: bigint;
  transactions: SentTransaction[];
}

/** The id of a distribution: it changes with any participant's data, order or amount, or the label. */
export function distributionId(participants: readonly ParticipantSpec[], label = ""): string {
  const rows = participants.map((p) => [p.account, p.meterId, p.meterKey, kindValue(p.kind), p.amount]);
  return keccak256(
    AbiCoder.defaultAbiCoder().encode(["string", "string", "tuple(address,bytes32,address,uint8,uint256)[]"], ["market.distribution.v1", label, rows]),
  );
}

/** The token's batch id of mint batch `index` of distribution `distId`. */
export function mintBatchId(distId: string, index: number): string {
  return keccak256(AbiCoder.defaultAbiCoder().encode(["string", "bytes32", "uint256"], ["market.mintBatch.v1", distId, index]));
}

/**
 * Works out what is missing on chain, reading only. Throws DistributionConflictError, listing
 * every problem, when a participant is registered with other data, a meter id or key belongs
 * to another account, the market already has another slack unit, or the signer lacks a role
 * it needs.
 */
export async function planDistribution(
  market: MarketContracts,
  participants: readonly ParticipantSpec[],
  options: DistributionOptions = {},
): Promise<DistributionPlan> {
  const registerBatchSize = options.registerBatchSize ?? DEFAULT_REGISTER_BATCH_SIZE;
  if (!Number.isInteger(registerBatchSize) || registerBatchSize < 1) {
    throw new MarketError("DISTRIBUTION_OPTIONS", `registerBatchSize must be a positive integer, not ${registerBatchSize}`);
  }
  // Callers other than the file parser may pass lower-case addresses or upper-case hex.
  participants = participants.map(normalise);
  const problems = duplicateProblems(participants);
  if (problems.length > 0) throw new DistributionConflictError(problems);

  const registry = market.participantRegistry;
  const total = participants.length;
  let done = 0;
  const slackUnit = await registry.slackUnit();
  const states = await mapLimit(participants, READ_CONCURRENCY, async (p) => {
    const record = await registry.participant(p.account);
    let keyHolder = ZeroAddress;
    let idHolder = ZeroAddress;
    if (record.status === 0n) {
      [keyHolder, idHolder] = await Promise.all([registry.accountOfMeterKey(p.meterKey), registry.accountOfMeterId(p.meterId)]);
    }
    if (++done % 100 === 0 || done === total) options.onProgress?.({ phase: "check", done, total });
    return { record, keyHolder, idHolder };
  });

  const toRegister: ParticipantSpec[] = [];
  participants.forEach((p, i) => {
    const state = states[i];
    if (state === undefined) return;
    const { record, keyHolder, idHolder } = state;
    const who = `${p.account} (meter ${safeDecode(p.meterId)})`;
    if (record.status !== 0n) {
      const diffs: string[] = [];
      if (record.meterId.toLowerCase() !== p.meterId) diffs.push(`meterId "${safeDecode(record.meterId)}" on chain`);
      if (record.meterKey !== p.meterKey) diffs.push(`meterKey ${record.meterKey} on chain`);
      if (Number(record.kind) !== kindValue(p.kind)) diffs.push(`kind ${kindName(record.kind)} on chain`);
      if (diffs.length > 0) problems.push(`${who} is registered (${statusName(record.status)}) with different data: ${diffs.join(", ")}`);
      return;
    }
    if (keyHolder !== ZeroAddress) problems.push(`${who}: meterKey ${p.meterKey} already belongs to ${keyHolder}`);
    if (idHolder !== ZeroAddress) problems.push(`${who}: meterId already belongs to ${idHolder}`);
    if (p.kind === "slackUnit" && slackUnit !== ZeroAddress) problems.push(`${who}: the market's slack unit is already ${slackUnit}`);
    toRegister.push(p);
  });

  const distId = distributionId(participants, options.label);
  const funded = participants.filter((p) => p.amount > 0n);
  const chunks = chunk(funded, MINT_BATCH_SIZE);
  const mintBatches = await mapLimit(
    chunks.map((c, index) => ({ c, index })),
    READ_CONCURRENCY,
    async ({ c, index }): Promise<MintBatch> => {
      const batchId = mintBatchId(distId, index);
      return {
        index,
        batchId,
        recipients: c.map((p) => p.account),
        amounts: c.map((p) => p.amount),
        total: c.reduce((sum, p) => sum + p.amount, 0n),
        minted: await market.energyToken.batchMinted(batchId),
      };
    },
  );

  const sender = market.signer === undefined ? undefined : await market.signer.getAddress();
  if (sender !== undefined) {
    if (toRegister.length > 0 && !(await registry.hasRole(await registry.REGULATOR_ROLE(), sender))) {
      problems.push(`the signer ${sender} lacks REGULATOR_ROLE on the registry ${market.addresses.participantRegistry}, needed to register ${toRegister.length} participants`);
    }
    const toMint = mintBatches.filter((b) => !b.minted).length;
    if (toMint > 0 && !(await market.energyToken.hasRole(await market.energyToken.MINTER_ROLE(), sender))) {
      problems.push(`the signer ${sender} lacks MINTER_ROLE on the token ${market.addresses.energyToken}, needed to mint ${toMint} batches`);
    }
  }
  if (problems.length > 0) throw new DistributionConflictError(problems);

  return {
    distributionId: distId,
    participants: participants.length,
    alreadyRegistered: participants.length - toRegister.length,
    registerBatches: chunk(toRegister, registerBatchSize),
    mintBatches,
    sender,
  };
}

/** Whether executing `plan` would send anything. */
export function planIsDone(plan: DistributionPlan): boolean {
  return plan.registerBatches.length === 0 && plan.mintBatches.every((b) => b.minted);
}

/**
 * Sends what `plan` found missing: registrations first, then mint batches, one transaction at
 * a time, each waited for. A mint batch is checked again right before it is sent, so a plan
 * that went stale (another run got there first) skips it instead of failing.
 */
export async function executeDistribution(
  market: MarketContracts,
  plan: DistributionPlan,
  options: Pick<DistributionOptions, "onProgress"> = {},
): Promise<DistributionResult> {
  const result: DistributionResult = { registered: 0, mintBatchesSent: 0, mintBatchesSkipped: 0, minted: 0n, gasUsed: 0n, transactions: [] };
  if (planIsDone(plan)) return result;
  if (market.signer === undefined) throw new MarketError("NO_SIGNER", "the distribution has transactions to send but the market was connected without a signer");

  const batches = plan.registerBatches.length;
  for (const [i, batch] of plan.registerBatches.entries()) {
    const step = `registering batch ${i + 1}/${batches} (${batch.length} participants)`;
    const registrations = batch.map((p) => ({ account: p.account, meterId: p.meterId, meterKey: p.meterKey, kind: kindValue(p.kind) }));
    const sent = await send(step, () => market.participantRegistry.registerBatch(registrations));
    result.registered += batch.length;
    result.gasUsed += sent.gasUsed;
    result.transactions.push({ kind: "register", hash: sent.hash, gasUsed: sent.gasUsed, count: batch.length });
    options.onProgress?.({ phase: "register", batch: i + 1, batches, participants: batch.length, txHash: sent.hash, gasUsed: sent.gasUsed });
  }

  const mints = plan.mintBatches.length;
  for (const b of plan.mintBatches) {
    if (b.minted || (await market.energyToken.batchMinted(b.batchId))) {
      result.mintBatchesSkipped++;
      options.onProgress?.({ phase: "mint-skip", batch: b.index + 1, batches: mints });
      continue;
    }
    const step = `minting batch ${b.index + 1}/${mints} (${b.recipients.length} recipients, id ${b.batchId})`;
    const sent = await send(step, () => market.energyToken.mintBatch(b.batchId, b.recipients, b.amounts));
    result.mintBatchesSent++;
    result.minted += b.total;
    result.gasUsed += sent.gasUsed;
    result.transactions.push({ kind: "mint", hash: sent.hash, gasUsed: sent.gasUsed, count: b.recipients.length });
    options.onProgress?.({ phase: "mint", batch: b.index + 1, batches: mints, recipients: b.recipients.length, txHash: sent.hash, gasUsed: sent.gasUsed });
  }
  return result;
}

/** Plans and executes. */
export async function distribute(
  market: MarketContracts,
  participants: readonly ParticipantSpec[],
  options: DistributionOptions = {},
): Promise<{ plan: DistributionPlan; result: DistributionResult }> {
  const plan = await planDistribution(market, participants, options);
  const result = await executeDistribution(market, plan, options);
  return { plan, result };
}

async function send(step: string, sendTx: () => Promise<ContractTransactionResponse>): Promise<{ hash: string; gasUsed: bigint }> {
  try {
    const tx = await sendTx();
    const receipt = await tx.wait();
    if (receipt === null || receipt.status !== 1) throw new Error(`transaction ${tx.hash} reverted`);
    return { hash: tx.hash, gasUsed: receipt.gasUsed };
  } catch (e) {
    throw new DistributionTransactionError(step, { cause: e });
  }
}

/** Duplicates within the list itself: the contract would revert on them half-way. */
function duplicateProblems(participants: readonly ParticipantSpec[]): string[] {
  const problems: string[] = [];
  const seen = { account: new Set<string>(), meterId: new Set<string>(), meterKey: new Set<string>() };
  let slackUnits = 0;
  for (const p of participants) {
    for (const field of ["account", "meterId", "meterKey"] as const) {
      const key = p[field].toLowerCase();
      if (seen[field].has(key)) problems.push(`duplicate ${field} ${field === "meterId" ? safeDecode(p.meterId) : p[field]}`);
      seen[field].add(key);
    }
    if (p.kind === "slackUnit") slackUnits++;
    if (p.amount < 0n) problems.push(`${p.account}: negative amount`);
  }
  if (slackUnits > 1) problems.push(`${slackUnits} slack units; a market has one`);
  return problems;
}

function normalise(p: ParticipantSpec): ParticipantSpec {
  return { ...p, account: getAddress(p.account), meterKey: getAddress(p.meterKey), meterId: p.meterId.toLowerCase() };
}

function safeDecode(bytes32: string): string {
  try {
    return decodeBytes32String(bytes32);
  } catch {
    return bytes32;
  }
}

function chunk<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/** Maps with at most `limit` (at least one) calls in flight, keeping the order. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i] as T, i);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  return out;
}
