// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {ISettlement} from "../settlement/ISettlement.sol";
import {SettlementTestBase} from "../settlement/SettlementTestBase.t.sol";
import {IMeterLedger} from "./IMeterLedger.sol";

// Fuzz tests of the reading rules of MeterLedger (through Settlement), run by
// `npx hardhat test solidity`: the reading window, signatures that no relayer can alter,
// monotonic registers, conflicts, range limits and idempotent resubmission.

contract MeterLedgerFuzzTest is SettlementTestBase {
    uint64 internal constant MAX_REGISTER = type(uint40).max;
    uint64 internal constant MAX_DELTA = type(uint32).max;
    /// @dev A reading's net energy (import - export) must lie within +-2^30 Wh.
    uint256 internal constant MAX_NET = 2 ** 30;

    /// @dev `exportDelta` moved into the range where importDelta - exportDelta is within +-MAX_NET (and 32 bits).
    function _netInRange(uint256 importDelta, uint256 exportDelta) internal pure returns (uint256) {
        uint256 lo = importDelta > MAX_NET ? importDelta - MAX_NET : 0;
        uint256 hi = importDelta + MAX_NET;
        if (hi > MAX_DELTA) hi = MAX_DELTA;
        return _bound(exportDelta, lo, hi);
    }

    function setUp() public {
        _deployMarket();
    }

    /// A reading of slot S is accepted exactly from the end of S to the end of its window:
    /// before, ReadingSlotNotEnded(S, end); after, ReadingTooLate(S, deadline).
    function testFuzz_readingWindow(uint16 slotsAhead, uint16 timeSeed) public {
        uint32 slot = firstSlot + uint32(slotsAhead);
        uint256 opens = _opens(slot);
        uint256 deadline = _deadline(slot);
        uint256 t = opens - 1_000 + (uint256(timeSeed) % 2_000);
        vm.warp(t);
        IMeterLedger.Reading memory r = _reading(0, slot, 100, 0);
        (bytes32 sigR, bytes32 vs) = _sign(keys[0], r);
        bytes memory reason = _trySubmit(r, sigR, vs);
        if (t < opens) {
            _requireError(reason, abi.encodeWithSelector(IMeterLedger.ReadingSlotNotEnded.selector, slot, opens), "early reading");
        } else if (t > deadline) {
            _requireError(reason, abi.encodeWithSelector(IMeterLedger.ReadingTooLate.selector, slot, deadline), "late reading");
        } else {
            require(reason.length == 0, "a reading inside its window was refused");
            (uint32 lastSlot,,) = settlement.lastReading(accounts[0]);
            require(lastSlot == slot, "reading not recorded");
        }
    }

    /// Whoever relays a reading cannot change it: any other registers, or another participant's
    /// account, make the signature recover to another address and the reading is refused.
    function testFuzz_alteredReadingIsRefused(
        uint40 importWh,
        uint40 exportWh,
        uint40 otherImport,
        uint40 otherExport,
        bool otherAccount
    ) public {
        vm.warp(_opens(firstSlot) + 1);
        IMeterLedger.Reading memory signed = _reading(0, firstSlot, importWh, exportWh);
        (bytes32 sigR, bytes32 vs) = _sign(keys[0], signed);
        IMeterLedger.Reading memory altered = otherAccount
            ? _reading(1, firstSlot, importWh, exportWh)
            : _reading(0, firstSlot, otherImport, otherExport);
        if (!otherAccount && otherImport == importWh && otherExport == exportWh) return; // not altered
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecover(settlement.readingDigest(altered), sigR, vs);
        if (err != ECDSA.RecoverError.NoError) return; // (astronomically unlikely)
        _requireError(
            _trySubmit(altered, sigR, vs),
            abi.encodeWithSelector(IMeterLedger.ReadingBadSignature.selector, altered.account, recovered),
            "altered reading accepted"
        );
        for (uint256 i = 0; i < 2; ++i) {
            (uint32 lastSlot,,) = settlement.lastReading(accounts[i]);
            require(lastSlot == 0, "an altered reading was recorded");
        }
        // The reading as signed is accepted.
        require(_trySubmit(signed, sigR, vs).length == 0, "the signed reading was refused");
    }

    /// A reading signed by any key but the registered one is refused with the key that signed it.
    function testFuzz_onlyTheRegisteredKeySigns(uint256 key, uint40 importWh) public {
        key = _bound(key, 1, 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364140);
        if (key == keys[0]) key += 1;
        vm.warp(_opens(firstSlot) + 1);
        IMeterLedger.Reading memory r = _reading(0, firstSlot, importWh, 0);
        (bytes32 sigR, bytes32 vs) = _sign(key, r);
        _requireError(
            _trySubmit(r, sigR, vs),
            abi.encodeWithSelector(IMeterLedger.ReadingBadSignature.selector, accounts[0], vm.addr(key)),
            "foreign key accepted"
        );
    }

    /// Sending the identical reading again, at any time in its window, changes nothing.
    function testFuzz_identicalResubmissionIsNoOp(uint40 importWh, uint40 exportWh, uint32 dImport, uint32 dExport, uint16 later)
        public
    {
        importWh = uint40(_bound(importWh, 0, MAX_REGISTER - MAX_DELTA));
        exportWh = uint40(_bound(exportWh, 0, MAX_REGISTER - MAX_DELTA));
        dExport = uint32(_netInRange(dImport, dExport));
        vm.warp(_opens(firstSlot) + 1);
        _submit(0, firstSlot, importWh, exportWh);
        bytes32 afterBaseline = _stateHash(firstSlot);
        vm.warp(_opens(firstSlot) + 1 + uint256(later) % WINDOW);
        _submit(0, firstSlot, importWh, exportWh);
        require(_stateHash(firstSlot) == afterBaseline, "a repeated baseline changed the state");

        uint32 slot = firstSlot + 1;
        vm.warp(_opens(slot) + 1);
        _submit(0, slot, uint64(importWh) + dImport, uint64(exportWh) + dExport);
        bytes32 afterSecond = _stateHash(slot);
        vm.warp(_opens(slot) + 1 + uint256(later) % WINDOW);
        _submit(0, slot, uint64(importWh) + dImport, uint64(exportWh) + dExport);
        require(_stateHash(slot) == afterSecond, "a repeated reading changed the state");
        require(settlement.slotState(slot).readings == 1, "a repeated reading was counted twice");
    }

    /// A different reading for a slot already read is a conflict, whatever its registers.
    function testFuzz_differentReadingOfTheSameSlotConflicts(
        uint40 importWh,
        uint40 exportWh,
        uint40 otherImport,
        uint40 otherExport,
        bool baseline
    ) public {
        if (!baseline) {
            // After a baseline at zero the registers are the slot's energy, which must fit 32 bits,
            // and so must their difference, signed.
            importWh = uint40(_bound(importWh, 0, MAX_DELTA));
            exportWh = uint40(_netInRange(importWh, exportWh));
        }
        if (otherImport == importWh && otherExport == exportWh) return;
        uint32 slot = firstSlot;
        vm.warp(_opens(slot) + 1);
        if (!baseline) {
            _submit(0, slot, 0, 0);
            slot += 1;
            vm.warp(_opens(slot) + 1);
        }
        _submit(0, slot, importWh, exportWh);
        IMeterLedger.Reading memory r = _reading(0, slot, otherImport, otherExport);
        (bytes32 sigR, bytes32 vs) = _sign(keys[0], r);
        _requireError(
            _trySubmit(r, sigR, vs),
            abi.encodeWithSelector(IMeterLedger.ReadingConflict.selector, slot, importWh, exportWh),
            "different reading of the same slot accepted"
        );
    }

    /// Registers beyond 40 bits, slot energy beyond 32 bits and net energy beyond +-2^30 Wh are
    /// refused; anything within is fine.
    function testFuzz_rangeLimits(uint64 importWh, uint64 exportWh, uint64 dImport, uint64 dExport) public {
        // Mostly registers near and within 40 bits; one in four left as fuzzed (mostly far beyond).
        if (importWh % 4 != 0) importWh = uint64(_bound(importWh, 0, MAX_REGISTER + 10));
        if (exportWh % 4 != 0) exportWh = uint64(_bound(exportWh, 0, MAX_REGISTER + 10));
        vm.warp(_opens(firstSlot) + 1);
        IMeterLedger.Reading memory base = _reading(0, firstSlot, importWh, exportWh);
        (bytes32 sigR, bytes32 vs) = _sign(keys[0], base);
        bytes memory reason = _trySubmit(base, sigR, vs);
        if (importWh > MAX_REGISTER || exportWh > MAX_REGISTER) {
            _requireError(reason, abi.encodeWithSelector(IMeterLedger.ReadingOutOfRange.selector, firstSlot), "register beyond 40 bits");
            return;
        }
        require(reason.length == 0, "a baseline within range was refused");
        dImport = uint64(_bound(dImport, 0, 2 * uint256(MAX_DELTA)));
        dExport = uint64(_bound(dExport, 0, 2 * uint256(MAX_DELTA)));
        uint32 slot = firstSlot + 1;
        vm.warp(_opens(slot) + 1);
        IMeterLedger.Reading memory next = _reading(0, slot, importWh + dImport, exportWh + dExport);
        (sigR, vs) = _sign(keys[0], next);
        reason = _trySubmit(next, sigR, vs);
        int256 net = int256(uint256(dImport)) - int256(uint256(dExport));
        bool tooBig = importWh + dImport > MAX_REGISTER || exportWh + dExport > MAX_REGISTER || dImport > MAX_DELTA
            || dExport > MAX_DELTA || net > int256(MAX_NET) || net < -int256(MAX_NET);
        if (tooBig) {
            _requireError(reason, abi.encodeWithSelector(IMeterLedger.ReadingOutOfRange.selector, slot), "energy out of range accepted");
        } else {
            require(reason.length == 0, "a reading within range was refused");
            ISettlement.AccountView memory a = settlement.accountState(accounts[0]);
            require(a.deviationWh == net, "net energy not recorded");
        }
    }

    /// The ledger refuses a reading of a slot before the meter's last one. On a real chain only one
    /// slot's window is open at a time, so this needs a clock that goes back (vm.warp).
    function testFuzz_slotBeforeLastIsRefused(uint8 ahead, uint8 back) public {
        uint32 last = firstSlot + 2 + uint32(ahead % 50);
        vm.warp(_opens(last) + 1);
        _submit(0, last, 1_000, 0);
        uint32 older = last - 1 - uint32(back % (last - firstSlot));
        vm.warp(_opens(older) + 1);
        IMeterLedger.Reading memory r = _reading(0, older, 2_000, 0);
        (bytes32 sigR, bytes32 vs) = _sign(keys[0], r);
        _requireError(
            _trySubmit(r, sigR, vs),
            abi.encodeWithSelector(IMeterLedger.ReadingSlotBeforeLast.selector, older, last),
            "older slot accepted"
        );
    }

    function _stateHash(uint32 slot) internal view returns (bytes32) {
        (uint32 s, uint64 i, uint64 e) = settlement.lastReading(accounts[0]);
        return keccak256(abi.encode(settlement.accountState(accounts[0]), settlement.slotState(slot), s, i, e));
    }
}
