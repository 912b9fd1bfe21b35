import { expect } from "chai";
import { network } from "hardhat";
import { Settlement__factory } from "../../agents/chain/types/index.js";
import { ceilDiv, deployMarket, FEED_IN, Kind, ONE, RETAIL, SLOT_SECONDS, type Awards, type Market } from "./helpers/market.js";
import { runScenario } from "./helpers/property.js";
import { signReading } from "./helpers/readings.js";

const { ethers, networkHelpers } = await network.create();

/** Registers the meters start from, so that nothing depends on meters starting at zero. */
const BASE_IMPORT = 50_000n;
const BASE_EXPORT = 20_000n;
const DEPOSIT = 100n * ONE;
const SLACK_DEPOSIT = 500n * ONE;
/** The largest accepted price (Settlement.MAX_PRICE): bills of 2^32 Wh at it fit the 112-bit pool. */
const MAX_PRICE = 2n ** 28n;

const PERMIT_TYPES = {
  Permit: [
    { name: "owner", type: "address" },
    { name: "spender", type: "address" },
    { name: "value", type: "uint256" },
    { name: "nonce", type: "uint256" },
    { name: "deadline", type: "uint256" },
  ],
};

/** Alice and Dave (consumers), Bob and Carol (prosumers), each with 100 tokens deposited, and the slack unit with 500. */
async function deploySettlement(): Promise<Market> {
  return deployMarket(ethers, networkHelpers, {
    participants: [
      { name: "alice", kind: Kind.Consumer },
      { name: "bob", kind: Kind.Prosumer },
      { name: "carol", kind: Kind.Prosumer },
      { name: "dave", kind: Kind.Consumer },
      { name: "slack", kind: Kind.SlackUnit, deposit: SLACK_DEPOSIT },
    ],
  });
}

async function fixture() {
  const market = await networkHelpers.loadFixture(deploySettlement);
  const slot = await market.freshSlot();
  const a = (name: string) => market.p(name).address;
  return { market, settlement: market.settlement, token: market.token, slot, a };
}

/** The same market with the test schedule source (standing in for the day-ahead market) set. */
async function deployScheduledSettlement(): Promise<Market> {
  return deployMarket(ethers, networkHelpers, {
    participants: [
      { name: "alice", kind: Kind.Consumer },
      { name: "bob", kind: Kind.Prosumer },
      { name: "carol", kind: Kind.Prosumer },
      { name: "dave", kind: Kind.Consumer },
      { name: "slack", kind: Kind.SlackUnit, deposit: SLACK_DEPOSIT },
    ],
    scheduleSource: true,
  });
}

async function scheduledFixture() {
  const market = await networkHelpers.loadFixture(deployScheduledSettlement);
  const slot = await market.freshSlot();
  const a = (name: string) => market.p(name).address;
  return { market, settlement: market.settlement, token: market.token, slot, a };
}

/**
 * Baseline readings in `slot` and, in slot + 1, readings that carry `energy` ([importWh, exportWh]
 * per participant). Returns slot + 1, whose readings are now pending (not billed).
 */
async function meteredSlot(market: Market, slot: bigint, energy: Record<string, [bigint, bigint]>): Promise<bigint> {
  const base: Record<string, [bigint, bigint]> = {};
  const next: Record<string, [bigint, bigint]> = {};
  for (const [name, [importWh, exportWh]] of Object.entries(energy)) {
    base[name] = [BASE_IMPORT, BASE_EXPORT];
    next[name] = [BASE_IMPORT + importWh, BASE_EXPORT + exportWh];
  }
  await market.readSlot(slot, base);
  await market.readSlot(slot + 1n, next);
  return slot + 1n;
}

async function signPermit(market: Market, name: string, value: bigint, deadline: bigint) {
  const owner = market.p(name);
  const nonce = await market.token.nonces(owner.address);
  const domain = {
    name: await market.token.name(),
    version: "1",
    chainId: market.chainId,
    verifyingContract: await market.token.getAddress(),
  };
  const sig = await owner.signer.signTypedData(domain, PERMIT_TYPES, {
    owner: owner.address,
    spender: market.settlementAddress,
    value,
    nonce,
    deadline,
  });
  return ethers.Signature.from(sig);
}

describe("Settlement", function () {
  describe("deployment", function () {
    it("stores the token, prices and roles", async function () {
      const { market, settlement } = await fixture();
      expect(await settlement.token()).to.equal(await market.token.getAddress());
      expect(await settlement.feedInPrice()).to.equal(FEED_IN);
      expect(await settlement.retailPrice()).to.equal(RETAIL);
      for (const role of [await settlement.DEFAULT_ADMIN_ROLE(), await settlement.REGULATOR_ROLE(), await settlement.MASTER_ROLE()]) {
        expect(await settlement.hasRole(role, market.admin.address)).to.equal(true);
        expect(await settlement.hasRole(role, market.outsider.address)).to.equal(false);
      }
      expect(await settlement.totalDeposits()).to.equal(4n * DEPOSIT + SLACK_DEPOSIT);
      expect(await settlement.openPool()).to.equal(0n);
      expect(await settlement.badDebt()).to.equal(0n);
      await market.expectIdentity();
    });

    it("refuses zero addresses and bad prices", async function () {
      const { market } = await fixture();
      const factory = new Settlement__factory(market.admin);
      const token = await market.token.getAddress();
      const registry = await market.registry.getAddress();
      const admin = market.admin.address;
      const zero = ethers.ZeroAddress;
      for (const args of [
        [zero, registry, admin],
        [token, zero, admin],
        [token, registry, zero],
      ] as const) {
        await expect(factory.deploy(...args, 900n, 300n, FEED_IN, RETAIL)).to.be.revertedWithCustomError(
          factory,
          "SettlementZeroAddress",
        );
      }
      await expect(factory.deploy(token, registry, admin, 900n, 300n, 0n, RETAIL))
        .to.be.revertedWithCustomError(factory, "SettlementBadPrices")
        .withArgs(0n, RETAIL);
      await expect(factory.deploy(token, registry, admin, 900n, 300n, RETAIL + 1n, RETAIL))
        .to.be.revertedWithCustomError(factory, "SettlementBadPrices")
        .withArgs(RETAIL + 1n, RETAIL);
    });
  });

  describe("deposits", function () {
    it("deposit moves tokens into escrow and credits the caller", async function () {
      const { market, settlement, token, a } = await fixture();
      const alice = market.p("alice");
      const tx = settlement.connect(alice.signer).deposit(7n * ONE + 1n);
      await expect(tx).to.emit(settlement, "Deposited").withArgs(alice.address, alice.address, 7n * ONE + 1n);
      await expect(tx).to.changeTokenBalances(ethers, token, [alice.address, market.settlementAddress], [-(7n * ONE + 1n), 7n * ONE + 1n]);
      expect((await settlement.accountState(a("alice"))).deposit).to.equal(DEPOSIT + 7n * ONE + 1n);
      expect(await settlement.totalDeposits()).to.equal(5n * DEPOSIT + SLACK_DEPOSIT + 7n * ONE + 1n - DEPOSIT);
      expect(await settlement.withdrawable(a("alice"))).to.equal(DEPOSIT + 7n * ONE + 1n);
      await market.expectIdentity();
      await market.expectDepositsSum();
    });

    it("depositFor credits the account and takes the tokens from the caller", async function () {
      const { market, settlement, token, a } = await fixture();
      await token.mint(market.outsider.address, 10n * ONE);
      await token.connect(market.outsider).approve(market.settlementAddress, 10n * ONE);
      const tx = settlement.connect(market.outsider).depositFor(a("bob"), 10n * ONE);
      await expect(tx).to.emit(settlement, "Deposited").withArgs(a("bob"), market.outsider.address, 10n * ONE);
      await expect(tx).to.changeTokenBalances(
        ethers,
        token,
        [market.outsider.address, a("bob"), market.settlementAddress],
        [-10n * ONE, 0n, 10n * ONE],
      );
      expect((await settlement.accountState(a("bob"))).deposit).to.equal(DEPOSIT + 10n * ONE);
      expect((await settlement.accountState(market.outsider.address)).deposit).to.equal(0n);
      await market.expectIdentity();
    });

    it("depositWithPermit deposits without a prior approve, with an EIP-2612 signature", async function () {
      const { market, settlement, token, a } = await fixture();
      const carol = market.p("carol");
      await token.connect(carol.signer).approve(market.settlementAddress, 0n);
      const deadline = BigInt(await networkHelpers.time.latest()) + 3600n;
      const sig = await signPermit(market, "carol", 25n * ONE, deadline);
      const nonce = await token.nonces(carol.address);
      const tx = settlement.connect(carol.signer).depositWithPermit(25n * ONE, deadline, sig.v, sig.r, sig.s);
      await expect(tx).to.emit(settlement, "Deposited").withArgs(carol.address, carol.address, 25n * ONE);
      await expect(tx).to.changeTokenBalances(ethers, token, [carol.address, market.settlementAddress], [-25n * ONE, 25n * ONE]);
      expect(await token.nonces(carol.address)).to.equal(nonce + 1n);
      expect(await token.allowance(carol.address, market.settlementAddress)).to.equal(0n);
      expect((await settlement.accountState(a("carol"))).deposit).to.equal(DEPOSIT + 25n * ONE);
      await market.expectIdentity();
    });

    it("depositWithPermit still deposits when someone front-ran the permit", async function () {
      const { market, settlement, token } = await fixture();
      const carol = market.p("carol");
      await token.connect(carol.signer).approve(market.settlementAddress, 0n);
      const deadline = BigInt(await networkHelpers.time.latest()) + 3600n;
      const sig = await signPermit(market, "carol", 3n * ONE, deadline);
      await token
        .connect(market.outsider)
        .permit(carol.address, market.settlementAddress, 3n * ONE, deadline, sig.v, sig.r, sig.s);
      await expect(settlement.connect(carol.signer).depositWithPermit(3n * ONE, deadline, sig.v, sig.r, sig.s))
        .to.emit(settlement, "Deposited")
        .withArgs(carol.address, carol.address, 3n * ONE);
      // A bad permit without an allowance cannot deposit.
      const bad = await signPermit(market, "carol", 1n * ONE, deadline);
      await expect(
        settlement.connect(carol.signer).depositWithPermit(2n * ONE, deadline, bad.v, bad.r, bad.s),
      ).to.be.revertedWithCustomError(token, "ERC20InsufficientAllowance");
    });

    it("refuses zero amounts (SettlementZeroAmount)", async function () {
      const { market, settlement, a } = await fixture();
      const alice = market.p("alice");
      await expect(settlement.connect(alice.signer).deposit(0n)).to.be.revertedWithCustomError(settlement, "SettlementZeroAmount");
      await expect(settlement.connect(alice.signer).depositFor(a("bob"), 0n)).to.be.revertedWithCustomError(
        settlement,
        "SettlementZeroAmount",
      );
      await expect(
        settlement.connect(alice.signer).depositWithPermit(0n, 0n, 27, ethers.ZeroHash, ethers.ZeroHash),
      ).to.be.revertedWithCustomError(settlement, "SettlementZeroAmount");
      await expect(settlement.connect(alice.signer).withdraw(0n)).to.be.revertedWithCustomError(settlement, "SettlementZeroAmount");
    });

    it("refuses deposits for accounts that are not registered (SettlementNotRegistered)", async function () {
      const { market, settlement, token } = await fixture();
      const outsider = market.outsider;
      await token.mint(outsider.address, ONE);
      await token.connect(outsider).approve(market.settlementAddress, ONE);
      await expect(settlement.connect(outsider).deposit(ONE))
        .to.be.revertedWithCustomError(settlement, "SettlementNotRegistered")
        .withArgs(outsider.address);
      await expect(settlement.connect(market.p("alice").signer).depositFor(outsider.address, ONE))
        .to.be.revertedWithCustomError(settlement, "SettlementNotRegistered")
        .withArgs(outsider.address);
    });

    it("accepts deposits of a suspended participant", async function () {
      const { market, settlement, a } = await fixture();
      await market.registry.suspend(a("alice"));
      await expect(settlement.connect(market.p("alice").signer).deposit(ONE)).to.emit(settlement, "Deposited");
    });

    it("refuses a deposit beyond the 48-bit deposit field (SettlementDepositTooLarge)", async function () {
      const { market, settlement, token, a } = await fixture();
      const huge = 2n ** 48n;
      await token.mint(a("alice"), huge);
      await expect(settlement.connect(market.p("alice").signer).deposit(huge - DEPOSIT))
        .to.be.revertedWithCustomError(settlement, "SettlementDepositTooLarge")
        .withArgs(a("alice"), huge);
      await settlement.connect(market.p("alice").signer).deposit(huge - 1n - DEPOSIT);
      expect((await settlement.accountState(a("alice"))).deposit).to.equal(huge - 1n);
      await market.expectIdentity();
    });
  });

  describe("withdraw", function () {
    it("pays out free deposit", async function () {
      const { market, settlement, token, a } = await fixture();
      const alice = market.p("alice");
      const tx = settlement.connect(alice.signer).withdraw(40n * ONE);
      await expect(tx).to.emit(settlement, "Withdrawn").withArgs(alice.address, 40n * ONE);
      await expect(tx).to.changeTokenBalances(ethers, token, [alice.address, market.settlementAddress], [40n * ONE, -40n * ONE]);
      expect((await settlement.accountState(a("alice"))).deposit).to.equal(DEPOSIT - 40n * ONE);
      await expect(settlement.connect(alice.signer).withdraw(DEPOSIT - 40n * ONE + 1n))
        .to.be.revertedWithCustomError(settlement, "SettlementWithdrawExceedsFree")
        .withArgs(DEPOSIT - 40n * ONE + 1n, DEPOSIT - 40n * ONE);
      await settlement.connect(alice.signer).withdraw(DEPOSIT - 40n * ONE);
      expect((await settlement.accountState(a("alice"))).deposit).to.equal(0n);
      await market.expectIdentity();
      await market.expectDepositsSum();
    });

    it("keeps the worst case of an unbilled slot (all net import at retail) in reserve", async function () {
      const { market, settlement, slot, a } = await fixture();
      const alice = market.p("alice");
      // Alice imports 1_001 Wh: reserve ceil(1_001 * 300_000 / 1000) = 300_300.
      const T = await meteredSlot(market, slot, { alice: [1_101n, 100n], bob: [0n, 3_000n] });
      const free = DEPOSIT - 300_300n;
      expect(await settlement.withdrawable(a("alice"))).to.equal(free);
      // A seller's pending slot reserves nothing.
      expect(await settlement.withdrawable(a("bob"))).to.equal(DEPOSIT);
      await expect(settlement.connect(alice.signer).withdraw(free + 1n))
        .to.be.revertedWithCustomError(settlement, "SettlementWithdrawExceedsFree")
        .withArgs(free + 1n, free);
      // Before the deadline the withdrawal bills nothing.
      const partial = settlement.connect(alice.signer).withdraw(free);
      await expect(partial).to.emit(settlement, "Withdrawn").withArgs(alice.address, free);
      await expect(partial).not.to.emit(settlement, "Billed");
      expect((await settlement.accountState(a("alice"))).deposit).to.equal(300_300n);
      expect(await settlement.withdrawable(a("alice"))).to.equal(0n);
      await market.expectIdentity();

      // The reserve covers the bill, so nothing is owed. Surplus slot: p = 50_000 + 250_000 * 1_001 / 4_001 = 112_546.
      await market.afterDeadline(T);
      await expect(settlement.settle(T, [a("alice"), a("bob")]))
        .to.emit(settlement, "Billed")
        .withArgs(a("alice"), T, 1_001n, 0n, 112_659n, 0n); // ceil(1_001 * 112_546 / 1000)
      expect((await settlement.accountState(a("alice"))).deposit).to.equal(300_300n - 112_659n);
      expect((await settlement.accountState(a("alice"))).debt).to.equal(0n);
      await market.expectIdentity();
    });

    it("after the deadline bills the pending slot first, then frees what is left", async function () {
      const { market, settlement, token, slot, a } = await fixture();
      const alice = market.p("alice");
      const bob = market.p("bob");
      // Surplus: alice +1_000, bob -3_000: p = 112_500, alice pays 112_500, bob gets 212_500.
      const T = await meteredSlot(market, slot, { alice: [1_000n, 0n], bob: [0n, 3_000n] });
      await market.afterDeadline(T);
      const free = DEPOSIT - 112_500n;
      await expect(settlement.connect(alice.signer).withdraw(free + 1n))
        .to.be.revertedWithCustomError(settlement, "SettlementWithdrawExceedsFree")
        .withArgs(free + 1n, free);
      const tx = settlement.connect(alice.signer).withdraw(free);
      await expect(tx).to.emit(settlement, "SlotPriced").withArgs(T, 112_500n, 1_000n, 3_000n);
      await expect(tx).to.emit(settlement, "Billed").withArgs(alice.address, T, 1_000n, 0n, 112_500n, 0n);
      await expect(tx).to.emit(settlement, "Withdrawn").withArgs(alice.address, free);
      await expect(tx).not.to.emit(settlement, "SlotClosed"); // bob is not billed yet
      await expect(tx).to.changeTokenBalances(ethers, token, [alice.address], [free]);
      expect((await settlement.accountState(a("alice"))).deposit).to.equal(0n);
      expect((await settlement.slotState(T)).pool).to.equal(112_500n);
      await market.expectIdentity();

      // Bob's withdrawal bills him, pays his revenue into his deposit, closes the slot and sends
      // him what he withdrew; the revenue is free at once.
      const tx2 = settlement.connect(bob.signer).withdraw(ONE);
      await expect(tx2).to.emit(settlement, "Billed").withArgs(bob.address, T, -3_000n, 0n, -212_500n, 0n);
      await expect(tx2).to.emit(settlement, "SlotClosed").withArgs(T, 1_000n, 0n, 2_000n, -100_000n);
      await expect(tx2).to.emit(settlement, "Withdrawn").withArgs(bob.address, ONE);
      await expect(tx2).to.changeTokenBalances(ethers, token, [bob.address, market.settlementAddress], [ONE, -ONE]);
      await market.expectDepositChanges(tx2, ["bob", "slack"], [212_500n - ONE, -100_000n]);
      expect(await settlement.withdrawable(bob.address)).to.equal(DEPOSIT + 212_500n - ONE);
      await market.expectIdentity();
      await market.expectDepositsSum();
    });
  });

  describe("pricing and pro-rata shares", function () {
    it("surplus: the price falls toward feed-in, the slack unit buys the rest at feed-in", async function () {
      const { market, settlement, token, slot, a } = await fixture();
      const T = await meteredSlot(market, slot, { alice: [1_000n, 0n], bob: [0n, 3_000n] });
      // D = 1_000, U = 3_000: p = 50_000 + 250_000 * 1_000 / 4_000 = 112_500; L = 1_000.
      // alice: 1_000 local at p = 112_500. bob: 1_000 at p + 2_000 at 50_000 = 212_500.
      await market.afterDeadline(T);
      const tx = settlement.settle(T, [a("alice"), a("bob")]);
      await expect(tx).to.emit(settlement, "SlotPriced").withArgs(T, 112_500n, 1_000n, 3_000n);
      await expect(tx).to.emit(settlement, "Billed").withArgs(a("alice"), T, 1_000n, 0n, 112_500n, 0n);
      await expect(tx).to.emit(settlement, "Billed").withArgs(a("bob"), T, -3_000n, 0n, -212_500n, 0n);
      // Residual -100_000 comes out of the slack unit's deposit; it supplied 0 and absorbed 2_000 Wh.
      await expect(tx).to.emit(settlement, "SlotClosed").withArgs(T, 1_000n, 0n, 2_000n, -100_000n);
      // Bob's revenue is paid into his deposit: no tokens move at all.
      await expect(tx).not.to.emit(token, "Transfer");
      await market.expectDepositChanges(tx, ["alice", "bob", "slack"], [-112_500n, 212_500n, -100_000n]);
      expect((await settlement.accountState(a("alice"))).deposit).to.equal(DEPOSIT - 112_500n);
      expect((await settlement.accountState(a("bob"))).deposit).to.equal(DEPOSIT + 212_500n);
      expect((await settlement.accountState(a("slack"))).deposit).to.equal(SLACK_DEPOSIT - 100_000n);
      const s = await settlement.slotState(T);
      expect([s.priced, s.closed, s.price, s.feedInPrice, s.retailPrice, s.pool]).to.deep.equal([
        true,
        true,
        112_500n,
        FEED_IN,
        RETAIL,
        0n,
      ]);
      expect([s.readings, s.billed, s.localWh]).to.deep.equal([2n, 2n, 1_000n]);
      expect(await settlement.openPool()).to.equal(0n);
      await market.expectIdentity();
      await market.expectDepositsSum();
    });

    it("scarcity: the price rises toward retail, the slack unit sells the rest at retail", async function () {
      const { market, settlement, token, slot, a } = await fixture();
      const T = await meteredSlot(market, slot, { alice: [3_000n, 0n], bob: [0n, 1_000n] });
      // D = 3_000, U = 1_000: p = 50_000 + 250_000 * 3_000 / 4_000 = 237_500; L = 1_000.
      // alice: 1_000 at p + 2_000 at 300_000 = 837_500. bob: 1_000 at p = 237_500.
      await market.afterDeadline(T);
      const tx = settlement.settle(T, [a("bob"), a("alice")]); // the seller first: the pool goes negative on the way
      await expect(tx).to.emit(settlement, "SlotPriced").withArgs(T, 237_500n, 3_000n, 1_000n);
      await expect(tx).to.emit(settlement, "Billed").withArgs(a("alice"), T, 3_000n, 0n, 837_500n, 0n);
      await expect(tx).to.emit(settlement, "Billed").withArgs(a("bob"), T, -1_000n, 0n, -237_500n, 0n);
      // Residual +600_000 (2_000 Wh sold by the slack unit at retail) goes into the slack unit's deposit.
      await expect(tx).to.emit(settlement, "SlotClosed").withArgs(T, 1_000n, 2_000n, 0n, 600_000n);
      // Bob's revenue and the slack unit's residual are both paid into deposits: no tokens move at all.
      await expect(tx).not.to.emit(token, "Transfer");
      await expect(tx).to.changeTokenBalances(
        ethers,
        token,
        [a("bob"), a("slack"), market.settlementAddress],
        [0n, 0n, 0n],
      );
      await market.expectDepositChanges(tx, ["alice", "bob", "slack"], [-837_500n, 237_500n, 600_000n]);
      expect((await settlement.accountState(a("alice"))).deposit).to.equal(DEPOSIT - 837_500n);
      expect((await settlement.accountState(a("slack"))).deposit).to.equal(SLACK_DEPOSIT + 600_000n);
      expect(await settlement.totalDeposits()).to.equal(4n * DEPOSIT + SLACK_DEPOSIT);
      await market.expectIdentity();
    });

    it("balanced: everything is traded locally at the midpoint price, nothing goes to the slack unit", async function () {
      const { market, settlement, token, slot, a } = await fixture();
      const T = await meteredSlot(market, slot, { alice: [2_500n, 500n], bob: [100n, 2_100n] });
      // D = U = 2_000: p = 50_000 + 250_000 / 2 = 175_000.
      await market.afterDeadline(T);
      const tx = settlement.settle(T, [a("alice"), a("bob")]);
      await expect(tx).to.emit(settlement, "SlotPriced").withArgs(T, 175_000n, 2_000n, 2_000n);
      await expect(tx).to.emit(settlement, "Billed").withArgs(a("alice"), T, 2_000n, 0n, 350_000n, 0n);
      await expect(tx).to.emit(settlement, "Billed").withArgs(a("bob"), T, -2_000n, 0n, -350_000n, 0n);
      await expect(tx).to.emit(settlement, "SlotClosed").withArgs(T, 2_000n, 0n, 0n, 0n);
      await expect(tx).not.to.emit(token, "Transfer");
      await market.expectDepositChanges(tx, ["alice", "bob", "slack"], [-350_000n, 350_000n, 0n]);
      expect((await settlement.accountState(a("slack"))).deposit).to.equal(SLACK_DEPOSIT);
      await market.expectIdentity();
    });

    it("no net energy (D + U = 0): the midpoint price and zero bills", async function () {
      const { market, settlement, token, slot, a } = await fixture();
      const T = await meteredSlot(market, slot, { alice: [700n, 700n], bob: [0n, 0n] });
      await market.afterDeadline(T);
      const tx = settlement.settle(T, [a("alice"), a("bob")]);
      await expect(tx).to.emit(settlement, "SlotPriced").withArgs(T, 175_000n, 0n, 0n);
      await expect(tx).to.emit(settlement, "Billed").withArgs(a("alice"), T, 0n, 0n, 0n, 0n);
      await expect(tx).to.emit(settlement, "Billed").withArgs(a("bob"), T, 0n, 0n, 0n, 0n);
      await expect(tx).to.emit(settlement, "SlotClosed").withArgs(T, 0n, 0n, 0n, 0n);
      await expect(tx).not.to.emit(token, "Transfer");
      await market.expectIdentity();
    });

    it("surplus with several buyers and sellers: pro-rata shares, buyers round up, sellers round down", async function () {
      const { market, settlement, token, slot, a } = await fixture();
      const T = await meteredSlot(market, slot, {
        alice: [333n, 0n],
        dave: [667n, 0n],
        bob: [0n, 2_001n],
        carol: [3n, 10n],
      });
      // D = 1_000, U = 2_008: p = 50_000 + floor(250_000 * 1_000 / 3_008) = 133_111; L = 1_000.
      // alice: 333 local, ceil(333 * 133_111 / 1000) = ceil(44_325.963) = 44_326.
      // dave: 667 local, ceil(88_785.037) = 88_786.
      // bob: floor(2_001 * 1_000 / 2_008) = 996 local; floor((996 * 133_111 + 1_005 * 50_000) / 1000) = 182_828.
      // carol: floor(7_000 / 2_008) = 3 local; floor((3 * 133_111 + 4 * 50_000) / 1000) = 599.
      // Residual: 44_326 + 88_786 - 182_828 - 599 = -50_315.
      await market.afterDeadline(T);
      const tx = settlement.settle(T, [a("carol"), a("alice"), a("bob"), a("dave")]);
      await expect(tx).to.emit(settlement, "SlotPriced").withArgs(T, 133_111n, 1_000n, 2_008n);
      await expect(tx).to.emit(settlement, "Billed").withArgs(a("alice"), T, 333n, 0n, 44_326n, 0n);
      await expect(tx).to.emit(settlement, "Billed").withArgs(a("dave"), T, 667n, 0n, 88_786n, 0n);
      await expect(tx).to.emit(settlement, "Billed").withArgs(a("bob"), T, -2_001n, 0n, -182_828n, 0n);
      await expect(tx).to.emit(settlement, "Billed").withArgs(a("carol"), T, -7n, 0n, -599n, 0n);
      await expect(tx).to.emit(settlement, "SlotClosed").withArgs(T, 1_000n, 0n, 1_008n, -50_315n);
      await expect(tx).not.to.emit(token, "Transfer");
      await market.expectDepositChanges(
        tx,
        ["alice", "dave", "bob", "carol", "slack"],
        [-44_326n, -88_786n, 182_828n, 599n, -50_315n],
      );
      expect((await settlement.accountState(a("alice"))).deposit).to.equal(DEPOSIT - 44_326n);
      expect((await settlement.accountState(a("dave"))).deposit).to.equal(DEPOSIT - 88_786n);
      expect((await settlement.accountState(a("slack"))).deposit).to.equal(SLACK_DEPOSIT - 50_315n);
      await market.expectIdentity();
      await market.expectDepositsSum();
    });

    it("scarcity with several buyers: local shares round down, the rest at retail, bills round up", async function () {
      const { market, settlement, token, slot, a } = await fixture();
      const T = await meteredSlot(market, slot, { alice: [1_001n, 0n], dave: [1_999n, 0n], bob: [0n, 1_500n] });
      // D = 3_000, U = 1_500: p = 50_000 + floor(250_000 * 3_000 / 4_500) = 216_666; L = 1_500.
      // alice: floor(1_001 * 1_500 / 3_000) = 500 local: ceil((500 * 216_666 + 501 * 300_000) / 1000) = 258_633.
      // dave: floor(1_999 / 2) = 999 local: ceil((999 * 216_666 + 1_000 * 300_000) / 1000) = ceil(516_449.334) = 516_450.
      // bob: all 1_500 local: floor(1_500 * 216_666 / 1000) = 324_999.
      // Buyers bought 1_499 Wh locally: the slack unit supplied 1_501 and absorbed 1 (rounding), and
      // D = U + supplied - absorbed: 3_000 = 1_500 + 1_501 - 1. Residual 258_633 + 516_450 - 324_999 = 450_084.
      await market.afterDeadline(T);
      const tx = settlement.settle(T, [a("alice"), a("bob"), a("dave")]);
      await expect(tx).to.emit(settlement, "SlotPriced").withArgs(T, 216_666n, 3_000n, 1_500n);
      await expect(tx).to.emit(settlement, "Billed").withArgs(a("alice"), T, 1_001n, 0n, 258_633n, 0n);
      await expect(tx).to.emit(settlement, "Billed").withArgs(a("dave"), T, 1_999n, 0n, 516_450n, 0n);
      await expect(tx).to.emit(settlement, "Billed").withArgs(a("bob"), T, -1_500n, 0n, -324_999n, 0n);
      await expect(tx).to.emit(settlement, "SlotClosed").withArgs(T, 1_499n, 1_501n, 1n, 450_084n);
      // The residual goes into the slack unit's deposit, bob's revenue into his: no wallet changes.
      await expect(tx).not.to.emit(token, "Transfer");
      await expect(tx).to.changeTokenBalances(
        ethers,
        token,
        [a("bob"), a("slack"), market.settlementAddress],
        [0n, 0n, 0n],
      );
      await market.expectDepositChanges(
        tx,
        ["alice", "dave", "bob", "slack"],
        [-258_633n, -516_450n, 324_999n, 450_084n],
      );
      await market.expectIdentity();
      await market.expectDepositsSum();
    });

    it("prices a slot at its first billing and keeps that price for its later bills", async function () {
      const { market, settlement, slot, a } = await fixture();
      const T = await meteredSlot(market, slot, { alice: [1_000n, 0n], bob: [0n, 3_000n] });
      await market.afterDeadline(T);
      await expect(settlement.settle(T, [a("alice")]))
        .to.emit(settlement, "SlotPriced")
        .withArgs(T, 112_500n, 1_000n, 3_000n);
      await settlement.setPrices(100_000n, 200_000n);
      const tx = settlement.settle(T, [a("bob")]);
      await expect(tx).not.to.emit(settlement, "SlotPriced");
      // Still 1_000 at 112_500 and 2_000 at the slot's feed-in price 50_000.
      await expect(tx).to.emit(settlement, "Billed").withArgs(a("bob"), T, -3_000n, 0n, -212_500n, 0n);
      const s = await settlement.slotState(T);
      expect([s.price, s.feedInPrice, s.retailPrice]).to.deep.equal([112_500n, FEED_IN, RETAIL]);
    });

    it("prices a slot with the prices in force at its first billing", async function () {
      const { market, settlement, slot, a } = await fixture();
      const T = await meteredSlot(market, slot, { alice: [1_000n, 0n], bob: [0n, 3_000n] });
      await settlement.setPrices(100_000n, 200_000n);
      await market.afterDeadline(T);
      // p = 100_000 + 100_000 * 1_000 / 4_000 = 125_000; bob: 1_000 * 125_000 + 2_000 * 100_000 = 325_000.
      const tx = settlement.settle(T, [a("alice"), a("bob")]);
      await expect(tx).to.emit(settlement, "SlotPriced").withArgs(T, 125_000n, 1_000n, 3_000n);
      await expect(tx).to.emit(settlement, "Billed").withArgs(a("alice"), T, 1_000n, 0n, 125_000n, 0n);
      await expect(tx).to.emit(settlement, "Billed").withArgs(a("bob"), T, -3_000n, 0n, -325_000n, 0n);
      await expect(tx).to.emit(settlement, "SlotClosed").withArgs(T, 1_000n, 0n, 2_000n, -200_000n);
    });
  });

  describe("billing paths", function () {
    it("bills a slot lazily when the meter's next reading arrives, and closes it with the last one", async function () {
      const { market, settlement, token, slot, a } = await fixture();
      const T = await meteredSlot(market, slot, { alice: [3_000n, 0n], bob: [0n, 1_000n] });
      // Alice's next reading bills her slot T on its way in.
      const first = market.readSlot(T + 1n, { alice: [BASE_IMPORT + 3_500n, BASE_EXPORT] });
      await expect(first).to.emit(settlement, "SlotPriced").withArgs(T, 237_500n, 3_000n, 1_000n);
      await expect(first).to.emit(settlement, "Billed").withArgs(a("alice"), T, 3_000n, 0n, 837_500n, 0n);
      await expect(first).to.emit(settlement, "ReadingRecorded").withArgs(a("alice"), T + 1n, BASE_IMPORT + 3_500n, BASE_EXPORT, 500n, 0n);
      await expect(first).not.to.emit(settlement, "SlotClosed");
      let s = await settlement.slotState(T);
      expect([s.readings, s.billed, s.closed, s.pool]).to.deep.equal([2n, 1n, false, 837_500n]);
      expect(await settlement.openPool()).to.equal(837_500n);
      await market.expectIdentity();

      // Bob's next reading (a slot later: he missed T + 1) bills him and closes T.
      const second = market.readSlot(T + 2n, { bob: [BASE_IMPORT, BASE_EXPORT + 2_400n] });
      await expect(second).to.emit(settlement, "Billed").withArgs(a("bob"), T, -1_000n, 0n, -237_500n, 0n);
      await expect(second).to.emit(settlement, "SlotClosed").withArgs(T, 1_000n, 2_000n, 0n, 600_000n);
      // The residual goes into the slack unit's deposit: no tokens move.
      await expect(second).not.to.emit(token, "Transfer");
      await expect(second).to.changeTokenBalances(
        ethers,
        token,
        [a("bob"), a("slack"), market.settlementAddress],
        [0n, 0n, 0n],
      );
      await market.expectDepositChanges(second, ["bob", "slack"], [237_500n, 600_000n]);
      s = await settlement.slotState(T);
      expect([s.billed, s.closed, s.pool]).to.deep.equal([2n, true, 0n]);
      expect((await settlement.accountState(a("bob"))).deviationWh).to.equal(-1_400n);
      await market.expectIdentity();
    });

    it("settle refuses a slot before its reading deadline (SettlementSlotNotFinal)", async function () {
      const { market, settlement, slot, a } = await fixture();
      const T = await meteredSlot(market, slot, { alice: [1_000n, 0n] });
      await market.at(market.deadline(T));
      await expect(settlement.settle(T, [a("alice")]))
        .to.be.revertedWithCustomError(settlement, "SettlementSlotNotFinal")
        .withArgs(T, market.deadline(T));
      await expect(settlement.settle(T + 1n, [a("alice")]))
        .to.be.revertedWithCustomError(settlement, "SettlementSlotNotFinal")
        .withArgs(T + 1n, market.deadline(T + 1n));
      expect((await settlement.slotState(T)).billed).to.equal(0n);
    });

    it("settle by anyone bills only the listed accounts that are pending in that slot", async function () {
      const { market, settlement, slot, a } = await fixture();
      const T = await meteredSlot(market, slot, { alice: [1_000n, 0n], bob: [0n, 3_000n], carol: [10n, 0n] });
      await market.afterDeadline(T);
      // Dave has no reading in T; the outsider is no participant; alice is listed twice.
      const tx = settlement
        .connect(market.outsider)
        .settle(T, [a("dave"), market.outsider.address, a("alice"), a("alice"), a("bob")]);
      await expect(tx).to.emit(settlement, "Billed").withArgs(a("alice"), T, 1_000n, 0n, anyCost(), 0n);
      const receipt = await (await tx).wait();
      expect(market.events(receipt, "Billed").map((e) => e.args.account)).to.deep.equal([a("alice"), a("bob")]);
      expect(market.events(receipt, "SlotClosed")).to.have.length(0); // carol is still pending
      const s = await settlement.slotState(T);
      expect([s.readings, s.billed, s.closed]).to.deep.equal([3n, 2n, false]);
      await expect(settlement.settle(T, [a("carol")])).to.emit(settlement, "SlotClosed");
      await market.expectIdentity();
    });

    it("settling twice changes nothing", async function () {
      const { market, settlement, token, slot, a } = await fixture();
      const T = await meteredSlot(market, slot, { alice: [3_000n, 0n], bob: [0n, 1_000n] });
      await market.afterDeadline(T);
      const accounts = [a("alice"), a("bob")];
      await settlement.settle(T, accounts);
      const stateOf = async () =>
        JSON.stringify(
          [
            await settlement.slotState(T),
            await Promise.all(market.addresses().map((x) => settlement.accountState(x))),
            await Promise.all(market.addresses().map((x) => token.balanceOf(x))),
            await settlement.totalDeposits(),
            await settlement.openPool(),
            await token.balanceOf(market.settlementAddress),
          ],
          (_k, v) => (typeof v === "bigint" ? v.toString() : v),
        );
      const before = await stateOf();
      const again = settlement.settle(T, accounts);
      await expect(again).not.to.emit(settlement, "Billed");
      await expect(again).not.to.emit(settlement, "SlotClosed");
      await expect(again).not.to.emit(token, "Transfer");
      expect(await stateOf()).to.equal(before);
      // A repeated reading after billing does not bill again either.
      await expect(market.readSlot(T + 1n, { alice: [BASE_IMPORT + 3_000n, BASE_EXPORT] })).not.to.emit(settlement, "Billed");
      await market.expectIdentity();
    });

    it("a slot closes only when all of its readings are billed, with an empty settle as well", async function () {
      const { market, settlement, slot, a } = await fixture();
      const T = await meteredSlot(market, slot, { alice: [1_000n, 0n], bob: [0n, 3_000n] });
      await market.afterDeadline(T);
      await expect(settlement.settle(T, [])).not.to.emit(settlement, "SlotClosed");
      await settlement.settle(T, [a("alice")]);
      await settlement.settle(T, [a("bob")]);
      expect((await settlement.slotState(T)).closed).to.equal(true);
      await expect(settlement.settle(T, [])).not.to.emit(settlement, "SlotClosed");
      // A slot without readings never closes and never pays the slack unit.
      await expect(settlement.settle(T - 5n, [])).not.to.emit(settlement, "SlotClosed");
    });

    it("a seller is paid into its deposit even when escrow holds too little at that moment; its withdrawal waits until escrow is funded, and the identity holds throughout", async function () {
      // Before 710e43f the seller's payout was a transfer, and billing reverted as a whole while
      // the escrow was short. Crediting a deposit needs no liquidity: the slot's pool goes negative
      // until its buyers are billed, and only a withdrawal needs the tokens.
      const { market, settlement, token, slot, a } = await fixture();
      const bob = market.p("bob");
      // Everyone takes the deposit out: the escrow is empty.
      for (const name of ["alice", "bob", "carol", "dave"]) await settlement.connect(market.p(name).signer).withdraw(DEPOSIT);
      await settlement.connect(market.p("slack").signer).withdraw(SLACK_DEPOSIT);
      expect(await token.balanceOf(market.settlementAddress)).to.equal(0n);
      // Surplus: alice +1_000 (p = 112_500, she owes 112_500), bob -3_000 (revenue 212_500).
      const T = await meteredSlot(market, slot, { alice: [1_000n, 0n], bob: [0n, 3_000n] });
      const bobsNext = market.readSlot(T + 1n, { bob: [BASE_IMPORT, BASE_EXPORT + 3_500n] });
      await expect(bobsNext).to.emit(settlement, "Billed").withArgs(bob.address, T, -3_000n, 0n, -212_500n, 0n);
      await expect(bobsNext).not.to.emit(token, "Transfer");
      await market.expectDepositChanges(bobsNext, ["bob"], [212_500n]);
      expect((await settlement.accountState(bob.address)).lastSlot).to.equal(T + 1n);
      expect(await token.balanceOf(market.settlementAddress)).to.equal(0n);
      expect([await settlement.totalDeposits(), await settlement.openPool()]).to.deep.equal([212_500n, -212_500n]);
      expect((await settlement.slotState(T)).pool).to.equal(-212_500n);
      await market.expectIdentity();
      await market.expectDepositsSum();

      // The revenue is free, but the escrow cannot pay it out yet: the withdrawal reverts and changes nothing.
      expect(await settlement.withdrawable(bob.address)).to.equal(212_500n);
      await expect(settlement.connect(bob.signer).withdraw(212_500n))
        .to.be.revertedWithCustomError(token, "ERC20InsufficientBalance")
        .withArgs(market.settlementAddress, 0n, 212_500n);
      expect((await settlement.accountState(bob.address)).deposit).to.equal(212_500n);

      // Alice, billed with nothing deposited, owes her bill; the slot closes and the slack unit, with
      // nothing deposited either, owes the whole residual as bad debt. The identity still holds.
      const close = settlement.settle(T, [a("alice")]);
      await expect(close).to.emit(settlement, "ParticipantInDebt").withArgs(a("alice"), T, 112_500n, 112_500n);
      await expect(close).to.emit(settlement, "SlotClosed").withArgs(T, 1_000n, 0n, 2_000n, -212_500n);
      await expect(close).to.emit(settlement, "ParticipantInDebt").withArgs(a("slack"), T, 212_500n, 212_500n);
      await expect(close).not.to.emit(token, "Transfer");
      expect([await settlement.badDebt(), await settlement.openPool()]).to.deep.equal([212_500n, 0n]);
      await market.expectIdentity();

      // Once the slack unit funds the escrow (repaying its bad debt first), bob withdraws his revenue.
      const fund = settlement.connect(market.p("slack").signer).deposit(ONE);
      await expect(fund).to.emit(settlement, "DebtRepaid").withArgs(a("slack"), 212_500n, 0n);
      expect(await settlement.badDebt()).to.equal(0n);
      expect((await settlement.accountState(a("slack"))).deposit).to.equal(ONE - 212_500n);
      await market.expectIdentity();
      const out = settlement.connect(bob.signer).withdraw(212_500n);
      await expect(out).to.emit(settlement, "Withdrawn").withArgs(bob.address, 212_500n);
      await expect(out).to.changeTokenBalances(ethers, token, [bob.address, market.settlementAddress], [212_500n, -212_500n]);
      expect((await settlement.accountState(bob.address)).deposit).to.equal(0n);
      await market.expectIdentity();
      await market.expectDepositsSum();
    });

    it("a debt cannot be repaid before a slack unit exists (SettlementNoSlackUnit), and is repaid to it once registered", async function () {
      // Debt can be recorded without a slack unit (billing one reading of a slot that does not
      // close yet). Before 46ce2ca a later deposit repaid it to registry.slackUnit(), address(0),
      // crediting tokens to a deposit nobody can withdraw; now the deposit is refused until the
      // regulator registers a slack unit, and then repays the debt to it.
      const market = await deployMarket(ethers, networkHelpers, {
        participants: [
          { name: "alice", kind: Kind.Consumer, deposit: 0n },
          { name: "bob", kind: Kind.Prosumer },
        ],
      });
      const slot = await market.freshSlot();
      const alice = market.p("alice");
      const T = await meteredSlot(market, slot, { alice: [1_000n, 0n], bob: [0n, 3_000n] });
      await market.afterDeadline(T);
      await expect(market.settlement.settle(T, [alice.address]))
        .to.emit(market.settlement, "ParticipantInDebt")
        .withArgs(alice.address, T, 112_500n, 112_500n);
      await expect(market.settlement.connect(alice.signer).deposit(ONE)).to.be.revertedWithCustomError(
        market.settlement,
        "SettlementNoSlackUnit",
      );
      expect((await market.settlement.accountState(ethers.ZeroAddress)).deposit, "deposit credited to address(0)").to.equal(0n);
      expect((await market.settlement.accountState(alice.address)).debt).to.equal(112_500n);
      // A debt-free participant still deposits without a slack unit.
      await expect(market.settlement.connect(market.p("bob").signer).deposit(ONE)).to.emit(market.settlement, "Deposited");
      await market.expectIdentity();

      const slackSigner = (await ethers.getSigners())[10];
      if (slackSigner === undefined) throw new Error("the test chain needs eleven accounts");
      await market.registry.register({
        account: slackSigner.address,
        meterId: ethers.encodeBytes32String("MTR-late-slack"),
        meterKey: ethers.Wallet.createRandom().address,
        kind: Kind.SlackUnit,
      });
      const repay = market.settlement.connect(alice.signer).deposit(ONE);
      await expect(repay).to.emit(market.settlement, "DebtRepaid").withArgs(alice.address, 112_500n, 0n);
      expect((await market.settlement.accountState(slackSigner.address)).deposit).to.equal(112_500n);
      expect((await market.settlement.accountState(alice.address)).deposit).to.equal(ONE - 112_500n);
      // The slot, still open for bob's bill, closes with the new slack unit.
      await expect(market.settlement.settle(T, [market.p("bob").address])).to.emit(market.settlement, "SlotClosed");
      await market.expectIdentity();
    });

    it("a slot cannot close without a slack unit (SettlementNoSlackUnit)", async function () {
      const market = await deployMarket(ethers, networkHelpers, {
        participants: [
          { name: "alice", kind: Kind.Consumer },
          { name: "bob", kind: Kind.Prosumer },
        ],
      });
      const slot = await market.freshSlot();
      const T = await meteredSlot(market, slot, { alice: [1_000n, 0n], bob: [0n, 3_000n] });
      await market.afterDeadline(T);
      await expect(market.settlement.settle(T, [market.p("alice").address, market.p("bob").address])).to.be.revertedWithCustomError(
        market.settlement,
        "SettlementNoSlackUnit",
      );
    });
  });

  describe("debt", function () {
    it("a buyer who cannot pay pays what it has, is flagged, and owes the rest; totals balance", async function () {
      const { market, settlement, token, slot, a } = await fixture();
      const dave = market.p("dave");
      await settlement.connect(dave.signer).withdraw(DEPOSIT - 100_000n); // keeps 0.1 token
      const T = await meteredSlot(market, slot, { dave: [3_000n, 0n], bob: [0n, 1_000n] });
      // Scarcity as above: dave's bill is 837_500, he has 100_000: shortfall 737_500.
      await market.afterDeadline(T);
      const tx = settlement.settle(T, [a("dave"), a("bob")]);
      await expect(tx).to.emit(settlement, "Billed").withArgs(a("dave"), T, 3_000n, 0n, 837_500n, 737_500n);
      await expect(tx).to.emit(settlement, "ParticipantInDebt").withArgs(a("dave"), T, 737_500n, 737_500n);
      await expect(tx).to.emit(settlement, "Billed").withArgs(a("bob"), T, -1_000n, 0n, -237_500n, 0n);
      // The slack unit's residual is smaller by the shortfall: 100_000 - 237_500 = -137_500.
      await expect(tx).to.emit(settlement, "SlotClosed").withArgs(T, 1_000n, 2_000n, 0n, -137_500n);
      await expect(tx).not.to.emit(token, "Transfer");
      await market.expectDepositChanges(tx, ["dave", "bob", "slack"], [-100_000n, 237_500n, -137_500n]);
      const state = await settlement.accountState(a("dave"));
      expect([state.deposit, state.debt]).to.deep.equal([0n, 737_500n]);
      expect((await settlement.accountState(a("slack"))).deposit).to.equal(SLACK_DEPOSIT - 137_500n);
      expect(await settlement.badDebt()).to.equal(0n);
      await market.expectIdentity();
      await market.expectDepositsSum();

      // Debt accumulates over slots.
      // Next slot: dave +1_000, bob -1_000: p = 175_000, dave owes 175_000 more.
      const next = market.readSlot(T + 1n, {
        dave: [BASE_IMPORT + 4_000n, BASE_EXPORT],
        bob: [BASE_IMPORT, BASE_EXPORT + 2_000n],
      });
      await expect(next).not.to.emit(settlement, "ParticipantInDebt"); // T is billed already
      await market.afterDeadline(T + 1n);
      const tx2 = settlement.settle(T + 1n, [a("dave"), a("bob")]);
      await expect(tx2).to.emit(settlement, "Billed").withArgs(a("dave"), T + 1n, 1_000n, 0n, 175_000n, 175_000n);
      await expect(tx2).to.emit(settlement, "ParticipantInDebt").withArgs(a("dave"), T + 1n, 175_000n, 912_500n);
      expect((await settlement.accountState(a("dave"))).debt).to.equal(912_500n);
      await market.expectIdentity();
    });

    it("later deposits repay the debt to the slack unit first (DebtRepaid), partially or fully", async function () {
      const { market, settlement, token, slot, a } = await fixture();
      const dave = market.p("dave");
      await settlement.connect(dave.signer).withdraw(DEPOSIT - 100_000n);
      const T = await meteredSlot(market, slot, { dave: [3_000n, 0n], bob: [0n, 1_000n] });
      await market.afterDeadline(T);
      await settlement.settle(T, [a("dave"), a("bob")]);
      const slackBefore = (await settlement.accountState(a("slack"))).deposit;

      const partial = settlement.connect(dave.signer).deposit(500_000n);
      await expect(partial).to.emit(settlement, "DebtRepaid").withArgs(a("dave"), 500_000n, 237_500n);
      await expect(partial).to.emit(settlement, "Deposited").withArgs(a("dave"), a("dave"), 500_000n);
      await expect(partial).to.changeTokenBalances(ethers, token, [a("dave"), market.settlementAddress], [-500_000n, 500_000n]);
      expect((await settlement.accountState(a("dave"))).deposit).to.equal(0n);
      expect((await settlement.accountState(a("dave"))).debt).to.equal(237_500n);
      expect((await settlement.accountState(a("slack"))).deposit).to.equal(slackBefore + 500_000n);
      await market.expectIdentity();

      // Someone else pays the rest for dave, and more.
      const full = settlement.connect(market.p("alice").signer).depositFor(a("dave"), ONE);
      await expect(full).to.emit(settlement, "DebtRepaid").withArgs(a("dave"), 237_500n, 0n);
      expect((await settlement.accountState(a("dave"))).deposit).to.equal(ONE - 237_500n);
      expect((await settlement.accountState(a("dave"))).debt).to.equal(0n);
      // In the end the slack unit got exactly what a fully paid bill would have left it: +600_000.
      expect((await settlement.accountState(a("slack"))).deposit).to.equal(SLACK_DEPOSIT + 600_000n);
      await expect(settlement.connect(dave.signer).deposit(1n)).not.to.emit(settlement, "DebtRepaid");
      await market.expectIdentity();
      await market.expectDepositsSum();
    });

    it("a participant in debt repays it first out of what it earns (DebtRepaid), the repayment credited to the slack unit", async function () {
      const { market, settlement, token, slot, a } = await fixture();
      const dave = market.p("dave");
      await settlement.connect(dave.signer).withdraw(DEPOSIT - 600_000n); // keeps 0.6 token
      const registers = (daveImport: bigint, daveExport: bigint, aliceImport: bigint, bobExport: bigint) => ({
        dave: [BASE_IMPORT + daveImport, BASE_EXPORT + daveExport] as [bigint, bigint],
        alice: [BASE_IMPORT + aliceImport, BASE_EXPORT] as [bigint, bigint],
        bob: [BASE_IMPORT, BASE_EXPORT + bobExport] as [bigint, bigint],
      });
      await market.readSlot(slot, registers(0n, 0n, 0n, 0n));
      // T: scarcity (dave +3_000, bob -1_000): dave's bill is 837_500, he has 600_000: debt 237_500.
      const T = slot + 1n;
      await market.readSlot(T, registers(3_000n, 0n, 0n, 1_000n));
      // T + 1 .. T + 3: dave sells 1_000 Wh to alice each slot, D = U = 1_000 at p = 175_000.
      // T + 1's readings bill T on their way in.
      const first = market.readSlot(T + 1n, registers(3_000n, 1_000n, 1_000n, 1_000n));
      await expect(first).to.emit(settlement, "ParticipantInDebt").withArgs(a("dave"), T, 237_500n, 237_500n);
      expect((await settlement.accountState(a("dave"))).debt).to.equal(237_500n);
      const slackBefore = (await settlement.accountState(a("slack"))).deposit;

      // T + 2's readings bill T + 1: dave's 175_000 all repay his debt; his deposit stays empty.
      const second = market.readSlot(T + 2n, registers(3_000n, 2_000n, 2_000n, 1_000n));
      await expect(second).to.emit(settlement, "Billed").withArgs(a("dave"), T + 1n, -1_000n, 0n, -175_000n, 0n);
      await expect(second).to.emit(settlement, "DebtRepaid").withArgs(a("dave"), 175_000n, 62_500n);
      await expect(second).to.emit(settlement, "SlotClosed").withArgs(T + 1n, 1_000n, 0n, 0n, 0n);
      await expect(second).not.to.emit(token, "Transfer");
      await market.expectDepositChanges(second, ["dave", "alice", "slack"], [0n, -175_000n, 175_000n]);
      expect((await settlement.accountState(a("dave"))).debt).to.equal(62_500n);
      await market.expectIdentity();

      // T + 3's readings bill T + 2: 62_500 repay the rest of the debt, 112_500 go into dave's deposit.
      const third = market.readSlot(T + 3n, registers(3_000n, 3_000n, 3_000n, 1_000n));
      await expect(third).to.emit(settlement, "DebtRepaid").withArgs(a("dave"), 62_500n, 0n);
      await market.expectDepositChanges(third, ["dave", "alice", "slack"], [112_500n, -175_000n, 62_500n]);
      expect((await settlement.accountState(a("dave"))).debt).to.equal(0n);
      // In all the slack unit got exactly dave's shortfall, as a fully paid bill would have left it.
      expect((await settlement.accountState(a("slack"))).deposit).to.equal(slackBefore + 237_500n);
      await market.expectIdentity();

      // Out of debt, dave's next earnings go into his deposit whole.
      await market.afterDeadline(T + 3n);
      const last = settlement.settle(T + 3n, [a("dave"), a("alice"), a("bob")]);
      await expect(last).to.emit(settlement, "Billed").withArgs(a("dave"), T + 3n, -1_000n, 0n, -175_000n, 0n);
      await expect(last).not.to.emit(settlement, "DebtRepaid");
      await expect(last).not.to.emit(token, "Transfer");
      await market.expectDepositChanges(last, ["dave", "alice", "slack"], [175_000n, -175_000n, 0n]);
      expect(await token.balanceOf(a("dave")), "dave's wallet: only his withdrawal").to.equal(1000n * ONE - 600_000n);
      await market.expectIdentity();
      await market.expectDepositsSum();
    });

    it("a slack unit that cannot cover a negative residual is flagged and the escrow records bad debt", async function () {
      const { market, settlement, slot, a } = await fixture();
      const slack = market.p("slack");
      await settlement.connect(slack.signer).withdraw(SLACK_DEPOSIT - 10_000n);
      const T = await meteredSlot(market, slot, { alice: [1_000n, 0n], bob: [0n, 3_000n] });
      await market.afterDeadline(T);
      // Residual -100_000; the slack unit has 10_000: 90_000 uncovered.
      const tx = settlement.settle(T, [a("alice"), a("bob")]);
      await expect(tx).to.emit(settlement, "SlotClosed").withArgs(T, 1_000n, 0n, 2_000n, -100_000n);
      await expect(tx).to.emit(settlement, "ParticipantInDebt").withArgs(a("slack"), T, 90_000n, 90_000n);
      expect(await settlement.badDebt()).to.equal(90_000n);
      const s = await settlement.accountState(a("slack"));
      expect([s.deposit, s.debt]).to.deep.equal([0n, 90_000n]);
      await market.expectIdentity();
      await market.expectDepositsSum();

      // The slack unit's next deposit repays the bad debt into escrow.
      await market.token.mint(market.admin.address, ONE);
      await market.token.approve(market.settlementAddress, ONE);
      await expect(settlement.depositFor(a("slack"), 100_000n))
        .to.emit(settlement, "DebtRepaid")
        .withArgs(a("slack"), 90_000n, 0n);
      expect(await settlement.badDebt()).to.equal(0n);
      expect((await settlement.accountState(a("slack"))).deposit).to.equal(10_000n);
      await market.expectIdentity();
    });

    it("a buyer's repayment goes to the slack unit's bad debt first", async function () {
      const { market, settlement, slot, a } = await fixture();
      const slack = market.p("slack");
      const dave = market.p("dave");
      await settlement.connect(slack.signer).withdraw(SLACK_DEPOSIT);
      await settlement.connect(dave.signer).withdraw(DEPOSIT);
      // dave buys 1_000 with nothing deposited, bob sells 3_000: p = 112_500.
      const T = await meteredSlot(market, slot, { dave: [1_000n, 0n], bob: [0n, 3_000n] });
      await market.afterDeadline(T);
      const tx = settlement.settle(T, [a("bob"), a("dave")]);
      await expect(tx).to.emit(settlement, "ParticipantInDebt").withArgs(a("dave"), T, 112_500n, 112_500n);
      // Residual -212_500 (nothing paid in, bob paid out), none of it covered by the slack unit.
      await expect(tx).to.emit(settlement, "ParticipantInDebt").withArgs(a("slack"), T, 212_500n, 212_500n);
      expect(await settlement.badDebt()).to.equal(212_500n);
      await market.expectIdentity();

      const repay = settlement.connect(dave.signer).deposit(ONE);
      await expect(repay).to.emit(settlement, "DebtRepaid").withArgs(a("dave"), 112_500n, 0n);
      await expect(repay).to.emit(settlement, "DebtRepaid").withArgs(a("slack"), 112_500n, 100_000n);
      expect(await settlement.badDebt()).to.equal(100_000n);
      expect((await settlement.accountState(a("slack"))).deposit).to.equal(0n);
      expect((await settlement.accountState(a("dave"))).deposit).to.equal(ONE - 112_500n);
      await market.expectIdentity();
      await market.expectDepositsSum();
    });
  });

  describe("schedules (day-ahead positions)", function () {
    // The test schedule source (contracts/test/TestScheduleSource.sol) stands in for the day-ahead
    // market: it records awards and pays buyers' costs into the slot's pool, as a clearing does.

    /**
     * Baselines in `slot`; then, for slot + 1, the day-ahead `awards` at `price` (buyers prepay into
     * the pool) and readings that carry `energy`. Returns slot + 1, pending, and what was prepaid.
     */
    async function scheduledSlot(
      market: Market,
      slot: bigint,
      price: bigint,
      awards: Awards,
      energy: Record<string, [bigint, bigint]>,
    ): Promise<{ T: bigint; prepaid: bigint }> {
      const base: Record<string, [bigint, bigint]> = {};
      const next: Record<string, [bigint, bigint]> = {};
      for (const [name, [importWh, exportWh]] of Object.entries(energy)) {
        base[name] = [BASE_IMPORT, BASE_EXPORT];
        next[name] = [BASE_IMPORT + importWh, BASE_EXPORT + exportWh];
      }
      await market.readSlot(slot, base);
      const prepaid = await market.schedule(slot + 1n, price, awards);
      await market.readSlot(slot + 1n, next);
      return { T: slot + 1n, prepaid };
    }

    describe("schedule source and schedule payments", function () {
      it("setScheduleSource is for the admin and moves MARKET_ROLE to the new day-ahead market (zero removes it)", async function () {
        const { market, settlement } = await fixture();
        const MARKET_ROLE = await settlement.MARKET_ROLE();
        expect(await settlement.dayAheadMarket()).to.equal(ethers.ZeroAddress);
        expect(await settlement.intradayMarket()).to.equal(ethers.ZeroAddress);
        expect(await settlement.hasRole(MARKET_ROLE, market.admin.address)).to.equal(false);
        await expect(settlement.connect(market.outsider).setScheduleSource(market.outsider.address))
          .to.be.revertedWithCustomError(settlement, "AccessControlUnauthorizedAccount")
          .withArgs(market.outsider.address, await settlement.DEFAULT_ADMIN_ROLE());

        const first = await ethers.deployContract("TestScheduleSource", [await market.token.getAddress(), market.settlementAddress]);
        const second = await ethers.deployContract("TestScheduleSource", [await market.token.getAddress(), market.settlementAddress]);
        await expect(settlement.setScheduleSource(await first.getAddress()))
          .to.emit(settlement, "MarketsSet")
          .withArgs(await first.getAddress(), ethers.ZeroAddress);
        expect(await settlement.hasRole(MARKET_ROLE, await first.getAddress())).to.equal(true);
        await settlement.setScheduleSource(await second.getAddress());
        expect(await settlement.dayAheadMarket()).to.equal(await second.getAddress());
        expect(await settlement.hasRole(MARKET_ROLE, await first.getAddress())).to.equal(false);
        expect(await settlement.hasRole(MARKET_ROLE, await second.getAddress())).to.equal(true);
        // The replaced source can no longer pay into slots.
        await market.token.mint(await first.getAddress(), ONE);
        await expect(first.pay(123n, ONE))
          .to.be.revertedWithCustomError(settlement, "AccessControlUnauthorizedAccount")
          .withArgs(await first.getAddress(), MARKET_ROLE);
        // Zero: no day-ahead market any more.
        await expect(settlement.setScheduleSource(ethers.ZeroAddress)).to.emit(settlement, "MarketsSet").withArgs(ethers.ZeroAddress, ethers.ZeroAddress);
        expect(await settlement.hasRole(MARKET_ROLE, await second.getAddress())).to.equal(false);
      });

      it("recordSchedulePayment is for MARKET_ROLE, adds to the slot's pool and openPool, and keeps the identity", async function () {
        const { market, settlement, slot } = await scheduledFixture();
        const MARKET_ROLE = await settlement.MARKET_ROLE();
        await expect(settlement.connect(market.outsider).recordSchedulePayment(slot, 1n))
          .to.be.revertedWithCustomError(settlement, "AccessControlUnauthorizedAccount")
          .withArgs(market.outsider.address, MARKET_ROLE);
        const source = market.scheduleSource;
        await market.token.mint(await source.getAddress(), 5n * ONE);
        const tx = source.pay(slot, 2n * ONE);
        await expect(tx).to.emit(settlement, "SchedulePaid").withArgs(slot, await source.getAddress(), 2n * ONE);
        await expect(tx).to.changeTokenBalances(ethers, market.token, [await source.getAddress(), market.settlementAddress], [-2n * ONE, 2n * ONE]);
        await source.pay(slot, 3n * ONE);
        expect((await settlement.slotState(slot)).pool).to.equal(5n * ONE);
        expect(await settlement.openPool()).to.equal(5n * ONE);
        await market.expectIdentity();
      });

      it("a slot nobody read closes on an empty settle after its deadline; the prepaid pool goes to the slack unit", async function () {
        const { market, settlement, token, slot, a } = await scheduledFixture();
        const prepaid = await market.schedule(slot, 100_000n, { alice: 1_000n, bob: -1_000n });
        expect(prepaid).to.equal(100_000n);
        await market.at(market.deadline(slot));
        await expect(settlement.settle(slot, []))
          .to.be.revertedWithCustomError(settlement, "SettlementSlotNotFinal")
          .withArgs(slot, market.deadline(slot));
        await market.afterDeadline(slot);
        const tx = settlement.settle(slot, []);
        await expect(tx).to.emit(settlement, "SlotClosed").withArgs(slot, 0n, 0n, 0n, 100_000n);
        await expect(tx).not.to.emit(settlement, "SlotPriced");
        // The prepaid pool goes into the slack unit's deposit: no tokens move.
        await expect(tx).not.to.emit(token, "Transfer");
        await expect(tx).to.changeTokenBalances(ethers, token, [a("slack"), market.settlementAddress], [0n, 0n]);
        await market.expectDepositChanges(tx, ["alice", "bob", "slack"], [0n, 0n, 100_000n]);
        expect((await settlement.accountState(a("slack"))).deposit).to.equal(SLACK_DEPOSIT + 100_000n);
        const s = await settlement.slotState(slot);
        expect([s.readings, s.billed, s.closed, s.pool]).to.deep.equal([0n, 0n, true, 0n]);
        expect(await settlement.openPool()).to.equal(0n);
        await market.expectIdentity();
        // Closed: settling again does nothing, and nothing more can be paid into it.
        await expect(settlement.settle(slot, [])).not.to.emit(settlement, "SlotClosed");
        await token.mint(await market.scheduleSource.getAddress(), ONE);
        await expect(market.scheduleSource.pay(slot, ONE))
          .to.be.revertedWithCustomError(settlement, "SettlementSlotClosed")
          .withArgs(slot);
        await market.expectIdentity();
      });

      it("a payment into a slot closed by its last bill is refused (SettlementSlotClosed)", async function () {
        const { market, settlement, slot, a } = await scheduledFixture();
        const { T } = await scheduledSlot(market, slot, 100_000n, { alice: 1_000n, bob: -1_000n }, { alice: [1_000n, 0n], bob: [0n, 1_000n] });
        await market.afterDeadline(T);
        await settlement.settle(T, [a("alice"), a("bob")]);
        expect((await settlement.slotState(T)).closed).to.equal(true);
        await market.token.mint(await market.scheduleSource.getAddress(), ONE);
        await expect(market.scheduleSource.pay(T, 1n)).to.be.revertedWithCustomError(settlement, "SettlementSlotClosed").withArgs(T);
        // A later slot still takes payments.
        await expect(market.scheduleSource.pay(T + 1n, 1n)).to.emit(settlement, "SchedulePaid");
      });
    });

    describe("billing around the schedule", function () {
      it("a schedule kept exactly: the seller gets floor(|q| * P / 1000), buyers owe nothing more, the dust goes to the slack unit", async function () {
        const { market, settlement, token, slot, a } = await scheduledFixture();
        // P = 123_457: alice prepaid ceil(1_001 * P / 1000) = 123_581, dave ceil(999 * P / 1000) = 123_334.
        const { T, prepaid } = await scheduledSlot(
          market,
          slot,
          123_457n,
          { alice: 1_001n, dave: 999n, bob: -2_000n },
          { alice: [1_001n, 0n], dave: [1_099n, 100n], bob: [0n, 2_000n] },
        );
        expect(prepaid).to.equal(123_581n + 123_334n);
        const s0 = await settlement.slotState(T);
        expect([s0.demandWh, s0.supplyWh, s0.readings, s0.pool]).to.deep.equal([0n, 0n, 3n, prepaid]);
        // The reading keeps its deviation and what its scheduled sales earn: floor(2_000 * 123_457 / 1000).
        const bob = await settlement.accountState(a("bob"));
        expect([bob.deviationWh, bob.earned]).to.deep.equal([0n, 246_914n]);
        const alice = await settlement.accountState(a("alice"));
        expect([alice.deviationWh, alice.earned]).to.deep.equal([0n, 0n]);
        await market.afterDeadline(T);
        const tx = settlement.settle(T, [a("alice"), a("bob"), a("dave")]);
        // No deviation: the real-time price is the midpoint and nobody's deviation costs anything.
        await expect(tx).to.emit(settlement, "SlotPriced").withArgs(T, 175_000n, 0n, 0n);
        await expect(tx).to.emit(settlement, "Billed").withArgs(a("alice"), T, 0n, 0n, 0n, 0n);
        await expect(tx).to.emit(settlement, "Billed").withArgs(a("dave"), T, 0n, 0n, 0n, 0n);
        await expect(tx).to.emit(settlement, "Billed").withArgs(a("bob"), T, 0n, 246_914n, 0n, 0n);
        // bob: floor(2_000 * 123_457 / 1000) = 246_914, into his deposit; the rounding dust, 1, goes
        // into the slack unit's deposit. No tokens move.
        await expect(tx).to.emit(settlement, "SlotClosed").withArgs(T, 0n, 0n, 0n, 1n);
        await expect(tx).not.to.emit(token, "Transfer");
        await expect(tx).to.changeTokenBalances(
          ethers,
          token,
          [a("alice"), a("dave"), a("bob"), a("slack"), market.settlementAddress],
          [0n, 0n, 0n, 0n, 0n],
        );
        await market.expectDepositChanges(tx, ["alice", "dave", "bob", "slack"], [0n, 0n, 246_914n, 1n]);
        for (const name of ["alice", "dave"]) expect((await settlement.accountState(a(name))).deposit).to.equal(DEPOSIT);
        expect((await settlement.accountState(a("bob"))).deposit).to.equal(DEPOSIT + 246_914n);
        expect((await settlement.accountState(a("slack"))).deposit).to.equal(SLACK_DEPOSIT + 1n);
        await market.expectIdentity();
        await market.expectDepositsSum();
      });

      it("deviations are priced in real time around the schedules, and energy balances on deviations", async function () {
        const { market, settlement, token, slot, a } = await scheduledFixture();
        // alice bought 1_000 from bob at 100_000 and used 1_500 (d = +500); bob delivered 1_200
        // (d = -200); carol, unscheduled, exported 400 (d = -400). D = 500, U = 600:
        // p = 50_000 + 250_000 * 500 / 1_100 = 163_636; L = 500.
        const { T } = await scheduledSlot(
          market,
          slot,
          100_000n,
          { alice: 1_000n, bob: -1_000n },
          { alice: [1_500n, 0n], bob: [0n, 1_200n], carol: [0n, 400n] },
        );
        const s0 = await settlement.slotState(T);
        expect([s0.demandWh, s0.supplyWh]).to.deep.equal([500n, 600n]);
        await market.afterDeadline(T);
        const tx = settlement.settle(T, [a("bob"), a("carol"), a("alice")]);
        await expect(tx).to.emit(settlement, "SlotPriced").withArgs(T, 163_636n, 500n, 600n);
        // alice: 500 locally at p: ceil(81_818) = 81_818, from her deposit.
        await expect(tx).to.emit(settlement, "Billed").withArgs(a("alice"), T, 500n, 0n, 81_818n, 0n);
        // bob: scheduled 100_000, plus floor(200 * 500 / 600) = 166 Wh at p and 34 at feed-in: 28_863.
        await expect(tx).to.emit(settlement, "Billed").withArgs(a("bob"), T, -200n, 100_000n, -28_863n, 0n);
        // carol: 333 Wh at p and 67 at feed-in: 57_840.
        await expect(tx).to.emit(settlement, "Billed").withArgs(a("carol"), T, -400n, 0n, -57_840n, 0n);
        // Pool: 100_000 + 81_818 - 100_000 - 28_863 - 57_840 = -4_885, from the slack unit's deposit;
        // it absorbed U - L = 100 Wh of deviations and supplied none: 500 = 600 + 0 - 100.
        await expect(tx).to.emit(settlement, "SlotClosed").withArgs(T, 500n, 0n, 100n, -4_885n);
        // bob's 100_000 + 28_863 and carol's 57_840 go into their deposits: no tokens move.
        await expect(tx).not.to.emit(token, "Transfer");
        await market.expectDepositChanges(tx, ["alice", "bob", "carol", "slack"], [-81_818n, 128_863n, 57_840n, -4_885n]);
        expect((await settlement.accountState(a("alice"))).deposit).to.equal(DEPOSIT - 81_818n);
        expect((await settlement.accountState(a("slack"))).deposit).to.equal(SLACK_DEPOSIT - 4_885n);
        await market.expectIdentity();
        await market.expectDepositsSum();
      });

      it("a scheduled buyer who uses less sells the rest back at the real-time price", async function () {
        const { market, settlement, token, slot, a } = await scheduledFixture();
        // alice bought 1_000 at 200_000 and used 400: d = -600; nobody else deviates, so D = 0 and
        // p = feed-in; all 600 Wh go to the slack unit at 50_000: 30_000.
        const { T } = await scheduledSlot(market, slot, 200_000n, { alice: 1_000n, bob: -1_000n }, { alice: [400n, 0n], bob: [0n, 1_000n] });
        await market.afterDeadline(T);
        const tx = settlement.settle(T, [a("alice"), a("bob")]);
        await expect(tx).to.emit(settlement, "SlotPriced").withArgs(T, FEED_IN, 0n, 600n);
        await expect(tx).to.emit(settlement, "Billed").withArgs(a("alice"), T, -600n, 0n, -30_000n, 0n);
        await expect(tx).to.emit(settlement, "Billed").withArgs(a("bob"), T, 0n, 200_000n, 0n, 0n);
        await expect(tx).to.emit(settlement, "SlotClosed").withArgs(T, 0n, 0n, 600n, -30_000n);
        await expect(tx).to.changeTokenBalances(ethers, token, [a("alice"), a("bob")], [0n, 0n]);
        await market.expectDepositChanges(tx, ["alice", "bob", "slack"], [30_000n, 200_000n, -30_000n]);
        await market.expectIdentity();
      });

      it("a seller who delivers less pays its deviation from its scheduled revenue first", async function () {
        const { market, settlement, token, slot, a } = await scheduledFixture();
        // bob sold 2_000 at 100_000 (revenue 200_000) and delivered 1_500: d = +500, D = 500, U = 0:
        // p = retail, 500 Wh from the slack unit at 300_000 = 150_000, netted from the revenue.
        const { T } = await scheduledSlot(market, slot, 100_000n, { alice: 2_000n, bob: -2_000n }, { alice: [2_000n, 0n], bob: [0n, 1_500n] });
        await market.afterDeadline(T);
        const tx = settlement.settle(T, [a("bob"), a("alice")]);
        await expect(tx).to.emit(settlement, "SlotPriced").withArgs(T, RETAIL, 500n, 0n);
        await expect(tx).to.emit(settlement, "Billed").withArgs(a("bob"), T, 500n, 200_000n, 150_000n, 0n);
        await expect(tx).to.emit(settlement, "SlotClosed").withArgs(T, 0n, 500n, 0n, 150_000n);
        // The residual goes into the slack unit's deposit: no tokens move.
        await expect(tx).not.to.emit(token, "Transfer");
        await expect(tx).to.changeTokenBalances(ethers, token, [a("bob"), a("slack"), market.settlementAddress], [0n, 0n, 0n]);
        // What the revenue leaves (50_000) goes into bob's deposit; none of the bill came out of it.
        await market.expectDepositChanges(tx, ["bob", "alice", "slack"], [50_000n, 0n, 150_000n]);
        expect((await settlement.accountState(a("bob"))).deposit).to.equal(DEPOSIT + 50_000n);
        expect((await settlement.accountState(a("slack"))).deposit).to.equal(SLACK_DEPOSIT + 150_000n);
        await market.expectIdentity();
      });

      it("a seller whose deviation exceeds its scheduled revenue pays the rest from its deposit, then owes it", async function () {
        const { market, settlement, token, slot, a } = await scheduledFixture();
        const bob = market.p("bob");
        await settlement.connect(bob.signer).withdraw(DEPOSIT - 100_000n);
        // bob sold 2_000 at 100_000 (revenue 200_000) and delivered 500: d = +1_500 at retail = 450_000:
        // 200_000 from the revenue, 100_000 from the deposit, 150_000 owed.
        const { T } = await scheduledSlot(market, slot, 100_000n, { alice: 2_000n, bob: -2_000n }, { alice: [2_000n, 0n], bob: [0n, 500n] });
        expect(await settlement.withdrawable(bob.address), "the reserve ignores the scheduled revenue").to.equal(0n);
        await market.afterDeadline(T);
        const tx = settlement.settle(T, [a("alice"), a("bob")]);
        await expect(tx).to.emit(settlement, "Billed").withArgs(a("bob"), T, 1_500n, 200_000n, 450_000n, 150_000n);
        await expect(tx).to.emit(settlement, "ParticipantInDebt").withArgs(a("bob"), T, 150_000n, 150_000n);
        // Pool: 200_000 prepaid + 300_000 paid - 200_000 revenue = 300_000 to the slack unit (450_000 of
        // energy less bob's 150_000 debt, which he now owes it).
        await expect(tx).to.emit(settlement, "SlotClosed").withArgs(T, 0n, 1_500n, 0n, 300_000n);
        // That residual goes into the slack unit's deposit: no tokens move.
        await expect(tx).not.to.emit(token, "Transfer");
        await expect(tx).to.changeTokenBalances(ethers, token, [a("bob"), a("slack"), market.settlementAddress], [0n, 0n, 0n]);
        await market.expectDepositChanges(tx, ["alice", "bob", "slack"], [0n, -100_000n, 300_000n]);
        expect((await settlement.accountState(a("slack"))).deposit).to.equal(SLACK_DEPOSIT + 300_000n);
        const s = await settlement.accountState(a("bob"));
        expect([s.deposit, s.debt]).to.deep.equal([0n, 150_000n]);
        await market.expectIdentity();
        await market.expectDepositsSum();
      });

      it("withdrawable reserves the positive deviation at retail, not the scheduled import", async function () {
        const { market, settlement, slot, a } = await scheduledFixture();
        const { T } = await scheduledSlot(
          market,
          slot,
          100_000n,
          { alice: 1_000n, dave: 1_000n, bob: -2_000n },
          { alice: [1_500n, 0n], dave: [1_000n, 0n], bob: [0n, 2_500n] },
        );
        // alice: d = +500: ceil(500 * 300_000 / 1000) = 150_000 reserved. dave: d = 0. bob: d = -500.
        expect(await settlement.withdrawable(a("alice"))).to.equal(DEPOSIT - 150_000n);
        expect(await settlement.withdrawable(a("dave"))).to.equal(DEPOSIT);
        expect(await settlement.withdrawable(a("bob"))).to.equal(DEPOSIT);
        await expect(settlement.connect(market.p("alice").signer).withdraw(DEPOSIT - 150_000n + 1n))
          .to.be.revertedWithCustomError(settlement, "SettlementWithdrawExceedsFree")
          .withArgs(DEPOSIT - 150_000n + 1n, DEPOSIT - 150_000n);
        // After the deadline a seller's withdrawal bills it, pays its scheduled and deviation revenue
        // into its deposit, and may take that revenue out at once.
        await market.afterDeadline(T);
        const tx = settlement.connect(market.p("bob").signer).withdraw(DEPOSIT + 287_500n);
        // D = U = 500: p = 175_000, bob's 500 Wh all local: 87_500, plus 200_000 scheduled.
        await expect(tx).to.emit(settlement, "Billed").withArgs(a("bob"), T, -500n, 200_000n, -87_500n, 0n);
        await expect(tx).to.emit(settlement, "Withdrawn").withArgs(a("bob"), DEPOSIT + 287_500n);
        await expect(tx).to.changeTokenBalances(ethers, market.token, [a("bob")], [DEPOSIT + 287_500n]);
        expect((await settlement.accountState(a("bob"))).deposit).to.equal(0n);
        await market.expectIdentity();
      });

      it("bills lazily around the schedule when the next reading arrives", async function () {
        const { market, settlement, token, slot, a } = await scheduledFixture();
        const { T } = await scheduledSlot(market, slot, 150_000n, { alice: 1_000n, bob: -1_000n }, { alice: [1_000n, 0n], bob: [0n, 1_000n] });
        // T + 1 has its own schedule: bob sells 300 to alice at 80_000.
        await market.schedule(T + 1n, 80_000n, { alice: 300n, bob: -300n });
        const next = market.readSlot(T + 1n, {
          alice: [BASE_IMPORT + 1_300n, BASE_EXPORT],
          bob: [BASE_IMPORT, BASE_EXPORT + 1_300n],
        });
        await expect(next).to.emit(settlement, "Billed").withArgs(a("bob"), T, 0n, 150_000n, 0n, 0n);
        await expect(next).to.emit(settlement, "SlotClosed").withArgs(T, 0n, 0n, 0n, 0n);
        await expect(next).to.changeTokenBalances(ethers, token, [a("bob")], [0n]);
        await market.expectDepositChanges(next, ["bob", "alice"], [150_000n, 0n]);
        const bob = await settlement.accountState(a("bob"));
        expect([bob.lastSlot, bob.deviationWh, bob.earned]).to.deep.equal([T + 1n, 0n, 24_000n]);
        await market.afterDeadline(T + 1n);
        await expect(settlement.settle(T + 1n, [a("alice"), a("bob")]))
          .to.emit(settlement, "SlotClosed")
          .withArgs(T + 1n, 0n, 0n, 0n, 0n);
        // Both sales went into bob's deposit; his wallet holds what it held after his first deposit.
        expect((await settlement.accountState(a("bob"))).deposit).to.equal(DEPOSIT + 150_000n + 24_000n);
        expect(await token.balanceOf(a("bob"))).to.equal(1000n * ONE - DEPOSIT);
        await market.expectIdentity();
      });

      it("a reading takes the schedule in force when it arrives; one set later does not change it", async function () {
        const { market, settlement, slot, a } = await scheduledFixture();
        const T = await meteredSlot(market, slot, { alice: [1_000n, 0n], bob: [0n, 1_000n] });
        await market.scheduleSource.setSchedules(T, [a("alice"), a("bob")], [1_000n, -1_000n], 100_000n);
        const alice = await settlement.accountState(a("alice"));
        expect([alice.deviationWh, alice.earned]).to.deep.equal([1_000n, 0n]);
        await market.afterDeadline(T);
        await expect(settlement.settle(T, [a("alice"), a("bob")]))
          .to.emit(settlement, "Billed")
          .withArgs(a("bob"), T, -1_000n, 0n, -175_000n, 0n);
      });

      it("each scheduled sale earns at the price of its own award", async function () {
        // A correct market has one price per slot; the test source can give each account its own.
        const { market, settlement, token, slot, a } = await scheduledFixture();
        const source = market.scheduleSource;
        await market.readSlot(slot, { alice: [BASE_IMPORT, BASE_EXPORT], bob: [BASE_IMPORT, BASE_EXPORT] });
        const T = slot + 1n;
        await source.setSchedule(T, a("alice"), 1_000n, 100_000n);
        await source.setSchedule(T, a("bob"), -1_000n, 200_000n);
        await token.mint(await source.getAddress(), 100_000n);
        await source.pay(T, 100_000n);
        await market.readSlot(T, { alice: [BASE_IMPORT + 1_000n, BASE_EXPORT] });
        await market.readSlot(T, { bob: [BASE_IMPORT, BASE_EXPORT + 1_000n] }, 2n);
        expect((await settlement.accountState(a("bob"))).earned).to.equal(200_000n);
        await market.afterDeadline(T);
        const tx = settlement.settle(T, [a("alice"), a("bob")]);
        await market.expectDepositChanges(tx, ["bob", "alice"], [200_000n, 0n]);
        await expect(tx).not.to.emit(token, "Transfer");
        // The pool had 100_000: the slack unit covers the other 100_000.
        await expect(tx).to.emit(settlement, "SlotClosed").withArgs(T, 0n, 0n, 0n, -100_000n);
        await market.expectIdentity();
      });
    });

    describe("missed readings and schedules", function () {
      it("a scheduled buyer whose reading of the slot is missed pays for its energy once: the next reading nets that schedule", async function () {
        // Failed before 0df36c5 (the next reading took only its own slot's schedule, so alice paid
        // 100_000 day-ahead and again 300_000 at retail for the same 1_000 Wh).
        const { market, settlement, token, slot, a } = await scheduledFixture();
        await market.readSlot(slot, { alice: [BASE_IMPORT, BASE_EXPORT], bob: [BASE_IMPORT, BASE_EXPORT] });
        const T = slot + 1n;
        const aliceWalletBefore = await token.balanceOf(a("alice"));
        expect(await market.schedule(T, 100_000n, { alice: 1_000n, bob: -1_000n })).to.equal(100_000n);
        // In T alice uses 1_000 Wh and bob delivers 1_000 Wh; alice's reading of T is missed.
        await market.readSlot(T, { bob: [BASE_IMPORT, BASE_EXPORT + 1_000n] });
        // bob's next reading bills his sale in T and closes it: the prepayment paid him exactly.
        const next = market.readSlot(T + 1n, { alice: [BASE_IMPORT + 1_000n, BASE_EXPORT], bob: [BASE_IMPORT, BASE_EXPORT + 1_000n] });
        await expect(next).to.emit(settlement, "SlotClosed").withArgs(T, 0n, 0n, 0n, 0n);
        const alice = await settlement.accountState(a("alice"));
        expect([alice.deviationWh, alice.earned]).to.deep.equal([0n, 0n]);
        await market.afterDeadline(T + 1n);
        const tx = settlement.settle(T + 1n, [a("alice"), a("bob")]);
        await expect(tx).to.emit(settlement, "Billed").withArgs(a("alice"), T + 1n, 0n, 0n, 0n, 0n);
        await expect(tx).to.emit(settlement, "SlotClosed").withArgs(T + 1n, 0n, 0n, 0n, 0n);
        const aliceCost =
          aliceWalletBefore - (await token.balanceOf(a("alice"))) + (DEPOSIT - (await settlement.accountState(a("alice"))).deposit);
        expect(aliceCost, "what alice paid in all for the 1_000 Wh she bought day-ahead and used").to.equal(100_000n);
        await market.expectIdentity();
      });

      it("a scheduled seller whose reading of the slot is missed is paid with its next reading, from that slot's pool", async function () {
        const { market, settlement, token, slot, a } = await scheduledFixture();
        await market.readSlot(slot, { alice: [BASE_IMPORT, BASE_EXPORT], bob: [BASE_IMPORT, BASE_EXPORT] });
        const T = slot + 1n;
        await market.schedule(T, 100_000n, { alice: 1_000n, bob: -1_000n });
        // bob's reading of T is missed: T closes with alice's bill and the prepaid 100_000 goes to the
        // slack unit; bob's next reading earns the sale, and T + 1's pool pays it (the slack unit
        // covers it there): the slack unit ends where it started.
        await market.readSlot(T, { alice: [BASE_IMPORT + 1_000n, BASE_EXPORT] });
        const next = market.readSlot(T + 1n, { alice: [BASE_IMPORT + 1_000n, BASE_EXPORT], bob: [BASE_IMPORT, BASE_EXPORT + 1_000n] });
        await expect(next).to.emit(settlement, "SlotClosed").withArgs(T, 0n, 0n, 0n, 100_000n);
        // T's residual goes into the slack unit's deposit: no tokens move.
        await expect(next).not.to.emit(token, "Transfer");
        await market.expectDepositChanges(next, ["slack"], [100_000n]);
        const bob = await settlement.accountState(a("bob"));
        expect([bob.deviationWh, bob.earned]).to.deep.equal([0n, 100_000n]);
        await market.afterDeadline(T + 1n);
        const tx = settlement.settle(T + 1n, [a("alice"), a("bob")]);
        await expect(tx).to.emit(settlement, "Billed").withArgs(a("bob"), T + 1n, 0n, 100_000n, 0n, 0n);
        await expect(tx).to.emit(settlement, "SlotClosed").withArgs(T + 1n, 0n, 0n, 0n, -100_000n);
        await market.expectDepositChanges(tx, ["bob", "slack"], [100_000n, -100_000n]);
        await expect(tx).not.to.emit(token, "Transfer");
        expect((await settlement.accountState(a("slack"))).deposit).to.equal(SLACK_DEPOSIT);
        expect(await token.balanceOf(a("slack"))).to.equal(1000n * ONE - SLACK_DEPOSIT);
        await market.expectIdentity();
      });

      it(`a reading nets the schedules of at most MAX_SCHEDULE_GAP (8) slots; older ones are not netted`, async function () {
        const { market, settlement, slot, a } = await scheduledFixture();
        expect(await settlement.MAX_SCHEDULE_GAP()).to.equal(8n);
        await market.readSlot(slot, { alice: [BASE_IMPORT, BASE_EXPORT], bob: [BASE_IMPORT, BASE_EXPORT] });
        // alice buys 100 Wh in each of the 9 slots after her baseline and uses them; her meter's
        // next reading comes in the 9th. It nets the last 8 schedules (800 Wh): the first slot's
        // 100 Wh, prepaid day-ahead, are billed again as a deviation.
        for (let k = 1n; k <= 9n; ++k) await market.schedule(slot + k, 100_000n, { alice: 100n, bob: -100n });
        await market.readSlot(slot + 9n, { alice: [BASE_IMPORT + 900n, BASE_EXPORT] });
        const alice = await settlement.accountState(a("alice"));
        expect([alice.lastSlot, alice.deviationWh]).to.deep.equal([slot + 9n, 100n]);
      });
    });

    describe("out-of-range schedules", function () {
      it("refuses a reading whose schedule would put its deviation beyond 32 signed bits, rather than storing it truncated", async function () {
        const { market, settlement, slot, a } = await scheduledFixture();
        await market.readSlot(slot, { carol: [BASE_IMPORT, BASE_EXPORT], dave: [BASE_IMPORT, BASE_EXPORT] });
        const T = slot + 1n;
        // carol imports 1_000 Wh against a sale of 2^31 - 1_000: a deviation of 2^31, one beyond int32.
        await market.scheduleSource.setSchedule(T, a("carol"), -(2n ** 31n - 1_000n), 100_000n);
        const carols = await market.sign("carol", T, BASE_IMPORT + 1_000n, BASE_EXPORT);
        await market.inWindow(T);
        await expect(market.submit(carols))
          .to.be.revertedWithCustomError(settlement, "SafeCastOverflowedIntDowncast")
          .withArgs(32n, 2n ** 31n);
        // dave imports 1_000 Wh against a purchase of 2^31 + 1_001: a deviation of -2^31 - 1.
        await market.scheduleSource.setSchedule(T, a("dave"), 2n ** 31n + 1_001n, 100_000n);
        const daves = await market.sign("dave", T, BASE_IMPORT + 1_000n, BASE_EXPORT);
        await expect(market.submit(daves))
          .to.be.revertedWithCustomError(settlement, "SafeCastOverflowedIntDowncast")
          .withArgs(32n, -(2n ** 31n) - 1n);
        expect((await settlement.accountState(a("carol"))).lastSlot, "nothing recorded").to.equal(slot);
        expect((await settlement.slotState(T)).readings).to.equal(0n);
        // One Wh less either way fits: the extreme deviations are stored exactly.
        await market.scheduleSource.setSchedule(T, a("carol"), -(2n ** 31n - 1_001n), 100_000n);
        await market.scheduleSource.setSchedule(T, a("dave"), 2n ** 31n + 1_000n, 100_000n);
        await market.submitBatch([carols, daves]);
        expect((await settlement.accountState(a("carol"))).deviationWh).to.equal(2n ** 31n - 1n);
        expect((await settlement.accountState(a("dave"))).deviationWh).to.equal(-(2n ** 31n));
        const s = await settlement.slotState(T);
        expect([s.readings, s.demandWh, s.supplyWh]).to.deep.equal([2n, 2n ** 31n - 1n, 2n ** 31n]);
      });

      it("the markets cannot produce such schedules: prices are capped at 2^28 per kWh", async function () {
        const { market, settlement } = await scheduledFixture();
        await expect(settlement.connect(market.admin).setPrices(1n, 2n ** 28n + 1n)).to.be.revertedWithCustomError(
          settlement,
          "SettlementBadPrices",
        );
      });
    });

  });

  describe("accounts without a reading", function () {
    // An account that never sent a reading has lastSlot 0 and billed false; withdraw() and
    // settle(0, ...) must not take that for a pending slot 0 (fixed in 9846f61: they billed an empty
    // slot 0, emitting SlotPriced(0) and Billed(..., 0, ...) and counting billed > readings).
    it("withdrawing before the first reading bills nothing", async function () {
      const { market, settlement } = await fixture();
      const tx = settlement.connect(market.p("alice").signer).withdraw(ONE);
      await expect(tx).to.emit(settlement, "Withdrawn");
      await expect(tx).not.to.emit(settlement, "Billed");
      await expect(tx).not.to.emit(settlement, "SlotPriced");
      const s0 = await settlement.slotState(0n);
      expect([s0.readings, s0.billed, s0.priced]).to.deep.equal([0n, 0n, false]);
    });

    it("the slack unit's withdrawals bill nothing", async function () {
      const { market, settlement } = await fixture();
      const tx = settlement.connect(market.p("slack").signer).withdraw(ONE);
      await expect(tx).not.to.emit(settlement, "Billed");
      expect((await settlement.slotState(0n)).billed).to.equal(0n);
    });

    it("settle(0, ...) bills nobody: no account has a reading in slot 0", async function () {
      const { market, settlement } = await fixture();
      const tx = settlement.connect(market.outsider).settle(0n, market.addresses());
      await expect(tx).not.to.emit(settlement, "Billed");
      await expect(tx).not.to.emit(settlement, "SlotPriced");
      expect((await settlement.slotState(0n)).billed).to.equal(0n);
    });
  });

  describe("gas", function () {
    /**
     * 100 prosumers (every other one a seller) read three slots in batches of 100: baselines, a
     * first slot of energy, and a steady-state slot whose readings also bill the previous slot
     * (50 sellers paid into their deposits, the last reading closing it); then settle bills 100
     * accounts of the last slot. Every member has a deposit before it is paid, so the figures are
     * those of the steady state.
     * With `scheduled`, the market has the test schedule source and every slot a day-ahead
     * schedule: each buyer bought, each seller sold, 900 Wh at 120_000, prepaid into the pool.
     */
    async function gasReport(scheduled: boolean) {
      const { market, settlement, token, slot } = scheduled ? await scheduledFixture() : await fixture();
      const N = 100;
      const members = Array.from({ length: N }, (_, i) => {
        const key = new ethers.Wallet(ethers.id(`gas-meter-${i}`));
        const account = ethers.getAddress(ethers.dataSlice(ethers.id(`gas-account-${i}`), 12));
        return { key, account, seller: i % 2 === 1 };
      });
      for (let i = 0; i < N; i += 25) {
        await market.registry.registerBatch(
          members.slice(i, i + 25).map((m, j) => ({
            account: m.account,
            meterId: ethers.encodeBytes32String(`GAS-${i + j}`),
            meterKey: m.key.address,
            kind: Kind.Prosumer,
          })),
        );
      }
      await token.mint(market.admin.address, BigInt(N) * 10n * ONE);
      await token.approve(market.settlementAddress, BigInt(N) * 10n * ONE);
      for (const m of members) await settlement.depositFor(m.account, 10n * ONE);

      const schedule = async (s: bigint) => {
        if (!scheduled) return;
        const source = market.scheduleSource;
        await source.setSchedules(
          s,
          members.map((m) => m.account),
          members.map((m) => (m.seller ? -900n : 900n)),
          120_000n,
        );
        const cost = BigInt(N / 2) * ceilDiv(900n * 120_000n, 1000n);
        await token.mint(await source.getAddress(), cost);
        await source.pay(s, cost);
      };
      const batchFor = async (s: bigint, k: bigint) =>
        Promise.all(
          members.map((m, i) =>
            signReading(m.key, market.domain, {
              account: m.account,
              slot: s,
              importWh: m.seller ? 100n * k : (1_000n + BigInt(i)) * k,
              exportWh: m.seller ? (1_500n + BigInt(i)) * k : 0n,
            }),
          ),
        );
      const gasOf = async (tx: Promise<{ wait(): Promise<{ gasUsed: bigint } | null> }>) => {
        const receipt = await (await tx).wait();
        if (receipt === null) throw new Error("no receipt");
        return receipt.gasUsed;
      };

      const baseline = await batchFor(slot, 0n);
      await market.inWindow(slot);
      const gasBaseline = await gasOf(market.submitBatch(baseline));
      await schedule(slot + 1n);
      const first = await batchFor(slot + 1n, 1n);
      await market.inWindow(slot + 1n);
      const gasFirst = await gasOf(market.submitBatch(first));
      // Steady state: each reading also bills the previous slot (50 sellers paid into their deposits) and the last closes it.
      await schedule(slot + 2n);
      const second = await batchFor(slot + 2n, 2n);
      await market.inWindow(slot + 2n);
      const gasSteady = await gasOf(market.submitBatch(second));
      expect((await settlement.slotState(slot + 1n)).closed).to.equal(true);
      await market.afterDeadline(slot + 2n);
      const gasSettle = await gasOf(settlement.settle(slot + 2n, members.map((m) => m.account)));
      const closed = await settlement.slotState(slot + 2n);
      expect(closed.closed).to.equal(true);
      await market.expectIdentity();

      console.log(
        `      gas, ${N} accounts${scheduled ? ", with day-ahead schedules" : ""}: submitReadings baseline ${gasBaseline}, ` +
          `first energy ${gasFirst}, with lazy billing ${gasSteady} (${gasSteady / BigInt(N)}/reading); ` +
          `settle ${gasSettle} (${gasSettle / BigInt(N)}/account)`,
      );
      // Each must fit comfortably in a block (and in the EIP-7825 per-transaction cap of 2^24).
      for (const gas of [gasBaseline, gasFirst, gasSteady, gasSettle]) expect(gas).to.be.lessThan(2n ** 24n);
    }

    it("reports the gas of a batch of 100 readings and of settling 100 accounts", async function () {
      await gasReport(false);
    });

    it("reports the same with a schedule source and day-ahead schedules in every slot", async function () {
      await gasReport(true);
    });
  });

  describe("property: random markets", function () {
    /**
     * Eight participants (consumers and prosumers alternating) and the slack unit, with nothing
     * deposited, and the test schedule source standing in for the day-ahead market.
     */
    async function deployScenarioMarket(): Promise<Market> {
      return deployMarket(ethers, networkHelpers, {
        participants: [
          ...Array.from({ length: 8 }, (_, i) => ({
            name: `p${i}`,
            kind: i % 2 === 0 ? Kind.Consumer : Kind.Prosumer,
            deposit: 0n,
          })),
          { name: "slack", kind: Kind.SlackUnit, deposit: 0n },
        ],
        scheduleSource: true,
      });
    }

    // PROPERTY_SEED=<n> replays one scenario; PROPERTY_RUNS=<n> runs more (or fewer) of them.
    const runs = Number(process.env.PROPERTY_RUNS ?? 40);
    const seeds =
      process.env.PROPERTY_SEED !== undefined
        ? [Number(process.env.PROPERTY_SEED)]
        : Array.from({ length: runs }, (_, i) => 0x5eed0000 + i * 7919);

    it(`keeps tokens, energy, schedules and registers consistent with the model in ${seeds.length} random scenarios`, async function () {
      const totals = {
        steps: 0,
        readings: 0,
        refused: 0,
        closedSlots: 0,
        debts: 0,
        badDebtScenarios: 0,
        scheduledSlots: 0,
        scheduledSellerBills: 0,
        nettedSellerBills: 0,
        unreadClosedSlots: 0,
        payoutRepayments: 0,
        slackOverflows: 0,
      };
      for (const seed of seeds) {
        const market = await networkHelpers.loadFixture(deployScenarioMarket);
        const stats = await runScenario(market, seed);
        totals.steps += stats.steps;
        totals.readings += stats.readings;
        totals.refused += stats.refused;
        totals.closedSlots += stats.closedSlots;
        totals.debts += stats.debts;
        if (stats.badDebt) totals.badDebtScenarios += 1;
        totals.scheduledSlots += stats.scheduledSlots;
        totals.scheduledSellerBills += stats.scheduledSellerBills;
        totals.nettedSellerBills += stats.nettedSellerBills;
        totals.unreadClosedSlots += stats.unreadClosedSlots;
        totals.payoutRepayments += stats.payoutRepayments;
        totals.slackOverflows += stats.slackOverflows;
      }
      console.log(`      ${JSON.stringify(totals)}`);
      // The scenarios must actually exercise the interesting paths.
      expect(totals.closedSlots).to.be.greaterThan(seeds.length);
      expect(totals.scheduledSellerBills).to.be.greaterThan(0);
      if (seeds.length >= 10) {
        expect(totals.debts).to.be.greaterThan(0);
        expect(totals.refused).to.be.greaterThan(0);
        expect(totals.nettedSellerBills).to.be.greaterThan(0);
        expect(totals.unreadClosedSlots).to.be.greaterThan(0);
        expect(totals.payoutRepayments).to.be.greaterThan(0);
      }
    });
  });

  describe("slack unit in bad debt", function () {
    // While the slack unit owes escrow (badDebt), the positive residual of a later slot first repays
    // that debt (as participants' repayments to the slack unit do, in Settlement._credit), and only
    // the rest goes into its deposit (since 475652a; it was transferred to its wallet before). Before
    // 46ce2ca the residual was transferred in full: escrow stayed short, and when it held less than
    // the residual the close reverted, blocking the slot.

    /** Slot T1: bob sells 3_000 Wh and nobody buys (slack unit owes 150_000); slot T2: alice buys 1_000 Wh at retail. */
    async function badDebtThenPositiveResidual(market: Market, slot: bigint) {
      const a = (name: string) => market.p(name).address;
      await market.readSlot(slot, { alice: [BASE_IMPORT, BASE_EXPORT], bob: [BASE_IMPORT, BASE_EXPORT] });
      await market.readSlot(slot + 1n, { alice: [BASE_IMPORT, BASE_EXPORT], bob: [BASE_IMPORT, BASE_EXPORT + 3_000n] });
      await market.afterDeadline(slot + 1n);
      await expect(market.settlement.settle(slot + 1n, [a("alice"), a("bob")]))
        .to.emit(market.settlement, "ParticipantInDebt")
        .withArgs(a("slack"), slot + 1n, 150_000n, 150_000n);
      expect(await market.settlement.badDebt()).to.equal(150_000n);
      await market.readSlot(slot + 2n, { alice: [BASE_IMPORT + 1_000n, BASE_EXPORT], bob: [BASE_IMPORT, BASE_EXPORT + 3_000n] });
      await market.afterDeadline(slot + 2n);
      return slot + 2n;
    }

    it("a positive residual repays the slack unit's bad debt before anything is paid out", async function () {
      const { market, settlement, token, slot, a } = await fixture();
      await settlement.connect(market.p("slack").signer).withdraw(SLACK_DEPOSIT);
      const T2 = await badDebtThenPositiveResidual(market, slot);
      const tx = settlement.settle(T2, [a("alice"), a("bob")]);
      await expect(tx).to.emit(settlement, "SlotClosed").withArgs(T2, 0n, 1_000n, 0n, 300_000n);
      await expect(tx).to.emit(settlement, "DebtRepaid").withArgs(a("slack"), 150_000n, 0n);
      await market.expectIdentity();
      await market.expectDepositsSum();
      expect(await settlement.badDebt(), "bad debt left while the slack unit was paid").to.equal(0n);
      expect((await settlement.accountState(a("slack"))).debt).to.equal(0n);
      // What the debt leaves goes into the slack unit's deposit: no tokens move.
      await expect(tx).not.to.emit(token, "Transfer");
      await expect(tx).to.changeTokenBalances(ethers, token, [a("slack"), market.settlementAddress], [0n, 0n]);
      await market.expectDepositChanges(tx, ["alice", "slack"], [-300_000n, 150_000n]);
      expect((await settlement.accountState(a("slack"))).deposit).to.equal(150_000n);
      expect(await settlement.withdrawable(a("slack"))).to.equal(150_000n);
    });

    it("a positive residual smaller than the bad debt repays part of it and transfers nothing", async function () {
      const { market, settlement, token, slot, a } = await fixture();
      await settlement.connect(market.p("slack").signer).withdraw(SLACK_DEPOSIT);
      await market.readSlot(slot, { alice: [BASE_IMPORT, BASE_EXPORT], bob: [BASE_IMPORT, BASE_EXPORT] });
      // T1: bob sells 3_000 Wh to nobody: the slack unit owes 150_000. T2: alice buys 300 Wh at retail: +90_000.
      await market.readSlot(slot + 1n, { alice: [BASE_IMPORT, BASE_EXPORT], bob: [BASE_IMPORT, BASE_EXPORT + 3_000n] });
      await market.readSlot(slot + 2n, { alice: [BASE_IMPORT + 300n, BASE_EXPORT], bob: [BASE_IMPORT, BASE_EXPORT + 3_000n] });
      expect(await settlement.badDebt()).to.equal(150_000n);
      await market.afterDeadline(slot + 2n);
      const tx = settlement.settle(slot + 2n, [a("alice"), a("bob")]);
      await expect(tx).to.emit(settlement, "SlotClosed").withArgs(slot + 2n, 0n, 300n, 0n, 90_000n);
      await expect(tx).to.emit(settlement, "DebtRepaid").withArgs(a("slack"), 90_000n, 60_000n);
      await expect(tx).not.to.emit(token, "Transfer");
      await market.expectDepositChanges(tx, ["alice", "slack"], [-90_000n, 0n]);
      expect(await settlement.badDebt()).to.equal(60_000n);
      expect((await settlement.accountState(a("slack"))).debt).to.equal(60_000n);
      expect((await settlement.accountState(a("slack"))).deposit).to.equal(0n);
      await market.expectIdentity();
    });

    it("closing a slot does not fail when escrow holds less than the residual owed to an indebted slack unit", async function () {
      const { market, settlement, slot, a } = await fixture();
      for (const name of ["bob", "carol", "dave"]) await settlement.connect(market.p(name).signer).withdraw(DEPOSIT);
      await settlement.connect(market.p("slack").signer).withdraw(SLACK_DEPOSIT);
      await settlement.connect(market.p("alice").signer).withdraw(DEPOSIT - 300_000n); // exactly alice's T2 bill
      const T2 = await badDebtThenPositiveResidual(market, slot);
      // Escrow holds 150_000 (alice's deposit less bob's payout); the residual is 300_000.
      const tx = settlement.settle(T2, [a("alice"), a("bob")]);
      await expect(tx).to.emit(settlement, "SlotClosed");
      // 150_000 repays the bad debt and 150_000 goes into the slack unit's deposit: no transfer.
      await expect(tx).not.to.emit(market.token, "Transfer");
      expect((await settlement.accountState(a("slack"))).deposit).to.equal(150_000n);
      expect(await settlement.badDebt()).to.equal(0n);
      await market.expectIdentity();
      await market.expectDepositsSum();
    });
  });

  describe("the slack unit's residual beyond its 48-bit deposit", function () {
    it("credits what the deposit can hold and transfers only the rest, at the end of the transaction", async function () {
      const { market, settlement, token, slot, a } = await fixture();
      const cap = 2n ** 48n - 1n;
      // The slack unit's deposit 100_000 short of the cap.
      const top = cap - 100_000n - SLACK_DEPOSIT;
      await token.mint(a("slack"), top);
      await settlement.connect(market.p("slack").signer).deposit(top);
      expect((await settlement.accountState(a("slack"))).deposit).to.equal(cap - 100_000n);
      // Scarcity as above: a residual of +600_000, of which the deposit holds 100_000.
      const T = await meteredSlot(market, slot, { alice: [3_000n, 0n], bob: [0n, 1_000n] });
      await market.afterDeadline(T);
      const tx = settlement.settle(T, [a("bob"), a("alice")]);
      await expect(tx).to.emit(settlement, "SlotClosed").withArgs(T, 1_000n, 2_000n, 0n, 600_000n);
      await expect(tx).not.to.emit(settlement, "DebtRepaid");
      await expect(tx).to.changeTokenBalances(
        ethers,
        token,
        [a("alice"), a("bob"), a("slack"), market.settlementAddress],
        [0n, 0n, 500_000n, -500_000n],
      );
      await market.expectDepositChanges(tx, ["alice", "bob", "slack"], [-837_500n, 237_500n, 100_000n]);
      expect((await settlement.accountState(a("slack"))).deposit).to.equal(cap);
      // One transfer, the transaction's last log: after every event of the batch.
      const receipt = await (await tx).wait();
      if (receipt === null) throw new Error("no receipt");
      const transfers = receipt.logs.filter((log) => token.interface.parseLog(log)?.name === "Transfer");
      expect(transfers.length).to.equal(1);
      expect(receipt.logs[receipt.logs.length - 1]).to.equal(transfers[0]);
      const transfer = token.interface.parseLog(transfers[0] as (typeof receipt.logs)[number]);
      expect([...(transfer?.args ?? [])]).to.deep.equal([market.settlementAddress, a("slack"), 500_000n]);
      await market.expectIdentity();
      await market.expectDepositsSum();

      // Full: the next positive residual is transferred whole.
      const T2 = T + 1n;
      await market.readSlot(T2, { alice: [BASE_IMPORT + 4_000n, BASE_EXPORT], bob: [BASE_IMPORT, BASE_EXPORT + 1_000n] });
      await market.afterDeadline(T2);
      const tx2 = settlement.settle(T2, [a("alice"), a("bob")]);
      // alice: 1_000 Wh at retail, 300_000; bob exported nothing in T2.
      await expect(tx2).to.emit(settlement, "SlotClosed").withArgs(T2, 0n, 1_000n, 0n, 300_000n);
      await expect(tx2).to.changeTokenBalances(ethers, token, [a("slack"), market.settlementAddress], [300_000n, -300_000n]);
      await market.expectDepositChanges(tx2, ["alice", "slack"], [-300_000n, 0n]);
      await market.expectIdentity();
      await market.expectDepositsSum();
    });
  });

  describe("a debt repaid to a slack unit whose deposit is full", function () {
    it("sends the slack unit what its deposit cannot hold, so settle and readings go on", async function () {
      const { market, settlement, token, slot, a } = await fixture();
      const cap = 2n ** 48n - 1n;
      const top = cap - SLACK_DEPOSIT;
      await token.mint(a("slack"), top);
      await settlement.connect(market.p("slack").signer).deposit(top);
      expect((await settlement.accountState(a("slack"))).deposit).to.equal(cap);
      // Bob, with nothing deposited, imports 1_000 Wh that nobody sells: 300_000 of debt.
      await settlement.connect(market.p("bob").signer).withdraw(DEPOSIT);
      const T = await meteredSlot(market, slot, { alice: [0n, 0n], bob: [1_000n, 0n] });
      await market.afterDeadline(T);
      await expect(settlement.settle(T, [a("alice"), a("bob")])).to.emit(settlement, "ParticipantInDebt").withArgs(a("bob"), T, 300_000n, 300_000n);
      // Then he exports 1_000 Wh: what he earns repays his debt to the slack unit, whose deposit is full.
      const T2 = T + 1n;
      await market.readSlot(T2, { alice: [BASE_IMPORT, BASE_EXPORT], bob: [BASE_IMPORT + 1_000n, BASE_EXPORT + 1_000n] });
      await market.afterDeadline(T2);
      const tx = settlement.settle(T2, [a("alice"), a("bob")]);
      // 1_000 Wh to the slack unit at feed-in: 50_000 earned, all of it repaying the debt.
      await expect(tx).to.emit(settlement, "DebtRepaid").withArgs(a("bob"), 50_000n, 250_000n);
      await expect(tx).to.changeTokenBalances(ethers, token, [a("slack"), market.settlementAddress], [50_000n, -50_000n]);
      // The slack unit's deposit, still full when Bob repaid, then paid for his surplus as the slot closed.
      await expect(tx).to.emit(settlement, "SlotClosed").withArgs(T2, 0n, 0n, 1_000n, -50_000n);
      await market.expectDepositChanges(tx, ["bob", "slack"], [0n, -50_000n]);
      expect((await settlement.accountState(a("bob"))).debt).to.equal(250_000n);
      // The next readings of both, in one batch, are accepted.
      await market.readSlot(T2 + 1n, { alice: [BASE_IMPORT, BASE_EXPORT], bob: [BASE_IMPORT + 1_000n, BASE_EXPORT + 2_000n] });
      expect((await settlement.accountState(a("bob"))).lastSlot).to.equal(T2 + 1n);
      await market.expectIdentity();
      await market.expectDepositsSum();
    });
  });

  describe("setPrices", function () {
    it("lets the regulator set prices and emits PricesSet", async function () {
      const { settlement } = await fixture();
      await expect(settlement.setPrices(40_000n, 400_000n)).to.emit(settlement, "PricesSet").withArgs(40_000n, 400_000n);
      expect(await settlement.feedInPrice()).to.equal(40_000n);
      expect(await settlement.retailPrice()).to.equal(400_000n);
      // Equal prices and the largest allowed retail price (2^48 - 1) are fine.
      await settlement.setPrices(1n, 1n);
      await settlement.setPrices(MAX_PRICE, MAX_PRICE);
      expect(await settlement.retailPrice()).to.equal(MAX_PRICE);
    });

    it("is only for REGULATOR_ROLE", async function () {
      const { market, settlement } = await fixture();
      const REGULATOR_ROLE = await settlement.REGULATOR_ROLE();
      await expect(settlement.connect(market.outsider).setPrices(1n, 2n))
        .to.be.revertedWithCustomError(settlement, "AccessControlUnauthorizedAccount")
        .withArgs(market.outsider.address, REGULATOR_ROLE);
      await settlement.grantRole(REGULATOR_ROLE, market.outsider.address);
      await expect(settlement.connect(market.outsider).setPrices(1n, 2n)).to.emit(settlement, "PricesSet");
    });

    it("refuses a zero feed-in price, feed-in above retail and retail beyond 48 bits (SettlementBadPrices)", async function () {
      const { settlement } = await fixture();
      // Before 46ce2ca prices up to 2^63 - 1 were accepted, and a seller's payout at such prices was
      // narrowed to 64 bits in the slot's pool (Settlement.t.sol, test_extremeAcceptedPricesKeepTheEscrowIdentity).
      for (const [f, r] of [
        [0n, 1n],
        [0n, 0n],
        [2n, 1n],
        [1n, MAX_PRICE + 1n],
        [MAX_PRICE + 1n, MAX_PRICE + 1n],
        [1n, 2n ** 63n - 1n],
      ] as const) {
        await expect(settlement.setPrices(f, r)).to.be.revertedWithCustomError(settlement, "SettlementBadPrices").withArgs(f, r);
      }
      expect(await settlement.feedInPrice()).to.equal(FEED_IN);
      expect(await settlement.retailPrice()).to.equal(RETAIL);
    });
  });
});

function anyCost() {
  return (x: bigint) => typeof x === "bigint" && x > 0n;
}
