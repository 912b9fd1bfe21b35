// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {EnergyToken} from "../token/EnergyToken.sol";
import {IParticipantRegistry} from "../registry/IParticipantRegistry.sol";
import {ParticipantRegistry} from "../registry/ParticipantRegistry.sol";
import {IMeterLedger} from "../metering/IMeterLedger.sol";
import {ISettlement} from "./ISettlement.sol";
import {Settlement} from "./Settlement.sol";

// Shared base of the Solidity tests of the metering and settlement contracts, run by
// `npx hardhat test solidity`. forge-std is not available here, so the few cheatcodes these tests
// need are declared below and called at Hardhat's cheatcode address; checks are plain `require`s
// and expected reverts are caught with try/catch and compared with the exact custom error.

/// @dev The cheatcodes the tests use (Foundry-compatible, served by Hardhat's EDR).
interface SettlementCheats {
    struct Log {
        bytes32[] topics;
        bytes data;
        address emitter;
    }

    function warp(uint256 timestamp) external;
    function sign(uint256 privateKey, bytes32 digest) external returns (uint8 v, bytes32 r, bytes32 s);
    function addr(uint256 privateKey) external returns (address);
    function prank(address sender) external;
    function recordLogs() external;
    function getRecordedLogs() external returns (Log[] memory);
}

/// @dev A market: token, registry and settlement, `N` prosumers with meter keys, and a slack unit.
/// The contract that inherits this is the admin, regulator, master and minter.
abstract contract SettlementTestBase {
    SettlementCheats internal constant vm = SettlementCheats(0x7109709ECfa91a80626fF3989D68f67F5b1DD12D);

    uint256 internal constant N = 4;
    uint256 internal constant SLOT_SECONDS = 900;
    uint256 internal constant WINDOW = 300;
    uint256 internal constant FEED_IN = 50_000;
    uint256 internal constant RETAIL = 300_000;
    uint256 internal constant ONE = 1e6;
    uint256 internal constant START = 1_700_000_000;

    EnergyToken internal token;
    ParticipantRegistry internal registry;
    Settlement internal settlement;
    address[N] internal accounts;
    uint256[N] internal keys;
    address internal slack;
    /// @dev A participant that never reads and only holds a large deposit: escrow liquidity, so that
    /// sellers can be paid before the buyers of their slot (see the Settlement.test.ts case where it lacks).
    address internal reserve;
    uint256 internal constant RESERVE = 100_000 * ONE;
    /// @dev The first slot whose readings are still ahead when the test starts.
    uint32 internal firstSlot;

    function _deployMarket() internal {
        vm.warp(START);
        token = new EnergyToken("Feeder 7 Energy Token", "kWhT", address(this));
        registry = new ParticipantRegistry(address(this));
        settlement = new Settlement(token, registry, address(this), SLOT_SECONDS, WINDOW, FEED_IN, RETAIL);
        for (uint256 i = 0; i < N; ++i) {
            keys[i] = 0xA11CE + i;
            accounts[i] = address(uint160(0x10000 + i));
            registry.register(
                IParticipantRegistry.Registration({
                    account: accounts[i],
                    meterId: bytes32(i + 1),
                    meterKey: vm.addr(keys[i]),
                    kind: IParticipantRegistry.Kind.Prosumer
                })
            );
        }
        slack = address(0x5AC4);
        registry.register(
            IParticipantRegistry.Registration({
                account: slack,
                meterId: bytes32("slack"),
                meterKey: vm.addr(0x5AC4),
                kind: IParticipantRegistry.Kind.SlackUnit
            })
        );
        reserve = address(0x7E5E);
        registry.register(
            IParticipantRegistry.Registration({
                account: reserve,
                meterId: bytes32("reserve"),
                meterKey: vm.addr(0x7E5E),
                kind: IParticipantRegistry.Kind.Consumer
            })
        );
        token.approve(address(settlement), type(uint256).max);
        firstSlot = uint32(block.timestamp / SLOT_SECONDS) + 1;
    }

    function _bound(uint256 x, uint256 min, uint256 max) internal pure returns (uint256) {
        require(min <= max, "bound: min > max");
        return min + (x % (max - min + 1));
    }

    /// @dev Mints `amount` to this contract and deposits it for `account`.
    function _fund(address account, uint256 amount) internal {
        if (amount == 0) return;
        token.mint(address(this), amount);
        settlement.depositFor(account, amount);
    }

    function _opens(uint32 slot) internal pure returns (uint256) {
        return (uint256(slot) + 1) * SLOT_SECONDS;
    }

    function _deadline(uint32 slot) internal pure returns (uint256) {
        return (uint256(slot) + 1) * SLOT_SECONDS + WINDOW;
    }

    /// @dev Signs `r` with `key` and returns the EIP-2098 compact signature.
    function _sign(uint256 key, IMeterLedger.Reading memory r) internal returns (bytes32 sigR, bytes32 vs) {
        (uint8 v, bytes32 rr, bytes32 s) = vm.sign(key, settlement.readingDigest(r));
        sigR = rr;
        vs = bytes32(uint256(s) | (uint256(v - 27) << 255));
    }

    function _reading(uint256 i, uint32 slot, uint64 importWh, uint64 exportWh)
        internal
        view
        returns (IMeterLedger.Reading memory)
    {
        return IMeterLedger.Reading({account: accounts[i], slot: slot, importWh: importWh, exportWh: exportWh});
    }

    /// @dev Signs and submits participant `i`'s reading at the current time.
    function _submit(uint256 i, uint32 slot, uint64 importWh, uint64 exportWh) internal {
        IMeterLedger.Reading memory r = _reading(i, slot, importWh, exportWh);
        (bytes32 sigR, bytes32 vs) = _sign(keys[i], r);
        settlement.submitReading(r, sigR, vs);
    }

    /// @dev Calls submitReading and returns its revert data (empty if it succeeded).
    function _trySubmit(IMeterLedger.Reading memory r, bytes32 sigR, bytes32 vs) internal returns (bytes memory) {
        try settlement.submitReading(r, sigR, vs) {
            return "";
        } catch (bytes memory reason) {
            return reason;
        }
    }

    function _requireError(bytes memory reason, bytes memory expected, string memory message) internal pure {
        require(reason.length > 0, string.concat(message, ": did not revert"));
        require(keccak256(reason) == keccak256(expected), message);
    }

    function _allAccounts() internal view returns (address[] memory list) {
        list = new address[](N);
        for (uint256 i = 0; i < N; ++i) list[i] = accounts[i];
    }

    /// @dev token.balanceOf(settlement) + badDebt == totalDeposits + openPool.
    function _requireIdentity(string memory where) internal view {
        int256 lhs = int256(token.balanceOf(address(settlement)) + settlement.badDebt());
        int256 rhs = int256(settlement.totalDeposits()) + settlement.openPool();
        require(lhs == rhs, string.concat("escrow identity broken: ", where));
    }

    /// @dev Every token is in one of the wallets the test knows, or in escrow.
    function _requireSupply(string memory where) internal view {
        uint256 sum = token.balanceOf(address(this)) + token.balanceOf(address(settlement)) + token.balanceOf(slack)
            + token.balanceOf(reserve);
        for (uint256 i = 0; i < N; ++i) sum += token.balanceOf(accounts[i]);
        require(sum == token.totalSupply(), string.concat("sum of balances != total supply: ", where));
    }

    /// @dev The sum of every deposit equals totalDeposits.
    function _requireDepositsSum(string memory where) internal view {
        uint256 sum = settlement.accountState(slack).deposit + settlement.accountState(reserve).deposit;
        for (uint256 i = 0; i < N; ++i) sum += settlement.accountState(accounts[i]).deposit;
        require(sum == settlement.totalDeposits(), string.concat("sum of deposits != totalDeposits: ", where));
    }
}
