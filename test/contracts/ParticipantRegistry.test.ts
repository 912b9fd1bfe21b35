import { expect } from "chai";
import { network } from "hardhat";
import type { IParticipantRegistry, ParticipantRegistry } from "../../agents/chain/types/index.js";

const { ethers, networkHelpers } = await network.create();

/** Mirrors IParticipantRegistry.Kind. */
const Kind = { Consumer: 0n, Prosumer: 1n, Producer: 2n, Storage: 3n, FlexibleLoad: 4n, SlackUnit: 5n } as const;
/** Mirrors IParticipantRegistry.Status. */
const Status = { None: 0n, Active: 1n, Suspended: 2n } as const;

type Registration = IParticipantRegistry.RegistrationStruct;

/** A deterministic address standing for a meter agent's signing key. */
function meterKey(n: number): string {
  return new ethers.Wallet(ethers.id(`meter-key-${n}`)).address;
}

/** A meter id as the regulator would write it, e.g. "MTR-0001". */
function meterId(n: number): string {
  return ethers.encodeBytes32String(`MTR-${n.toString().padStart(4, "0")}`);
}

/** The test chain's first signers, by role; fails loudly if the chain has too few accounts. */
async function namedSigners() {
  const [admin, alice, bob, carol, dave, outsider] = await ethers.getSigners();
  if (
    admin === undefined ||
    alice === undefined ||
    bob === undefined ||
    carol === undefined ||
    dave === undefined ||
    outsider === undefined
  ) {
    throw new Error("the test chain needs at least 6 accounts");
  }
  return { admin, alice, bob, carol, dave, outsider };
}

async function deployRegistry() {
  const { admin, alice, bob, carol, dave, outsider } = await namedSigners();
  const registry: ParticipantRegistry = await ethers.deployContract("ParticipantRegistry", [admin.address]);
  const REGULATOR_ROLE = await registry.REGULATOR_ROLE();
  const DEFAULT_ADMIN_ROLE = await registry.DEFAULT_ADMIN_ROLE();
  const reg = (account: { address: string }, n: number, kind: bigint = Kind.Prosumer): Registration => ({
    account: account.address,
    meterId: meterId(n),
    meterKey: meterKey(n),
    kind,
  });
  return { registry, admin, alice, bob, carol, dave, outsider, REGULATOR_ROLE, DEFAULT_ADMIN_ROLE, reg };
}

/** Alice (consumer, #1) and Bob (prosumer, #2) registered. */
async function deployWithTwo() {
  const fixture = await deployRegistry();
  const { registry, alice, bob, reg } = fixture;
  await registry.register(reg(alice, 1, Kind.Consumer));
  await registry.register(reg(bob, 2, Kind.Prosumer));
  return fixture;
}

async function expectStored(registry: ParticipantRegistry, r: Registration, index: bigint, status: bigint) {
  const account = r.account as string;
  const p = await registry.participant(account);
  expect(p.meterKey).to.equal(r.meterKey);
  expect(p.kind).to.equal(r.kind);
  expect(p.status).to.equal(status);
  expect(p.index).to.equal(index);
  expect(p.meterId).to.equal(r.meterId);
  expect(await registry.isActive(account)).to.equal(status === Status.Active);
  expect(await registry.accountOfMeterKey(r.meterKey as string)).to.equal(account);
  expect(await registry.accountOfMeterId(r.meterId as string)).to.equal(account);
  expect(await registry.participantAt(index)).to.equal(account);
}

describe("ParticipantRegistry", function () {
  describe("deployment", function () {
    it("grants DEFAULT_ADMIN_ROLE and REGULATOR_ROLE to the constructor admin only", async function () {
      const { registry, admin, outsider, REGULATOR_ROLE, DEFAULT_ADMIN_ROLE } =
        await networkHelpers.loadFixture(deployRegistry);
      expect(REGULATOR_ROLE).to.equal(ethers.id("REGULATOR_ROLE"));
      expect(await registry.hasRole(DEFAULT_ADMIN_ROLE, admin.address)).to.equal(true);
      expect(await registry.hasRole(REGULATOR_ROLE, admin.address)).to.equal(true);
      expect(await registry.hasRole(DEFAULT_ADMIN_ROLE, outsider.address)).to.equal(false);
      expect(await registry.hasRole(REGULATOR_ROLE, outsider.address)).to.equal(false);
    });

    it("starts empty", async function () {
      const { registry, alice } = await networkHelpers.loadFixture(deployRegistry);
      expect(await registry.participantCount()).to.equal(0n);
      expect(await registry.slackUnit()).to.equal(ethers.ZeroAddress);
      expect(await registry.isActive(alice.address)).to.equal(false);
      await expect(registry.participantAt(0n))
        .to.be.revertedWithCustomError(registry, "RegistryIndexOutOfRange")
        .withArgs(0n, 0n);
    });

    it("reverts with RegistryZeroAddress for a zero admin", async function () {
      const factory = await ethers.getContractFactory("ParticipantRegistry");
      await expect(factory.deploy(ethers.ZeroAddress)).to.be.revertedWithCustomError(factory, "RegistryZeroAddress");
    });
  });

  describe("register", function () {
    it("stores every field, indexes the participant and emits ParticipantRegistered with its index", async function () {
      const { registry, alice, reg } = await networkHelpers.loadFixture(deployRegistry);
      const r = reg(alice, 1, Kind.Storage);
      await expect(registry.register(r))
        .to.emit(registry, "ParticipantRegistered")
        .withArgs(alice.address, meterId(1), meterKey(1), Kind.Storage, 0n);
      await expectStored(registry, r, 0n, Status.Active);
      expect(await registry.participantCount()).to.equal(1n);
      expect(await registry.slackUnit()).to.equal(ethers.ZeroAddress);
    });

    it("gives consecutive registrations dense indices 0, 1, 2", async function () {
      const { registry, alice, bob, carol, reg } = await networkHelpers.loadFixture(deployRegistry);
      const rs = [reg(alice, 1, Kind.Consumer), reg(bob, 2, Kind.Producer), reg(carol, 3, Kind.FlexibleLoad)];
      for (const [i, r] of rs.entries()) {
        await expect(registry.register(r))
          .to.emit(registry, "ParticipantRegistered")
          .withArgs(r.account, r.meterId, r.meterKey, r.kind, BigInt(i));
      }
      expect(await registry.participantCount()).to.equal(3n);
      for (const [i, r] of rs.entries()) await expectStored(registry, r, BigInt(i), Status.Active);
      await expect(registry.participantAt(3n))
        .to.be.revertedWithCustomError(registry, "RegistryIndexOutOfRange")
        .withArgs(3n, 3n);
      await expect(registry.participantAt(ethers.MaxUint256))
        .to.be.revertedWithCustomError(registry, "RegistryIndexOutOfRange")
        .withArgs(ethers.MaxUint256, 3n);
    });

    it("records the slack unit and refuses a second one with RegistrySlackUnitAlreadySet", async function () {
      const { registry, alice, bob, reg } = await networkHelpers.loadFixture(deployRegistry);
      await registry.register(reg(alice, 1, Kind.SlackUnit));
      expect(await registry.slackUnit()).to.equal(alice.address);
      await expect(registry.register(reg(bob, 2, Kind.SlackUnit)))
        .to.be.revertedWithCustomError(registry, "RegistrySlackUnitAlreadySet")
        .withArgs(alice.address);
      expect(await registry.slackUnit()).to.equal(alice.address);
      expect(await registry.participantCount()).to.equal(1n);
      // Bob can still join as something else.
      await registry.register(reg(bob, 2, Kind.Storage));
      expect(await registry.slackUnit()).to.equal(alice.address);
    });

    it("reverts with RegistryZeroAddress for a zero account or a zero meter key", async function () {
      const { registry, alice, reg } = await networkHelpers.loadFixture(deployRegistry);
      await expect(
        registry.register({ ...reg(alice, 1), account: ethers.ZeroAddress }),
      ).to.be.revertedWithCustomError(registry, "RegistryZeroAddress");
      await expect(
        registry.register({ ...reg(alice, 1), meterKey: ethers.ZeroAddress }),
      ).to.be.revertedWithCustomError(registry, "RegistryZeroAddress");
      expect(await registry.participantCount()).to.equal(0n);
    });

    it("reverts with RegistryZeroMeterId for a zero meter id", async function () {
      const { registry, alice, reg } = await networkHelpers.loadFixture(deployRegistry);
      await expect(
        registry.register({ ...reg(alice, 1), meterId: ethers.ZeroHash }),
      ).to.be.revertedWithCustomError(registry, "RegistryZeroMeterId");
      expect(await registry.participantCount()).to.equal(0n);
    });

    it("reverts with RegistryAlreadyRegistered for a registered account, even with fresh meter data", async function () {
      const { registry, alice, reg } = await networkHelpers.loadFixture(deployWithTwo);
      await expect(registry.register(reg(alice, 9)))
        .to.be.revertedWithCustomError(registry, "RegistryAlreadyRegistered")
        .withArgs(alice.address);
      // A suspended account is still registered.
      await registry.suspend(alice.address);
      await expect(registry.register(reg(alice, 9)))
        .to.be.revertedWithCustomError(registry, "RegistryAlreadyRegistered")
        .withArgs(alice.address);
      expect(await registry.participantCount()).to.equal(2n);
      expect(await registry.accountOfMeterKey(meterKey(9))).to.equal(ethers.ZeroAddress);
    });

    it("reverts with RegistryMeterKeyInUse naming the holder of the key", async function () {
      const { registry, alice, carol, reg } = await networkHelpers.loadFixture(deployWithTwo);
      await expect(registry.register({ ...reg(carol, 3), meterKey: meterKey(1) }))
        .to.be.revertedWithCustomError(registry, "RegistryMeterKeyInUse")
        .withArgs(meterKey(1), alice.address);
      expect(await registry.participant(carol.address).then((p) => p.status)).to.equal(Status.None);
    });

    it("reverts with RegistryMeterIdInUse naming the owner of the meter", async function () {
      const { registry, bob, carol, reg } = await networkHelpers.loadFixture(deployWithTwo);
      await expect(registry.register({ ...reg(carol, 3), meterId: meterId(2) }))
        .to.be.revertedWithCustomError(registry, "RegistryMeterIdInUse")
        .withArgs(meterId(2), bob.address);
      expect(await registry.participantCount()).to.equal(2n);
    });

    it("rejects a kind outside the enum", async function () {
      const { registry, carol, reg } = await networkHelpers.loadFixture(deployRegistry);
      await expect(registry.register({ ...reg(carol, 3), kind: 6n })).to.revert(ethers);
      expect(await registry.participantCount()).to.equal(0n);
    });
  });

  describe("registerBatch", function () {
    it("registers every entry with every field and one event per entry, in order", async function () {
      const { registry, alice, bob, carol, dave, outsider, reg } = await networkHelpers.loadFixture(deployRegistry);
      const rs = [
        reg(alice, 1, Kind.Consumer),
        reg(bob, 2, Kind.Prosumer),
        reg(carol, 3, Kind.Producer),
        reg(dave, 4, Kind.Storage),
        reg(outsider, 5, Kind.FlexibleLoad),
      ];
      const tx = registry.registerBatch(rs);
      for (const [i, r] of rs.entries()) {
        await expect(tx)
          .to.emit(registry, "ParticipantRegistered")
          .withArgs(r.account, r.meterId, r.meterKey, r.kind, BigInt(i));
      }
      expect(await registry.participantCount()).to.equal(BigInt(rs.length));
      for (const [i, r] of rs.entries()) await expectStored(registry, r, BigInt(i), Status.Active);
    });

    it("continues the dense index after single registrations and sets the slack unit", async function () {
      const { registry, carol, dave, reg } = await networkHelpers.loadFixture(deployWithTwo);
      const rs = [reg(carol, 3, Kind.SlackUnit), reg(dave, 4, Kind.Consumer)];
      await expect(registry.registerBatch(rs))
        .to.emit(registry, "ParticipantRegistered")
        .withArgs(carol.address, meterId(3), meterKey(3), Kind.SlackUnit, 2n);
      await expectStored(registry, rs[0]!, 2n, Status.Active);
      await expectStored(registry, rs[1]!, 3n, Status.Active);
      expect(await registry.slackUnit()).to.equal(carol.address);
    });

    it("accepts an empty batch and changes nothing", async function () {
      const { registry } = await networkHelpers.loadFixture(deployWithTwo);
      await expect(registry.registerBatch([])).not.to.emit(registry, "ParticipantRegistered");
      expect(await registry.participantCount()).to.equal(2n);
    });

    it("is atomic: one bad entry reverts the whole batch", async function () {
      const { registry, alice, carol, dave, reg } = await networkHelpers.loadFixture(deployWithTwo);
      await expect(registry.registerBatch([reg(carol, 3), { ...reg(dave, 4), meterKey: meterKey(1) }]))
        .to.be.revertedWithCustomError(registry, "RegistryMeterKeyInUse")
        .withArgs(meterKey(1), alice.address);
      expect(await registry.participantCount()).to.equal(2n);
      expect(await registry.accountOfMeterKey(meterKey(3))).to.equal(ethers.ZeroAddress);
      expect(await registry.accountOfMeterId(meterId(3))).to.equal(ethers.ZeroAddress);
      expect((await registry.participant(carol.address)).status).to.equal(Status.None);
    });

    it("detects duplicates within the batch itself", async function () {
      const { registry, alice, bob, carol, reg } = await networkHelpers.loadFixture(deployRegistry);
      await expect(registry.registerBatch([reg(alice, 1), reg(alice, 2)]))
        .to.be.revertedWithCustomError(registry, "RegistryAlreadyRegistered")
        .withArgs(alice.address);
      await expect(registry.registerBatch([reg(alice, 1), { ...reg(bob, 2), meterKey: meterKey(1) }]))
        .to.be.revertedWithCustomError(registry, "RegistryMeterKeyInUse")
        .withArgs(meterKey(1), alice.address);
      await expect(registry.registerBatch([reg(alice, 1), { ...reg(bob, 2), meterId: meterId(1) }]))
        .to.be.revertedWithCustomError(registry, "RegistryMeterIdInUse")
        .withArgs(meterId(1), alice.address);
      await expect(registry.registerBatch([reg(alice, 1, Kind.SlackUnit), reg(bob, 2), reg(carol, 3, Kind.SlackUnit)]))
        .to.be.revertedWithCustomError(registry, "RegistrySlackUnitAlreadySet")
        .withArgs(alice.address);
      await expect(registry.registerBatch([reg(alice, 1), { ...reg(bob, 2), meterId: ethers.ZeroHash }]))
        .to.be.revertedWithCustomError(registry, "RegistryZeroMeterId");
      await expect(
        registry.registerBatch([reg(alice, 1), { ...reg(bob, 2), account: ethers.ZeroAddress }]),
      ).to.be.revertedWithCustomError(registry, "RegistryZeroAddress");
      expect(await registry.participantCount()).to.equal(0n);
      expect(await registry.slackUnit()).to.equal(ethers.ZeroAddress);
    });
  });

  describe("setMeterKey", function () {
    it("frees the old key, maps the new one, keeps the rest and emits MeterKeyChanged", async function () {
      const { registry, bob, reg } = await networkHelpers.loadFixture(deployWithTwo);
      const newKey = meterKey(22);
      await expect(registry.setMeterKey(bob.address, newKey))
        .to.emit(registry, "MeterKeyChanged")
        .withArgs(bob.address, meterKey(2), newKey);
      expect(await registry.accountOfMeterKey(meterKey(2))).to.equal(ethers.ZeroAddress);
      await expectStored(registry, { ...reg(bob, 2, Kind.Prosumer), meterKey: newKey }, 1n, Status.Active);
      expect(await registry.participantCount()).to.equal(2n);
    });

    it("lets a freed key be registered by someone else", async function () {
      const { registry, bob, carol, reg } = await networkHelpers.loadFixture(deployWithTwo);
      await registry.setMeterKey(bob.address, meterKey(22));
      await registry.register({ ...reg(carol, 3), meterKey: meterKey(2) });
      expect(await registry.accountOfMeterKey(meterKey(2))).to.equal(carol.address);
      expect(await registry.accountOfMeterKey(meterKey(22))).to.equal(bob.address);
    });

    it("can re-key the same participant repeatedly, leaving only the latest key mapped", async function () {
      const { registry, alice } = await networkHelpers.loadFixture(deployWithTwo);
      await registry.setMeterKey(alice.address, meterKey(11));
      await registry.setMeterKey(alice.address, meterKey(12));
      await registry.setMeterKey(alice.address, meterKey(1));
      expect(await registry.accountOfMeterKey(meterKey(11))).to.equal(ethers.ZeroAddress);
      expect(await registry.accountOfMeterKey(meterKey(12))).to.equal(ethers.ZeroAddress);
      expect(await registry.accountOfMeterKey(meterKey(1))).to.equal(alice.address);
      expect((await registry.participant(alice.address)).meterKey).to.equal(meterKey(1));
    });

    it("reverts with RegistryMeterKeyInUse for a key another participant holds", async function () {
      const { registry, alice, bob } = await networkHelpers.loadFixture(deployWithTwo);
      await expect(registry.setMeterKey(alice.address, meterKey(2)))
        .to.be.revertedWithCustomError(registry, "RegistryMeterKeyInUse")
        .withArgs(meterKey(2), bob.address);
      expect(await registry.accountOfMeterKey(meterKey(1))).to.equal(alice.address);
      expect(await registry.accountOfMeterKey(meterKey(2))).to.equal(bob.address);
    });

    it("reverts with RegistryMeterKeyInUse when re-keying to the participant's own current key", async function () {
      const { registry, alice } = await networkHelpers.loadFixture(deployWithTwo);
      await expect(registry.setMeterKey(alice.address, meterKey(1)))
        .to.be.revertedWithCustomError(registry, "RegistryMeterKeyInUse")
        .withArgs(meterKey(1), alice.address);
      expect(await registry.accountOfMeterKey(meterKey(1))).to.equal(alice.address);
    });

    it("reverts with RegistryZeroAddress for a zero key", async function () {
      const { registry, alice } = await networkHelpers.loadFixture(deployWithTwo);
      await expect(registry.setMeterKey(alice.address, ethers.ZeroAddress)).to.be.revertedWithCustomError(
        registry,
        "RegistryZeroAddress",
      );
    });

    it("reverts with RegistryNotRegistered for an unknown account", async function () {
      const { registry, carol } = await networkHelpers.loadFixture(deployWithTwo);
      await expect(registry.setMeterKey(carol.address, meterKey(3)))
        .to.be.revertedWithCustomError(registry, "RegistryNotRegistered")
        .withArgs(carol.address);
      await expect(registry.setMeterKey(ethers.ZeroAddress, meterKey(3)))
        .to.be.revertedWithCustomError(registry, "RegistryNotRegistered")
        .withArgs(ethers.ZeroAddress);
      expect(await registry.accountOfMeterKey(meterKey(3))).to.equal(ethers.ZeroAddress);
    });
  });

  describe("suspend and reactivate", function () {
    it("suspends: status Suspended, not active, event, lookups and index kept", async function () {
      const { registry, alice, reg } = await networkHelpers.loadFixture(deployWithTwo);
      await expect(registry.suspend(alice.address)).to.emit(registry, "ParticipantSuspended").withArgs(alice.address);
      expect(await registry.isActive(alice.address)).to.equal(false);
      await expectStored(registry, reg(alice, 1, Kind.Consumer), 0n, Status.Suspended);
      expect(await registry.participantCount()).to.equal(2n);
    });

    it("reactivates: status Active, active again, event", async function () {
      const { registry, alice, bob, reg } = await networkHelpers.loadFixture(deployWithTwo);
      await registry.suspend(alice.address);
      await expect(registry.reactivate(alice.address))
        .to.emit(registry, "ParticipantReactivated")
        .withArgs(alice.address);
      expect(await registry.isActive(alice.address)).to.equal(true);
      await expectStored(registry, reg(alice, 1, Kind.Consumer), 0n, Status.Active);
      expect(await registry.isActive(bob.address)).to.equal(true);
    });

    it("reverts with RegistryAlreadySuspended when suspending twice", async function () {
      const { registry, alice } = await networkHelpers.loadFixture(deployWithTwo);
      await registry.suspend(alice.address);
      await expect(registry.suspend(alice.address))
        .to.be.revertedWithCustomError(registry, "RegistryAlreadySuspended")
        .withArgs(alice.address);
    });

    it("reverts with RegistryNotSuspended when reactivating an active participant", async function () {
      const { registry, alice } = await networkHelpers.loadFixture(deployWithTwo);
      await expect(registry.reactivate(alice.address))
        .to.be.revertedWithCustomError(registry, "RegistryNotSuspended")
        .withArgs(alice.address);
      await registry.suspend(alice.address);
      await registry.reactivate(alice.address);
      await expect(registry.reactivate(alice.address))
        .to.be.revertedWithCustomError(registry, "RegistryNotSuspended")
        .withArgs(alice.address);
    });

    it("reverts with RegistryNotRegistered for an unknown account", async function () {
      const { registry, carol } = await networkHelpers.loadFixture(deployWithTwo);
      await expect(registry.suspend(carol.address))
        .to.be.revertedWithCustomError(registry, "RegistryNotRegistered")
        .withArgs(carol.address);
      await expect(registry.reactivate(carol.address))
        .to.be.revertedWithCustomError(registry, "RegistryNotRegistered")
        .withArgs(carol.address);
    });
  });

  describe("views of unknown participants", function () {
    it("returns an empty record, inactive, and zero for unknown keys and ids", async function () {
      const { registry, carol } = await networkHelpers.loadFixture(deployWithTwo);
      const p = await registry.participant(carol.address);
      expect(p.meterKey).to.equal(ethers.ZeroAddress);
      expect(p.kind).to.equal(Kind.Consumer);
      expect(p.status).to.equal(Status.None);
      expect(p.index).to.equal(0n);
      expect(p.meterId).to.equal(ethers.ZeroHash);
      expect(await registry.isActive(carol.address)).to.equal(false);
      expect(await registry.accountOfMeterKey(meterKey(3))).to.equal(ethers.ZeroAddress);
      expect(await registry.accountOfMeterId(meterId(3))).to.equal(ethers.ZeroAddress);
      expect(await registry.accountOfMeterKey(ethers.ZeroAddress)).to.equal(ethers.ZeroAddress);
      expect(await registry.accountOfMeterId(ethers.ZeroHash)).to.equal(ethers.ZeroAddress);
    });
  });

  describe("access control", function () {
    it("refuses every state-changing function to an account without REGULATOR_ROLE", async function () {
      const { registry, alice, carol, outsider, REGULATOR_ROLE, reg } = await networkHelpers.loadFixture(deployWithTwo);
      const asOutsider = registry.connect(outsider);
      const calls = [
        () => asOutsider.register(reg(carol, 3)),
        () => asOutsider.registerBatch([reg(carol, 3)]),
        () => asOutsider.setMeterKey(alice.address, meterKey(11)),
        () => asOutsider.suspend(alice.address),
        () => asOutsider.reactivate(alice.address),
      ];
      for (const call of calls) {
        await expect(call())
          .to.be.revertedWithCustomError(registry, "AccessControlUnauthorizedAccount")
          .withArgs(outsider.address, REGULATOR_ROLE);
      }
      // A registered participant has no say over the registry either, not even over its own record.
      await expect(registry.connect(alice).setMeterKey(alice.address, meterKey(11)))
        .to.be.revertedWithCustomError(registry, "AccessControlUnauthorizedAccount")
        .withArgs(alice.address, REGULATOR_ROLE);
      await expect(registry.connect(alice).suspend(alice.address))
        .to.be.revertedWithCustomError(registry, "AccessControlUnauthorizedAccount")
        .withArgs(alice.address, REGULATOR_ROLE);
      expect(await registry.participantCount()).to.equal(2n);
      expect(await registry.accountOfMeterKey(meterKey(1))).to.equal(alice.address);
      expect(await registry.isActive(alice.address)).to.equal(true);
    });

    it("checks the role before anything else (an unauthorised call on an unknown account is refused for the role)", async function () {
      const { registry, carol, outsider, REGULATOR_ROLE } = await networkHelpers.loadFixture(deployWithTwo);
      await expect(registry.connect(outsider).suspend(carol.address))
        .to.be.revertedWithCustomError(registry, "AccessControlUnauthorizedAccount")
        .withArgs(outsider.address, REGULATOR_ROLE);
    });

    it("lets the admin grant and revoke REGULATOR_ROLE", async function () {
      const { registry, admin, alice, carol, dave, outsider, REGULATOR_ROLE, reg } =
        await networkHelpers.loadFixture(deployWithTwo);
      await expect(registry.grantRole(REGULATOR_ROLE, outsider.address))
        .to.emit(registry, "RoleGranted")
        .withArgs(REGULATOR_ROLE, outsider.address, admin.address);
      const asRegulator = registry.connect(outsider);
      await asRegulator.register(reg(carol, 3));
      await asRegulator.registerBatch([reg(dave, 4)]);
      await asRegulator.setMeterKey(alice.address, meterKey(11));
      await asRegulator.suspend(alice.address);
      await asRegulator.reactivate(alice.address);
      expect(await registry.participantCount()).to.equal(4n);
      expect(await registry.accountOfMeterKey(meterKey(11))).to.equal(alice.address);

      await expect(registry.revokeRole(REGULATOR_ROLE, outsider.address))
        .to.emit(registry, "RoleRevoked")
        .withArgs(REGULATOR_ROLE, outsider.address, admin.address);
      await expect(asRegulator.suspend(alice.address))
        .to.be.revertedWithCustomError(registry, "AccessControlUnauthorizedAccount")
        .withArgs(outsider.address, REGULATOR_ROLE);
    });

    it("refuses role management to a regulator that is not an admin", async function () {
      const { registry, outsider, carol, REGULATOR_ROLE, DEFAULT_ADMIN_ROLE } =
        await networkHelpers.loadFixture(deployRegistry);
      await registry.grantRole(REGULATOR_ROLE, outsider.address);
      await expect(registry.connect(outsider).grantRole(REGULATOR_ROLE, carol.address))
        .to.be.revertedWithCustomError(registry, "AccessControlUnauthorizedAccount")
        .withArgs(outsider.address, DEFAULT_ADMIN_ROLE);
      expect(await registry.hasRole(REGULATOR_ROLE, carol.address)).to.equal(false);
    });
  });
});
