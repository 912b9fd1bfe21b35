import { expect } from "chai";
import { network } from "hardhat";
import { ZeroAddress, type ContractTransactionReceipt } from "ethers";
import { DayAheadMarket__factory } from "../../agents/chain/types/index.js";
import { buyCostOf, clearingCallFor, escrowOf, type DayAheadClearingCall } from "../../agents/markets/dayAheadClearing.js";
import { OrderBookError, readBook } from "../../agents/markets/orderBook.js";
import { Kind, ONE } from "../contracts/helpers/market.js";
import { CAP, DayAhead, deployDayAhead, eventsOf, FLOOR, GATE_LEAD, SLOT_SECONDS } from "./helpers/dayAhead.js";

const { ethers, networkHelpers } = await network.create();

const BUY = false;
const SELL = true;
const PERMIT_TYPES = {
  Permit: [
    { name: "owner", type: "address" },
    { name: "spender", type: "address" },
    { name: "value", type: "uint256" },
    { name: "nonce", type: "uint256" },
    { name: "deadline", type: "uint256" },
  ],
};

/** Consumers alice, dave, frank; prosumers bob, carol, erin; sam (to be suspended); noapp (never approves); the slack unit. */
async function deploy(): Promise<DayAhead> {
  return deployDayAhead(ethers, networkHelpers, {
    participants: [
      { name: "alice", kind: Kind.Consumer },
      { name: "bob", kind: Kind.Prosumer },
      { name: "carol", kind: Kind.Prosumer },
      { name: "dave", kind: Kind.Consumer },
      { name: "erin", kind: Kind.Prosumer },
      { name: "frank", kind: Kind.Consumer },
      { name: "sam", kind: Kind.Consumer },
      { name: "noapp", kind: Kind.Consumer },
      { name: "slack", kind: Kind.SlackUnit },
    ],
    noApproval: ["noapp"],
  });
}

async function fixture() {
  const da = await networkHelpers.loadFixture(deploy);
  const day = await da.freshDay();
  // 10:00 UTC on day D; its gate is 12:00 UTC on D-1.
  const slot = day + 40n;
  const a = (name: string) => da.market.p(name).address;
  return { da, dayAhead: da.dayAhead, token: da.token, settlement: da.settlement, slot, day, a };
}

/** The reference clearing of `slot`'s book as read from the chain. */
async function clearingOf(da: DayAhead, slot: bigint): Promise<DayAheadClearingCall> {
  return clearingCallFor(slot, await readBook(da.dayAhead, slot));
}

/** What `p` rejects with; fails if it resolves. */
async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  throw new Error("expected a rejection");
}

function copy(c: DayAheadClearingCall): DayAheadClearingCall {
  return { ...c, buyers: [...c.buyers], sellers: [...c.sellers], buyAwardsWh: [...c.buyAwardsWh], sellAwardsWh: [...c.sellAwardsWh] };
}

describe("DayAheadMarket", () => {
  describe("deployment and bounds", () => {
    it("refuses bad price bounds and zero addresses", async () => {
      const { da } = await fixture();
      const factory = await ethers.getContractFactory("DayAheadMarket");
      const args = [await da.token.getAddress(), await da.market.registry.getAddress(), da.market.settlementAddress, da.market.admin.address] as const;
      for (const [floor, cap] of [
        [0n, CAP],
        [CAP + 1n, CAP],
        [FLOOR, 2n ** 48n],
      ] as const) {
        await expect(factory.deploy(...args, SLOT_SECONDS, GATE_LEAD, floor, cap))
          .to.be.revertedWithCustomError(factory, "MarketBadBounds")
          .withArgs(floor, cap);
      }
      await expect(factory.deploy(args[0], args[1], args[2], ZeroAddress, SLOT_SECONDS, GATE_LEAD, FLOOR, CAP)).to.be.revertedWithCustomError(
        factory,
        "MarketZeroAddress",
      );
    });

    it("lets only the regulator set the bounds, within 0 < floor <= cap < 2^48", async () => {
      const { da, dayAhead } = await fixture();
      await expect(dayAhead.connect(da.market.admin).setBounds(10n, 10n)).to.emit(dayAhead, "BoundsSet").withArgs(10n, 10n);
      expect([await dayAhead.priceFloor(), await dayAhead.priceCap()]).to.deep.equal([10n, 10n]);
      await expect(dayAhead.connect(da.market.admin).setBounds(11n, 10n)).to.be.revertedWithCustomError(dayAhead, "MarketBadBounds").withArgs(11n, 10n);
      await expect(dayAhead.connect(da.market.admin).setBounds(0n, 10n)).to.be.revertedWithCustomError(dayAhead, "MarketBadBounds").withArgs(0n, 10n);
      await expect(dayAhead.connect(da.market.admin).setBounds(1n, 2n ** 48n))
        .to.be.revertedWithCustomError(dayAhead, "MarketBadBounds")
        .withArgs(1n, 2n ** 48n);
      await expect(dayAhead.connect(da.market.p("alice").signer).setBounds(1n, 2n)).to.be.revertedWithCustomError(
        dayAhead,
        "AccessControlUnauthorizedAccount",
      );
    });

    it("closes a day's orders at 12:00 UTC the day before", async () => {
      const { dayAhead, day } = await fixture();
      for (const k of [0n, 1n, 95n]) expect(await dayAhead.gateClosure(day + k)).to.equal(day * SLOT_SECONDS - GATE_LEAD);
      expect(await dayAhead.gateClosure(day + 96n)).to.equal(day * SLOT_SECONDS + 86_400n - GATE_LEAD);
    });
  });

  describe("orders", () => {
    it("escrows a buy's worst case, rounded up, and nothing for a sell", async () => {
      const { da, dayAhead, token, slot, a } = await fixture();
      const escrow = escrowOf(333n, 200_001n); // 66,600.333 -> 66,601
      expect(escrow).to.equal(66_601n);
      const tx = da.place("alice", slot, BUY, 333n, 200_001n);
      await expect(tx).to.changeTokenBalances(ethers, token, [a("alice"), da.address], [-escrow, escrow]);
      await expect(tx).to.emit(dayAhead, "OrderPlaced").withArgs(a("alice"), slot, BUY, 333n, 200_001n, escrow);
      await expect(da.place("bob", slot, SELL, 500n, FLOOR)).to.changeTokenBalances(ethers, token, [a("bob"), da.address], [0n, 0n]);
      const o = await dayAhead.orderOf(slot, a("alice"));
      expect([o.isSell, o.qtyWh, o.price, o.index, o.awardedWh, o.placed]).to.deep.equal([false, 333n, 200_001n, 0n, 0n, true]);
      expect((await dayAhead.orderOf(slot, a("bob"))).index).to.equal(1n);
      const b = await dayAhead.book(slot);
      expect([b.size, b.cleared, b.price, b.volumeWh, b.escrow]).to.deep.equal([2n, false, 0n, 0n, escrow]);
      await da.expectEscrow(escrow);
    });

    it("refuses a zero quantity and a price outside [floor, cap]", async () => {
      const { da, dayAhead, slot } = await fixture();
      await expect(da.place("alice", slot, BUY, 0n, FLOOR)).to.be.revertedWithCustomError(dayAhead, "OrderZeroQuantity");
      await expect(da.place("alice", slot, BUY, 1n, FLOOR - 1n))
        .to.be.revertedWithCustomError(dayAhead, "OrderPriceOutOfBounds")
        .withArgs(FLOOR - 1n, FLOOR, CAP);
      await expect(da.place("bob", slot, SELL, 1n, CAP + 1n))
        .to.be.revertedWithCustomError(dayAhead, "OrderPriceOutOfBounds")
        .withArgs(CAP + 1n, FLOOR, CAP);
      await da.place("alice", slot, BUY, 1n, FLOOR);
      await da.place("bob", slot, SELL, 1n, CAP);
      await expect(dayAhead.connect(da.signer("alice")).changeOrder({ slot, isSell: BUY, qtyWh: 0n, price: FLOOR })).to.be.revertedWithCustomError(
        dayAhead,
        "OrderZeroQuantity",
      );
    });

    it("closes orders at the gate: place, change and cancel", async () => {
      const { da, dayAhead, slot } = await fixture();
      await da.place("alice", slot, BUY, 10n, FLOOR);
      const gate = da.gate(slot);
      await da.at(gate - 1n);
      await da.place("bob", slot, SELL, 10n, FLOOR); // the last second before the gate
      await da.at(gate);
      await expect(da.place("carol", slot, SELL, 1n, FLOOR)).to.be.revertedWithCustomError(dayAhead, "OrderGateClosed").withArgs(slot, gate);
      await expect(dayAhead.connect(da.signer("alice")).changeOrder({ slot, isSell: BUY, qtyWh: 5n, price: FLOOR }))
        .to.be.revertedWithCustomError(dayAhead, "OrderGateClosed")
        .withArgs(slot, gate);
      await expect(dayAhead.connect(da.signer("alice")).cancelOrder(slot)).to.be.revertedWithCustomError(dayAhead, "OrderGateClosed").withArgs(slot, gate);
      await expect(dayAhead.connect(da.signer("carol")).placeOrders([{ slot, isSell: SELL, qtyWh: 1n, price: FLOOR }]))
        .to.be.revertedWithCustomError(dayAhead, "OrderGateClosed")
        .withArgs(slot, gate);
      // The next day's slots are still open.
      await da.place("carol", slot + 96n, SELL, 1n, FLOOR);
    });

    it("refuses suspended and unknown accounts and the slack unit", async () => {
      const { da, dayAhead, slot, a } = await fixture();
      await da.market.registry.connect(da.market.admin).suspend(a("sam"));
      await da.token.connect(da.market.outsider).approve(da.address, 10n ** 30n);
      for (const who of [da.signer("sam"), da.market.outsider, da.signer("slack")]) {
        await expect(da.place(who, slot, BUY, 1n, FLOOR)).to.be.revertedWithCustomError(dayAhead, "OrderNotAllowed").withArgs(who.address);
        await expect(dayAhead.connect(who).placeOrders([{ slot, isSell: SELL, qtyWh: 1n, price: FLOOR }]))
          .to.be.revertedWithCustomError(dayAhead, "OrderNotAllowed")
          .withArgs(who.address);
      }
      // A participant suspended after placing cannot change its order but can still cancel it.
      await da.place("alice", slot, BUY, 10n, FLOOR);
      await da.market.registry.connect(da.market.admin).suspend(a("alice"));
      await expect(dayAhead.connect(da.signer("alice")).changeOrder({ slot, isSell: BUY, qtyWh: 5n, price: FLOOR }))
        .to.be.revertedWithCustomError(dayAhead, "OrderNotAllowed")
        .withArgs(a("alice"));
      await expect(dayAhead.connect(da.signer("alice")).cancelOrder(slot)).to.emit(dayAhead, "OrderCancelled").withArgs(a("alice"), slot, escrowOf(10n, FLOOR));
      await da.expectEscrow(0n);
    });

    it("refuses a buy whose escrow exceeds the allowance", async () => {
      const { da, dayAhead, token, slot } = await fixture();
      const noapp = da.signer("noapp");
      await expect(da.place(noapp, slot, BUY, 1_000n, 100_000n)).to.be.revertedWithCustomError(dayAhead, "OrderInsufficientAllowance").withArgs(100_000n, 0n);
      await token.connect(noapp).approve(da.address, 99_999n);
      await expect(da.place(noapp, slot, BUY, 1_000n, 100_000n))
        .to.be.revertedWithCustomError(dayAhead, "OrderInsufficientAllowance")
        .withArgs(100_000n, 99_999n);
      // A sell needs no allowance.
      await da.place(noapp, slot + 1n, SELL, 1_000n, 100_000n);
      await token.connect(noapp).approve(da.address, 100_000n);
      await da.place(noapp, slot, BUY, 1_000n, 100_000n);
      await da.expectEscrow(100_000n);
    });

    it("keeps one order per account and slot: OrderExists, OrderNotFound, OrderSideChanged", async () => {
      const { da, dayAhead, slot, a } = await fixture();
      const alice = da.signer("alice");
      await expect(dayAhead.connect(alice).changeOrder({ slot, isSell: BUY, qtyWh: 1n, price: FLOOR }))
        .to.be.revertedWithCustomError(dayAhead, "OrderNotFound")
        .withArgs(a("alice"), slot);
      await expect(dayAhead.connect(alice).cancelOrder(slot)).to.be.revertedWithCustomError(dayAhead, "OrderNotFound").withArgs(a("alice"), slot);
      await da.place(alice, slot, BUY, 10n, FLOOR);
      await expect(da.place(alice, slot, BUY, 10n, FLOOR)).to.be.revertedWithCustomError(dayAhead, "OrderExists").withArgs(a("alice"), slot);
      await expect(da.place(alice, slot, SELL, 10n, FLOOR)).to.be.revertedWithCustomError(dayAhead, "OrderExists").withArgs(a("alice"), slot);
      await expect(dayAhead.connect(alice).changeOrder({ slot, isSell: SELL, qtyWh: 10n, price: FLOOR }))
        .to.be.revertedWithCustomError(dayAhead, "OrderSideChanged")
        .withArgs(a("alice"), slot);
      await expect(dayAhead.connect(alice).placeOrders([{ slot, isSell: SELL, qtyWh: 10n, price: FLOOR }]))
        .to.be.revertedWithCustomError(dayAhead, "OrderSideChanged")
        .withArgs(a("alice"), slot);
      await dayAhead.connect(alice).cancelOrder(slot);
      await expect(dayAhead.connect(alice).cancelOrder(slot)).to.be.revertedWithCustomError(dayAhead, "OrderNotFound").withArgs(a("alice"), slot);
      await expect(dayAhead.connect(alice).changeOrder({ slot, isSell: BUY, qtyWh: 1n, price: FLOOR }))
        .to.be.revertedWithCustomError(dayAhead, "OrderNotFound")
        .withArgs(a("alice"), slot);
    });

    it("moves escrow with a change and a cancel in the same transaction", async () => {
      const { da, dayAhead, token, slot, a } = await fixture();
      const alice = da.signer("alice");
      await da.place(alice, slot, BUY, 1_000n, 100_000n); // 100,000
      await da.place("dave", slot, BUY, 7n, 123_457n); // 864.199 -> 865
      await da.expectEscrow(100_000n + 865n);

      let tx = dayAhead.connect(alice).changeOrder({ slot, isSell: BUY, qtyWh: 1_501n, price: 200_000n }); // 300,200
      await expect(tx).to.changeTokenBalances(ethers, token, [alice, da.address], [-200_200n, 200_200n]);
      await expect(tx).to.emit(dayAhead, "OrderPlaced").withArgs(a("alice"), slot, BUY, 1_501n, 200_000n, 300_200n);
      await da.expectEscrow(300_200n + 865n);

      tx = dayAhead.connect(alice).changeOrder({ slot, isSell: BUY, qtyWh: 3n, price: 50_001n }); // 150.003 -> 151
      await expect(tx).to.changeTokenBalances(ethers, token, [alice, da.address], [300_049n, -300_049n]);
      await da.expectEscrow(151n + 865n);
      expect((await dayAhead.book(slot)).escrow).to.equal(151n + 865n);

      tx = dayAhead.connect(alice).cancelOrder(slot);
      await expect(tx).to.changeTokenBalances(ethers, token, [alice, da.address], [151n, -151n]);
      await expect(tx).to.emit(dayAhead, "OrderCancelled").withArgs(a("alice"), slot, 151n);
      await da.expectEscrow(865n);

      // A sell's change and cancel move no tokens.
      await da.place("bob", slot, SELL, 10n, FLOOR);
      await expect(dayAhead.connect(da.signer("bob")).changeOrder({ slot, isSell: SELL, qtyWh: 20n, price: CAP })).to.changeTokenBalances(
        ethers,
        token,
        [a("bob"), da.address],
        [0n, 0n],
      );
      await expect(dayAhead.connect(da.signer("bob")).cancelOrder(slot)).to.emit(dayAhead, "OrderCancelled").withArgs(a("bob"), slot, 0n);
      await da.expectEscrow(865n);
      expect(await da.openEscrow([slot], [a("alice"), a("bob"), a("dave")])).to.equal(865n);
    });

    it("keeps a cancelled order in the book with quantity 0; placing again keeps its index and may switch side", async () => {
      const { da, dayAhead, slot, a } = await fixture();
      await da.place("alice", slot, BUY, 10n, FLOOR);
      await da.place("bob", slot, SELL, 10n, FLOOR);
      await dayAhead.connect(da.signer("alice")).cancelOrder(slot);
      let o = await dayAhead.orderOf(slot, a("alice"));
      expect([o.placed, o.qtyWh, o.index]).to.deep.equal([true, 0n, 0n]);
      expect((await dayAhead.book(slot)).size).to.equal(2n);
      await da.place("carol", slot, SELL, 10n, FLOOR);
      await da.place("alice", slot, SELL, 4n, FLOOR);
      o = await dayAhead.orderOf(slot, a("alice"));
      expect([o.placed, o.isSell, o.qtyWh, o.index]).to.deep.equal([true, true, 4n, 0n]);
      expect((await dayAhead.book(slot)).size).to.equal(3n);
      await da.expectEscrow(0n);
    });

    it("places and changes many orders with one escrow transfer (placeOrders)", async () => {
      const { da, dayAhead, token, slot, a } = await fixture();
      const alice = da.signer("alice");
      const iface = dayAhead.interface;
      const tokenAddress = await token.getAddress();
      const transfers = (receipt: ContractTransactionReceipt | null) => eventsOf(receipt, token.interface, tokenAddress, "Transfer");

      let tx = await dayAhead.connect(alice).placeOrders([
        { slot, isSell: BUY, qtyWh: 1_000n, price: 100_000n }, // 100,000
        { slot: slot + 1n, isSell: BUY, qtyWh: 1n, price: 50_001n }, // 51
        { slot: slot + 2n, isSell: SELL, qtyWh: 500n, price: 60_000n }, // 0
        { slot: slot + 96n, isSell: BUY, qtyWh: 3n, price: 123_457n }, // 370.371 -> 371
      ]);
      let receipt = await tx.wait();
      let t = transfers(receipt);
      expect(t.map((e) => [e.args.from, e.args.to, e.args.value])).to.deep.equal([[a("alice"), da.address, 100_422n]]);
      expect(eventsOf(receipt, iface, da.address, "OrderPlaced").map((e) => e.args.escrow)).to.deep.equal([100_000n, 51n, 0n, 371n]);
      await da.expectEscrow(100_422n);

      // Changes (down and up), a new order and a re-placed cancelled one: one net refund.
      await dayAhead.connect(alice).cancelOrder(slot + 1n);
      tx = await dayAhead.connect(alice).placeOrders([
        { slot, isSell: BUY, qtyWh: 100n, price: 100_000n }, // 100,000 -> 10,000
        { slot: slot + 96n, isSell: BUY, qtyWh: 4n, price: 123_457n }, // 371 -> 494 (493.828)
        { slot: slot + 1n, isSell: SELL, qtyWh: 2n, price: 50_001n }, // re-placed as a sell: 0
        { slot: slot + 3n, isSell: BUY, qtyWh: 10n, price: 100_000n }, // new: 1,000
        { slot: slot + 2n, isSell: SELL, qtyWh: 1n, price: 70_000n }, // change of a sell: 0
      ]);
      receipt = await tx.wait();
      t = transfers(receipt);
      const net = 100_000n - 10_000n - (494n - 371n) - 1_000n;
      expect(t.map((e) => [e.args.from, e.args.to, e.args.value])).to.deep.equal([[da.address, a("alice"), net]]);
      expect((await dayAhead.orderOf(slot + 1n, a("alice"))).isSell).to.equal(true);
      await da.expectEscrow(10_000n + 494n + 1_000n);

      // A batch whose changes cancel out moves nothing.
      tx = await dayAhead.connect(alice).placeOrders([
        { slot, isSell: BUY, qtyWh: 200n, price: 100_000n }, // +10,000
        { slot: slot + 3n, isSell: BUY, qtyWh: 10n, price: 50_001n }, // 1,000 -> 501: -499
        { slot: slot + 3n, isSell: BUY, qtyWh: 10n, price: 100_000n }, // the same slot again: +499
        { slot, isSell: BUY, qtyWh: 100n, price: 100_000n }, // -10,000
      ]);
      expect(transfers(await tx.wait())).to.have.length(0);
      await da.expectEscrow(10_000n + 494n + 1_000n);
      expect(await da.openEscrow([slot, slot + 1n, slot + 2n, slot + 3n, slot + 96n], [a("alice")])).to.equal(11_494n);
    });

    it("lets only an account's meter agent place orders for it (placeOrdersFor), escrow moving from the account", async () => {
      const { da, dayAhead, token, slot, a } = await fixture();
      const agentOf = async (name: string) => {
        const key = da.market.p(name).meterKey.connect(ethers.provider);
        await networkHelpers.setBalance(key.address, 10n ** 20n);
        return key;
      };
      const aliceAgent = await agentOf("alice");
      const bobAgent = await agentOf("bob");
      const orders = [
        { slot, isSell: BUY, qtyWh: 1_000n, price: 100_000n },
        { slot: slot + 1n, isSell: SELL, qtyWh: 500n, price: 60_000n },
      ];
      const tx = dayAhead.connect(aliceAgent).placeOrdersFor(a("alice"), orders);
      await expect(tx).to.changeTokenBalances(ethers, token, [a("alice"), aliceAgent.address, da.address], [-100_000n, 0n, 100_000n]);
      await expect(tx).to.emit(dayAhead, "OrderPlaced").withArgs(a("alice"), slot, BUY, 1_000n, 100_000n, 100_000n);
      expect((await dayAhead.orderOf(slot + 1n, a("alice"))).isSell).to.equal(true);
      // A change through the agent refunds to the account.
      await expect(dayAhead.connect(aliceAgent).placeOrdersFor(a("alice"), [{ slot, isSell: BUY, qtyWh: 10n, price: 100_000n }])).to.changeTokenBalances(
        ethers,
        token,
        [a("alice"), da.address],
        [99_000n, -99_000n],
      );
      await da.expectEscrow(1_000n);
      // Anyone else (another account's agent, the account itself, an outsider) is refused.
      for (const caller of [bobAgent, da.signer("alice"), da.market.outsider]) {
        await expect(dayAhead.connect(caller).placeOrdersFor(a("alice"), orders))
          .to.be.revertedWithCustomError(dayAhead, "OrderNotAgent")
          .withArgs(a("alice"), caller.address);
      }
      // The agent of a suspended account cannot place for it either.
      await da.market.registry.connect(da.market.admin).suspend(a("bob"));
      await expect(dayAhead.connect(bobAgent).placeOrdersFor(a("bob"), orders)).to.be.revertedWithCustomError(dayAhead, "OrderNotAllowed").withArgs(a("bob"));
    });

    it("places an order with an EIP-2612 permit instead of an approval", async () => {
      const { da, dayAhead, token, slot, a } = await fixture();
      const noapp = da.signer("noapp");
      const domain = { name: await token.name(), version: "1", chainId: da.market.chainId, verifyingContract: await token.getAddress() };
      const deadline = BigInt(await networkHelpers.time.latest()) + 3_600n;
      const permit = async (value: bigint) =>
        ethers.Signature.from(
          await noapp.signTypedData(domain, PERMIT_TYPES, { owner: noapp.address, spender: da.address, value, nonce: await token.nonces(noapp.address), deadline }),
        );
      const escrow = escrowOf(1_000n, 100_000n);

      // Too small a permit: the allowance it sets is what the error names.
      let sig = await permit(escrow - 1n);
      await expect(dayAhead.connect(noapp).placeOrderWithPermit({ slot, isSell: BUY, qtyWh: 1_000n, price: 100_000n }, escrow - 1n, deadline, sig.v, sig.r, sig.s))
        .to.be.revertedWithCustomError(dayAhead, "OrderInsufficientAllowance")
        .withArgs(escrow, escrow - 1n);

      sig = await permit(escrow);
      const tx = dayAhead.connect(noapp).placeOrderWithPermit({ slot, isSell: BUY, qtyWh: 1_000n, price: 100_000n }, escrow, deadline, sig.v, sig.r, sig.s);
      await expect(tx).to.changeTokenBalances(ethers, token, [a("noapp"), da.address], [-escrow, escrow]);
      await expect(tx).to.emit(dayAhead, "OrderPlaced").withArgs(a("noapp"), slot, BUY, 1_000n, 100_000n, escrow);
      expect(await token.allowance(a("noapp"), da.address)).to.equal(0n);

      // A permit someone else has already submitted (front-run) does not block the order.
      sig = await permit(escrow);
      await token.connect(da.market.outsider).permit(a("noapp"), da.address, escrow, deadline, sig.v, sig.r, sig.s);
      await expect(dayAhead.connect(noapp).placeOrderWithPermit({ slot: slot + 1n, isSell: BUY, qtyWh: 1_000n, price: 100_000n }, escrow, deadline, sig.v, sig.r, sig.s))
        .to.emit(dayAhead, "OrderPlaced")
        .withArgs(a("noapp"), slot + 1n, BUY, 1_000n, 100_000n, escrow);
      await da.expectEscrow(2n * escrow);
    });
  });

  describe("clearing", () => {
    /** alice, dave, frank buy; bob, carol, erin sell: the hand-worked book of the reference test. */
    async function crossingBook() {
      const f = await fixture();
      const { da, slot } = f;
      await da.place("erin", slot, SELL, 300n, 190_000n);
      await da.place("alice", slot, BUY, 300n, 200_000n);
      await da.place("bob", slot, SELL, 250n, 100_000n);
      await da.place("frank", slot, BUY, 100n, 150_000n);
      await da.place("dave", slot, BUY, 200n, 180_000n);
      await da.place("carol", slot, SELL, 200n, 170_000n);
      return f;
    }

    it("accepts the reference clearing from anyone: awards, refunds, cost to settlement, schedules", async () => {
      const { da, dayAhead, token, settlement, slot, a } = await crossingBook();
      expect(await dayAhead.scheduleOf(slot, a("alice"))).to.deep.equal([0n, 0n, 0n]);
      const c = await clearingOf(da, slot);
      // A-bob 250, A-carol 50, dave-carol 150; dave (180k) < erin (190k): price (180k + 170k) / 2.
      expect(c.buyers).to.deep.equal([a("alice"), a("dave"), a("frank")]);
      expect(c.sellers).to.deep.equal([a("bob"), a("carol"), a("erin")]);
      expect([c.buyAwardsWh, c.sellAwardsWh, c.price, c.volumeWh]).to.deep.equal([[300n, 150n, 0n], [250n, 200n, 0n], 175_000n, 450n]);

      const escrows = [60_000n, 36_000n, 15_000n];
      const costs = [52_500n, 26_250n, 0n];
      const cost = 78_750n;
      await da.expectEscrow(111_000n);
      const poolBefore = (await settlement.slotState(slot)).pool;
      const openPoolBefore = await settlement.openPool();
      await da.afterGate(slot);
      const tx = dayAhead.connect(da.market.outsider).clear(c);
      await expect(tx).to.changeTokenBalances(
        ethers,
        token,
        [a("alice"), a("dave"), a("frank"), a("bob"), da.address, da.market.settlementAddress],
        [escrows[0]! - costs[0]!, escrows[1]! - costs[1]!, escrows[2]!, 0n, -111_000n, cost],
      );
      await expect(tx).to.emit(dayAhead, "SlotCleared").withArgs(slot, 175_000n, 450n, 6n, da.market.outsider.address);
      expect((await dayAhead.orderOf(slot, a("alice"))).awardedWh).to.equal(300n);
      expect((await dayAhead.orderOf(slot, a("frank"))).awardedWh).to.equal(0n);
      expect((await dayAhead.orderOf(slot, a("carol"))).awardedWh).to.equal(200n);
      await expect(tx).to.emit(settlement, "SchedulePaid").withArgs(slot, da.address, cost);

      // Refunds are Transfer events from the market to each buyer, for exactly escrow - cost.
      const receipt = await (await tx).wait();
      const refunds = eventsOf(receipt, token.interface, await token.getAddress(), "Transfer")
        .filter((e) => e.args.from === da.address && e.args.to !== da.market.settlementAddress)
        .map((e) => [e.args.to, e.args.value]);
      expect(refunds).to.deep.equal([
        [a("alice"), 7_500n],
        [a("dave"), 9_750n],
        [a("frank"), 15_000n],
      ]);
      expect((await settlement.slotState(slot)).pool - poolBefore).to.equal(cost);
      expect((await settlement.openPool()) - openPoolBefore).to.equal(cost);
      await da.market.expectIdentity();
      await da.expectEscrow(0n);

      const b = await dayAhead.book(slot);
      expect([b.size, b.cleared, b.price, b.volumeWh, b.escrow]).to.deep.equal([6n, true, 175_000n, 450n, 0n]);
      expect(await dayAhead.scheduleOf(slot, a("alice"))).to.deep.equal([300n, 175_000n, 0n]);
      expect(await dayAhead.scheduleOf(slot, a("dave"))).to.deep.equal([150n, 175_000n, 0n]);
      expect(await dayAhead.scheduleOf(slot, a("frank"))).to.deep.equal([0n, 175_000n, 0n]);
      expect(await dayAhead.scheduleOf(slot, a("carol"))).to.deep.equal([-200n, 175_000n, 0n]);
      expect(await dayAhead.scheduleOf(slot, a("erin"))).to.deep.equal([0n, 175_000n, 0n]);
      expect(await dayAhead.scheduleOf(slot, da.market.outsider.address)).to.deep.equal([0n, 175_000n, 0n]);
      expect((await dayAhead.orderOf(slot, a("bob"))).awardedWh).to.equal(250n);
      // The market may pay schedules into the settlement's pools.
      expect(await settlement.hasRole(await settlement.MARKET_ROLE(), da.address)).to.equal(true);
    });

    it("is open from the gate until the slot starts, and only once", async () => {
      const { da, dayAhead, slot } = await crossingBook();
      const c = await clearingOf(da, slot);
      const gate = da.gate(slot);
      await expect(dayAhead.clear(c)).to.be.revertedWithCustomError(dayAhead, "ClearingGateOpen").withArgs(slot, gate);
      await da.at(gate - 1n);
      await expect(dayAhead.clear(c)).to.be.revertedWithCustomError(dayAhead, "ClearingGateOpen").withArgs(slot, gate);
      await da.at(gate);
      await dayAhead.clear(c);
      await expect(dayAhead.clear(c)).to.be.revertedWithCustomError(dayAhead, "ClearingAlreadyDone").withArgs(slot);
      // The next slot nobody cleared: too late once it starts.
      const next = { ...(await clearingOf(da, slot + 1n)), slot: slot + 1n };
      await da.at(da.starts(slot + 1n));
      await expect(dayAhead.clear(next)).to.be.revertedWithCustomError(dayAhead, "ClearingTooLate").withArgs(slot + 1n, da.starts(slot + 1n));
    });

    it("rejects every wrong clearing with the error that names the fault", async () => {
      const { da, dayAhead, slot, a } = await crossingBook();
      await da.place("alice", slot + 1n, BUY, 10n, FLOOR); // an order in another slot
      const good = await clearingOf(da, slot);
      await da.afterGate(slot);
      await networkHelpers.mine();
      const reject = (c: DayAheadClearingCall, error: string) => expect(dayAhead.clear(c)).to.be.revertedWithCustomError(dayAhead, error);

      let c = copy(good);
      c.sellers.pop();
      c.sellAwardsWh.pop();
      await reject(c, "ClearingIncomplete").withArgs(5n, 6n);

      c = copy(good);
      c.buyAwardsWh.push(0n);
      await reject(c, "ClearingLengthMismatch");
      c = copy(good);
      c.sellAwardsWh.pop();
      await reject(c, "ClearingLengthMismatch");

      c = copy(good);
      c.buyers[2] = da.market.outsider.address; // no order at all
      await reject(c, "ClearingWrongOrder").withArgs(da.market.outsider.address);
      c = copy(good);
      c.buyers[1] = a("alice"); // listed twice
      await reject(c, "ClearingWrongOrder").withArgs(a("alice"));
      c = copy(good);
      c.sellers = [a("frank"), ...c.sellers]; // a buy on the sell side
      c.sellAwardsWh = [0n, ...c.sellAwardsWh];
      c.buyers.pop();
      c.buyAwardsWh.pop();
      await reject(c, "ClearingWrongOrder").withArgs(a("frank"));

      c = copy(good);
      [c.buyers[0], c.buyers[1]] = [c.buyers[1]!, c.buyers[0]!];
      await reject(c, "ClearingNotSorted").withArgs(false, 1n);
      c = copy(good);
      [c.sellers[1], c.sellers[2]] = [c.sellers[2]!, c.sellers[1]!];
      await reject(c, "ClearingNotSorted").withArgs(true, 2n);

      c = copy(good);
      c.price += 1n;
      await reject(c, "ClearingWrongResult").withArgs(175_000n, 175_001n, 450n, 450n);
      c = copy(good);
      c.volumeWh -= 1n;
      await reject(c, "ClearingWrongResult").withArgs(175_000n, 175_000n, 450n, 449n);

      c = copy(good);
      c.buyAwardsWh[1] = 149n;
      c.buyAwardsWh[2] = 1n;
      await reject(c, "ClearingWrongAward").withArgs(a("dave"), 150n, 149n);
      c = copy(good);
      c.sellAwardsWh[1] = 199n;
      c.sellAwardsWh[2] = 1n;
      await reject(c, "ClearingWrongAward").withArgs(a("carol"), 200n, 199n);

      await expect(dayAhead.clear(good)).to.emit(dayAhead, "SlotCleared");
    });

    it("rejects a clearing of one slot given for another (the other slot's orders)", async () => {
      const { da, dayAhead, slot, a } = await fixture();
      await da.place("alice", slot, BUY, 10n, 100_000n);
      await da.place("bob", slot, SELL, 10n, 100_000n);
      await da.place("dave", slot + 1n, BUY, 10n, 100_000n);
      await da.place("carol", slot + 1n, SELL, 10n, 100_000n);
      const c = { ...(await clearingOf(da, slot)), slot: slot + 1n };
      await da.afterGate(slot);
      await expect(dayAhead.clear(c)).to.be.revertedWithCustomError(dayAhead, "ClearingWrongOrder").withArgs(a("alice"));
    });

    it("without crossing: price 0, volume 0, every escrow returned, nothing to settlement", async () => {
      const { da, dayAhead, token, settlement, slot, a } = await fixture();
      await da.place("alice", slot, BUY, 100n, 99_999n);
      await da.place("bob", slot, SELL, 100n, 100_000n);
      const c = await clearingOf(da, slot);
      expect([c.price, c.volumeWh, c.buyAwardsWh, c.sellAwardsWh]).to.deep.equal([0n, 0n, [0n], [0n]]);
      await da.afterGate(slot);
      const tx = dayAhead.clear(c);
      await expect(tx).to.changeTokenBalances(ethers, token, [a("alice"), da.address, da.market.settlementAddress], [10_000n, -10_000n, 0n]);
      await expect(tx).to.emit(dayAhead, "SlotCleared").withArgs(slot, 0n, 0n, 2n, da.market.admin.address);
      await expect(tx).not.to.emit(settlement, "SchedulePaid");
      expect(await dayAhead.scheduleOf(slot, a("alice"))).to.deep.equal([0n, 0n, 0n]);
      await da.expectEscrow(0n);
    });

    it("equal limits on both sides trade at that price", async () => {
      const { da, dayAhead, slot, a } = await fixture();
      await da.place("alice", slot, BUY, 700n, 120_000n);
      await da.place("bob", slot, SELL, 900n, 120_000n);
      const c = await clearingOf(da, slot);
      expect([c.price, c.volumeWh]).to.deep.equal([120_000n, 700n]);
      await da.afterGate(slot);
      await dayAhead.clear(c);
      expect((await dayAhead.orderOf(slot, a("alice"))).awardedWh).to.equal(700n);
      expect(await dayAhead.scheduleOf(slot, a("bob"))).to.deep.equal([-700n, 120_000n, 0n]);
    });

    it("fills the earliest of several orders at the marginal price first, a changed or re-placed order keeping its place", async () => {
      const { da, dayAhead, slot, a } = await fixture();
      await da.place("dave", slot, BUY, 100n, 150_000n); // index 0
      await da.place("alice", slot, BUY, 100n, 150_000n); // 1
      await da.place("frank", slot, BUY, 100n, 150_000n); // 2
      await da.place("bob", slot, SELL, 150n, 100_000n); // 3
      await da.place("carol", slot, SELL, 60n, 100_000n); // 4
      // dave cancels and comes back: still index 0, ahead of alice and frank at the same price.
      await dayAhead.connect(da.signer("dave")).cancelOrder(slot);
      await da.place("dave", slot, BUY, 100n, 150_000n);
      // alice lowers her quantity: still ahead of frank.
      await dayAhead.connect(da.signer("alice")).changeOrder({ slot, isSell: BUY, qtyWh: 90n, price: 150_000n });
      const c = await clearingOf(da, slot);
      expect(c.buyers).to.deep.equal([a("dave"), a("alice"), a("frank")]);
      expect([c.buyAwardsWh, c.sellAwardsWh, c.price, c.volumeWh]).to.deep.equal([[100n, 90n, 20n], [150n, 60n], 125_000n, 210n]);
      await da.afterGate(slot);
      await dayAhead.clear(c);
      expect(await dayAhead.scheduleOf(slot, a("frank"))).to.deep.equal([20n, 125_000n, 0n]);
      // Putting frank before alice (same price, later index) is refused.
      const { da: da2, dayAhead: d2, slot: s2 } = await fixture();
      await da2.place("alice", s2, BUY, 10n, 150_000n);
      await da2.place("frank", s2, BUY, 10n, 150_000n);
      const wrong = await clearingOf(da2, s2);
      [wrong.buyers[0], wrong.buyers[1]] = [wrong.buyers[1]!, wrong.buyers[0]!];
      await da2.afterGate(s2);
      await expect(d2.clear(wrong)).to.be.revertedWithCustomError(d2, "ClearingNotSorted").withArgs(false, 1n);
    });

    it("clears a single order, one empty side, an empty book, and a book of cancelled orders", async () => {
      const { da, dayAhead, token, slot, a } = await fixture();
      await da.place("alice", slot, BUY, 10n, 100_000n); // single buy
      await da.place("bob", slot + 1n, SELL, 10n, 100_000n); // sells only
      await da.place("carol", slot + 1n, SELL, 10n, 50_000n);
      await da.place("dave", slot + 2n, BUY, 10n, 100_000n); // buys only
      await da.place("frank", slot + 2n, BUY, 20n, 200_000n);
      await da.place("alice", slot + 4n, BUY, 10n, 100_000n); // cancelled
      await da.place("bob", slot + 4n, SELL, 10n, 50_000n);
      await dayAhead.connect(da.signer("alice")).cancelOrder(slot + 4n);
      await dayAhead.connect(da.signer("bob")).cancelOrder(slot + 4n);
      await da.afterGate(slot);
      const expectations: [bigint, [string, bigint][]][] = [
        [slot, [[a("alice"), 1_000n]]],
        [slot + 1n, []],
        [slot + 2n, [[a("frank"), 4_000n], [a("dave"), 1_000n]]],
        [slot + 3n, []], // nobody ordered
        [slot + 4n, []],
      ];
      for (const [s, refunds] of expectations) {
        const c = await clearingOf(da, s);
        expect([c.price, c.volumeWh], `slot ${s}`).to.deep.equal([0n, 0n]);
        const receipt = await (await dayAhead.clear(c)).wait();
        const transfers = eventsOf(receipt, token.interface, await token.getAddress(), "Transfer").map((e) => [e.args.to, e.args.value]);
        expect(transfers, `refunds of slot ${s}`).to.deep.equal(refunds);
        expect((await dayAhead.book(s)).cleared).to.equal(true);
      }
      await da.expectEscrow(0n);
    });

    it("keeps escrow and refunds exact to the base unit", async () => {
      const { da, dayAhead, token, settlement, slot, a } = await fixture();
      await da.place("alice", slot, BUY, 333n, 200_001n); // escrow ceil(66,600.333) = 66,601
      await da.place("bob", slot, SELL, 250n, 100_003n);
      await da.place("dave", slot, BUY, 101n, 150_007n); // escrow ceil(15,150.707) = 15,151
      await da.place("carol", slot, SELL, 1n, 100_004n);
      await da.expectEscrow(66_601n + 15_151n);
      const c = await clearingOf(da, slot);
      // alice 333 @ 200,001 takes bob's 250 and carol's 1; dave 101 @ 150,007 gets nothing (alice is not full).
      // Price: floor((200,001 + 100,004) / 2) = 150,002.
      expect([c.buyAwardsWh, c.sellAwardsWh, c.price, c.volumeWh]).to.deep.equal([[251n, 0n], [250n, 1n], 150_002n, 251n]);
      const cost = buyCostOf(251n, 150_002n); // ceil(37,650.502) = 37,651
      expect(cost).to.equal(37_651n);
      await da.afterGate(slot);
      const tx = dayAhead.clear(c);
      await expect(tx).to.changeTokenBalances(
        ethers,
        token,
        [a("alice"), a("dave"), da.address, da.market.settlementAddress],
        [66_601n - 37_651n, 15_151n, -(66_601n + 15_151n), 37_651n],
      );
      await expect(tx).to.emit(settlement, "SchedulePaid").withArgs(slot, da.address, 37_651n);
      await da.expectEscrow(0n);
    });
  });

  describe("reclaim", () => {
    it("returns the escrow of an uncleared slot once it has started, once", async () => {
      const { da, dayAhead, token, slot, a } = await fixture();
      await da.place("alice", slot, BUY, 10n, 100_000n); // 1,000
      await da.place("dave", slot, BUY, 3n, 50_001n); // 151
      await da.place("bob", slot, SELL, 10n, 50_000n);
      await da.place("frank", slot, BUY, 5n, 100_000n);
      await dayAhead.connect(da.signer("frank")).cancelOrder(slot);
      await da.afterGate(slot);
      await expect(dayAhead.reclaim(slot, [a("alice")])).to.be.revertedWithCustomError(dayAhead, "ReclaimNotAllowed").withArgs(slot);
      await da.at(da.starts(slot) - 1n);
      await expect(dayAhead.reclaim(slot, [a("alice")])).to.be.revertedWithCustomError(dayAhead, "ReclaimNotAllowed").withArgs(slot);
      await da.at(da.starts(slot));
      const tx = dayAhead.connect(da.market.outsider).reclaim(slot, [a("alice"), a("bob"), a("frank"), da.market.outsider.address, a("dave")]);
      await expect(tx).to.changeTokenBalances(ethers, token, [a("alice"), a("dave"), a("bob"), da.address], [1_000n, 151n, 0n, -1_151n]);
      await expect(tx).to.emit(dayAhead, "EscrowReclaimed").withArgs(a("alice"), slot, 1_000n);
      await expect(tx).to.emit(dayAhead, "EscrowReclaimed").withArgs(a("dave"), slot, 151n);
      const receipt = await (await tx).wait();
      expect(eventsOf(receipt, dayAhead.interface, da.address, "EscrowReclaimed")).to.have.length(2);
      await da.expectEscrow(0n);
      // Again: nothing left to return.
      const again = await (await dayAhead.reclaim(slot, [a("alice"), a("dave")])).wait();
      expect(eventsOf(again, dayAhead.interface, da.address, "EscrowReclaimed")).to.have.length(0);
      // And the slot can no longer be cleared; it has no schedule.
      await expect(dayAhead.clear(await clearingOf(da, slot)))
        .to.be.revertedWithCustomError(dayAhead, "ClearingTooLate")
        .withArgs(slot, da.starts(slot));
      expect(await dayAhead.scheduleOf(slot, a("alice"))).to.deep.equal([0n, 0n, 0n]);
    });

    it("refuses a cleared slot", async () => {
      const { da, dayAhead, slot, a } = await fixture();
      await da.place("alice", slot, BUY, 10n, 100_000n);
      await da.afterGate(slot);
      await dayAhead.clear(await clearingOf(da, slot));
      await da.at(da.starts(slot));
      await expect(dayAhead.reclaim(slot, [a("alice")])).to.be.revertedWithCustomError(dayAhead, "ReclaimNotAllowed").withArgs(slot);
    });
  });

  describe("readBook", () => {
    it("reads every order of a slot, cancelled ones included, by book index", async () => {
      const { da, dayAhead, slot, a } = await fixture();
      const from = await ethers.provider.getBlockNumber();
      await da.place("bob", slot, SELL, 10n, 60_000n);
      await da.place("alice", slot, BUY, 20n, 70_000n);
      await da.place("carol", slot + 1n, SELL, 30n, 80_000n);
      await dayAhead.connect(da.signer("alice")).changeOrder({ slot, isSell: BUY, qtyWh: 25n, price: 71_000n });
      await da.place("dave", slot, BUY, 5n, 90_000n);
      await dayAhead.connect(da.signer("dave")).cancelOrder(slot);
      expect(await readBook(dayAhead, slot, from)).to.deep.equal([
        { account: a("bob"), isSell: true, qtyWh: 10n, price: 60_000n, index: 0 },
        { account: a("alice"), isSell: false, qtyWh: 25n, price: 71_000n, index: 1 },
        { account: a("dave"), isSell: false, qtyWh: 0n, price: 90_000n, index: 2 },
      ]);
      expect(await readBook(dayAhead, slot + 2n)).to.deep.equal([]);
      // As of an earlier block: only what was placed by then.
      expect(await readBook(dayAhead, slot, 0, { blockTag: from + 1 })).to.have.length(1);
      // Searching from too late a block misses accounts, and says so.
      const e = await rejection(readBook(dayAhead, slot, from + 3));
      expect(e).to.be.instanceOf(OrderBookError);
      expect((e as Error).message).to.match(/holds 3 orders but OrderPlaced events .* name 2 accounts/);
    });

    it("needs a provider", async () => {
      const { da } = await fixture();
      const detached = DayAheadMarket__factory.connect(da.address);
      const e = await rejection(readBook(detached, 1n));
      expect(e).to.be.instanceOf(OrderBookError);
      expect((e as Error).message).to.match(/provider/);
    });
  });
});
