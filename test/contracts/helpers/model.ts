/**
 * A reference model of the Settlement contract, written from its NatSpec (schedules and
 * deviations, netted over missed slots, pricing, pro-rata shares, rounding, lazy billing,
 * scheduled sales and deviation revenue paid from the pool into the seller's deposit, its debt
 * repaid first, slot closing with the slack unit, debt and bad debt), for the randomized
 * property test. It also models the test schedule source
 * (contracts/test/TestScheduleSource.sol), which stands in for the day-ahead market: schedules
 * per slot and account, and schedule payments. There is no intra-day market in the model (its
 * slot results stay zero). It keeps its own copy of every account, slot, total and token
 * balance, predicts the events and reverts of each call, and the test compares the chain with it
 * after every step.
 *
 * Every operation works on a copy (`clone`) so that a predicted revert leaves the model as it was,
 * just as a reverted transaction leaves the chain.
 *
 * Like the contract, each transaction (a batch of readings, a settle, a withdrawal) keeps the
 * totals of at most two slots "cached" (Settlement._cached): a complete slot closes when it leaves
 * that cache (the least recently used one makes room for a third) or when the transaction ends,
 * not at its last bill. A slot's positive residual repays the slack unit's debt and goes into its
 * deposit when the slot closes (since 475652a; it was transferred before), like any seller's
 * earnings; only what its 48-bit deposit cannot hold is transferred to its wallet, all of it
 * together at the end of the transaction. That timing shows in the events: a payout that repays a
 * debt credits the slack unit before or after a slot's residual reaches the slack unit's deposit.
 */

export interface ModelAccount {
  lastSlot: bigint;
  billed: boolean;
  importWh: bigint;
  exportWh: bigint;
  /** Metered net energy of lastSlot's reading minus the schedules it covers, taken when it arrived. */
  deviationWh: bigint;
  /** What the scheduled sales it covers earn, floor(|q| * P / 1000) per slot. */
  earned: bigint;
  deposit: bigint;
  debt: bigint;
}

export interface ModelSlot {
  demandWh: bigint;
  supplyWh: bigint;
  localWh: bigint;
  readings: bigint;
  billed: bigint;
  priced: boolean;
  closed: boolean;
  price: bigint;
  feedInPrice: bigint;
  retailPrice: bigint;
  pool: bigint;
}

export interface ModelEvent {
  name: string;
  args: (bigint | string | boolean)[];
}

/** A call the model predicts to revert with custom error `error(args)`. */
export class ModelRevert extends Error {
  constructor(
    readonly error: string,
    readonly args: (bigint | string)[],
  ) {
    super(`${error}(${args.join(", ")})`);
  }
}

/**
 * Whether a slot's positive residual first repays the slack unit's bad debt. Fixed in 46ce2ca (see
 * the "slack unit in bad debt" tests); the switch stays so that the old rule can be replayed.
 */
export const POSITIVE_RESIDUAL_REPAYS_SLACK_DEBT = true;

const UINT40_MAX = 2n ** 40n - 1n;
const UINT32_MAX = 2n ** 32n - 1n;
/** Deposits and scheduled earnings are 48-bit fields of the account word. */
const UINT48_MAX = 2n ** 48n - 1n;
const INT32_MAX = 2n ** 31n - 1n;
const INT32_MIN = -(2n ** 31n);
/** A reading's net energy must lie within +-2^30 Wh (MeterLedger.MAX_NET_WH). */
const MAX_NET_WH = 2n ** 30n;
/** The largest price (Settlement.MAX_PRICE). */
export const MAX_PRICE = 2n ** 28n;
/** How many slots back a reading nets schedules when its meter missed readings (Settlement.MAX_SCHEDULE_GAP). */
export const MAX_SCHEDULE_GAP = 8n;
const ZERO_ADDRESS = "0x0000000000000000000000000000000000000000";

/** A reading as the meter signs it. */
export interface ModelReading {
  account: string;
  slot: bigint;
  importWh: bigint;
  exportWh: bigint;
}

/** A schedule as the schedule source returns it. */
export interface ModelSchedule {
  netWh: bigint;
  price: bigint;
}

function ceilDiv(a: bigint, b: bigint): bigint {
  return (a + b - 1n) / b;
}

function min(a: bigint, b: bigint): bigint {
  return a < b ? a : b;
}

/**
 * The slots one transaction has touched (at most two, the least recently used one is stored, and
 * closed if complete, to make room) and what of the slack unit's positive residuals its deposit
 * could not hold (beyond 48 bits), transferred at its end.
 */
interface ModelBatch {
  first: bigint | undefined;
  second: bigint | undefined;
  firstIsNewer: boolean;
  slackPayout: bigint;
}

function emptyAccount(): ModelAccount {
  return { lastSlot: 0n, billed: false, importWh: 0n, exportWh: 0n, deviationWh: 0n, earned: 0n, deposit: 0n, debt: 0n };
}

function emptySlot(): ModelSlot {
  return {
    demandWh: 0n,
    supplyWh: 0n,
    localWh: 0n,
    readings: 0n,
    billed: 0n,
    priced: false,
    closed: false,
    price: 0n,
    feedInPrice: 0n,
    retailPrice: 0n,
    pool: 0n,
  };
}

export class SettlementModel {
  accounts = new Map<string, ModelAccount>();
  slots = new Map<bigint, ModelSlot>();
  /** Token balances of every wallet the test watches, the settlement's included. */
  balances = new Map<string, bigint>();
  totalDeposits = 0n;
  openPool = 0n;
  badDebt = 0n;
  /** The schedule source settlement asks (TestScheduleSource), or undefined before one is set. */
  scheduleSource: string | undefined;
  /** The schedule source's schedules, by `${slot}:${account}`. */
  schedules = new Map<string, ModelSchedule>();
  /** Events of the current operation. */
  events: ModelEvent[] = [];
  /** The slots the current transaction has touched, while one runs. */
  private batch: ModelBatch | undefined;

  constructor(
    readonly settlement: string,
    readonly slack: string | undefined,
    readonly registered: Set<string>,
    readonly slotSeconds: bigint,
    readonly readingWindow: bigint,
    public feedInPrice: bigint,
    public retailPrice: bigint,
  ) {}

  clone(): SettlementModel {
    const c = new SettlementModel(
      this.settlement,
      this.slack,
      this.registered,
      this.slotSeconds,
      this.readingWindow,
      this.feedInPrice,
      this.retailPrice,
    );
    for (const [k, v] of this.accounts) c.accounts.set(k, { ...v });
    for (const [k, v] of this.slots) c.slots.set(k, { ...v });
    for (const [k, v] of this.balances) c.balances.set(k, v);
    c.totalDeposits = this.totalDeposits;
    c.openPool = this.openPool;
    c.badDebt = this.badDebt;
    c.scheduleSource = this.scheduleSource;
    for (const [k, v] of this.schedules) c.schedules.set(k, { ...v });
    return c;
  }

  account(address: string): ModelAccount {
    let a = this.accounts.get(address);
    if (a === undefined) {
      a = emptyAccount();
      this.accounts.set(address, a);
    }
    return a;
  }

  slot(slot: bigint): ModelSlot {
    let s = this.slots.get(slot);
    if (s === undefined) {
      s = emptySlot();
      this.slots.set(slot, s);
    }
    return s;
  }

  balance(address: string): bigint {
    return this.balances.get(address) ?? 0n;
  }

  deadline(slot: bigint): bigint {
    return (slot + 1n) * this.slotSeconds + this.readingWindow;
  }

  /** The schedule source's schedule of `account` in `slot` (zero if none). */
  schedule(slot: bigint, account: string): ModelSchedule {
    return this.schedules.get(`${slot}:${account}`) ?? { netWh: 0n, price: 0n };
  }

  /** What `account` may withdraw: the deposit less the worst case of its unbilled slot (positive deviation at retail). */
  free(address: string): bigint {
    const a = this.account(address);
    let reserve = 0n;
    if (a.lastSlot !== 0n && !a.billed && a.deviationWh > 0n) {
      reserve = ceilDiv(a.deviationWh * this.retailPrice, 1000n);
    }
    return a.deposit > reserve ? a.deposit - reserve : 0n;
  }

  // ------------------------------------------------------------------ token

  mint(to: string, amount: bigint): void {
    this.balances.set(to, this.balance(to) + amount);
  }

  private transfer(from: string, to: string, amount: bigint): void {
    const have = this.balance(from);
    if (have < amount) throw new ModelRevert("ERC20InsufficientBalance", [from, have, amount]);
    this.balances.set(from, have - amount);
    this.balances.set(to, this.balance(to) + amount);
  }

  // ------------------------------------------------------------------ operations

  setPrices(feedIn: bigint, retail: bigint): void {
    if (feedIn === 0n || feedIn > retail || retail > MAX_PRICE) {
      throw new ModelRevert("SettlementBadPrices", [feedIn, retail]);
    }
    this.feedInPrice = feedIn;
    this.retailPrice = retail;
    this.events.push({ name: "PricesSet", args: [feedIn, retail] });
  }

  deposit(account: string, from: string, amount: bigint): void {
    if (amount === 0n) throw new ModelRevert("SettlementZeroAmount", []);
    if (!this.registered.has(account)) throw new ModelRevert("SettlementNotRegistered", [account]);
    this.credit(account, amount);
    this.events.push({ name: "Deposited", args: [account, from, amount] });
    this.transfer(from, this.settlement, amount);
  }

  /** Credits a deposit, repaying debt first: a participant's to the slack unit, the slack unit's to escrow. */
  private credit(account: string, amount: bigint): void {
    const a = this.account(account);
    if (a.debt > 0n) {
      const repaid = min(a.debt, amount);
      a.debt -= repaid;
      amount -= repaid;
      this.events.push({ name: "DebtRepaid", args: [account, repaid, a.debt] });
      const slack = this.slack;
      if (slack === undefined) throw new ModelRevert("SettlementNoSlackUnit", []);
      if (account === slack) this.badDebt -= repaid;
      else this.credit(slack, repaid);
    }
    if (amount === 0n) return;
    if (a.deposit + amount > UINT48_MAX) throw new ModelRevert("SettlementDepositTooLarge", [account, a.deposit + amount]);
    a.deposit += amount;
    this.totalDeposits += amount;
  }

  withdraw(account: string, amount: bigint, now: bigint): void {
    if (amount === 0n) throw new ModelRevert("SettlementZeroAmount", []);
    const a = this.account(account);
    this.openBatch();
    // A final slot not billed yet is billed first, so that the deposit is exact. An account
    // without any reading has nothing pending (see the "accounts without a reading" tests).
    if (a.lastSlot !== 0n && !a.billed && now > this.deadline(a.lastSlot)) this.bill(account);
    const free = this.free(account);
    if (amount > free) throw new ModelRevert("SettlementWithdrawExceedsFree", [amount, free]);
    a.deposit -= amount;
    this.totalDeposits -= amount;
    this.events.push({ name: "Withdrawn", args: [account, amount] });
    this.closeBatch();
    this.transfer(this.settlement, account, amount);
  }

  /** Settlement.setScheduleSource by the admin: the day-ahead market, no intra-day market. */
  setScheduleSource(source: string): void {
    this.scheduleSource = source;
    this.events.push({ name: "MarketsSet", args: [source, ZERO_ADDRESS] });
  }

  /**
   * The schedules a reading of `slot` after one of `lastSlot` is netted against: those of the
   * slots since, at most MAX_SCHEDULE_GAP back; their sum and what their sales earn.
   */
  covered(account: string, lastSlot: bigint, slot: bigint): { slots: bigint[]; scheduledWh: bigint; earned: bigint } {
    const slots: bigint[] = [];
    let scheduledWh = 0n;
    let earned = 0n;
    if (this.scheduleSource === undefined) return { slots, scheduledWh, earned };
    const gap = slot - lastSlot < MAX_SCHEDULE_GAP ? slot - lastSlot : MAX_SCHEDULE_GAP;
    for (let k = slot + 1n - gap; k <= slot; ++k) {
      const { netWh: q, price } = this.schedule(k, account);
      slots.push(k);
      scheduledWh += q;
      if (q < 0n) earned += (-q * price) / 1000n;
    }
    return { slots, scheduledWh, earned };
  }

  /** TestScheduleSource.setSchedule(s): what the day-ahead market's clearing would record. */
  setSchedule(slot: bigint, account: string, netWh: bigint, price: bigint): void {
    this.schedules.set(`${slot}:${account}`, { netWh, price });
  }

  /**
   * TestScheduleSource.pay: the source transfers `amount` to settlement and records it as the
   * slot's schedule payment (Settlement.recordSchedulePayment, MARKET_ROLE).
   */
  paySchedule(slot: bigint, amount: bigint): void {
    const source = this.scheduleSource;
    if (source === undefined) throw new Error("no schedule source in the model");
    this.transfer(source, this.settlement, amount);
    const s = this.slot(slot);
    if (s.closed) throw new ModelRevert("SettlementSlotClosed", [slot]);
    s.pool += amount;
    this.openPool += amount;
    this.events.push({ name: "SchedulePaid", args: [slot, source, amount] });
  }

  /** A plain token transfer between two wallets the test watches. */
  tokenTransfer(from: string, to: string, amount: bigint): void {
    this.transfer(from, to, amount);
  }

  /**
   * submitReadings: records readings already known to be validly signed by active, non-slack
   * participants, in one transaction; returns what each one did.
   */
  submitReadings(readings: ModelReading[], now: bigint): ("recorded" | "noop")[] {
    this.openBatch();
    const out = readings.map((r) => this.recordOne(r.account, r.slot, r.importWh, r.exportWh, now));
    this.closeBatch();
    return out;
  }

  /** submitReading: one reading in a transaction of its own. */
  record(account: string, slot: bigint, importWh: bigint, exportWh: bigint, now: bigint): "recorded" | "noop" {
    return this.submitReadings([{ account, slot, importWh, exportWh }], now)[0] as "recorded" | "noop";
  }

  private recordOne(account: string, slot: bigint, importWh: bigint, exportWh: bigint, now: bigint): "recorded" | "noop" {
    const endsAt = (slot + 1n) * this.slotSeconds;
    if (now < endsAt) throw new ModelRevert("ReadingSlotNotEnded", [slot, endsAt]);
    if (now > endsAt + this.readingWindow) throw new ModelRevert("ReadingTooLate", [slot, endsAt + this.readingWindow]);
    const a = this.account(account);
    const baseline = a.lastSlot === 0n;
    if (!baseline) {
      if (slot === a.lastSlot) {
        if (importWh === a.importWh && exportWh === a.exportWh) return "noop";
        throw new ModelRevert("ReadingConflict", [slot, a.importWh, a.exportWh]);
      }
      if (slot < a.lastSlot) throw new ModelRevert("ReadingSlotBeforeLast", [slot, a.lastSlot]);
      if (importWh < a.importWh || exportWh < a.exportWh) {
        throw new ModelRevert("ReadingRegisterDecreased", [slot, importWh, exportWh, a.importWh, a.exportWh]);
      }
    }
    if (importWh > UINT40_MAX || exportWh > UINT40_MAX) throw new ModelRevert("ReadingOutOfRange", [slot]);
    const importDelta = baseline ? 0n : importWh - a.importWh;
    const exportDelta = baseline ? 0n : exportWh - a.exportWh;
    if (importDelta > UINT32_MAX || exportDelta > UINT32_MAX) throw new ModelRevert("ReadingOutOfRange", [slot]);
    const netWh = importDelta - exportDelta;
    if (netWh > MAX_NET_WH || netWh < -MAX_NET_WH) throw new ModelRevert("ReadingOutOfRange", [slot]);

    // The previous slot is final by now: it is billed on the way in.
    const billedSlot = a.lastSlot;
    if (!baseline && !a.billed) this.bill(account);
    a.lastSlot = slot;
    a.billed = baseline;
    a.importWh = importWh;
    a.exportWh = exportWh;
    a.deviationWh = 0n;
    a.earned = 0n;
    if (!baseline) {
      // The schedules in force when the reading arrives, of its slot and of the slots it missed
      // (up to MAX_SCHEDULE_GAP): its deviation goes into the slot's totals.
      const s = this.touch(slot);
      const { scheduledWh, earned } = this.covered(account, billedSlot, slot);
      const deviationWh = netWh - scheduledWh;
      if (deviationWh > 0n) s.demandWh += deviationWh;
      else if (deviationWh < 0n) s.supplyWh += -deviationWh;
      s.readings += 1n;
      // Stored in 32 signed bits, earnings in 48 unsigned ones.
      if (deviationWh > INT32_MAX || deviationWh < INT32_MIN) throw new ModelRevert("SafeCastOverflowedIntDowncast", [32n, deviationWh]);
      if (earned > UINT48_MAX) throw new ModelRevert("SafeCastOverflowedUintDowncast", [48n, earned]);
      a.deviationWh = deviationWh;
      a.earned = earned;
    }
    this.events.push({ name: "ReadingRecorded", args: [account, slot, importWh, exportWh, importDelta, exportDelta] });
    return "recorded";
  }

  settle(slot: bigint, accounts: string[], now: bigint): void {
    const deadline = this.deadline(slot);
    if (now <= deadline) throw new ModelRevert("SettlementSlotNotFinal", [slot, deadline]);
    this.openBatch();
    this.touch(slot); // closes at the end if complete, even with nobody left to bill
    for (const account of accounts) {
      const a = this.account(account);
      if (a.lastSlot !== slot || a.lastSlot === 0n || a.billed) continue;
      this.bill(account);
    }
    this.closeBatch();
  }

  /**
   * Bills `account`'s pending slot. The scheduled sales its reading covers are paid what they earn
   * from the pool; the deviation is billed at the slot's real-time prices, and an upward deviation
   * is paid from the scheduled revenue first, then from the deposit. What is left of the revenue
   * (and a downward deviation's revenue) is paid into the deposit, repaying its debt first.
   */
  private bill(account: string): void {
    const a = this.account(account);
    const slot = a.lastSlot;
    const s = this.touch(slot);
    if (!s.priced) this.price(slot, s);
    const demand = s.demandWh;
    const supply = s.supplyWh;
    const local = min(demand, supply);
    const deviation = a.deviationWh;
    let earned = a.earned;
    let netted = 0n;
    let amount = 0n;
    let shortfall = 0n;
    if (deviation > 0n) {
      const localWh = (deviation * local) / demand;
      const cost = ceilDiv(localWh * s.price + (deviation - localWh) * s.retailPrice, 1000n);
      const paid = min(cost, a.deposit + earned);
      netted = min(paid, earned);
      a.deposit -= paid - netted;
      this.totalDeposits -= paid - netted;
      s.pool += paid;
      this.openPool += paid;
      s.localWh += localWh;
      amount = cost;
      shortfall = cost - paid;
      if (shortfall > 0n) {
        a.debt += shortfall;
        this.events.push({ name: "ParticipantInDebt", args: [account, slot, shortfall, a.debt] });
      }
    } else if (deviation < 0n) {
      const n = -deviation;
      const localWh = (n * local) / supply;
      const revenue = (localWh * s.price + (n - localWh) * s.feedInPrice) / 1000n;
      earned += revenue;
      amount = -revenue;
    }
    s.pool -= earned;
    this.openPool -= earned;
    s.billed += 1n;
    a.billed = true;
    this.events.push({ name: "Billed", args: [account, slot, deviation, a.earned, amount, shortfall] });
    const payout = earned - netted;
    if (payout > 0n) this.payOut(account, payout);
  }

  /**
   * Pays `amount` from a pool into `account`'s deposit: its debt first, if it has any (credited
   * to the slack unit, which had covered it); beyond the 48-bit deposit, to its wallet.
   */
  private payOut(account: string, amount: bigint): void {
    const a = this.account(account);
    if (a.debt > 0n) {
      const repaid = min(a.debt, amount);
      a.debt -= repaid;
      amount -= repaid;
      this.events.push({ name: "DebtRepaid", args: [account, repaid, a.debt] });
      const slack = this.slack;
      if (slack === undefined) throw new ModelRevert("SettlementNoSlackUnit", []);
      this.credit(slack, repaid);
    }
    const room = UINT48_MAX - a.deposit;
    if (amount > room) {
      this.transfer(this.settlement, account, amount - room);
      amount = room;
    }
    a.deposit += amount;
    this.totalDeposits += amount;
  }

  // ------------------------------------------------------------------ one transaction's slots

  private openBatch(): void {
    this.batch = { first: undefined, second: undefined, firstIsNewer: false, slackPayout: 0n };
  }

  /** Settlement._cached: `slot` joins the transaction's two slots, the less recently used one leaving (closed if complete). */
  private touch(slot: bigint): ModelSlot {
    const b = this.batch;
    if (b === undefined) throw new Error("model: a slot touched outside a transaction");
    if (b.first === slot) {
      b.firstIsNewer = true;
    } else if (b.second === slot) {
      b.firstIsNewer = false;
    } else {
      const intoFirst = !b.firstIsNewer;
      const leaving = intoFirst ? b.first : b.second;
      if (leaving !== undefined) this.closeIfComplete(leaving);
      if (intoFirst) b.first = slot;
      else b.second = slot;
      b.firstIsNewer = intoFirst;
    }
    return this.slot(slot);
  }

  /**
   * Settlement._closeBatch: closes the cached slots if complete (first, then second), then
   * transfers the slack unit what its deposit could not hold.
   */
  private closeBatch(): void {
    const b = this.batch;
    if (b === undefined) throw new Error("model: no transaction to end");
    if (b.first !== undefined) this.closeIfComplete(b.first);
    if (b.second !== undefined) this.closeIfComplete(b.second);
    this.batch = undefined;
    if (b.slackPayout > 0n) this.transfer(this.settlement, this.slack as string, b.slackPayout);
  }

  private price(slot: bigint, s: ModelSlot): void {
    const d = s.demandWh;
    const u = s.supplyWh;
    const f = this.feedInPrice;
    const r = this.retailPrice;
    const price = d + u === 0n ? (f + r) / 2n : f + ((r - f) * d) / (d + u);
    s.priced = true;
    s.price = price;
    s.feedInPrice = f;
    s.retailPrice = r;
    this.events.push({ name: "SlotPriced", args: [slot, price, d, u] });
  }

  private closeIfComplete(slot: bigint): void {
    const s = this.slot(slot);
    // A slot without readings closes too once something was paid into it (a schedule nobody metered).
    if (s.closed || s.billed < s.readings || (s.readings === 0n && s.pool === 0n)) return;
    const slack = this.slack;
    if (slack === undefined) throw new ModelRevert("SettlementNoSlackUnit", []);
    const residual = s.pool;
    s.closed = true;
    s.pool = 0n;
    this.openPool -= residual;
    this.events.push({
      name: "SlotClosed",
      args: [slot, s.localWh, s.demandWh - s.localWh, s.supplyWh - s.localWh, residual],
    });
    if (residual > 0n) {
      let rest = residual;
      const sa = this.account(slack);
      if (POSITIVE_RESIDUAL_REPAYS_SLACK_DEBT && sa.debt > 0n) {
        const repaid = min(sa.debt, rest);
        sa.debt -= repaid;
        this.badDebt -= repaid;
        rest -= repaid;
        this.events.push({ name: "DebtRepaid", args: [slack, repaid, sa.debt] });
      }
      // The rest goes into its deposit, like a seller's earnings; what a 48-bit deposit cannot
      // hold is transferred when the transaction ends, with any other slot's.
      const room = UINT48_MAX - sa.deposit;
      const credited = min(rest, room);
      sa.deposit += credited;
      this.totalDeposits += credited;
      (this.batch as ModelBatch).slackPayout += rest - credited;
    } else if (residual < 0n) {
      const owed = -residual;
      const sa = this.account(slack);
      const paid = min(owed, sa.deposit);
      sa.deposit -= paid;
      this.totalDeposits -= paid;
      if (paid < owed) {
        const shortfall = owed - paid;
        this.badDebt += shortfall;
        sa.debt += shortfall;
        this.events.push({ name: "ParticipantInDebt", args: [slack, slot, shortfall, sa.debt] });
      }
    }
  }
}
