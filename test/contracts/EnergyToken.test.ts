import { expect } from "chai";
import { network } from "hardhat";
import type { HardhatEthersSigner } from "@nomicfoundation/hardhat-ethers/types";
import type { EnergyToken } from "../../agents/chain/types/index.js";

const { ethers, networkHelpers } = await network.create();

const NAME = "Feeder 7 Energy Token";
const SYMBOL = "kWhT";
/** One token in base units (6 decimals). */
const ONE = 10n ** 6n;

const PERMIT_TYPES = {
  Permit: [
    { name: "owner", type: "address" },
    { name: "spender", type: "address" },
    { name: "value", type: "uint256" },
    { name: "nonce", type: "uint256" },
    { name: "deadline", type: "uint256" },
  ],
};

/** The test chain's first signers, by role; fails loudly if the chain has too few accounts. */
async function namedSigners() {
  const [admin, alice, bob, carol, outsider] = await ethers.getSigners();
  if (admin === undefined || alice === undefined || bob === undefined || carol === undefined || outsider === undefined) {
    throw new Error("the test chain needs at least 5 accounts");
  }
  return { admin, alice, bob, carol, outsider };
}

async function deployToken() {
  const { admin, alice, bob, carol, outsider } = await namedSigners();
  const token: EnergyToken = await ethers.deployContract("EnergyToken", [NAME, SYMBOL, admin.address]);
  const MINTER_ROLE = await token.MINTER_ROLE();
  const DEFAULT_ADMIN_ROLE = await token.DEFAULT_ADMIN_ROLE();
  return { token, admin, alice, bob, carol, outsider, MINTER_ROLE, DEFAULT_ADMIN_ROLE };
}

async function deployFunded() {
  const fixture = await deployToken();
  const { token, alice, bob } = fixture;
  await token.mint(alice.address, 100n * ONE);
  await token.mint(bob.address, 50n * ONE);
  return fixture;
}

function batchId(label: string): string {
  return ethers.id(label);
}

/** Signs an EIP-2612 permit with the token's own EIP-712 domain. */
async function signPermit(
  token: EnergyToken,
  signer: HardhatEthersSigner,
  owner: string,
  spender: string,
  value: bigint,
  nonce: bigint,
  deadline: bigint,
) {
  const { chainId } = await ethers.provider.getNetwork();
  const domain = {
    name: await token.name(),
    version: "1",
    chainId,
    verifyingContract: await token.getAddress(),
  };
  const signature = await signer.signTypedData(domain, PERMIT_TYPES, { owner, spender, value, nonce, deadline });
  return ethers.Signature.from(signature);
}

describe("EnergyToken", function () {
  describe("deployment", function () {
    it("has the given name and symbol and 6 decimals", async function () {
      const { token } = await networkHelpers.loadFixture(deployToken);
      expect(await token.name()).to.equal(NAME);
      expect(await token.symbol()).to.equal(SYMBOL);
      expect(await token.decimals()).to.equal(6n);
      expect(await token.totalSupply()).to.equal(0n);
    });

    it("grants DEFAULT_ADMIN_ROLE and MINTER_ROLE to the constructor admin only", async function () {
      const { token, admin, alice, MINTER_ROLE, DEFAULT_ADMIN_ROLE } = await networkHelpers.loadFixture(deployToken);
      expect(MINTER_ROLE).to.equal(ethers.id("MINTER_ROLE"));
      expect(DEFAULT_ADMIN_ROLE).to.equal(ethers.ZeroHash);
      expect(await token.hasRole(DEFAULT_ADMIN_ROLE, admin.address)).to.equal(true);
      expect(await token.hasRole(MINTER_ROLE, admin.address)).to.equal(true);
      expect(await token.hasRole(DEFAULT_ADMIN_ROLE, alice.address)).to.equal(false);
      expect(await token.hasRole(MINTER_ROLE, alice.address)).to.equal(false);
      expect(await token.getRoleAdmin(MINTER_ROLE)).to.equal(DEFAULT_ADMIN_ROLE);
    });

    it("grants the roles to an admin other than the deployer", async function () {
      const { alice, bob, MINTER_ROLE, DEFAULT_ADMIN_ROLE } = await networkHelpers.loadFixture(deployToken);
      const token: EnergyToken = await ethers.deployContract("EnergyToken", [NAME, SYMBOL, alice.address], bob);
      expect(await token.hasRole(DEFAULT_ADMIN_ROLE, alice.address)).to.equal(true);
      expect(await token.hasRole(MINTER_ROLE, alice.address)).to.equal(true);
      expect(await token.hasRole(DEFAULT_ADMIN_ROLE, bob.address)).to.equal(false);
      expect(await token.hasRole(MINTER_ROLE, bob.address)).to.equal(false);
    });

    it("reverts with EnergyTokenZeroAdmin for a zero admin", async function () {
      const factory = await ethers.getContractFactory("EnergyToken");
      await expect(factory.deploy(NAME, SYMBOL, ethers.ZeroAddress)).to.be.revertedWithCustomError(
        factory,
        "EnergyTokenZeroAdmin",
      );
    });

    it("exposes its EIP-712 domain (name, version 1, chain id, address)", async function () {
      const { token } = await networkHelpers.loadFixture(deployToken);
      const { chainId } = await ethers.provider.getNetwork();
      const domain = await token.eip712Domain();
      expect(domain.name).to.equal(NAME);
      expect(domain.version).to.equal("1");
      expect(domain.chainId).to.equal(chainId);
      expect(domain.verifyingContract).to.equal(await token.getAddress());
      expect(await token.DOMAIN_SEPARATOR()).to.equal(
        ethers.TypedDataEncoder.hashDomain({
          name: NAME,
          version: "1",
          chainId,
          verifyingContract: await token.getAddress(),
        }),
      );
    });
  });

  describe("roles", function () {
    it("lets the admin grant MINTER_ROLE, after which the grantee can mint", async function () {
      const { token, admin, alice, bob, MINTER_ROLE } = await networkHelpers.loadFixture(deployToken);
      await expect(token.grantRole(MINTER_ROLE, alice.address))
        .to.emit(token, "RoleGranted")
        .withArgs(MINTER_ROLE, alice.address, admin.address);
      expect(await token.hasRole(MINTER_ROLE, alice.address)).to.equal(true);
      await expect(token.connect(alice).mint(bob.address, 7n * ONE)).to.changeTokenBalances(
        ethers,
        token,
        [bob],
        [7n * ONE],
      );
    });

    it("lets the admin revoke MINTER_ROLE, after which the account can no longer mint", async function () {
      const { token, admin, alice, bob, MINTER_ROLE } = await networkHelpers.loadFixture(deployToken);
      await token.grantRole(MINTER_ROLE, alice.address);
      await expect(token.revokeRole(MINTER_ROLE, alice.address))
        .to.emit(token, "RoleRevoked")
        .withArgs(MINTER_ROLE, alice.address, admin.address);
      expect(await token.hasRole(MINTER_ROLE, alice.address)).to.equal(false);
      await expect(token.connect(alice).mint(bob.address, 1n))
        .to.be.revertedWithCustomError(token, "AccessControlUnauthorizedAccount")
        .withArgs(alice.address, MINTER_ROLE);
    });

    it("rejects role grants and revocations from a non-admin", async function () {
      const { token, admin, alice, bob, MINTER_ROLE, DEFAULT_ADMIN_ROLE } =
        await networkHelpers.loadFixture(deployToken);
      await expect(token.connect(alice).grantRole(MINTER_ROLE, bob.address))
        .to.be.revertedWithCustomError(token, "AccessControlUnauthorizedAccount")
        .withArgs(alice.address, DEFAULT_ADMIN_ROLE);
      await expect(token.connect(alice).revokeRole(MINTER_ROLE, admin.address))
        .to.be.revertedWithCustomError(token, "AccessControlUnauthorizedAccount")
        .withArgs(alice.address, DEFAULT_ADMIN_ROLE);
      // A minter that is not an admin cannot hand the role on either.
      await token.grantRole(MINTER_ROLE, alice.address);
      await expect(token.connect(alice).grantRole(MINTER_ROLE, bob.address))
        .to.be.revertedWithCustomError(token, "AccessControlUnauthorizedAccount")
        .withArgs(alice.address, DEFAULT_ADMIN_ROLE);
      expect(await token.hasRole(MINTER_ROLE, bob.address)).to.equal(false);
      expect(await token.hasRole(MINTER_ROLE, admin.address)).to.equal(true);
    });
  });

  describe("mint", function () {
    it("mints to the recipient, raises the total supply and emits Transfer from zero", async function () {
      const { token, alice } = await networkHelpers.loadFixture(deployToken);
      const tx = token.mint(alice.address, 12n * ONE + 345n);
      await expect(tx).to.emit(token, "Transfer").withArgs(ethers.ZeroAddress, alice.address, 12n * ONE + 345n);
      await expect(tx).to.changeTokenBalances(ethers, token, [alice], [12n * ONE + 345n]);
      expect(await token.totalSupply()).to.equal(12n * ONE + 345n);
    });

    it("reverts with AccessControlUnauthorizedAccount for a non-minter", async function () {
      const { token, alice, bob, MINTER_ROLE } = await networkHelpers.loadFixture(deployToken);
      await expect(token.connect(alice).mint(alice.address, ONE))
        .to.be.revertedWithCustomError(token, "AccessControlUnauthorizedAccount")
        .withArgs(alice.address, MINTER_ROLE);
      await expect(token.connect(bob).mint(alice.address, ONE))
        .to.be.revertedWithCustomError(token, "AccessControlUnauthorizedAccount")
        .withArgs(bob.address, MINTER_ROLE);
      expect(await token.totalSupply()).to.equal(0n);
    });

    it("reverts with ERC20InvalidReceiver when minting to the zero address", async function () {
      const { token } = await networkHelpers.loadFixture(deployToken);
      await expect(token.mint(ethers.ZeroAddress, ONE))
        .to.be.revertedWithCustomError(token, "ERC20InvalidReceiver")
        .withArgs(ethers.ZeroAddress);
    });
  });

  describe("mintBatch", function () {
    it("mints every amount to its recipient and emits BatchMinted with count and total", async function () {
      const { token, alice, bob, carol } = await networkHelpers.loadFixture(deployToken);
      const id = batchId("distribution-2025-01/batch-0");
      const amounts = [10n * ONE, 2n * ONE + 500_000n, 1n];
      const total = amounts.reduce((a, b) => a + b, 0n);
      expect(await token.batchMinted(id)).to.equal(false);
      const tx = token.mintBatch(id, [alice.address, bob.address, carol.address], amounts);
      await expect(tx).to.emit(token, "BatchMinted").withArgs(id, 3n, total);
      await expect(tx).to.changeTokenBalances(ethers, token, [alice, bob, carol], amounts);
      expect(await token.totalSupply()).to.equal(total);
      expect(await token.batchMinted(id)).to.equal(true);
    });

    it("adds up repeated recipients within one batch", async function () {
      const { token, alice, bob } = await networkHelpers.loadFixture(deployToken);
      const id = batchId("repeat");
      await expect(token.mintBatch(id, [alice.address, bob.address, alice.address], [3n, 4n, 5n]))
        .to.emit(token, "BatchMinted")
        .withArgs(id, 3n, 12n);
      expect(await token.balanceOf(alice.address)).to.equal(8n);
      expect(await token.balanceOf(bob.address)).to.equal(4n);
    });

    it("reverts with EnergyTokenBatchAlreadyMinted when a batch id is minted again", async function () {
      const { token, alice, bob } = await networkHelpers.loadFixture(deployToken);
      const id = batchId("once");
      await token.mintBatch(id, [alice.address], [5n * ONE]);
      await expect(token.mintBatch(id, [alice.address], [5n * ONE]))
        .to.be.revertedWithCustomError(token, "EnergyTokenBatchAlreadyMinted")
        .withArgs(id);
      // Different content under the same id is refused too: the id alone decides.
      await expect(token.mintBatch(id, [bob.address], [1n]))
        .to.be.revertedWithCustomError(token, "EnergyTokenBatchAlreadyMinted")
        .withArgs(id);
      expect(await token.balanceOf(alice.address)).to.equal(5n * ONE);
      expect(await token.balanceOf(bob.address)).to.equal(0n);
      expect(await token.totalSupply()).to.equal(5n * ONE);
    });

    it("mints independent batch ids independently", async function () {
      const { token, alice } = await networkHelpers.loadFixture(deployToken);
      await token.mintBatch(batchId("a"), [alice.address], [1n]);
      await token.mintBatch(batchId("b"), [alice.address], [2n]);
      expect(await token.balanceOf(alice.address)).to.equal(3n);
      expect(await token.batchMinted(batchId("a"))).to.equal(true);
      expect(await token.batchMinted(batchId("b"))).to.equal(true);
      expect(await token.batchMinted(batchId("c"))).to.equal(false);
    });

    it("reverts with EnergyTokenBatchLengthMismatch and marks nothing", async function () {
      const { token, alice, bob } = await networkHelpers.loadFixture(deployToken);
      const id = batchId("mismatch");
      await expect(token.mintBatch(id, [alice.address, bob.address], [1n]))
        .to.be.revertedWithCustomError(token, "EnergyTokenBatchLengthMismatch")
        .withArgs(2n, 1n);
      await expect(token.mintBatch(id, [alice.address], [1n, 2n, 3n]))
        .to.be.revertedWithCustomError(token, "EnergyTokenBatchLengthMismatch")
        .withArgs(1n, 3n);
      expect(await token.batchMinted(id)).to.equal(false);
      expect(await token.totalSupply()).to.equal(0n);
      // The id is still usable once the batch is well formed.
      await expect(token.mintBatch(id, [alice.address], [1n])).to.emit(token, "BatchMinted").withArgs(id, 1n, 1n);
    });

    it("is atomic: a batch that fails part-way mints nothing and can be retried", async function () {
      const { token, alice, bob } = await networkHelpers.loadFixture(deployToken);
      const id = batchId("atomic");
      await expect(token.mintBatch(id, [alice.address, ethers.ZeroAddress], [1n, 2n]))
        .to.be.revertedWithCustomError(token, "ERC20InvalidReceiver")
        .withArgs(ethers.ZeroAddress);
      expect(await token.batchMinted(id)).to.equal(false);
      expect(await token.balanceOf(alice.address)).to.equal(0n);
      await token.mintBatch(id, [alice.address, bob.address], [1n, 2n]);
      expect(await token.totalSupply()).to.equal(3n);
    });

    it("reverts with AccessControlUnauthorizedAccount for a non-minter", async function () {
      const { token, alice, MINTER_ROLE } = await networkHelpers.loadFixture(deployToken);
      const id = batchId("unauthorised");
      await expect(token.connect(alice).mintBatch(id, [alice.address], [ONE]))
        .to.be.revertedWithCustomError(token, "AccessControlUnauthorizedAccount")
        .withArgs(alice.address, MINTER_ROLE);
      expect(await token.batchMinted(id)).to.equal(false);
    });
  });

  describe("transfers", function () {
    it("moves tokens between accounts and keeps the total supply", async function () {
      const { token, alice, bob } = await networkHelpers.loadFixture(deployFunded);
      const supply = await token.totalSupply();
      const tx = token.connect(alice).transfer(bob.address, 30n * ONE);
      await expect(tx).to.emit(token, "Transfer").withArgs(alice.address, bob.address, 30n * ONE);
      await expect(tx).to.changeTokenBalances(ethers, token, [alice, bob], [-30n * ONE, 30n * ONE]);
      expect(await token.totalSupply()).to.equal(supply);
    });

    it("reverts with ERC20InsufficientBalance when the sender lacks tokens", async function () {
      const { token, alice, bob } = await networkHelpers.loadFixture(deployFunded);
      await expect(token.connect(bob).transfer(alice.address, 50n * ONE + 1n))
        .to.be.revertedWithCustomError(token, "ERC20InsufficientBalance")
        .withArgs(bob.address, 50n * ONE, 50n * ONE + 1n);
    });

    it("reverts with ERC20InvalidReceiver for a transfer to the zero address", async function () {
      const { token, alice } = await networkHelpers.loadFixture(deployFunded);
      await expect(token.connect(alice).transfer(ethers.ZeroAddress, 1n))
        .to.be.revertedWithCustomError(token, "ERC20InvalidReceiver")
        .withArgs(ethers.ZeroAddress);
    });

    it("spends an approval with transferFrom and refuses to overspend it", async function () {
      const { token, alice, bob, carol } = await networkHelpers.loadFixture(deployFunded);
      await expect(token.connect(alice).approve(carol.address, 40n * ONE))
        .to.emit(token, "Approval")
        .withArgs(alice.address, carol.address, 40n * ONE);
      await expect(token.connect(carol).transferFrom(alice.address, bob.address, 25n * ONE)).to.changeTokenBalances(
        ethers,
        token,
        [alice, bob, carol],
        [-25n * ONE, 25n * ONE, 0n],
      );
      expect(await token.allowance(alice.address, carol.address)).to.equal(15n * ONE);
      await expect(token.connect(carol).transferFrom(alice.address, bob.address, 15n * ONE + 1n))
        .to.be.revertedWithCustomError(token, "ERC20InsufficientAllowance")
        .withArgs(carol.address, 15n * ONE, 15n * ONE + 1n);
    });
  });

  describe("permit (EIP-2612)", function () {
    it("sets the allowance from a signed permit and increments the owner's nonce", async function () {
      const { token, alice, bob, outsider } = await networkHelpers.loadFixture(deployFunded);
      const value = 42n * ONE;
      const deadline = BigInt(await networkHelpers.time.latest()) + 3600n;
      expect(await token.nonces(alice.address)).to.equal(0n);
      const sig = await signPermit(token, alice, alice.address, bob.address, value, 0n, deadline);

      // Anyone may relay the permit; the signature decides.
      await expect(token.connect(outsider).permit(alice.address, bob.address, value, deadline, sig.v, sig.r, sig.s))
        .to.emit(token, "Approval")
        .withArgs(alice.address, bob.address, value);
      expect(await token.allowance(alice.address, bob.address)).to.equal(value);
      expect(await token.nonces(alice.address)).to.equal(1n);
      expect(await token.nonces(bob.address)).to.equal(0n);

      // The allowance is real: bob can pull the tokens.
      await expect(token.connect(bob).transferFrom(alice.address, bob.address, value)).to.changeTokenBalances(
        ethers,
        token,
        [alice, bob],
        [-value, value],
      );
    });

    it("accepts a second permit with the next nonce and refuses a replayed one", async function () {
      const { token, alice, bob } = await networkHelpers.loadFixture(deployFunded);
      const deadline = BigInt(await networkHelpers.time.latest()) + 3600n;
      const first = await signPermit(token, alice, alice.address, bob.address, 5n, 0n, deadline);
      await token.permit(alice.address, bob.address, 5n, deadline, first.v, first.r, first.s);

      // Replaying the first signature: the contract now hashes nonce 1, so the recovered signer is wrong.
      await expect(
        token.permit(alice.address, bob.address, 5n, deadline, first.v, first.r, first.s),
      ).to.be.revertedWithCustomError(token, "ERC2612InvalidSigner");

      const second = await signPermit(token, alice, alice.address, bob.address, 9n, 1n, deadline);
      await token.permit(alice.address, bob.address, 9n, deadline, second.v, second.r, second.s);
      expect(await token.allowance(alice.address, bob.address)).to.equal(9n);
      expect(await token.nonces(alice.address)).to.equal(2n);
    });

    it("reverts with ERC2612ExpiredSignature after the deadline", async function () {
      const { token, alice, bob } = await networkHelpers.loadFixture(deployFunded);
      const deadline = BigInt(await networkHelpers.time.latest()) + 60n;
      const sig = await signPermit(token, alice, alice.address, bob.address, ONE, 0n, deadline);
      await networkHelpers.time.increaseTo(deadline + 1n);
      await expect(token.permit(alice.address, bob.address, ONE, deadline, sig.v, sig.r, sig.s))
        .to.be.revertedWithCustomError(token, "ERC2612ExpiredSignature")
        .withArgs(deadline);
      expect(await token.allowance(alice.address, bob.address)).to.equal(0n);
      expect(await token.nonces(alice.address)).to.equal(0n);
    });

    it("reverts with ERC2612InvalidSigner when someone other than the owner signed", async function () {
      const { token, alice, bob, outsider } = await networkHelpers.loadFixture(deployFunded);
      const deadline = BigInt(await networkHelpers.time.latest()) + 3600n;
      const sig = await signPermit(token, outsider, alice.address, bob.address, ONE, 0n, deadline);
      await expect(token.permit(alice.address, bob.address, ONE, deadline, sig.v, sig.r, sig.s))
        .to.be.revertedWithCustomError(token, "ERC2612InvalidSigner")
        .withArgs(outsider.address, alice.address);
      expect(await token.allowance(alice.address, bob.address)).to.equal(0n);
      expect(await token.nonces(alice.address)).to.equal(0n);
    });

    it("reverts with ERC2612InvalidSigner when the signed value differs from the submitted one", async function () {
      const { token, alice, bob } = await networkHelpers.loadFixture(deployFunded);
      const deadline = BigInt(await networkHelpers.time.latest()) + 3600n;
      const sig = await signPermit(token, alice, alice.address, bob.address, ONE, 0n, deadline);
      await expect(
        token.permit(alice.address, bob.address, 1000n * ONE, deadline, sig.v, sig.r, sig.s),
      ).to.be.revertedWithCustomError(token, "ERC2612InvalidSigner");
      expect(await token.allowance(alice.address, bob.address)).to.equal(0n);
    });
  });
});
