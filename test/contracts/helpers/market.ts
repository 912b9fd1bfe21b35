import type { HardhatEthers, HardhatEthersSigner } from "@nomicfoundation/hardhat-ethers/types";
import type { NetworkHelpers } from "@nomicfoundation/hardhat-network-helpers/types";
import { expect } from "chai";
import {
  encodeBytes32String,
  type BaseWallet,
  id,
  Wallet,
  type ContractTransactionReceipt,
  type ContractTransactionResponse,
  type LogDescription,
} from "ethers";
import type { EnergyToken, ParticipantRegistry, Settlement, TestScheduleSource } from "../../../agents/chain/types/index.js";
import { readingDomain, signReading, type Reading, type SignedReading } from "./readings.js";

/**
 * A deployed market (token, registry, settlement, and optionally the test schedule source that
 * stands in for the day-ahead market) with named participants, for the contract tests:
 * deployment, funding, signing readings, schedules, moving the clock into a slot's reading
 * window, decoding events and checking the escrow's accounting identity.
 */

/** One token in base units (6 decimals). */
export const ONE = 10n ** 6n;
export const SLOT_SECONDS = 900n;
export const READING_WINDOW = 300n;
/** 0.05 token per kWh. */
export const FEED_IN = 50_000n;
/** 0.30 token per kWh. */
export const RETAIL = 300_000n;

/** Mirrors IParticipantRegistry.Kind. */
export const Kind = { Consumer: 0n, Prosumer: 1n, Producer: 2n, Storage: 3n, FlexibleLoad: 4n, SlackUnit: 5n } as const;

export interface Participant {
  name: string;
  signer: HardhatEthersSigner;
  address: string;
  /** The meter agent's signing key (a wallet that never sends transactions). */
  meterKey: Wallet;
  meterId: string;
  kind: bigint;
}

export interface ParticipantSpec {
  name: string;
  kind: bigint;
  /** Deposited into escrow at deployment (base units); default 100 tokens, 0 for none. */
  deposit?: bigint;
}

export interface MarketOptions {
  participants: ParticipantSpec[];
  slotSeconds?: bigint;
  readingWindow?: bigint;
  feedIn?: bigint;
  retail?: bigint;
  /** Tokens minted to every participant's wallet before deposits; default 1000 tokens. */
  walletTokens?: bigint;
  /**
   * Deploys contracts/test/TestScheduleSource.sol and makes it the settlement's schedule source
   * (standing in for the day-ahead market); default false: no markets, every schedule zero.
   */
  scheduleSource?: boolean;
}

/** One participant's day-ahead award in a slot: + bought, - sold (Wh). */
export type Awards = Record<string, bigint>;

/** A meter key derived from a label, so that every run signs with the same keys. */
export function meterKeyFor(label: string): Wallet {
  return new Wallet(id(`meter-key:${label}`));
}

export class Market {
  readonly participants = new Map<string, Participant>();
  /** The test schedule source, when the market was deployed with one. */
  source: TestScheduleSource | undefined;

  constructor(
    readonly ethers: HardhatEthers,
    readonly helpers: NetworkHelpers,
    readonly token: EnergyToken,
    readonly registry: ParticipantRegistry,
    readonly settlement: Settlement,
    readonly admin: HardhatEthersSigner,
    readonly outsider: HardhatEthersSigner,
    readonly relayer: HardhatEthersSigner,
    readonly chainId: bigint,
    readonly settlementAddress: string,
    readonly slotSeconds: bigint,
    readonly readingWindow: bigint,
  ) {}

  /** The participant called `name`; throws if there is none. */
  p(name: string): Participant {
    const participant = this.participants.get(name);
    if (participant === undefined) throw new Error(`no participant named ${name}`);
    return participant;
  }

  get domain() {
    return readingDomain(this.chainId, this.settlementAddress);
  }

  /** First moment a reading of `slot` is accepted. */
  opens(slot: bigint): bigint {
    return (slot + 1n) * this.slotSeconds;
  }

  /** Last moment a reading of `slot` is accepted; settle(slot) works from one second later. */
  deadline(slot: bigint): bigint {
    return (slot + 1n) * this.slotSeconds + this.readingWindow;
  }

  /** The next slot that has not started yet: its readings are still in the future. */
  async freshSlot(): Promise<bigint> {
    const now = BigInt(await this.helpers.time.latest());
    return now / this.slotSeconds + 1n;
  }

  /** Makes the next block's timestamp `t` (must be after the latest block). */
  async at(t: bigint): Promise<void> {
    const latest = BigInt(await this.helpers.time.latest());
    if (t <= latest) throw new Error(`cannot go back in time: next block at ${t}, latest block at ${latest}`);
    await this.helpers.time.setNextBlockTimestamp(t);
  }

  /** Next block inside the reading window of `slot`, `offset` seconds after it opens. */
  async inWindow(slot: bigint, offset = 1n): Promise<void> {
    await this.at(this.opens(slot) + offset);
  }

  /** Next block just after the reading deadline of `slot` (settlement of `slot` allowed). */
  async afterDeadline(slot: bigint, offset = 1n): Promise<void> {
    await this.at(this.deadline(slot) + offset);
  }

  /** Signs a reading of `who` with its registered meter key (or `key`). */
  async sign(who: string | Participant, slot: bigint, importWh: bigint, exportWh: bigint, key?: BaseWallet) {
    const p = typeof who === "string" ? this.p(who) : who;
    const reading: Reading = { account: p.address, slot, importWh, exportWh };
    return signReading(key ?? p.meterKey, this.domain, reading);
  }

  /** Submits one signed reading from `from` (default: the relayer). */
  submit(signed: SignedReading, from: HardhatEthersSigner = this.relayer): Promise<ContractTransactionResponse> {
    return this.settlement.connect(from).submitReading(signed.reading, signed.r, signed.vs);
  }

  /** Submits a batch of signed readings from `from` (default: the relayer). */
  submitBatch(batch: SignedReading[], from: HardhatEthersSigner = this.relayer): Promise<ContractTransactionResponse> {
    return this.settlement.connect(from).submitReadings(batch);
  }

  /** Signs and submits readings of `slot` for several participants in one batch, inside the window. */
  async readSlot(slot: bigint, registers: Record<string, [bigint, bigint]>, offset = 1n) {
    const batch: SignedReading[] = [];
    for (const [name, [importWh, exportWh]] of Object.entries(registers)) {
      batch.push(await this.sign(name, slot, importWh, exportWh));
    }
    await this.inWindow(slot, offset);
    return this.submitBatch(batch);
  }

  /** Mints `amount` to `who`'s wallet, approves the settlement and deposits it. */
  async fund(who: string | Participant, amount: bigint): Promise<void> {
    const p = typeof who === "string" ? this.p(who) : who;
    await this.token.mint(p.address, amount);
    await this.token.connect(p.signer).approve(this.settlementAddress, amount);
    await this.settlement.connect(p.signer).deposit(amount);
  }

  /** The test schedule source; throws if the market was deployed without one. */
  get scheduleSource(): TestScheduleSource {
    if (this.source === undefined) throw new Error("the market was deployed without a schedule source");
    return this.source;
  }

  /**
   * Records day-ahead awards for `slot` at `price`, as a clearing would, and has every buyer pay
   * ceil(award * price / 1000) into the slot's pool through the schedule source (the market
   * escrows buyers' money and pays it to settlement at clearing). Returns what was paid.
   */
  async schedule(slot: bigint, price: bigint, awards: Awards): Promise<bigint> {
    const source = this.scheduleSource;
    const names = Object.keys(awards);
    await source.setSchedules(
      slot,
      names.map((n) => this.p(n).address),
      names.map((n) => awards[n] as bigint),
      price,
    );
    let cost = 0n;
    for (const name of names) {
      const q = awards[name] as bigint;
      if (q <= 0n) continue;
      const c = ceilDiv(q * price, 1000n);
      await this.token.connect(this.p(name).signer).transfer(await source.getAddress(), c);
      cost += c;
    }
    if (cost > 0n) await source.pay(slot, cost);
    return cost;
  }

  /** All participants' addresses, in registration order. */
  addresses(): string[] {
    return [...this.participants.values()].map((p) => p.address);
  }

  /** Events named `name` emitted by the settlement in `receipt`. */
  events(receipt: ContractTransactionReceipt | null, name: string): LogDescription[] {
    if (receipt === null) throw new Error("no receipt");
    const out: LogDescription[] = [];
    const address = this.settlementAddress.toLowerCase();
    for (const log of receipt.logs) {
      if (log.address.toLowerCase() !== address) continue;
      const parsed = this.settlement.interface.parseLog(log);
      if (parsed !== null && parsed.name === name) out.push(parsed);
    }
    return out;
  }

  /** The address of a participant called `who`, or `who` itself when it is an address. */
  addressOf(who: string): string {
    return this.participants.get(who)?.address ?? who;
  }

  /** The escrow deposits of `who` (participant names or addresses), at block `blockTag` (default: the latest). */
  async depositsOf(who: string[], blockTag?: number): Promise<bigint[]> {
    return Promise.all(who.map(async (w) => (await this.settlement.accountState(this.addressOf(w), { blockTag })).deposit));
  }

  /**
   * Checks that `tx` changed the escrow deposits of `who` (participant names or addresses) by
   * exactly `changes` (base units, in order): the deposits in the block before the transaction's
   * against those in its own block, as changeTokenBalances does for wallets. Settlement pays
   * earnings and revenue into deposits, so this is where payouts show.
   */
  async expectDepositChanges(
    tx: Promise<ContractTransactionResponse> | ContractTransactionResponse,
    who: string[],
    changes: bigint[],
  ): Promise<void> {
    if (who.length !== changes.length) throw new Error("expectDepositChanges: one change per account");
    const receipt = await (await tx).wait();
    if (receipt === null) throw new Error("no receipt");
    const [before, after] = await Promise.all([this.depositsOf(who, receipt.blockNumber - 1), this.depositsOf(who, receipt.blockNumber)]);
    const moved = after.map((x, i) => x - (before[i] as bigint));
    expect(moved, `deposit changes of ${who.join(", ")}`).to.deep.equal(changes);
  }

  /** token.balanceOf(settlement) + badDebt == totalDeposits + openPool. */
  async expectIdentity(): Promise<void> {
    const [balance, badDebt, totalDeposits, openPool] = await Promise.all([
      this.token.balanceOf(this.settlementAddress),
      this.settlement.badDebt(),
      this.settlement.totalDeposits(),
      this.settlement.openPool(),
    ]);
    expect(balance + badDebt, "balanceOf(settlement) + badDebt == totalDeposits + openPool").to.equal(
      totalDeposits + openPool,
    );
  }

  /** The sum of every deposit equals totalDeposits. */
  async expectDepositsSum(): Promise<void> {
    let sum = 0n;
    for (const address of this.addresses()) sum += (await this.settlement.accountState(address)).deposit;
    expect(sum, "sum of deposits == totalDeposits").to.equal(await this.settlement.totalDeposits());
  }
}

/** Deploys a token, a registry and a settlement and registers and funds `options.participants`. */
export async function deployMarket(
  ethers: HardhatEthers,
  helpers: NetworkHelpers,
  options: MarketOptions,
): Promise<Market> {
  const signers = await ethers.getSigners();
  const needed = 3 + options.participants.length;
  if (signers.length < needed) throw new Error(`the test chain needs at least ${needed} accounts`);
  const [admin, outsider, relayer] = signers as [HardhatEthersSigner, HardhatEthersSigner, HardhatEthersSigner];
  const slotSeconds = options.slotSeconds ?? SLOT_SECONDS;
  const readingWindow = options.readingWindow ?? READING_WINDOW;

  const token: EnergyToken = await ethers.deployContract("EnergyToken", ["Feeder 7 Energy Token", "kWhT", admin.address]);
  const registry: ParticipantRegistry = await ethers.deployContract("ParticipantRegistry", [admin.address]);
  const settlement: Settlement = await ethers.deployContract("Settlement", [
    await token.getAddress(),
    await registry.getAddress(),
    admin.address,
    slotSeconds,
    readingWindow,
    options.feedIn ?? FEED_IN,
    options.retail ?? RETAIL,
  ]);
  const { chainId } = await ethers.provider.getNetwork();
  const market = new Market(
    ethers,
    helpers,
    token,
    registry,
    settlement,
    admin,
    outsider,
    relayer,
    chainId,
    await settlement.getAddress(),
    slotSeconds,
    readingWindow,
  );

  if (options.scheduleSource === true) {
    const source: TestScheduleSource = await ethers.deployContract("TestScheduleSource", [
      await token.getAddress(),
      market.settlementAddress,
    ]);
    await settlement.setScheduleSource(await source.getAddress());
    market.source = source;
  }

  const registrations = options.participants.map((spec, i) => {
    const signer = signers[3 + i] as HardhatEthersSigner;
    const participant: Participant = {
      name: spec.name,
      signer,
      address: signer.address,
      meterKey: meterKeyFor(spec.name),
      meterId: encodeBytes32String(`MTR-${spec.name}`.slice(0, 31)),
      kind: spec.kind,
    };
    market.participants.set(spec.name, participant);
    return { account: participant.address, meterId: participant.meterId, meterKey: participant.meterKey.address, kind: spec.kind };
  });
  await registry.registerBatch(registrations);

  const walletTokens = options.walletTokens ?? 1000n * ONE;
  for (const spec of options.participants) {
    const p = market.p(spec.name);
    await token.mint(p.address, walletTokens);
    await token.connect(p.signer).approve(market.settlementAddress, ethers.MaxUint256);
    const deposit = spec.deposit ?? 100n * ONE;
    if (deposit > 0n) await settlement.connect(p.signer).deposit(deposit);
  }
  return market;
}

/** Ceil(a / b) for non-negative bigints. */
export function ceilDiv(a: bigint, b: bigint): bigint {
  return (a + b - 1n) / b;
}
