// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {EnergyToken} from "./EnergyToken.sol";

// Fuzz and invariant tests of EnergyToken, run by `npx hardhat test solidity`. forge-std is not
// available here, so checks are plain `require`s and expected reverts are caught with try/catch and
// compared with the exact custom error they must carry.

/// @dev An account that holds tokens and transfers them when its owner (the test or handler) says so.
contract EnergyTokenHolder {
    address private immutable _owner;
    EnergyToken private immutable _token;

    constructor(EnergyToken token) {
        _owner = msg.sender;
        _token = token;
    }

    function transfer(address to, uint256 amount) external {
        require(msg.sender == _owner, "EnergyTokenHolder: not owner");
        require(_token.transfer(to, amount), "EnergyTokenHolder: transfer returned false");
    }
}

/// @dev Base of the test contracts: shared helpers.
abstract contract EnergyTokenTestBase {
    uint256 internal constant HOLDERS = 4;

    function _bound(uint256 x, uint256 min, uint256 max) internal pure returns (uint256) {
        require(min <= max, "bound: min > max");
        return min + (x % (max - min + 1));
    }

    /// @dev Requires that `reason` is exactly the ABI encoding `expected` of a custom error.
    function _requireError(bytes memory reason, bytes memory expected, string memory message) internal pure {
        require(keccak256(reason) == keccak256(expected), message);
    }
}

contract EnergyTokenFuzzTest is EnergyTokenTestBase {
    EnergyToken internal token;
    EnergyTokenHolder[HOLDERS] internal holders;

    function setUp() public {
        token = new EnergyToken("Feeder 7 Energy Token", "kWhT", address(this));
        for (uint256 i = 0; i < HOLDERS; ++i) {
            holders[i] = new EnergyTokenHolder(token);
        }
    }

    function _sumHolderBalances() internal view returns (uint256 sum) {
        for (uint256 i = 0; i < HOLDERS; ++i) {
            sum += token.balanceOf(address(holders[i]));
        }
    }

    /// Minting a batch raises the total supply by exactly the sum of its amounts, and every recipient
    /// (recipients may repeat) receives the sum of its own entries. BatchMinted's count and total are
    /// covered by the TypeScript tests (events need cheatcodes here).
    function testFuzz_mintBatchTotalSupplyEqualsSumMinted(
        bytes32 batchId,
        uint8 count,
        uint8[8] calldata recipientPicks,
        uint128[8] calldata amounts
    ) public {
        uint256 n = _bound(count, 0, 8);
        address[] memory recipients = new address[](n);
        uint256[] memory values = new uint256[](n);
        uint256 expectedTotal;
        for (uint256 i = 0; i < n; ++i) {
            recipients[i] = address(holders[recipientPicks[i] % HOLDERS]);
            values[i] = amounts[i];
            expectedTotal += amounts[i];
        }

        token.mintBatch(batchId, recipients, values);

        require(token.totalSupply() == expectedTotal, "total supply != sum minted");
        require(_sumHolderBalances() == expectedTotal, "sum of balances != sum minted");
        for (uint256 i = 0; i < n; ++i) {
            uint256 expected;
            for (uint256 j = 0; j < n; ++j) {
                if (recipients[j] == recipients[i]) expected += values[j];
            }
            require(token.balanceOf(recipients[i]) == expected, "recipient balance != its entries");
        }
        require(token.batchMinted(batchId), "batch not marked minted");
    }

    /// The same, with fuzzed recipient addresses (any non-zero address, contracts included).
    function testFuzz_mintBatchToAnyAddresses(bytes32 batchId, address a, address b, uint128 x, uint128 y) public {
        if (a == address(0)) a = address(0xA);
        if (b == address(0)) b = address(0xB);
        address[] memory recipients = new address[](2);
        recipients[0] = a;
        recipients[1] = b;
        uint256[] memory values = new uint256[](2);
        values[0] = x;
        values[1] = y;

        token.mintBatch(batchId, recipients, values);

        require(token.totalSupply() == uint256(x) + y, "total supply != sum minted");
        if (a == b) {
            require(token.balanceOf(a) == uint256(x) + y, "repeated recipient balance wrong");
        } else {
            require(token.balanceOf(a) == x, "balance of a wrong");
            require(token.balanceOf(b) == y, "balance of b wrong");
        }
    }

    /// A batch id mints at most once: any second batch under the same id, whatever its content,
    /// reverts with EnergyTokenBatchAlreadyMinted(batchId) and mints nothing.
    function testFuzz_batchIdNeverMintsTwice(
        bytes32 batchId,
        uint8 firstPick,
        uint128 firstAmount,
        uint8 secondPick,
        uint128 secondAmount
    ) public {
        address[] memory r1 = new address[](1);
        r1[0] = address(holders[firstPick % HOLDERS]);
        uint256[] memory v1 = new uint256[](1);
        v1[0] = firstAmount;
        token.mintBatch(batchId, r1, v1);
        uint256 supplyAfterFirst = token.totalSupply();
        require(supplyAfterFirst == firstAmount, "first batch did not mint");

        address[] memory r2 = new address[](1);
        r2[0] = address(holders[secondPick % HOLDERS]);
        uint256[] memory v2 = new uint256[](1);
        v2[0] = secondAmount;
        try token.mintBatch(batchId, r2, v2) {
            revert("second batch with the same id minted");
        } catch (bytes memory reason) {
            _requireError(
                reason,
                abi.encodeWithSelector(EnergyToken.EnergyTokenBatchAlreadyMinted.selector, batchId),
                "wrong error for a repeated batch"
            );
        }
        // Re-sending exactly the first batch is refused as well.
        try token.mintBatch(batchId, r1, v1) {
            revert("repeated batch minted");
        } catch (bytes memory reason) {
            _requireError(
                reason,
                abi.encodeWithSelector(EnergyToken.EnergyTokenBatchAlreadyMinted.selector, batchId),
                "wrong error for an identical repeated batch"
            );
        }
        require(token.totalSupply() == supplyAfterFirst, "a repeated batch changed the supply");
        require(token.batchMinted(batchId), "batch not marked minted");
    }

    /// A failed batch (length mismatch) does not consume its id.
    function testFuzz_lengthMismatchMintsNothingAndKeepsId(bytes32 batchId, uint8 nRecipients, uint8 nAmounts) public {
        uint256 nr = _bound(nRecipients, 0, 6);
        uint256 na = _bound(nAmounts, 0, 6);
        if (nr == na) na = (na + 1) % 7;
        address[] memory recipients = new address[](nr);
        uint256[] memory values = new uint256[](na);
        for (uint256 i = 0; i < nr; ++i) recipients[i] = address(holders[i % HOLDERS]);
        for (uint256 i = 0; i < na; ++i) values[i] = i + 1;
        try token.mintBatch(batchId, recipients, values) {
            revert("mismatched batch minted");
        } catch (bytes memory reason) {
            _requireError(
                reason,
                abi.encodeWithSelector(EnergyToken.EnergyTokenBatchLengthMismatch.selector, nr, na),
                "wrong error for a length mismatch"
            );
        }
        require(!token.batchMinted(batchId), "a failed batch consumed its id");
        require(token.totalSupply() == 0, "a failed batch minted");
    }

    /// Transfers conserve the total supply and the sum of balances, and move exactly the amount.
    function testFuzz_transfersConserveTotalSupply(
        uint128[4] calldata initial,
        uint8[6] calldata fromPicks,
        uint8[6] calldata toPicks,
        uint256[6] calldata amountSeeds
    ) public {
        uint256 minted;
        for (uint256 i = 0; i < HOLDERS; ++i) {
            token.mint(address(holders[i]), initial[i]);
            minted += initial[i];
        }
        require(token.totalSupply() == minted, "mint changed the supply by the wrong amount");

        for (uint256 k = 0; k < 6; ++k) {
            EnergyTokenHolder from = holders[fromPicks[k] % HOLDERS];
            address to = address(holders[toPicks[k] % HOLDERS]);
            uint256 fromBefore = token.balanceOf(address(from));
            uint256 toBefore = token.balanceOf(to);
            uint256 amount = _bound(amountSeeds[k], 0, fromBefore);

            from.transfer(to, amount);

            if (address(from) == to) {
                require(token.balanceOf(to) == toBefore, "self-transfer changed the balance");
            } else {
                require(token.balanceOf(address(from)) == fromBefore - amount, "sender balance wrong");
                require(token.balanceOf(to) == toBefore + amount, "recipient balance wrong");
            }
            require(token.totalSupply() == minted, "transfer changed the total supply");
            require(_sumHolderBalances() == minted, "transfer changed the sum of balances");
        }
    }

    /// A transfer above the balance reverts with ERC20InsufficientBalance and moves nothing.
    function testFuzz_transferAboveBalanceReverts(uint128 balance, uint256 excessSeed) public {
        EnergyTokenHolder from = holders[0];
        address to = address(holders[1]);
        token.mint(address(from), balance);
        uint256 amount = uint256(balance) + _bound(excessSeed, 1, type(uint128).max);
        try from.transfer(to, amount) {
            revert("overdraft transfer succeeded");
        } catch (bytes memory reason) {
            _requireError(
                reason,
                abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, address(from), balance, amount),
                "wrong error for an overdraft"
            );
        }
        require(token.balanceOf(address(from)) == balance, "failed transfer moved tokens");
        require(token.balanceOf(to) == 0, "failed transfer credited tokens");
    }

    /// Nobody but a minter mints: a fresh holder (not a minter) is refused with the exact error.
    function testFuzz_onlyMinterMints(address to, uint128 amount) public {
        if (to == address(0)) to = address(0xA);
        EnergyTokenMinterProbe probe = new EnergyTokenMinterProbe(token);
        try probe.mint(to, amount) {
            revert("non-minter minted");
        } catch (bytes memory reason) {
            _requireError(
                reason,
                abi.encodeWithSelector(
                    IAccessControl.AccessControlUnauthorizedAccount.selector,
                    address(probe),
                    token.MINTER_ROLE()
                ),
                "wrong error for a non-minter"
            );
        }
        require(token.totalSupply() == 0, "non-minter changed the supply");
    }
}

/// @dev Calls mint from an address without MINTER_ROLE.
contract EnergyTokenMinterProbe {
    EnergyToken private immutable _token;

    constructor(EnergyToken token) {
        _token = token;
    }

    function mint(address to, uint256 amount) external {
        _token.mint(to, amount);
    }
}

/// @dev What the invariant fuzzer drives: mints batches (fresh and repeated ids) and transfers among a
/// fixed set of holders, keeping ghost totals to check the token against.
contract EnergyTokenHandler is EnergyTokenTestBase {
    EnergyToken public immutable token;
    EnergyTokenHolder[HOLDERS] public holders;

    uint256 public ghostMinted;
    uint256 public ghostBatches;
    uint256 public ghostTransfers;
    bool public ghostDoubleMint;
    bytes32[] public mintedIds;

    constructor(EnergyToken token_) {
        token = token_;
        for (uint256 i = 0; i < HOLDERS; ++i) {
            holders[i] = new EnergyTokenHolder(token_);
        }
    }

    function holderCount() external pure returns (uint256) {
        return HOLDERS;
    }

    function mintedIdCount() external view returns (uint256) {
        return mintedIds.length;
    }

    /// Mints a fresh batch of up to 4 entries.
    function mintBatch(bytes32 batchId, uint8 count, uint8[4] calldata picks, uint96[4] calldata amounts) external {
        if (token.batchMinted(batchId)) return;
        uint256 n = _bound(count, 0, 4);
        address[] memory recipients = new address[](n);
        uint256[] memory values = new uint256[](n);
        uint256 total;
        for (uint256 i = 0; i < n; ++i) {
            recipients[i] = address(holders[picks[i] % HOLDERS]);
            values[i] = amounts[i];
            total += amounts[i];
        }
        token.mintBatch(batchId, recipients, values);
        ghostMinted += total;
        ghostBatches += 1;
        mintedIds.push(batchId);
    }

    /// Tries to mint an id that was minted before, with any content; that must fail.
    function remintBatch(uint256 idSeed, uint8 pick, uint96 amount) external {
        if (mintedIds.length == 0) return;
        bytes32 batchId = mintedIds[idSeed % mintedIds.length];
        address[] memory recipients = new address[](1);
        recipients[0] = address(holders[pick % HOLDERS]);
        uint256[] memory values = new uint256[](1);
        values[0] = amount;
        try token.mintBatch(batchId, recipients, values) {
            ghostDoubleMint = true;
        } catch {}
    }

    /// Transfers part of one holder's balance to another.
    function transfer(uint8 fromPick, uint8 toPick, uint256 amountSeed) external {
        EnergyTokenHolder from = holders[fromPick % HOLDERS];
        uint256 amount = _bound(amountSeed, 0, token.balanceOf(address(from)));
        from.transfer(address(holders[toPick % HOLDERS]), amount);
        ghostTransfers += 1;
    }
}

/// Invariants over random sequences of handler calls.
/// forge-config: default.invariant.runs = 64
/// forge-config: default.invariant.depth = 64
contract EnergyTokenInvariantTest {
    EnergyToken internal token;
    EnergyTokenHandler internal handler;

    function setUp() public {
        token = new EnergyToken("Feeder 7 Energy Token", "kWhT", address(this));
        handler = new EnergyTokenHandler(token);
        token.grantRole(token.MINTER_ROLE(), address(handler));
    }

    /// Only the handler is called by the fuzzer (Foundry's targetContracts() convention).
    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    function invariant_totalSupplyEqualsSumMinted() public view {
        require(token.totalSupply() == handler.ghostMinted(), "total supply != sum of minted batches");
    }

    function invariant_balancesSumToTotalSupply() public view {
        uint256 sum;
        for (uint256 i = 0; i < handler.holderCount(); ++i) {
            sum += token.balanceOf(address(handler.holders(i)));
        }
        require(sum == token.totalSupply(), "sum of balances != total supply");
    }

    function invariant_batchIdNeverMintsTwice() public view {
        require(!handler.ghostDoubleMint(), "a batch id minted twice");
        uint256 n = handler.mintedIdCount();
        for (uint256 i = 0; i < n; ++i) {
            require(token.batchMinted(handler.mintedIds(i)), "a minted batch id is not marked");
        }
    }
}
