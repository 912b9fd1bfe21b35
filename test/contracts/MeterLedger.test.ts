import { expect } from "chai";
import { AbiCoder, keccak256, recoverAddress, Wallet, zeroPadValue, toBeHex } from "ethers";
import { network } from "hardhat";
import { Settlement__factory } from "../../agents/chain/types/index.js";
import { deployMarket, Kind, ONE, READING_WINDOW, RETAIL, SLOT_SECONDS, type Market } from "./helpers/market.js";
import { readingDigest, readingDomain, signReading, tampered, type SignedReading } from "./helpers/readings.js";

const { ethers, networkHelpers } = await network.create();

const MAX_REGISTER = 2n ** 40n - 1n;
const MAX_DELTA = 2n ** 32n - 1n;
/**
 * A reading's net energy (import - export) must lie within +-2^30 Wh, so that a deviation from
 * schedules (netted over up to MAX_SCHEDULE_GAP slots) still fits the account's 32 signed bits.
 */
const MAX_NET = 2n ** 30n;
const MIN_NET = -(2n ** 30n);

/** Alice (consumer), Bob and Carol (prosumers) and the slack unit, each with a deposit. */
async function deployLedger(): Promise<Market> {
  return deployMarket(ethers, networkHelpers, {
    participants: [
      { name: "alice", kind: Kind.Consumer },
      { name: "bob", kind: Kind.Prosumer },
      { name: "carol", kind: Kind.Prosumer },
      { name: "slack", kind: Kind.SlackUnit, deposit: 500n * ONE },
    ],
  });
}

/** The market plus `slot`, a slot that has not started yet, so every test has its whole timeline ahead. */
async function fixture() {
  const market = await networkHelpers.loadFixture(deployLedger);
  const slot = await market.freshSlot();
  return { market, settlement: market.settlement, slot };
}

/** Everything the ledger stores about `account` and the slots around its last reading. */
async function snapshotOf(market: Market, account: string, slots: bigint[]) {
  const state = await market.settlement.accountState(account);
  const slotStates = await Promise.all(slots.map((s) => market.settlement.slotState(s)));
  return JSON.stringify([state, slotStates], (_k, v) => (typeof v === "bigint" ? v.toString() : v));
}

describe("MeterLedger (through Settlement)", function () {
  describe("deployment and views", function () {
    it("keeps the registry and timing, and computes deadlines and slots from the chain clock", async function () {
      const { market, settlement, slot } = await fixture();
      expect(await settlement.registry()).to.equal(await market.registry.getAddress());
      expect(await settlement.slotSeconds()).to.equal(SLOT_SECONDS);
      expect(await settlement.readingWindow()).to.equal(READING_WINDOW);
      expect(await settlement.readingDeadline(slot)).to.equal((slot + 1n) * 900n + 300n);
      await networkHelpers.time.increaseTo(slot * 900n + 10n);
      expect(await settlement.currentSlot()).to.equal(slot);
    });

    it("computes the same EIP-712 digest as an off-chain signer", async function () {
      const { market, settlement, slot } = await fixture();
      const reading = { account: market.p("alice").address, slot, importWh: 123_456n, exportWh: 789n };
      expect(await settlement.readingDigest(reading)).to.equal(readingDigest(market.domain, reading));
      // The domain is bound to this contract and chain.
      const otherDomain = readingDomain(market.chainId, market.outsider.address);
      expect(await settlement.readingDigest(reading)).not.to.equal(readingDigest(otherDomain, reading));
    });

    it("refuses timing where a reading window reaches the end of the next slot (MeterLedgerBadTiming)", async function () {
      const { market } = await fixture();
      const factory = new Settlement__factory(market.admin);
      const args = [await market.token.getAddress(), await market.registry.getAddress(), market.admin.address] as const;
      await expect(factory.deploy(...args, 900n, 900n, 50_000n, RETAIL))
        .to.be.revertedWithCustomError(factory, "MeterLedgerBadTiming")
        .withArgs(900n, 900n);
      await expect(factory.deploy(...args, 900n, 1000n, 50_000n, RETAIL))
        .to.be.revertedWithCustomError(factory, "MeterLedgerBadTiming")
        .withArgs(900n, 1000n);
      await expect(factory.deploy(...args, 0n, 0n, 50_000n, RETAIL))
        .to.be.revertedWithCustomError(factory, "MeterLedgerBadTiming")
        .withArgs(0n, 0n);
      const ok = await factory.deploy(...args, 900n, 899n, 50_000n, RETAIL);
      expect(await ok.readingWindow()).to.equal(899n);
    });
  });

  describe("reading window", function () {
    it("refuses a reading before its slot has ended (ReadingSlotNotEnded)", async function () {
      const { market, settlement, slot } = await fixture();
      const signed = await market.sign("alice", slot, 100n, 0n);
      await market.at(market.opens(slot) - 1n);
      await expect(market.submit(signed))
        .to.be.revertedWithCustomError(settlement, "ReadingSlotNotEnded")
        .withArgs(slot, market.opens(slot));
      // The current slot itself has not ended either.
      const current = await market.sign("alice", slot + 1n, 100n, 0n);
      await market.at(market.opens(slot) + 5n);
      await expect(market.submit(current))
        .to.be.revertedWithCustomError(settlement, "ReadingSlotNotEnded")
        .withArgs(slot + 1n, market.opens(slot + 1n));
    });

    it("accepts a reading at the first and at the last second of its window", async function () {
      const { market, settlement, slot } = await fixture();
      await market.at(market.opens(slot));
      await expect(market.submit(await market.sign("alice", slot, 100n, 0n))).to.emit(settlement, "ReadingRecorded");
      await market.at(market.deadline(slot));
      await expect(market.submit(await market.sign("bob", slot, 100n, 0n))).to.emit(settlement, "ReadingRecorded");
    });

    it("refuses a reading after its window (ReadingTooLate)", async function () {
      const { market, settlement, slot } = await fixture();
      const signed = await market.sign("alice", slot, 100n, 0n);
      await market.at(market.deadline(slot) + 1n);
      await expect(market.submit(signed))
        .to.be.revertedWithCustomError(settlement, "ReadingTooLate")
        .withArgs(slot, market.deadline(slot));
      const [lastSlot] = await settlement.lastReading(market.p("alice").address);
      expect(lastSlot).to.equal(0n);
    });
  });

  describe("signatures and participants", function () {
    it("refuses a reading for an account that is not registered (ReadingUnknownAccount)", async function () {
      const { market, settlement, slot } = await fixture();
      const key = new Wallet(ethers.id("unregistered-key"));
      const signed = await signReading(key, market.domain, {
        account: market.outsider.address,
        slot,
        importWh: 1n,
        exportWh: 0n,
      });
      await market.inWindow(slot);
      await expect(market.submit(signed))
        .to.be.revertedWithCustomError(settlement, "ReadingUnknownAccount")
        .withArgs(market.outsider.address);
    });

    it("refuses a reading signed by another participant's key or by any other key (ReadingBadSignature)", async function () {
      const { market, settlement, slot } = await fixture();
      const alice = market.p("alice");
      const byBobsKey = await market.sign(alice, slot, 100n, 0n, market.p("bob").meterKey);
      const stranger = new Wallet(ethers.id("stranger-key"));
      const byStranger = await market.sign(alice, slot, 100n, 0n, stranger);
      await market.inWindow(slot);
      await expect(market.submit(byBobsKey))
        .to.be.revertedWithCustomError(settlement, "ReadingBadSignature")
        .withArgs(alice.address, market.p("bob").meterKey.address);
      await expect(market.submit(byStranger))
        .to.be.revertedWithCustomError(settlement, "ReadingBadSignature")
        .withArgs(alice.address, stranger.address);
      // The participant's own wallet is not its meter key either.
      const byWallet = await signReading(
        new Wallet(ethers.id("not-a-meter-key")),
        market.domain,
        byBobsKey.reading,
      );
      await expect(market.submit(byWallet)).to.be.revertedWithCustomError(settlement, "ReadingBadSignature");
    });

    it("refuses a reading signed for another contract or chain", async function () {
      const { market, settlement, slot } = await fixture();
      const alice = market.p("alice");
      const reading = { account: alice.address, slot, importWh: 100n, exportWh: 0n };
      const otherContract = await signReading(alice.meterKey, readingDomain(market.chainId, market.outsider.address), reading);
      const otherChain = await signReading(alice.meterKey, readingDomain(1n, market.settlementAddress), reading);
      await market.inWindow(slot);
      await expect(market.submit(otherContract)).to.be.revertedWithCustomError(settlement, "ReadingBadSignature");
      await expect(market.submit(otherChain)).to.be.revertedWithCustomError(settlement, "ReadingBadSignature");
    });

    it("after setMeterKey refuses the old key and accepts the new one", async function () {
      const { market, settlement, slot } = await fixture();
      const alice = market.p("alice");
      await market.readSlot(slot, { alice: [100n, 0n] });
      const newKey = new Wallet(ethers.id("replacement-meter-key"));
      await market.registry.setMeterKey(alice.address, newKey.address);
      const byOldKey = await market.sign(alice, slot + 1n, 200n, 0n);
      const byNewKey = await market.sign(alice, slot + 1n, 200n, 0n, newKey);
      await market.inWindow(slot + 1n);
      await expect(market.submit(byOldKey))
        .to.be.revertedWithCustomError(settlement, "ReadingBadSignature")
        .withArgs(alice.address, alice.meterKey.address);
      await expect(market.submit(byNewKey))
        .to.emit(settlement, "ReadingRecorded")
        .withArgs(alice.address, slot + 1n, 200n, 0n, 100n, 0n);
    });

    it("refuses readings of a suspended participant until it is re-activated (ReadingParticipantSuspended)", async function () {
      const { market, settlement, slot } = await fixture();
      const alice = market.p("alice");
      await market.registry.suspend(alice.address);
      const signed = await market.sign(alice, slot, 100n, 0n);
      await market.inWindow(slot);
      await expect(market.submit(signed))
        .to.be.revertedWithCustomError(settlement, "ReadingParticipantSuspended")
        .withArgs(alice.address);
      await market.registry.reactivate(alice.address);
      await expect(market.submit(signed)).to.emit(settlement, "ReadingRecorded");
    });

    it("refuses readings of the slack unit's own meter (ReadingFromSlackUnit)", async function () {
      const { market, settlement, slot } = await fixture();
      const slack = market.p("slack");
      const signed = await market.sign(slack, slot, 100n, 0n);
      await market.inWindow(slot);
      await expect(market.submit(signed))
        .to.be.revertedWithCustomError(settlement, "ReadingFromSlackUnit")
        .withArgs(slack.address);
    });

    it("records a batch relayed by a third party who holds no role, with each reading's own signature", async function () {
      const { market, settlement, slot } = await fixture();
      const batch = [
        await market.sign("alice", slot, 1_000n, 0n),
        await market.sign("bob", slot, 2_000n, 3_000n),
        await market.sign("carol", slot, 0n, 7n),
      ];
      await market.inWindow(slot);
      const tx = market.submitBatch(batch, market.outsider);
      await expect(tx).to.emit(settlement, "ReadingRecorded").withArgs(market.p("alice").address, slot, 1_000n, 0n, 0n, 0n);
      await expect(tx).to.emit(settlement, "ReadingRecorded").withArgs(market.p("bob").address, slot, 2_000n, 3_000n, 0n, 0n);
      await expect(tx).to.emit(settlement, "ReadingRecorded").withArgs(market.p("carol").address, slot, 0n, 7n, 0n, 0n);
      const [s, imp, exp] = await settlement.lastReading(market.p("bob").address);
      expect([s, imp, exp]).to.deep.equal([slot, 2_000n, 3_000n]);
    });

    it("a relayer that changes any field breaks the signature, and the whole batch is refused", async function () {
      const { market, settlement, slot } = await fixture();
      const alice = market.p("alice");
      const bob = market.p("bob");
      await market.readSlot(slot, { alice: [1_000n, 0n], bob: [500n, 500n] });
      const honest = await market.sign(alice, slot + 1n, 2_000n, 0n);
      const bobs = await market.sign(bob, slot + 1n, 600n, 900n);
      const recovered = (s: SignedReading) =>
        recoverAddress(readingDigest(market.domain, s.reading), { r: s.r, yParityAndS: s.vs });
      const cases: SignedReading[] = [
        tampered(honest, { importWh: 1_500n }), // bill less
        tampered(honest, { exportWh: 10n }),
        tampered(honest, { account: bob.address }), // bill someone else
        tampered(bobs, { exportWh: 5_000n }), // be paid more
      ];
      await market.inWindow(slot + 1n);
      for (const bad of cases) {
        await expect(market.submit(bad, market.admin)) // not even the master can change a reading
          .to.be.revertedWithCustomError(settlement, "ReadingBadSignature")
          .withArgs(bad.reading.account, recovered(bad));
        await expect(market.submitBatch([honest, bad, bobs], market.admin))
          .to.be.revertedWithCustomError(settlement, "ReadingBadSignature")
          .withArgs(bad.reading.account, recovered(bad));
      }
      // Nothing of the refused batches was recorded.
      expect((await settlement.lastReading(alice.address))[0]).to.equal(slot);
      expect((await settlement.lastReading(bob.address))[0]).to.equal(slot);
      await expect(market.submitBatch([honest, bobs])).to.emit(settlement, "ReadingRecorded");
      expect((await settlement.lastReading(alice.address))[1]).to.equal(2_000n);
    });
  });

  describe("registers", function () {
    it("records the first reading as a baseline that bills nothing", async function () {
      const { market, settlement, slot } = await fixture();
      const alice = market.p("alice");
      const depositBefore = (await settlement.accountState(alice.address)).deposit;
      const tx = market.readSlot(slot, { alice: [1_234_567n, 89n] });
      await expect(tx).to.emit(settlement, "ReadingRecorded").withArgs(alice.address, slot, 1_234_567n, 89n, 0n, 0n);
      await expect(tx).not.to.emit(settlement, "Billed");
      await expect(tx).not.to.emit(settlement, "SlotPriced");
      const state = await settlement.accountState(alice.address);
      expect(state.lastSlot).to.equal(slot);
      expect(state.billed).to.equal(true);
      expect(state.importWh).to.equal(1_234_567n);
      expect(state.exportWh).to.equal(89n);
      expect(state.deviationWh).to.equal(0n);
      expect(state.earned).to.equal(0n);
      expect(state.deposit).to.equal(depositBefore);
      const slotState = await settlement.slotState(slot);
      expect(slotState.readings).to.equal(0n);
      expect(slotState.demandWh).to.equal(0n);
      expect(slotState.supplyWh).to.equal(0n);
      expect(await settlement.withdrawable(alice.address)).to.equal(depositBefore);

      // The next reading carries the first slot's energy, and bills nothing yet (the baseline had nothing).
      const next = market.readSlot(slot + 1n, { alice: [1_235_567n, 89n] });
      await expect(next).to.emit(settlement, "ReadingRecorded").withArgs(alice.address, slot + 1n, 1_235_567n, 89n, 1_000n, 0n);
      await expect(next).not.to.emit(settlement, "Billed");
      const after = await settlement.accountState(alice.address);
      expect(after.billed).to.equal(false);
      expect(after.deviationWh).to.equal(1_000n);
      expect((await settlement.slotState(slot + 1n)).demandWh).to.equal(1_000n);
      expect((await settlement.slotState(slot + 1n)).readings).to.equal(1n);
    });

    it("refuses a register that went down (ReadingRegisterDecreased)", async function () {
      const { market, settlement, slot } = await fixture();
      await market.readSlot(slot, { bob: [5_000n, 7_000n] });
      const lowerImport = await market.sign("bob", slot + 1n, 4_999n, 7_100n);
      const lowerExport = await market.sign("bob", slot + 1n, 5_100n, 6_999n);
      await market.inWindow(slot + 1n);
      await expect(market.submit(lowerImport))
        .to.be.revertedWithCustomError(settlement, "ReadingRegisterDecreased")
        .withArgs(slot + 1n, 4_999n, 7_100n, 5_000n, 7_000n);
      await expect(market.submit(lowerExport))
        .to.be.revertedWithCustomError(settlement, "ReadingRegisterDecreased")
        .withArgs(slot + 1n, 5_100n, 6_999n, 5_000n, 7_000n);
      // Equal registers (no energy) are fine.
      await expect(market.submit(await market.sign("bob", slot + 1n, 5_000n, 7_000n)))
        .to.emit(settlement, "ReadingRecorded")
        .withArgs(market.p("bob").address, slot + 1n, 5_000n, 7_000n, 0n, 0n);
    });

    it("refuses a different reading for a slot already read (ReadingConflict), baseline or not", async function () {
      const { market, settlement, slot } = await fixture();
      await market.readSlot(slot, { bob: [5_000n, 7_000n] });
      await expect(market.submit(await market.sign("bob", slot, 5_001n, 7_000n)))
        .to.be.revertedWithCustomError(settlement, "ReadingConflict")
        .withArgs(slot, 5_000n, 7_000n);
      await market.readSlot(slot + 1n, { bob: [6_000n, 7_500n] });
      await expect(market.submit(await market.sign("bob", slot + 1n, 6_000n, 7_499n)))
        .to.be.revertedWithCustomError(settlement, "ReadingConflict")
        .withArgs(slot + 1n, 6_000n, 7_500n);
      // Even a higher one: a slot has one reading.
      await expect(market.submit(await market.sign("bob", slot + 1n, 9_000n, 9_000n)))
        .to.be.revertedWithCustomError(settlement, "ReadingConflict")
        .withArgs(slot + 1n, 6_000n, 7_500n);
    });

    it("treats the identical reading sent again as a no-op: no event, no state change", async function () {
      const { market, settlement, slot } = await fixture();
      const alice = market.p("alice");
      const baseline = await market.sign(alice, slot, 1_000n, 0n);
      await market.inWindow(slot);
      await market.submit(baseline);
      const before = await snapshotOf(market, alice.address, [slot]);
      await expect(market.submit(baseline)).not.to.emit(settlement, "ReadingRecorded");
      expect(await snapshotOf(market, alice.address, [slot])).to.equal(before);

      // A reading that carries energy, sent again alone and twice in one batch.
      const second = await market.sign(alice, slot + 1n, 1_800n, 0n);
      await market.inWindow(slot + 1n);
      await market.submit(second);
      const afterSecond = await snapshotOf(market, alice.address, [slot, slot + 1n]);
      await expect(market.submit(second, market.outsider)).not.to.emit(settlement, "ReadingRecorded");
      await expect(market.submitBatch([second, second])).not.to.emit(settlement, "ReadingRecorded");
      expect(await snapshotOf(market, alice.address, [slot, slot + 1n])).to.equal(afterSecond);
      expect((await settlement.slotState(slot + 1n)).readings).to.equal(1n);
      expect((await settlement.slotState(slot + 1n)).demandWh).to.equal(800n);
    });

    it("a reading sent twice in its first batch is recorded once", async function () {
      const { market, settlement, slot } = await fixture();
      await market.readSlot(slot, { carol: [0n, 0n] });
      const r = await market.sign("carol", slot + 1n, 10n, 900n);
      await market.inWindow(slot + 1n);
      const receipt = await (await market.submitBatch([r, r])).wait();
      expect(market.events(receipt, "ReadingRecorded")).to.have.length(1);
      const s = await settlement.slotState(slot + 1n);
      expect(s.readings).to.equal(1n);
      expect(s.supplyWh).to.equal(890n);
    });

    it("refuses a reading of a slot before the meter's last one (ReadingSlotBeforeLast)", async function () {
      // The window is shorter than a slot, so on a real chain only one slot is open at a time and
      // an older slot can never arrive after a newer one. To reach the check anyway, move the
      // stored last slot ahead directly in storage.
      const { market, settlement, slot } = await fixture();
      const alice = market.p("alice");
      await market.readSlot(slot, { alice: [1_000n, 0n] });
      const storageSlot = await accountStorageSlot(market, alice.address);
      const word = BigInt(await networkHelpers.getStorageAt(market.settlementAddress, storageSlot));
      const lastSlot = word & 0xffffffffn;
      expect(lastSlot).to.equal(slot);
      const future = slot + 5n;
      await networkHelpers.setStorageAt(market.settlementAddress, storageSlot, (word & ~0xffffffffn) | future);
      expect((await settlement.lastReading(alice.address))[0]).to.equal(future);

      const older = await market.sign(alice, slot + 1n, 2_000n, 0n);
      await market.inWindow(slot + 1n);
      await expect(market.submit(older))
        .to.be.revertedWithCustomError(settlement, "ReadingSlotBeforeLast")
        .withArgs(slot + 1n, future);
    });

    it("refuses registers beyond 40 bits, slot energy beyond 32 bits and net energy beyond +-2^30 Wh (ReadingOutOfRange)", async function () {
      const { market, settlement, slot } = await fixture();
      await market.inWindow(slot);
      await expect(market.submit(await market.sign("alice", slot, MAX_REGISTER + 1n, 0n)))
        .to.be.revertedWithCustomError(settlement, "ReadingOutOfRange")
        .withArgs(slot);
      await expect(market.submit(await market.sign("alice", slot, 0n, MAX_REGISTER + 1n)))
        .to.be.revertedWithCustomError(settlement, "ReadingOutOfRange")
        .withArgs(slot);
      // The largest registers are fine as a baseline.
      await market.submit(await market.sign("alice", slot, MAX_REGISTER - MAX_DELTA, MAX_REGISTER));
      await market.submit(await market.sign("bob", slot, 0n, 0n));
      await market.submit(await market.sign("carol", slot, MAX_REGISTER - MAX_DELTA, MAX_REGISTER - MAX_DELTA));

      await market.inWindow(slot + 1n);
      // A slot's energy must fit 32 bits.
      await expect(market.submit(await market.sign("bob", slot + 1n, MAX_DELTA + 1n, 0n)))
        .to.be.revertedWithCustomError(settlement, "ReadingOutOfRange")
        .withArgs(slot + 1n);
      await expect(market.submit(await market.sign("bob", slot + 1n, 0n, MAX_DELTA + 1n)))
        .to.be.revertedWithCustomError(settlement, "ReadingOutOfRange")
        .withArgs(slot + 1n);
      // The reading's net energy must lie within +-2^30 Wh: 2^32 - 1 Wh of import alone is refused, and
      // so are 2^30 + 1 Wh of net import and 2^30 + 1 Wh of net export.
      await expect(market.submit(await market.sign("alice", slot + 1n, MAX_REGISTER, MAX_REGISTER)))
        .to.be.revertedWithCustomError(settlement, "ReadingOutOfRange")
        .withArgs(slot + 1n);
      await expect(market.submit(await market.sign("bob", slot + 1n, MAX_NET + 1n, 0n)))
        .to.be.revertedWithCustomError(settlement, "ReadingOutOfRange")
        .withArgs(slot + 1n);
      await expect(market.submit(await market.sign("bob", slot + 1n, 0n, -MIN_NET + 1n)))
        .to.be.revertedWithCustomError(settlement, "ReadingOutOfRange")
        .withArgs(slot + 1n);
      // The largest deltas are fine when they net within +-2^30 Wh, and so is the largest register;
      // exactly 2^30 Wh of net import is fine.
      await expect(market.submit(await market.sign("carol", slot + 1n, MAX_REGISTER, MAX_REGISTER)))
        .to.emit(settlement, "ReadingRecorded")
        .withArgs(market.p("carol").address, slot + 1n, MAX_REGISTER, MAX_REGISTER, MAX_DELTA, MAX_DELTA);
      await expect(market.submit(await market.sign("bob", slot + 1n, MAX_DELTA, MAX_DELTA - MAX_NET)))
        .to.emit(settlement, "ReadingRecorded")
        .withArgs(market.p("bob").address, slot + 1n, MAX_DELTA, MAX_DELTA - MAX_NET, MAX_DELTA, MAX_DELTA - MAX_NET);
      await expect(market.submit(await market.sign("alice", slot + 1n, MAX_REGISTER - MAX_DELTA + MAX_NET, MAX_REGISTER)))
        .to.emit(settlement, "ReadingRecorded")
        .withArgs(market.p("alice").address, slot + 1n, MAX_REGISTER - MAX_DELTA + MAX_NET, MAX_REGISTER, MAX_NET, 0n);
      expect((await settlement.accountState(market.p("carol").address)).deviationWh).to.equal(0n);
      expect((await settlement.accountState(market.p("bob").address)).deviationWh).to.equal(MAX_NET);
      expect((await settlement.accountState(market.p("alice").address)).deviationWh).to.equal(MAX_NET);
      // Beyond 40 bits also after the baseline; one more Wh of net import than 2^30 (and far more);
      // the most net export, exactly 2^30 Wh.
      await market.inWindow(slot + 2n);
      await expect(market.submit(await market.sign("alice", slot + 2n, MAX_REGISTER + 1n, MAX_REGISTER)))
        .to.be.revertedWithCustomError(settlement, "ReadingOutOfRange")
        .withArgs(slot + 2n);
      const aliceImport = MAX_REGISTER - MAX_DELTA + MAX_NET;
      await expect(market.submit(await market.sign("alice", slot + 2n, aliceImport + MAX_NET + 1n, MAX_REGISTER)))
        .to.be.revertedWithCustomError(settlement, "ReadingOutOfRange")
        .withArgs(slot + 2n);
      await expect(market.submit(await market.sign("alice", slot + 2n, MAX_REGISTER, MAX_REGISTER)))
        .to.be.revertedWithCustomError(settlement, "ReadingOutOfRange")
        .withArgs(slot + 2n);
      // Within the bound, alice's next reading is fine.
      await expect(market.submit(await market.sign("alice", slot + 2n, aliceImport + MAX_NET, MAX_REGISTER)))
        .to.emit(settlement, "ReadingRecorded")
        .withArgs(market.p("alice").address, slot + 2n, aliceImport + MAX_NET, MAX_REGISTER, MAX_NET, 0n);
      await expect(market.submit(await market.sign("bob", slot + 2n, MAX_DELTA, MAX_DELTA - MAX_NET - MIN_NET)))
        .to.emit(settlement, "ReadingRecorded")
        .withArgs(market.p("bob").address, slot + 2n, MAX_DELTA, MAX_DELTA - MAX_NET - MIN_NET, 0n, -MIN_NET);
      expect((await settlement.accountState(market.p("bob").address)).deviationWh).to.equal(MIN_NET);
    });

    it("absorbs missed slots into the next reading: all the energy goes to the new slot", async function () {
      const { market, settlement, slot } = await fixture();
      const alice = market.p("alice");
      const bob = market.p("bob");
      await market.readSlot(slot, { alice: [10_000n, 0n], bob: [2_000n, 3_000n] });
      // Slots slot+1 and slot+2 are missed by both meters.
      const gap = market.readSlot(slot + 3n, { alice: [15_000n, 0n], bob: [2_500n, 9_000n] });
      await expect(gap).to.emit(settlement, "ReadingRecorded").withArgs(alice.address, slot + 3n, 15_000n, 0n, 5_000n, 0n);
      await expect(gap).to.emit(settlement, "ReadingRecorded").withArgs(bob.address, slot + 3n, 2_500n, 9_000n, 500n, 6_000n);
      for (const missed of [slot + 1n, slot + 2n]) {
        const s = await settlement.slotState(missed);
        expect([s.readings, s.demandWh, s.supplyWh]).to.deep.equal([0n, 0n, 0n]);
      }
      const s3 = await settlement.slotState(slot + 3n);
      expect(s3.readings).to.equal(2n);
      expect(s3.demandWh).to.equal(5_000n);
      expect(s3.supplyWh).to.equal(5_500n);

      // Billing slot+3 bills exactly the register differences since the baseline:
      // p = 50_000 + 250_000 * 5_000 / 10_500 = 169_047 (floor); L = 5_000, all of Alice's import is local.
      await market.afterDeadline(slot + 3n);
      const tx = settlement.settle(slot + 3n, [alice.address, bob.address]);
      await expect(tx).to.emit(settlement, "SlotPriced").withArgs(slot + 3n, 169_047n, 5_000n, 5_500n);
      await expect(tx)
        .to.emit(settlement, "Billed")
        .withArgs(alice.address, slot + 3n, 5_000n, 0n, 845_235n, 0n); // 5_000 * 169_047 / 1000
      // Bob: local 5_500 * 5_000 / 5_500 = 5_000 at p, 500 at feed-in: (5_000*169_047 + 500*50_000)/1000 = 870_235.
      await expect(tx)
        .to.emit(settlement, "Billed")
        .withArgs(bob.address, slot + 3n, -5_500n, 0n, -870_235n, 0n);
      await market.expectIdentity();
    });

    it("registers never decrease over a run of readings", async function () {
      const { market, settlement, slot } = await fixture();
      const carol = market.p("carol");
      let imp = 0n;
      let exp = 0n;
      for (let k = 0n; k < 4n; ++k) {
        imp += 100n * k;
        exp += 50n * (3n - k);
        await market.readSlot(slot + k, { carol: [imp, exp] });
        const [s, i, e] = await settlement.lastReading(carol.address);
        expect([s, i, e]).to.deep.equal([slot + k, imp, exp]);
      }
    });
  });

  describe("requestReadings", function () {
    it("lets the master announce an ended slot with its deadline", async function () {
      const { market, settlement, slot } = await fixture();
      await market.at(market.opens(slot));
      await expect(settlement.connect(market.admin).requestReadings(slot))
        .to.emit(settlement, "ReadingsRequested")
        .withArgs(slot, market.deadline(slot));
    });

    it("refuses a slot that has not ended", async function () {
      const { market, settlement, slot } = await fixture();
      await market.at(market.opens(slot) - 1n);
      await expect(settlement.requestReadings(slot))
        .to.be.revertedWithCustomError(settlement, "ReadingSlotNotEnded")
        .withArgs(slot, market.opens(slot));
    });

    it("is only for MASTER_ROLE; the master cannot set prices", async function () {
      const { market, settlement, slot } = await fixture();
      const MASTER_ROLE = await settlement.MASTER_ROLE();
      const REGULATOR_ROLE = await settlement.REGULATOR_ROLE();
      await market.at(market.opens(slot) + 1n);
      await expect(settlement.connect(market.outsider).requestReadings(slot))
        .to.be.revertedWithCustomError(settlement, "AccessControlUnauthorizedAccount")
        .withArgs(market.outsider.address, MASTER_ROLE);
      const master = market.relayer;
      await settlement.grantRole(MASTER_ROLE, master.address);
      await expect(settlement.connect(master).requestReadings(slot)).to.emit(settlement, "ReadingsRequested");
      await expect(settlement.connect(master).setPrices(1n, 2n))
        .to.be.revertedWithCustomError(settlement, "AccessControlUnauthorizedAccount")
        .withArgs(master.address, REGULATOR_ROLE);
      await settlement.revokeRole(MASTER_ROLE, master.address);
      await expect(settlement.connect(master).requestReadings(slot))
        .to.be.revertedWithCustomError(settlement, "AccessControlUnauthorizedAccount")
        .withArgs(master.address, MASTER_ROLE);
    });
  });
});

/**
 * The storage slot of `_accounts[account]`: keccak256(account . p) for the mapping's base slot p,
 * found by looking for the word whose low 32 bits hold the account's last slot.
 */
async function accountStorageSlot(market: Market, account: string): Promise<string> {
  const [lastSlot] = await market.settlement.lastReading(account);
  const coder = AbiCoder.defaultAbiCoder();
  for (let p = 0n; p < 32n; ++p) {
    const slotKey = keccak256(coder.encode(["address", "uint256"], [account, p]));
    const word = BigInt(await networkHelpers.getStorageAt(market.settlementAddress, slotKey));
    if (word !== 0n && (word & 0xffffffffn) === lastSlot) return slotKey;
  }
  throw new Error(`no storage slot found for ${account} (${zeroPadValue(toBeHex(lastSlot), 32)})`);
}
